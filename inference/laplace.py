"""The Laplace approximation: a Gaussian at the MAP in unconstrained space, or an
equal-weight mixture of Gaussians at several MAP modes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ucsciml import checkpoint
from ucsciml._types import PRNGKey
from ucsciml.convergence import judge
from ucsciml.inference._chains import chain_keys, tile
from ucsciml.inference._importance import importance_resample
from ucsciml.inference._map import ProgramSignature, check_continuous, family_of
from ucsciml.inference._mapfit import MapFitter
from ucsciml.inference._mapfit_settings import MAPFit, fold_legacy, legacy, map_field, settings_of
from ucsciml.optimize import hessian_checks
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import provenance

log = logging.getLogger(__name__)

#: Choices of ``Laplace.importance``.
IMPORTANCE = ("none", "psis")


@dataclass(frozen=True)
class Laplace:
    r"""Laplace approximation at the mode of the log joint in unconstrained space.

    .. math::
        \hat z = \arg\min_z U(z),\qquad
        q(z) = \mathcal N\big(\hat z,\ H^{-1}\big),\quad H = \nabla^2 U(\hat z),

    where :math:`U = -\log p(y, z)` is NumPyro's potential (log-Jacobians of the constraining
    transforms included). The mode comes from a MAP fit (``map``: Adam then L-BFGS). Draws of ``z`` are mapped back to the constrained sites, so a
    positive parameter gets a log-normal approximation. Draws are laid out as
    ``(chain=1, draw=num_samples)``.

    **Mixture over modes.** With ``num_modes = M > 1``, ``M`` MAP fits start from
    independent prior draws (init key ``fold_in(k, m)`` for mode ``m``) as one ``vmap`` (one
    compilation), each gets its own Hessian, and the approximation is the equal-weight mixture

    .. math::
        q(z) = \frac1M \sum_{m=1}^{M} \mathcal N\big(\hat z_m,\ H_m^{-1}\big),

    laid out as ``(chain=M, draw=num_samples)``: the chain axis is the mode. Pooled
    statistics over ``(chain, draw)`` are mixture statistics, and by the law of total
    variance the pooled variance is the within-mode part (each Gaussian's own spread) plus
    the between-mode part (disagreement of the MAP modes);
    :func:`ucsciml.diagnostics.check` reports the two separately. Equal weights give each
    fit one vote, so a mode is weighted by how many starts reach it (its basin under the
    optimiser), not by its posterior mass, and duplicate modes are kept; stacking weights
    (Yao, Vehtari & Gelman 2022) are the principled refinement and are not implemented.
    ``Posterior.attrs["optimization"]["map_spread_ratio"]`` is the largest, over unconstrained
    coordinates, of the variance of the MAPs across modes over the mean Laplace variance: 0
    when every fit found the same mode (for network weights, permutation-equivalent modes make
    it large even when the functions agree). Modes run vmapped on the default device; their
    Hessians are taken one mode at a time (``lax.map``) to keep memory at one mode's.

    **Hessian.** ``hessian="full"`` forms the dense ``d x d`` Hessian column by column
    (``d`` Hessian-vector products in batches, ``O(d^2)`` memory for the result, one
    eigendecomposition, ``O(d^3)``): right for small models and for
    B-PINNs up to a few thousand weights. ``"diagonal"`` is for large networks: the exact
    diagonal of the Hessian, one Hessian-vector product per coordinate under ``lax.map``
    (``O(d)`` memory, ``d`` HVPs of time), giving a mean-field Gaussian that ignores weight
    correlations, so it understates the uncertainty of correlated directions.
    ``"auto"`` picks full up to ``max_full_dim`` unconstrained dimensions.

    **Importance correction.** A Gaussian is symmetric about the mode, a posterior need not
    be: a GP length-scale's evidence is a plateau towards long scales and a cliff towards
    short ones, so symmetric draws put mass where the posterior has almost none. With
    ``importance="psis"`` each draw :math:`z_s \sim q` gets the log ratio
    :math:`\log p(z_s, y) - \log q(z_s)`, the ratios are Pareto-smoothed (PSIS) and the draws
    are resampled by their smoothed weights (systematic resampling, per mode, so modes keep
    their equal weights). The Pareto shape :math:`\hat k` of the ratios' tail says whether
    this can be trusted: below 0.7 the corrected draws estimate posterior expectations well;
    above it the Gaussian misses where the posterior's mass is, a few draws dominate, and
    that mode's draws are kept uncorrected, with a warning that
    :func:`ucsciml.diagnostics.check` repeats (the verdict is then "warn").
    The per-mode :math:`\hat k` and the draws' effective sample size are stored in
    ``Posterior.attrs["optimization"]["importance"]``. The correction costs one potential
    evaluation per draw; it suits low-dimensional programs (kernel hyper-parameters and PDE
    coefficients), not network weights, where the ratios of a Gaussian in thousands of
    dimensions are degenerate (:math:`\hat k \gg 0.7`).
    A Hessian that is not positive definite (the optimiser stopped near a saddle, common for
    networks) is repaired as in saddle-free Newton: eigenvalues are replaced by
    ``max(|lambda|, min_eigenvalue)``. The default floor 1 is a prior-scale precision: at a
    true minimum the prior term alone (e.g. ``N(0, s^2)`` weights, ``s <= 1``) contributes
    at least ``1/s^2`` in every direction, so a smaller eigenvalue signals a saddle, not
    certainty. The count repaired is logged and stored in ``Posterior.attrs["optimization"]``
    (per mode in ``floored_eigenvalues_per_mode``, with ``final_loss_per_mode``).

    **Compile once.** The data are traced arguments of executables cached per model, data
    shapes and settings: a second run, or a new program of the same model on new data of the
    same shapes, traces and compiles nothing.

    Args:
        map: the MAP fit to each mode (:class:`~ucsciml.inference.MAPFit`; default 3000 Adam
            steps at 1e-2, then 200 L-BFGS steps).
        num_samples: Gaussian draws (per mode).
        hessian: ``"auto"``, ``"full"`` or ``"diagonal"``.
        max_full_dim: largest dimension ``"auto"`` treats with the full Hessian.
        min_eigenvalue: floor on the magnitude of Hessian eigenvalues (a precision in
            unconstrained units; 1 caps any direction's sd at 1).
        num_modes: MAP fits from independent starts, mixed with equal weights (1: the
            classic single-mode Laplace approximation).
        importance: ``"none"`` (the Gaussian draws) or ``"psis"`` (draws resampled by their
            Pareto-smoothed importance weights against the exact log joint, above).
        checkpoint_dir: folder for checkpoints of the MAP fits (``None``: none), saved after
            every chunk (``laplace-Adam.npz``, ``laplace-L-BFGS.npz``); a later run with the
            same settings, key and data continues from the last one to the same modes.

    Example:
        >>> posterior = Laplace().run(program, jax.random.key(0))  # doctest: +SKIP
        >>> mixture = Laplace(num_modes=8).run(program, jax.random.key(0))  # doctest: +SKIP

    References:
        MacKay (1992), A practical Bayesian framework for backpropagation networks, Neural
        Computation 4(3). Daxberger et al. (2021), Laplace redux: effortless Bayesian deep
        learning, NeurIPS. Yao, Vehtari & Gelman (2022), Stacking for non-mixing Bayesian
        computations: the curse and blessing of multimodal posteriors, JMLR 23(79).
        Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto smoothed importance sampling,
        JMLR 25(72). Yao, Vehtari, Simpson & Gelman (2018), Yes, but did it work?:
        Evaluating variational inference, ICML.

    ``map_steps``, ``learning_rate`` and ``lbfgs_steps`` are deprecated spellings of
    ``map=MAPFit(adam_steps=..., learning_rate=..., lbfgs_steps=...)``.
    """

    map: MAPFit = map_field(adam_steps=3000, learning_rate=1e-2, lbfgs_steps=200)
    num_samples: int = 1000
    hessian: Literal["auto", "full", "diagonal"] = "auto"
    max_full_dim: int = 4000
    min_eigenvalue: float = 1.0
    num_modes: int = 1
    importance: Literal["none", "psis"] = "none"
    checkpoint_dir: str | None = None
    map_steps: int | None = legacy("adam_steps")
    learning_rate: float | None = legacy("learning_rate")
    lbfgs_steps: int | None = legacy("lbfgs_steps")

    def __post_init__(self):
        fold_legacy(self)
        low = {"num_samples": 1, "max_full_dim": 1, "num_modes": 1}
        for name, minimum in low.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Laplace.{name} must be an integer >= {minimum}, got {value!r}")
        if self.hessian not in ("auto", "full", "diagonal"):
            raise ValueError(
                f"Laplace.hessian must be 'auto', 'full' or 'diagonal', got {self.hessian!r}"
            )
        if self.importance not in IMPORTANCE:
            raise ValueError(
                f"Laplace.importance must be one of {list(IMPORTANCE)}, got {self.importance!r}"
            )
        if not self.min_eigenvalue > 0:
            raise ValueError(f"Laplace.min_eigenvalue must be > 0, got {self.min_eigenvalue!r}")

    def _slot(self, program: Program, key: PRNGKey) -> checkpoint.Slot | None:
        """The MAP fits' checkpoint slot (settings less the folder, key, data), or ``None``."""
        if self.checkpoint_dir is None:
            return None
        settings = {k: v for k, v in settings_of(self).items() if k != "checkpoint_dir"}
        data = (program.inputs, program.targets)
        fingerprint = checkpoint.fingerprint(settings, key, data, program.name)
        return checkpoint.Slot(self.checkpoint_dir, "laplace", fingerprint)

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Find the mode(s) of ``program``'s posterior and draw from the Gaussian at each.

        Raises:
            ValueError: for discrete latent sites (no Hessian), before any compute.
            FloatingPointError: when every MAP fit ends at a non-finite potential (with
                several modes, non-finite ones are logged and kept).
        """
        check_continuous(program, "Laplace")
        init_key, draw_key, predictive_key = jax.random.split(key, 3)
        signature = ProgramSignature(program)
        dim = _dimension(signature)
        num_modes = self.num_modes
        mode_of = (
            "full"
            if self.hessian == "full" or (self.hessian == "auto" and dim <= self.max_full_dim)
            else "diagonal"
        )
        psis = self.importance == "psis"
        core = _laplace_core(
            signature, self.map, num_modes, mode_of, self.num_samples, self.min_eigenvalue, psis
        )
        data = (program.inputs, program.targets)
        # One mode starts (and draws) with the run's keys themselves, as before modes existed.
        init_keys = init_key[None] if num_modes == 1 else chain_keys(init_key, num_modes)
        modes, losses, grads = core.fitter(
            core.starts(init_keys, *data),
            tile(data, num_modes),
            desc="Laplace mode search" if num_modes == 1 else "Laplace modes",
            checkpoint=self._slot(program, key),
        )
        log.info("Laplace: %s Hessian of %d dimensions at %d mode(s)", mode_of, dim, num_modes)
        draw_key, resample_key = jax.random.split(draw_key) if psis else (draw_key, None)
        constrained, eigenvalues, variance, checks, log_ratio = core.finish(draw_key, modes, *data)
        if grads is None:  # a full Hessian: the end-point checks come from it
            grads = checks
        # Host copies: iterating a device array slices it element by element.
        losses, eigenvalues = np.asarray(losses), np.asarray(eigenvalues)
        final = losses[:, -1].astype(float)
        _check_finite(final)
        floored = (eigenvalues < self.min_eigenvalue).sum(axis=-1).tolist()
        negative = (eigenvalues < 0).sum(axis=-1).tolist()
        min_eig = eigenvalues.min(axis=-1).astype(float).tolist()
        _log_floored(floored, negative, min_eig, dim, self.min_eigenvalue)
        best = int(np.nanargmin(np.where(np.isfinite(final), final, np.nan)))
        optimization = {
            "objective": "negative log joint (unconstrained)",
            "num_modes": num_modes,
            "final_loss": float(final[best]),
            "final_loss_per_mode": final.tolist(),
            "hessian": mode_of,
            "dimension": dim,
            "floored_eigenvalues": sum(floored),
            "floored_eigenvalues_per_mode": floored,
            "negative_eigenvalues_per_mode": negative,
            "min_eigenvalue": float(np.min(min_eig)),
            "min_eigenvalue_per_mode": min_eig,
            "trace_every": max(1, -(-losses.shape[1] // 200)),
            "convergence": judge(
                losses,
                np.asarray(grads),
                phase="Laplace mode search" + (f" ({num_modes} modes)" if num_modes > 1 else ""),
                gtol=self.map.lbfgs_tol,
                hint="raise map.adam_steps or map.lbfgs_steps (a Hessian away from the mode "
                "is not the posterior's curvature)",
            ),
        }
        if psis:
            constrained, optimization["importance"] = importance_resample(
                resample_key, constrained, np.asarray(log_ratio)
            )
        if num_modes > 1:
            optimization["trace_mode"] = best
            optimization["map_spread_ratio"] = _spread_ratio(modes, variance)
        optimization["trace"] = losses[best, :: optimization["trace_every"]].astype(float).tolist()
        return Posterior(
            samples={k: np.asarray(v) for k, v in constrained.items()},
            program=program,
            key=predictive_key,
            kind="laplace",
            attrs=provenance(
                backend="laplace", settings=settings_of(self), optimization=optimization
            ),
        )


class _LaplaceCore(NamedTuple):
    """The compiled pieces of one Laplace configuration (see :func:`_laplace_core`)."""

    starts: Callable  # (keys (M,), inputs, targets) -> flat starts (M, d)
    fitter: MapFitter  # (starts, tiled (inputs, targets)) -> (modes, losses, end checks)
    # (draw key, modes, inputs, targets) -> (draws, eigenvalues, variance, end checks or
    # None, log importance ratios (M, S) or None)
    finish: Callable


@functools.lru_cache(maxsize=16)
def _dimension(signature: ProgramSignature) -> int:
    """Unconstrained dimension of a program's latent sites."""
    family = family_of(signature)
    shapes = jax.eval_shape(family.init, jax.random.key(0))
    return int(sum(np.prod(s.shape, dtype=int) for s in jax.tree.leaves(shapes)))


@functools.lru_cache(maxsize=8)
def _laplace_core(signature, fit, num_modes, form, num_samples, floor, psis) -> _LaplaceCore:
    """Starts, MAP fits and Hessian-plus-draws of one Laplace configuration, with the data
    as traced arguments: compiled once per model, data shapes and settings, so a second
    run, or a new program of the same model on new data of the same shapes, compiles
    nothing."""
    family = family_of(signature)
    shapes = jax.eval_shape(family.init, jax.random.key(0))
    _, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    def flat_potential(data):
        potential_fn = family.make(inputs=data[0], targets=data[1])
        return lambda flat: potential_fn(unravel(flat))

    def start(k, inputs, targets):
        return ravel_pytree(family.init(k, inputs=inputs, targets=targets))[0]

    def finish(draw_key, modes, inputs, targets):
        potential_fn = flat_potential((inputs, targets))
        precisions, gradients = jax.lax.map(lambda m: _precision(potential_fn, m, form), modes)
        draw = functools.partial(_gaussian_draws, num_samples=num_samples, floor=floor)
        if num_modes == 1:
            out = jax.tree.map(lambda x: x[None], draw(draw_key, modes[0], precisions[0]))
        else:
            out = jax.vmap(draw)(chain_keys(draw_key, num_modes), modes, precisions)
        draws, eigenvalues, variance, log_q = out
        flat = draws.reshape(num_modes * num_samples, -1)
        log_ratio = None
        if psis:  # log p(z, y) - log q(z), one potential evaluation per draw
            potential = jax.lax.map(potential_fn, flat, batch_size=32)
            log_ratio = -potential.reshape(num_modes, num_samples) - log_q
        constrained = jax.vmap(family.postprocess(inputs=inputs, targets=targets))(
            jax.vmap(unravel)(flat)
        )
        constrained = jax.tree.map(
            lambda v: v.reshape(num_modes, num_samples, *v.shape[1:]), constrained
        )
        checks = jax.vmap(hessian_checks)(gradients, precisions) if form == "full" else None
        return constrained, eigenvalues, variance, checks, log_ratio

    return _LaplaceCore(
        starts=jax.jit(jax.vmap(start, in_axes=(0, None, None))),
        fitter=MapFitter(flat_potential, num_modes, fit, shard=False, end_checks=form != "full"),
        finish=jax.jit(finish),
    )


def _precision(flat_potential, mode: jax.Array, form: str) -> jax.Array:
    """The full Hessian ``(d, d)``, or its exact diagonal ``(d,)``, from one Hessian-vector
    product (forward over reverse) per unit vector, and the gradient at ``mode`` (the
    products' primal output).

    ``jax.hessian`` would vmap all ``d`` directions at once; for a PINN, whose potential
    already holds nested derivatives at every collocation point, that needs memory ``d``
    times one gradient's (29 GB for the default Burgers case). ``lax.map`` in batches of 32
    keeps it at 32 gradients' worth for the same arithmetic.
    """
    grad = jax.grad(flat_potential)
    if form == "full":

        def column(unit):
            return jax.jvp(grad, (mode,), (unit,))

        eye = jnp.eye(mode.shape[0], dtype=mode.dtype)
        gradients, columns = jax.lax.map(column, eye, batch_size=32)
        return columns, gradients[0]

    def diagonal_entry(i):
        unit = jnp.zeros_like(mode).at[i].set(1.0)
        g, column = jax.jvp(grad, (mode,), (unit,))
        return column[i], g

    entries, gradients = jax.lax.map(diagonal_entry, jnp.arange(mode.shape[0]), batch_size=64)
    return entries, gradients[0]


def _gaussian_draws(key, mode, precision, num_samples, floor):
    r"""Draws ``mode + H^{-1/2} eps`` with eigenvalues of ``H`` set to ``max(|l|, floor)``.

    Returns the draws ``(num_samples, d)``, the raw eigenvalues ``(d,)``, the marginal
    variances :math:`\mathrm{diag}(\tilde H^{-1})` ``(d,)`` of the repaired Gaussian and
    each draw's log density under it up to a constant, ``-|eps|^2 / 2`` ``(num_samples,)``.
    """
    eps = jax.random.normal(key, (num_samples, mode.shape[0]), dtype=mode.dtype)
    if precision.ndim == 1:
        eigenvalues = precision
        repaired = jnp.maximum(jnp.abs(eigenvalues), floor)
        scaled = eps / jnp.sqrt(repaired)
        variance = 1.0 / repaired
    else:
        symmetric = 0.5 * (precision + precision.T)
        eigenvalues, vectors = jnp.linalg.eigh(symmetric)
        repaired = jnp.maximum(jnp.abs(eigenvalues), floor)
        scaled = (eps / jnp.sqrt(repaired)) @ vectors.T
        variance = (vectors**2) @ (1.0 / repaired)
    return mode + scaled, eigenvalues, variance, -0.5 * jnp.sum(eps**2, axis=-1)


def _spread_ratio(modes: jax.Array, variance: jax.Array) -> float:
    r""":math:`\max_i \mathrm{Var}_m(\hat z_{m,i}) / \overline{\Sigma_{m,ii}}` over finite modes."""
    modes, variance = np.asarray(modes, dtype=float), np.asarray(variance, dtype=float)
    finite = np.isfinite(modes).all(axis=1) & np.isfinite(variance).all(axis=1)
    if finite.sum() < 2:
        return float("nan")
    return float(np.max(modes[finite].var(axis=0) / variance[finite].mean(axis=0)))


def _check_finite(final: np.ndarray) -> None:
    """Raise when every mode's fit ended non-finite; log the non-finite ones otherwise."""
    bad = np.flatnonzero(~np.isfinite(final))
    if bad.size == final.size:
        which = "" if final.size == 1 else f" in all {final.size} modes"
        raise FloatingPointError(
            f"Laplace MAP fit ended at a non-finite potential{which}; lower map.learning_rate"
        )
    if bad.size:
        log.warning(
            "Laplace: modes %s of %d ended at a non-finite potential; they are kept in the "
            "equal-weight mixture (chain axis) but their draws are not trustworthy: lower "
            "map.learning_rate",
            bad.tolist(),
            final.size,
        )


def _log_floored(
    floored: list[int], negative: list[int], min_eig: list[float], dim: int, floor: float
) -> None:
    """Warn when eigenvalues were floored, telling a saddle (negative: stopped short of a
    minimum) from flat directions (small positive: the data and prior barely constrain them,
    so the floor sets their spread)."""
    meaning = (
        "negative ones mean the fit stopped near a saddle (more map.adam_steps/map.lbfgs_steps "
        "may help); small positive ones are directions the data and prior barely constrain, "
        f"whose sd the floor caps at {floor**-0.5:.3g} (min_eigenvalue)"
    )
    if len(floored) == 1 and floored[0]:
        log.warning(
            "Laplace: %d of %d Hessian eigenvalues were below %g (%d negative, smallest "
            "%.3g) and were replaced by max(|eigenvalue|, floor): %s",
            floored[0],
            dim,
            floor,
            negative[0],
            min_eig[0],
            meaning,
        )
    elif len(floored) > 1 and any(floored):
        log.warning(
            "Laplace: Hessian eigenvalues below %g (of %d per mode) were replaced by "
            "max(|eigenvalue|, floor) in %d of %d modes (counts per mode %s, negative %s, "
            "smallest %.3g): %s",
            floor,
            dim,
            sum(1 for n in floored if n),
            len(floored),
            floored,
            negative,
            min(min_eig),
            meaning,
        )
