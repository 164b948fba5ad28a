"""The Laplace approximation: a Gaussian at the MAP in unconstrained space."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ucsciml._types import PRNGKey
from ucsciml.inference._map import check_continuous, fit_map, potential
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Laplace:
    r"""Laplace approximation at the mode of the log joint in unconstrained space.

    .. math::
        \hat z = \arg\min_z U(z),\qquad
        q(z) = \mathcal N\big(\hat z,\ H^{-1}\big),\quad H = \nabla^2 U(\hat z),

    where :math:`U = -\log p(y, z)` is NumPyro's potential (log-Jacobians of the constraining
    transforms included). The mode comes from Adam (``map_steps``) then L-BFGS
    (``lbfgs_steps``). Draws of ``z`` are mapped back to the constrained sites, so a
    positive parameter gets a log-normal approximation. Draws are laid out as
    ``(chain=1, draw=num_samples)``.

    **Hessian.** ``hessian="full"`` forms the dense ``d x d`` Hessian column by column
    (``d`` Hessian-vector products in batches, ``O(d^2)`` memory for the result, one
    eigendecomposition, ``O(d^3)``): right for small models and for
    B-PINNs up to a few thousand weights. ``"diagonal"`` is for large networks: the exact
    diagonal of the Hessian, one Hessian-vector product per coordinate under ``lax.map``
    (``O(d)`` memory, ``d`` HVPs of time), giving a mean-field Gaussian that ignores weight
    correlations, so it understates the uncertainty of correlated directions.
    ``"auto"`` picks full up to ``max_full_dim`` unconstrained dimensions.
    A Hessian that is not positive definite (the optimiser stopped near a saddle, common for
    networks) is repaired as in saddle-free Newton: eigenvalues are replaced by
    ``max(|lambda|, min_eigenvalue)``. The default floor 1 is a prior-scale precision: at a
    true minimum the prior term alone (e.g. ``N(0, s^2)`` weights, ``s <= 1``) contributes
    at least ``1/s^2`` in every direction, so a smaller eigenvalue signals a saddle, not
    certainty. The count repaired is logged and stored in ``Posterior.attrs["optimization"]``.

    Args:
        map_steps: Adam steps to the mode.
        learning_rate: Adam's initial rate (decays to 1%).
        lbfgs_steps: L-BFGS polishing steps.
        num_samples: Gaussian draws.
        hessian: ``"auto"``, ``"full"`` or ``"diagonal"``.
        max_full_dim: largest dimension ``"auto"`` treats with the full Hessian.
        min_eigenvalue: floor on the magnitude of Hessian eigenvalues (a precision in
            unconstrained units; 1 caps any direction's sd at 1).

    Example:
        >>> posterior = Laplace().run(program, jax.random.key(0))  # doctest: +SKIP

    References:
        MacKay (1992), A practical Bayesian framework for backpropagation networks, Neural
        Computation 4(3). Daxberger et al. (2021), Laplace redux: effortless Bayesian deep
        learning, NeurIPS.
    """

    map_steps: int = 3000
    learning_rate: float = 1e-2
    lbfgs_steps: int = 200
    num_samples: int = 1000
    hessian: Literal["auto", "full", "diagonal"] = "auto"
    max_full_dim: int = 4000
    min_eigenvalue: float = 1.0

    def __post_init__(self):
        low = {"map_steps": 0, "lbfgs_steps": 0, "num_samples": 1, "max_full_dim": 1}
        for name, minimum in low.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Laplace.{name} must be an integer >= {minimum}, got {value!r}")
        if self.map_steps + self.lbfgs_steps == 0:
            raise ValueError("Laplace needs map_steps > 0 or lbfgs_steps > 0 to find the mode")
        if self.hessian not in ("auto", "full", "diagonal"):
            raise ValueError(
                f"Laplace.hessian must be 'auto', 'full' or 'diagonal', got {self.hessian!r}"
            )
        for name in ("learning_rate", "min_eigenvalue"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Laplace.{name} must be > 0, got {getattr(self, name)!r}")

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Find the mode of ``program``'s posterior and draw from the Gaussian there.

        Raises:
            ValueError: for discrete latent sites (no Hessian), before any compute.
            FloatingPointError: when the MAP fit ends at a non-finite potential.
        """
        check_continuous(program, "Laplace")
        init_key, draw_key, predictive_key = jax.random.split(key, 3)
        pot = potential(program, init_key)
        z0 = pot.init(init_key)
        flat0, unravel = ravel_pytree(z0)
        dim = flat0.shape[0]
        mode_of = (
            "full"
            if self.hessian == "full" or (self.hessian == "auto" and dim <= self.max_full_dim)
            else "diagonal"
        )

        def flat_potential(flat):
            return pot.potential_fn(unravel(flat))

        @jax.jit
        def fit(flat):
            mode, losses = fit_map(
                flat_potential, flat, self.map_steps, self.learning_rate, self.lbfgs_steps
            )
            return mode, losses, _precision(flat_potential, mode, mode_of)

        mode, losses, precision = fit(flat0)
        final = float(losses[-1])
        if not np.isfinite(final):
            raise FloatingPointError(
                "Laplace MAP fit ended at a non-finite potential; lower learning_rate"
            )
        draws, floored, min_eig = _gaussian_draws(
            draw_key, mode, precision, self.num_samples, self.min_eigenvalue
        )
        if floored:
            log.warning(
                "Laplace: %d of %d Hessian eigenvalues were below %g (smallest %.3g) and were "
                "replaced by max(|eigenvalue|, floor): the fit stopped near a saddle or flat "
                "direction; more map_steps/lbfgs_steps may help",
                floored,
                dim,
                self.min_eigenvalue,
                min_eig,
            )
        constrained = jax.jit(jax.vmap(lambda f: pot.postprocess_fn(unravel(f))))(draws)
        optimization = {
            "objective": "negative log joint (unconstrained)",
            "final_loss": final,
            "hessian": mode_of,
            "dimension": dim,
            "floored_eigenvalues": floored,
            "min_eigenvalue": min_eig,
            "trace_every": max(1, -(-losses.shape[0] // 200)),
        }
        optimization["trace"] = [float(x) for x in losses[:: optimization["trace_every"]]]
        return Posterior(
            samples={k: np.asarray(v)[None] for k, v in constrained.items()},
            program=program,
            key=predictive_key,
            kind="laplace",
            attrs=provenance(
                backend="laplace", settings=dataclasses.asdict(self), optimization=optimization
            ),
        )


def _precision(flat_potential, mode: jax.Array, form: str) -> jax.Array:
    """The full Hessian ``(d, d)``, or its exact diagonal ``(d,)``, from one Hessian-vector
    product (forward over reverse) per unit vector.

    ``jax.hessian`` would vmap all ``d`` directions at once; for a PINN, whose potential
    already holds nested derivatives at every collocation point, that needs memory ``d``
    times one gradient's (29 GB for the default Burgers case). ``lax.map`` in batches of 32
    keeps it at 32 gradients' worth for the same arithmetic.
    """
    grad = jax.grad(flat_potential)
    if form == "full":

        def column(unit):
            return jax.jvp(grad, (mode,), (unit,))[1]

        eye = jnp.eye(mode.shape[0], dtype=mode.dtype)
        return jax.lax.map(column, eye, batch_size=32)

    def diagonal_entry(i):
        unit = jnp.zeros_like(mode).at[i].set(1.0)
        return jax.jvp(grad, (mode,), (unit,))[1][i]

    return jax.lax.map(diagonal_entry, jnp.arange(mode.shape[0]), batch_size=64)


def _gaussian_draws(key, mode, precision, num_samples, floor):
    """Draws ``mode + H^{-1/2} eps`` with eigenvalues of ``H`` set to ``max(|l|, floor)``."""
    eps = jax.random.normal(key, (num_samples, mode.shape[0]), dtype=mode.dtype)
    if precision.ndim == 1:
        eigenvalues = precision
        scaled = eps / jnp.sqrt(jnp.maximum(jnp.abs(eigenvalues), floor))
    else:
        symmetric = 0.5 * (precision + precision.T)
        eigenvalues, vectors = jnp.linalg.eigh(symmetric)
        scaled = (eps / jnp.sqrt(jnp.maximum(jnp.abs(eigenvalues), floor))) @ vectors.T
    floored = int(jnp.sum(eigenvalues < floor))
    return mode + scaled, floored, float(jnp.min(eigenvalues))
