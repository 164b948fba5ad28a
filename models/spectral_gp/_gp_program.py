r"""The spectral GP on sensor data: the field marginalised exactly, the rest a NumPyro program.

For a PDE linear in :math:`u`, the grid values given the hyper-parameters are Gaussian with
scattered sensors, the PDE residual at every grid point and optional Dirichlet rows together
(:mod:`ucsciml.models.spectral_gp._gp_solve`, :mod:`ucsciml.models.spectral_gp._gp_evidence`). :func:`compile_sensors`

1. fits every hyper-parameter — the per-axis spectral-mixture kernels, the residual precision
   :math:`\tau_2`, the noise scale when it is unknown and the PDE's unknown coefficients — by
   type-II MAP (Adam then L-BFGS on the exact log evidence plus log priors, started from the
   best residual precision on a coarse log grid), with a convergence verdict;
2. returns a :class:`~ucsciml.Program` whose latent sites are the PDE's unknowns,
   ``log_tau2`` (and ``log_tau1``, ``log_noise`` where present), with the kernel fixed at its
   fit (empirical Bayes over the kernel) or, with ``kernel_posterior``, the kernel sites too
   (flat densities, or proper ones with ``kernel_prior="normal"``); every site starts at the
   fit (:class:`StartAt`), and the density is the exact evidence of the data under the
   physics-conditioned GP prior (``numpyro.factor("evidence", ...)``,
   :func:`~ucsciml.models.spectral_gp._gp_evidence.data_evidence`). Any backend then gives
   the coefficients a posterior; ``Posterior.predict`` draws the field at new points from
   its exact conditional given each draw (site ``u``: a joint draw of the grid values plus
   the prior variance of the interpolant's error between grid points).

The evidence needs a dense factorisation of the grid's precision, so the program is limited to
grids of at most :data:`ucsciml.models.spectral_gp._gp_solve.DENSE_LIMIT` points; larger grids use
:func:`ucsciml.models.spectral_gp.fit` with sensors (conjugate gradients, no dense matrix).

References:
    Fang et al. (2024), Solving High Frequency and Multi-Scale PDEs with Gaussian Processes,
    ICLR 2024.
    Rasmussen & Williams (2006), Gaussian Processes for Machine Learning, ch. 5 (type-II ML).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer.util import log_density

from ucsciml import optimize
from ucsciml._types import Array
from ucsciml.models.spectral_gp import _gp_evidence as evidence
from ucsciml.models.spectral_gp import _gp_observe as observe
from ucsciml.models.spectral_gp import _gp_solve as solve
from ucsciml.models.spectral_gp import _spectral_kernels as sk
from ucsciml.models.spectral_gp._gp_data import (
    check_linear,
    frequency_bounds,
    kernel_priors,
    kernel_sites,
    resolvable,
    sensor_inputs,
    start_values,
    transforms,
    with_data_defaults,
)
from ucsciml.program import Program

#: Choices of ``SpectralGP.boundary``.
BOUNDARY = ("auto", "solution", "none")
#: Choices of ``SpectralGP.collocation``.
COLLOCATION = ("auto", "grid", "midpoints")
#: Coarse log grid searched for the residual precision's starting value.
LOG_TAU2_GRID = np.arange(-10.0, 41.0, 2.0)
#: Fitted spectral components carrying more than this share of a kernel's weight are
#: checked against the grid's points-per-period limit.
DOMINANT_WEIGHT = 0.05


class FlatAt(dist.Distribution):
    """Improper flat density on the reals (log density 0) whose ``sample`` returns ``value``.

    The GP-HM sites have flat priors (on ``eta`` this is the Jeffreys prior on ``w = e^eta``).
    NumPyro's ``ImproperUniform`` cannot be sampled, so seeded traces and
    ``init_to_sample`` would fail; returning the model's deterministic starting value instead
    makes every backend start where the paper does. Posterior propriety over these sites is not
    guaranteed (a pruned component's ``eta`` is unbounded below): use MAP or Laplace, or
    ``SpectralGP(kernel_prior="normal")`` (proper priors) to sample the kernel with NUTS.
    """

    support = constraints.real_vector

    def __init__(self, value: Array, support: constraints.Constraint | None = None):
        self.value = jnp.asarray(value)
        if support is not None:
            self.support = constraints.independent(support, 1)
        super().__init__(batch_shape=(), event_shape=self.value.shape)

    def sample(self, key, sample_shape=()):
        return jnp.broadcast_to(self.value, sample_shape + self.value.shape)

    def log_prob(self, value):
        return jnp.zeros(jnp.shape(value)[: jnp.ndim(value) - len(self.event_shape)])


class StartAt(dist.Distribution):
    """``base``'s density, but ``sample`` returns ``value``: a prior whose seeded draws (and so
    ``init_to_sample``) start at a fit made before inference.

    The program's type-II MAP maximises the same log density the backends explore, so its
    optimum is the posterior mode: Laplace's mode search starts there instead of at a prior
    draw, from which it could end in another, far worse mode (κ 0.004 instead of 0.1 for one
    of three inference seeds of the heat case). The density, and so every posterior, is the
    base prior's; only where the backends start changes.
    """

    def __init__(self, base: dist.Distribution, value: Array):
        self.base = base
        self.value = jnp.asarray(value, dtype=jnp.result_type(float))
        super().__init__(batch_shape=base.batch_shape, event_shape=base.event_shape)

    @constraints.dependent_property(is_discrete=False)
    def support(self):
        return self.base.support

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        return jnp.broadcast_to(self.value, shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


def _prior(base: dist.Distribution, start: dict | None, name: str) -> dist.Distribution:
    """``base``, started at ``start[name]`` when the fit gave it."""
    return StartAt(base, start[name]) if start and name in start else base


def compile_sensors(model, data) -> Program:
    """Fit the kernel to sensor data and compile the evidence program (module docstring).

    Raises:
        RuntimeError: when float64 is not enabled.
        ValueError: for data that do not fit the model (coordinates, observables, points
            outside the grid's domain), a nonlinear PDE, or a grid too large for the dense
            evidence.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "SpectralGP needs float64 (its grid covariances are near-singular by design): "
            "call jax.config.update('jax_enable_x64', True) before building arrays, or set "
            "JAX_ENABLE_X64=1; `ucsciml run` does this for this model"
        )
    size = int(np.prod(model.grid))
    if size > solve.DENSE_LIMIT:
        raise ValueError(
            f"SpectralGP.compile(data) marginalises the field densely, up to "
            f"{solve.DENSE_LIMIT} grid points; this grid has {size}. Coarsen the grid, or fit "
            "large grids with ucsciml.models.spectral_gp.fit(model, data=...) (conjugate "
            "gradients) and predict()"
        )
    check_linear(model)
    model = with_data_defaults(model)
    inputs = sensor_inputs(model, data)
    latent_noise = "sensor_noise" not in inputs
    spread = float(np.std(np.asarray(inputs["sensor_values"]))) or 1.0
    noise_loc = float(np.log(0.1 * spread))
    priors = kernel_priors(model, spread) if model.kernel_prior == "normal" else None
    full = evidence_model(model, None, latent_noise, noise_loc, priors=priors)
    fitted, verdict = fit_hyperparameters(model, full, inputs, latent_noise, noise_loc)
    warn_unresolved(model, fitted)
    kernel = {k: fitted[k] for k in kernel_sites(model)}
    # Every backend starts at the fit (the posterior's mode); the densities are unchanged.
    if model.kernel_posterior:
        fn = evidence_model(model, None, latent_noise, noise_loc, start=fitted, priors=priors)
    else:
        fn = evidence_model(model, kernel, latent_noise, noise_loc, start=fitted)
    truth = {k: v.truth for k, v in model.pde.unknowns().items() if v.truth is not None}
    fixed = dict(inputs)

    def query(points):
        return {**fixed, "query": jnp.asarray(points, jnp.float64)}

    return Program.from_numpyro(
        fn,
        inputs,
        inputs["sensor_values"],
        dims={"u": ("sensor",)},
        query=query,
        predict_sites=("u",),
        name=f"spectral_gp_{type(model.pde).__name__}",
        attrs={
            "truth": truth,
            "grid": list(model.grid),
            "optimization": {"convergence": [verdict]},
            "fitted": {k: _jsonable(v) for k, v in fitted.items() if k not in kernel},
        },
    )


def evidence_model(
    model,
    kernel: dict | None,
    latent_noise: bool,
    noise_loc: float,
    start: dict | None = None,
    priors: dict | None = None,
):
    """The NumPyro model ``fn(inputs, targets=None)``: kernel sites latent (``kernel=None``)
    or fixed, the PDE's unknowns with their priors, the precisions, the exact evidence; with
    ``inputs["query"]`` it draws the field there instead (site ``u``). Latent kernel sites
    have ``priors[name]`` (:func:`~ucsciml.models.spectral_gp._gp_data.kernel_priors`) or,
    without ``priors``, flat densities. ``start``: fitted values the sites' seeded draws
    return (:class:`FlatAt`, :class:`StartAt`), so that backends start at the fit."""
    init = {**start_values(model), **(start or {})}
    scale = model.tau_prior_scale
    bounds = frequency_bounds(model)

    def fn(inputs, targets=None):
        sites = dict(kernel) if kernel is not None else {}
        if kernel is None:
            for name in kernel_sites(model):
                if priors is None:
                    base = FlatAt(init[name], bounds.get(name))
                else:
                    base = StartAt(priors[name], init[name])
                sites[name] = numpyro.sample(name, base)
        for name, value in model.pde.unknowns().items():
            sites[name] = numpyro.sample(name, _prior(value.prior, start, name))
        tau2 = _prior(dist.Normal(0.0, scale), start, "log_tau2")
        sites["log_tau2"] = numpyro.sample("log_tau2", tau2)
        numpyro.deterministic("tau2", jnp.exp(sites["log_tau2"]))
        if inputs["boundary_index"].shape[0]:
            tau1 = _prior(dist.Normal(0.0, scale), start, "log_tau1")
            sites["log_tau1"] = numpyro.sample("log_tau1", tau1)
        if latent_noise:
            noise = _prior(dist.Normal(noise_loc, 3.0), start, "log_noise")
            sites["log_noise"] = numpyro.sample("log_noise", noise)
            numpyro.deterministic("noise_std", jnp.exp(sites["log_noise"]))
        system = solve.dense_system(model, sites, inputs)
        physics, rows = system.physics, system.data
        if "query" in inputs:
            cond = evidence.conditional(solve.with_rows(physics, rows))
            weights, interp = solve.sensor_weights(
                model, system.kparams, system.chols, inputs["query"]
            )
            k1, k2 = jax.random.split(numpyro.prng_key())
            z = evidence.draw(cond, k1, model.grid)
            noise = jnp.sqrt(interp) * jax.random.normal(k2, interp.shape, interp.dtype)
            numpyro.deterministic("u", observe.observe(weights, z) + noise)
        else:
            cond = evidence.data_evidence(physics, rows)
            numpyro.factor("evidence", cond.log_evidence)
            z_mean = cond.z_mean.reshape(model.grid)
            numpyro.deterministic("u", observe.observe(system.sensor_weights, z_mean))

    return fn


def fit_hyperparameters(model, fn, inputs, latent_noise: bool, noise_loc: float):
    """Type-II MAP of every site of ``fn`` (kernel flat, the rest with priors).

    Returns:
        ``(sites, verdict)``: constrained site values and the convergence verdict.
    """
    init = start_values(model)
    values = {k: init[k] for k in kernel_sites(model)}
    values |= {k: jnp.asarray(v.prior.mean) for k, v in model.pde.unknowns().items()}
    if latent_noise:
        values["log_noise"] = jnp.asarray(noise_loc)
    if inputs["boundary_index"].shape[0]:
        values["log_tau1"] = jnp.zeros(())
    values["log_tau2"] = _best_log_tau2(fn, inputs, values)
    bijections = transforms(model, values)
    potential_fn = unconstrained_potential(fn, inputs, bijections)
    start = {k: bijections[k].inv(jnp.asarray(v)) for k, v in values.items()}
    result = optimize.minimize(
        potential_fn,
        start,
        adam_steps=model.fit_steps,
        learning_rate=model.fit_learning_rate,
        lbfgs_steps=model.fit_lbfgs_steps,
        phase="spectral GP kernel (type-II MAP)",
        hint="raise SpectralGP.fit_steps or fit_lbfgs_steps",
    )
    return {k: bijections[k](v) for k, v in result.z.items()}, result.verdict


def unconstrained_potential(fn, inputs, transforms: dict):
    """``-log p`` of ``fn``'s sites in unconstrained coordinates (with the Jacobian), without
    NumPyro's eager ``initialize_model`` (seconds of op-by-op dispatch on this model)."""

    def potential(free):
        sites = {k: transforms[k](v) for k, v in free.items()}
        log_jac = sum(jnp.sum(transforms[k].log_abs_det_jacobian(free[k], sites[k])) for k in free)
        return -(log_density(fn, (inputs,), {}, sites)[0] + log_jac)

    return potential


def _best_log_tau2(fn, inputs, values) -> Array:
    """The residual precision on :data:`LOG_TAU2_GRID` with the highest log joint at the
    other starting values: Adam steps of ``1e-2`` cannot cross the decades that separate a
    unit precision from a PDE's."""

    def joint(log_tau2):
        return log_density(fn, (inputs,), {}, {**values, "log_tau2": log_tau2})[0]

    scores = jax.jit(jax.vmap(joint))(jnp.asarray(LOG_TAU2_GRID))
    scores = jnp.where(jnp.isfinite(scores), scores, -jnp.inf)
    return jnp.asarray(LOG_TAU2_GRID)[jnp.argmax(scores)]


def warn_unresolved(model, sites: dict) -> None:
    """Warn when a fitted spectral component that carries weight presses against the frequency
    the grid resolves (~3 points per period): the data hold more detail than the grid."""
    limit = sk.MIN_POINTS_PER_PERIOD
    if model.kernel not in sk.MIXTURES:
        return
    for c, h in zip(model.pde.coords, model.spacings(), strict=True):
        w = np.exp(np.asarray(sites[f"eta_{c}"]))
        mu = np.abs(np.asarray(sites[f"mu_{c}"]))
        heavy = w / w.sum() > DOMINANT_WEIGHT
        top = float(mu[heavy].max()) if heavy.any() else 0.0
        if top > 0.9 * resolvable(h):
            warnings.warn(
                f"SpectralGP fitted a spectral component at {top:.4g} cycles per unit along "
                f"'{c}', at the grid's limit of ~{limit:g} points per period "
                f"({resolvable(h):.4g}): the data hold detail the grid cannot resolve; "
                "refine the grid",
                UserWarning,
                stacklevel=3,
            )


def _jsonable(value: Any) -> Any:
    arr = np.asarray(value)
    return float(arr) if arr.ndim == 0 else arr.tolist()
