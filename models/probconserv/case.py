"""ProbConserv as a family case: a GP base model conditioned on a conservation law.

``[model] name = "probconserv"`` runs :class:`ConservationCase`: ``num_functions`` context
sets of the study's design (10 stratified times x 10 sorted uniform positions, exact values of
the porous-medium solution), one exact GP per function fitted by L-BFGS-B (the study's
``gp`` base, noise variance included in the predictive covariance), its prediction of
``u(x, t*)`` on a ``num_grid`` grid, and the closed-form ProbConserv update
(:func:`~ucsciml.models.probconserv.condition`) on ``G u = b(t*)`` with ``sigma_g``.

The tree (kind ``"closed_form"``): ``posterior`` draws of ``u`` after conservation for every
function ``(chain, draw, function, x)`` (Matheron draws of the conditioned Gaussian),
``predictions`` with the same ``u`` and the base model's ``u_base``,
``predictions_constant_data`` with ``u_true``, and one ``optimization`` record per GP fit
with its convergence verdict. :func:`condition_posterior` is the same update as an operation
on predictive draws from any backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.optimize import minimize

from ucsciml._types import Array, Float, PRNGKey
from ucsciml.convergence import judge
from ucsciml.family_case import FamilyRun
from ucsciml.models.probconserv import context_gp
from ucsciml.models.probconserv import probconserv as pc
from ucsciml.models.probconserv._contexts import scale_inputs, stratified_context
from ucsciml.pde import gpme
from ucsciml.posterior import draws_tree

#: The conservation laws a case file can name in ``[model] problem``.
PROBLEMS = {"pme": gpme.PorousMedium}
#: The base models a case file can name in ``[model] base``.
BASES = ("gp",)


def condition_posterior(
    draws: Float[Array, "chain draw n"] | xr.DataTree,
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float = 0.0,
    *,
    var: str = "u",
    select: dict[str, int] | None = None,
    jitter: float = 0.0,
    key: PRNGKey | None = None,
) -> np.ndarray:
    r"""ProbConserv as an operation on a posterior: moment-match draws, condition, return draws.

    The ``(chain, draw, n)`` predictive draws (or ``tree["predictions"][var]`` of a run's
    tree, any backend) are moment-matched to :math:`\mathcal N(\bar u, \hat\Sigma)` and every
    draw is moved with the gain of that Gaussian, :math:`\tilde u_i = u_i - K(G u_i - b +
    \varepsilon_i)` (:func:`~ucsciml.models.probconserv.condition_draws`,
    ``method="per_draw"``). The moved draws' sample mean and covariance are exactly the
    conditioned moment-matched Gaussian's (for :math:`\sigma_G = 0`; in law for
    :math:`\sigma_G > 0` with ``key``), so for Gaussian draws they converge to
    :func:`~ucsciml.models.probconserv.condition`'s posterior.

    Args:
        draws: ``(chain, draw, n)`` draws, or a DataTree with a ``predictions`` group.
        G, b, noise_std: the constraint, as in :func:`~ucsciml.models.probconserv.condition`.
        var: the predictions variable when ``draws`` is a tree.
        select: ``isel`` indexers for the tree's variable (e.g. ``{"function": 0}``).
        jitter: variance added to :math:`\hat\Sigma`'s diagonal (needed when the draws do
            not span the constrained directions).
        key: constraint-noise key for ``noise_std > 0``.

    Returns:
        ``(chain, draw, n)`` conditioned draws (NumPy).

    Raises:
        ValueError: for draws not of shape ``(chain, draw, n)`` or fewer than two in all.
    """
    if isinstance(draws, xr.DataTree):
        field = draws["predictions"][var].isel(**(select or {}))
        draws = field.transpose("chain", "draw", ...).values
    draws = np.asarray(draws)
    if draws.ndim != 3 or draws.shape[0] * draws.shape[1] < 2:
        raise ValueError(f"draws must be (chain, draw, n) with >= 2 draws, got {draws.shape}")
    chains, num, n = draws.shape
    flat = jnp.asarray(draws.reshape(chains * num, n))
    moved = pc.condition_draws(flat, G, b, noise_std, method="per_draw", jitter=jitter, key=key)
    return np.asarray(moved).reshape(chains, num, n)


def _end_checks(theta, bounds, objective) -> tuple[float, float]:
    """``[max |g|, d]`` of the bound-projected gradient at ``theta`` (see
    :mod:`ucsciml.convergence`); ``g^T H g`` by a forward difference of the gradient."""
    _, grad = objective(theta)
    lower, upper = np.asarray(bounds).T
    at_bound = ((theta <= lower + 1e-9) & (grad > 0)) | ((theta >= upper - 1e-9) & (grad < 0))
    g = np.where(at_bound, 0.0, grad)
    gmax = float(np.max(np.abs(g))) if g.size else 0.0
    if gmax == 0.0:
        return 0.0, 0.0
    step = 1e-6 / gmax
    _, grad_step = objective(np.clip(theta - step * g, lower, upper))
    curvature = float(g @ (grad - grad_step)) / step
    decrease = float(g @ g) ** 2 / (2 * curvature) if curvature > 0 else float("inf")
    return gmax, decrease


def fit_gp_traced(
    inputs: Float[Array, "m d"], targets: Float[Array, " m"], *, max_iter: int = 200
) -> tuple[context_gp.GPFit, np.ndarray, tuple[float, float]]:
    """:func:`context_gp.fit` with the same settings, keeping the L-BFGS-B loss trace and the
    end-point checks: ``(fit, losses, (max |g|, d))``."""
    inputs, targets = np.asarray(inputs, float), np.asarray(targets, float)
    spread = float(targets.std())
    offset, scale = float(targets.mean()), spread if spread > 1e-8 else 1.0
    y = (targets - offset) / scale
    d, min_noise = inputs.shape[1], 1e-6
    bounds = [np.log(context_gp._BOUNDS["lengthscale"])] * d
    bounds += [np.log(context_gp._BOUNDS["amplitude"]), np.log(context_gp._BOUNDS["noise"])]
    sq_dist = context_gp._scaled_sq_dist(inputs, inputs)

    def objective(theta):
        return context_gp._nll_and_grad(theta, sq_dist, y, min_noise)

    theta0 = np.log([0.3] * d + [1.0, 0.1])
    losses = [float(objective(theta0)[0])]
    result = minimize(
        objective,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
        callback=lambda theta: losses.append(float(objective(theta)[0])),
    )
    theta = result.x
    noise = float(np.sqrt(np.exp(2 * theta[d + 1]) + min_noise))
    fit = context_gp.GPFit(
        np.exp(theta[:d]), float(np.exp(theta[d])), noise, inputs, y, offset, scale
    )
    return fit, np.asarray(losses), _end_checks(theta, bounds, objective)


def coverage(draws: np.ndarray, truth: np.ndarray, level: float = 0.9) -> float:
    """Fraction of ``truth`` inside the central ``level`` band of ``(..., draw, n)`` draws."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=-2)
    return float(np.mean((truth >= lo) & (truth <= hi)))


def scores(mean, var, truth, x, b) -> dict[str, float]:
    """CE, MSE, LL, CRPS averaged over functions (the study's pointwise scores)."""
    return {
        "CE": float(jnp.mean(pc.conservation_error(mean, x, b))),
        "MSE": float(jnp.mean(pc.mean_squared_error(mean, truth))),
        "LL": float(jnp.mean(pc.gaussian_log_likelihood(truth, mean, var))),
        "CRPS": float(jnp.mean(pc.crps_gaussian(truth, mean, var))),
    }


@dataclass(frozen=True)
class ConservationCase:
    """``[model]`` of a ProbConserv case: problem, base model, design and draws."""

    backends: ClassVar[tuple[str, ...]] = ("closed_form",)
    own_backends: ClassVar[tuple[str, ...]] = ("closed_form",)

    problem: str = "pme"
    parameter: float = 3.0
    base: str = "gp"
    num_functions: int = 5
    num_grid: int = 201
    t_star: float = 0.5
    sigma_g: float = 0.0
    data_seed: int = 0
    num_draws: int = 200
    include_noise: bool = True

    def __post_init__(self):
        if self.problem not in PROBLEMS:
            raise ValueError(
                f"[model] problem must be one of {sorted(PROBLEMS)}, got {self.problem!r}"
            )
        if self.base not in BASES:
            raise ValueError(f"[model] base must be one of {list(BASES)}, got {self.base!r}")
        low, high = PROBLEMS[self.problem].parameter_range
        if not low <= self.parameter <= high:
            raise ValueError(
                f"[model] parameter must be in [{low}, {high}] for {self.problem}, "
                f"got {self.parameter}"
            )
        for name, minimum in (("num_functions", 1), ("num_grid", 3), ("num_draws", 2)):
            if getattr(self, name) < minimum:
                raise ValueError(f"[model] {name} must be >= {minimum}, got {getattr(self, name)}")
        if not 0.0 < self.t_star <= 1.0:
            raise ValueError(f"[model] t_star must be in (0, 1], got {self.t_star}")
        if not self.sigma_g >= 0.0:
            raise ValueError(f"[model] sigma_g must be >= 0, got {self.sigma_g}")

    def law(self) -> gpme.AbstractConservationLaw:
        """The conservation law (``PorousMedium(m=parameter)``)."""
        cls = PROBLEMS[self.problem]
        return cls(**{cls.parameter: float(self.parameter)})

    def contexts(self, law) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Context sets ``(f, 100, 2)``, their values ``(f, 100)``, the grid ``x`` and the
        query points at ``t*`` (the study's ``contexts_and_grid``, with the key the study uses for
        its first problem at ``--seed data_seed``, so the contexts are the study's)."""
        (x0, x1), (t0, t1) = law.domain["x"], law.domain["t"]
        study_key = jax.random.split(jax.random.fold_in(jax.random.key(self.data_seed), 0))[0]
        keys = jax.random.split(study_key, self.num_functions)
        contexts = np.asarray(jax.vmap(lambda k: stratified_context(k, (x0, x1), (t0, t1)))(keys))
        values = law.solve(contexts.reshape(-1, 2)).reshape(self.num_functions, -1)
        x = np.linspace(x0, x1, self.num_grid)
        query = np.stack([x, np.full_like(x, self.t_star)], axis=-1)
        return contexts, values, x, query

    def run(self, backend: str, settings: Any, *, key: PRNGKey, progress: bool) -> FamilyRun:
        """Fit the GPs, condition them, draw, score and build the tree.

        ``key`` makes the draws (split per function, base and conditioned draws from the same
        key); the contexts come from ``data_seed``.
        """
        if backend not in self.backends:
            raise ValueError(
                f"ConservationCase runs backends {list(self.backends)}, got {backend!r}"
            )
        if settings is not None:
            raise ValueError("ConservationCase's 'closed_form' is its own update: no settings")
        with jax.enable_x64(True):
            return self._run(key)

    def _run(self, key: PRNGKey) -> FamilyRun:
        start = time.perf_counter()
        law = self.law()
        contexts, values, x, query = self.contexts(law)
        xq = scale_inputs(law, query)
        fits, records, means, covs = [], [], [], []
        for i, (c, v) in enumerate(zip(contexts, values, strict=True)):
            t0 = time.perf_counter()
            fit, losses, checks = fit_gp_traced(scale_inputs(law, c), v)
            verdict = judge(losses, np.asarray(checks), phase=f"GP fit (function {i})")
            records.append(
                {
                    "objective": "GP negative log marginal likelihood (standardised)",
                    "trace": [float(s) for s in losses],
                    "final_loss": float(losses[-1]),
                    "convergence": verdict,
                    "train_seconds": time.perf_counter() - t0,
                }
            )
            mean, cov = context_gp.predict(fit, xq, include_noise=self.include_noise)
            fits.append(fit)
            means.append(mean)
            covs.append(cov)
        mean, cov = jnp.asarray(np.stack(means)), jnp.asarray(np.stack(covs))
        truth = np.asarray(law.solve(query))
        G, b = pc.conservation_constraint(law, x, self.t_star)
        post = jax.vmap(pc.condition, in_axes=(0, 0, None, None, None))(
            mean, cov, G, b, self.sigma_g
        )
        keys = jax.random.split(key, self.num_functions)
        n_draws = self.num_draws
        base_draws = jax.vmap(lambda k, m, c: pc.sample_gaussian(k, m, c, n_draws))(keys, mean, cov)
        cons_draws = jax.vmap(lambda k, m, c: pc.sample(k, m, c, G, b, self.sigma_g, n_draws))(
            keys, mean, cov
        )
        base_var = jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), 0.0)
        before = scores(mean, base_var, truth, x, b[0])
        after = scores(post.mean, post.variance(), truth, x, b[0])
        base_draws, cons_draws = np.asarray(base_draws), np.asarray(cons_draws)
        metrics = {
            **{f"{k}_base": v for k, v in before.items()},
            **{f"{k}_probconserv": v for k, v in after.items()},
            "max_abs_CE_base": float(jnp.max(jnp.abs(pc.conservation_error(mean, x, b[0])))),
            "max_abs_CE_probconserv": float(
                jnp.max(jnp.abs(pc.conservation_error(post.mean, x, b[0])))
            ),
            "coverage90_base": coverage(base_draws, truth[None, None]),
            "coverage90_probconserv": coverage(cons_draws, truth[None, None]),
            "gp_fits_converged": int(sum(r["convergence"]["converged"] for r in records)),
            "num_functions": self.num_functions,
            "seconds": time.perf_counter() - start,
        }
        tree = build_tree(x, truth, base_draws, cons_draws, records, law, float(b[0]), self.t_star)
        return FamilyRun(tree, metrics)


def build_tree(x, truth, base_draws, cons_draws, records, law, mass, t_star) -> xr.DataTree:
    """The standard-layout tree from ``(function, draw, x)`` base and conditioned draws:
    ``posterior`` ``u`` as ``(chain=1, draw, function, x)``; ``predictions`` ``u`` and the
    base model's ``u_base`` ``(chain, draw, x)`` of the first function (the field the report
    scores against ``predictions_constant_data`` ``u_true`` ``(x)``)."""
    u = np.swapaxes(cons_draws, 0, 1)[None]
    u_base = np.swapaxes(base_draws, 0, 1)[None]
    coords = {"function": np.arange(u.shape[2]), "x": x}
    tree = draws_tree(
        {"u": u},
        kind="closed_form",
        program="probconserv",
        physical_sites=(),
        optimization=records,
        dims={"u": ["function", "x"]},
        coords=coords,
        attrs={
            "problem": type(law).__name__,
            "parameter": {law.parameter: float(getattr(law, law.parameter))},
            "t_star": float(t_star),
            "mass": mass,
            "truth": {"u": truth.tolist()},
        },
    )
    sample = {"chain": np.arange(u.shape[0]), "draw": np.arange(u.shape[1])}
    dims = ("chain", "draw", "x")
    tree["predictions"] = xr.DataTree(
        xr.Dataset(
            {"u": (dims, u[:, :, 0]), "u_base": (dims, u_base[:, :, 0])},
            coords={**sample, "x": x},
        )
    )
    tree["predictions_constant_data"] = xr.DataTree(
        xr.Dataset({"u_true": (("x",), truth)}, coords={"x": x})
    )
    return tree
