r"""ProbConserv: a conservation law as a linear-Gaussian observation of any surrogate.

A probabilistic surrogate predicts :math:`u \sim \mathcal N(\mu, \Sigma)` on an evaluation
grid. The integral form of a conservation law says :math:`G u = b`: :math:`G` holds trapezoid
weights (one row per time slice) and :math:`b(t)` is the initial mass plus the net boundary
inflow. Observing :math:`b = G u + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0,
\sigma_G^2 I)`, and conditioning gives

.. math::
    \tilde\mu = \mu - \Sigma G^\top (\sigma_G^2 I + G \Sigma G^\top)^{-1} (G\mu - b),\qquad
    \tilde\Sigma = \Sigma - \Sigma G^\top (\sigma_G^2 I + G \Sigma G^\top)^{-1} G \Sigma .

With :math:`\sigma_G = 0` the update conserves exactly; corrections concentrate where
:math:`\Sigma` is large (shocks, fronts). :math:`\sigma_G \to \infty` leaves the prediction
unchanged. Everything here is a pure, jit-able function of one instance (``mean (n,)``,
``G (k, n)``, ``b (k,)``); batch over functions with ``jax.vmap``. Run in float64
(``jax.config.update("jax_enable_x64", True)``) for conservation to round-off.

Posterior draws (ensemble members, NUTS/VI draws, dropout passes) are handled two ways:

* ``method="moment_match"``: fit :math:`\mathcal N(\bar u, \hat\Sigma)` to the draws
  (:math:`\hat\Sigma` kept as a rank-``s`` factor) and apply the Gaussian update;
* ``method="per_draw"``: move every draw with the shared gain
  :math:`K = \hat\Sigma G^\top(\sigma_G^2 I + G\hat\Sigma G^\top)^{-1}`,
  :math:`\tilde u_i = u_i - K(G u_i - b + \varepsilon_i)` (Matheron's rule / ensemble Kalman
  update, :math:`\varepsilon_i \sim \mathcal N(0, \sigma_G^2 I)`). The draws keep their
  non-Gaussian shape; each one satisfies :math:`G \tilde u_i = b` exactly when
  :math:`\sigma_G = 0`, and for Gaussian draws their law is exactly
  :math:`\mathcal N(\tilde\mu, \tilde\Sigma)`.

References:
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (ProbConserv).
    Evensen (1994), Sequential data assimilation with a nonlinear quasi-geostrophic model
    using Monte Carlo methods, JGR 99 (the per-draw update).
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import numpyro
import numpyro.distributions as dist

from ucsciml._types import Array, Float, PRNGKey
from ucsciml.pde.gpme import AbstractConservationLaw, mass_rhs
from ucsciml.program import Program


class Gaussian(NamedTuple):
    """A Gaussian with full covariance."""

    mean: Float[Array, " n"]
    cov: Float[Array, "n n"]

    def variance(self) -> Float[Array, " n"]:
        return jnp.diagonal(self.cov, axis1=-2, axis2=-1)

    def covariance(self) -> Float[Array, "n n"]:
        return self.cov


class LowRankGaussian(NamedTuple):
    r"""A Gaussian with :math:`\Sigma = \mathrm{diag}(d) + F F^\top - W W^\top`.

    ``factor`` (``(n, r)``) is the prior's low-rank part, ``downdate`` (``(n, k)``) what
    conditioning on ``k`` constraints removed; a diagonal prior has ``r = 0``. Storage is
    :math:`O(n(r + k))`.
    """

    mean: Float[Array, " n"]
    diag: Float[Array, " n"]
    factor: Float[Array, "n r"]
    downdate: Float[Array, "n k"]

    def variance(self) -> Float[Array, " n"]:
        return self.diag + jnp.sum(self.factor**2, -1) - jnp.sum(self.downdate**2, -1)

    def covariance(self) -> Float[Array, "n n"]:
        def outer(a):
            return a @ jnp.swapaxes(a, -1, -2)

        return (
            self.diag[..., None] * jnp.eye(self.diag.shape[-1], dtype=self.diag.dtype)
            + outer(self.factor)
            - outer(self.downdate)
        )


def _solve_gain(cross: Array, G: Array, mean: Array, b: Array, noise_std) -> tuple[Array, Array]:
    """Updated mean and downdate factor from ``cross = Σ Gᵀ``."""
    innovation_cov = G @ cross + noise_std**2 * jnp.eye(G.shape[0], dtype=cross.dtype)
    chol = jnp.linalg.cholesky(0.5 * (innovation_cov + innovation_cov.T))

    def solve(r):
        return jsl.cho_solve((chol, True), r)

    residual = G @ mean - b
    weights = solve(residual)
    # One step of iterative refinement of the k x k solve: at sigma_G = 0 the leftover
    # G mu~ - b is exactly this solve's residual, ~cond(S) eps before and ~eps after.
    weights = weights + solve(residual - innovation_cov @ weights)
    downdate = jsl.solve_triangular(chol, cross.T, lower=True).T
    return mean - cross @ weights, downdate


@jax.jit
def condition(
    mean: Float[Array, " n"],
    cov: Float[Array, "n n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
) -> Gaussian:
    r"""Condition :math:`\mathcal N(\mu, \Sigma)` on :math:`b = G u + \mathcal N(0, \sigma_G^2 I)`.

    Implements the module equation with a Cholesky factor of the ``k x k`` innovation
    covariance (stable at :math:`\sigma_G = 0` whenever :math:`G\Sigma G^\top` is positive
    definite) and one step of iterative refinement, so :math:`G\tilde\mu = b` to round-off.

    Args:
        mean: prior mean :math:`\mu`.
        cov: prior covariance :math:`\Sigma` (symmetric positive definite).
        G: constraint rows (e.g. :func:`conservation_matrix`).
        b: constraint values.
        noise_std: :math:`\sigma_G \ge 0` (a traced argument: changing it does not recompile).

    Returns:
        :class:`Gaussian` with :math:`\tilde\mu`, :math:`\tilde\Sigma`.

    Example:
        >>> import jax.numpy as jnp
        >>> post = condition(jnp.zeros(3), jnp.eye(3), jnp.ones((1, 3)), jnp.array([3.0]))
        >>> post.mean.tolist()
        [1.0, 1.0, 1.0]
    """
    mean, cov, G, b = _check(mean, G, b, cov=cov)
    new_mean, downdate = _solve_gain(cov @ G.T, G, mean, b, noise_std)
    new_cov = cov - downdate @ downdate.T
    return Gaussian(new_mean, 0.5 * (new_cov + new_cov.T))


@jax.jit
def condition_lowrank(
    mean: Float[Array, " n"],
    diag: Float[Array, " n"],
    factor: Float[Array, "n r"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
) -> LowRankGaussian:
    r"""The update for :math:`\Sigma = \mathrm{diag}(d) + F F^\top`, in :math:`O(n(r + k)k)`.

    :math:`\Sigma G^\top = d \odot G^\top + F (F^\top G^\top)` is formed without the
    ``n x n`` matrix; the result stores the downdate :math:`W = \Sigma G^\top L^{-\top}`
    (:math:`L L^\top = \sigma_G^2 I + G\Sigma G^\top`), so :math:`\tilde\Sigma =
    \mathrm{diag}(d) + FF^\top - WW^\top`.

    Args:
        mean, G, b, noise_std: as in :func:`condition`.
        diag: :math:`d \ge 0`, shape ``(n,)``.
        factor: :math:`F`, shape ``(n, r)`` (``r`` may be 0).

    Returns:
        :class:`LowRankGaussian`.
    """
    mean, _, G, b = _check(mean, G, b)
    cross = diag[:, None] * G.T + factor @ (factor.T @ G.T)
    new_mean, downdate = _solve_gain(cross, G, mean, b, noise_std)
    return LowRankGaussian(new_mean, diag, factor, downdate)


@jax.jit
def condition_diagonal(
    mean: Float[Array, " n"],
    var: Float[Array, " n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
) -> LowRankGaussian:
    """The update for independent marginals :math:`\\Sigma = \\mathrm{diag}(\\sigma^2)`.

    The posterior is no longer diagonal: it is returned as a :class:`LowRankGaussian`
    (``factor`` of width 0), whose :meth:`~LowRankGaussian.variance` gives the marginals.
    """
    empty = jnp.zeros((jnp.shape(mean)[-1], 0), dtype=jnp.result_type(mean, float))
    return condition_lowrank(mean, var, empty, G, b, noise_std)


@jax.jit
def hardc(
    mean: Float[Array, " n"],
    var: Float[Array, " n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
) -> LowRankGaussian:
    r"""HardC baseline: project the mean uniformly, leave the variance unchanged.

    :math:`\mu_{\rm HC} = \mu - G^\top (G G^\top)^{-1}(G\mu - b)`, the least-squares
    projection onto :math:`\{G u = b\}` (ProbConserv with :math:`\Sigma = I`, variance kept).
    """
    ones = jnp.ones_like(jnp.asarray(mean, dtype=jnp.result_type(mean, float)))
    projected = condition_diagonal(mean, ones, G, b).mean
    empty = jnp.zeros((ones.shape[0], 0), dtype=ones.dtype)
    return LowRankGaussian(projected, jnp.asarray(var, dtype=ones.dtype), empty, empty)


@jax.jit
def update_draws(
    draws: Float[Array, "s n"],
    cross: Float[Array, "n k"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
    key: PRNGKey | None = None,
) -> Float[Array, "s n"]:
    r"""Move each draw with the shared gain: :math:`u_i - K(G u_i - b + \varepsilon_i)`.

    ``cross`` is :math:`\Sigma G^\top` of the covariance the gain uses. With ``key`` the
    constraint noise :math:`\varepsilon_i \sim \mathcal N(0, \sigma_G^2 I)` is drawn per draw
    (exact law :math:`\mathcal N(\tilde\mu, \tilde\Sigma)` for Gaussian draws); without it
    :math:`\varepsilon_i = 0`, exact at :math:`\sigma_G = 0` and under-dispersed otherwise.
    """
    innovation_cov = G @ cross + noise_std**2 * jnp.eye(G.shape[0], dtype=cross.dtype)
    chol = jnp.linalg.cholesky(0.5 * (innovation_cov + innovation_cov.T))
    residual = draws @ G.T - b
    if key is not None:
        residual = residual + noise_std * jax.random.normal(key, residual.shape, residual.dtype)
    weights = jsl.cho_solve((chol, True), residual.T)
    weights = weights + jsl.cho_solve((chol, True), residual.T - innovation_cov @ weights)
    return draws - (cross @ weights).T


@partial(jax.jit, static_argnames=("method",))
def condition_draws(
    draws: Float[Array, "s n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
    *,
    method: Literal["moment_match", "per_draw"] = "moment_match",
    jitter: float = 0.0,
    key: PRNGKey | None = None,
) -> LowRankGaussian | Array:
    r"""ProbConserv on posterior draws (see the module docstring for the two methods).

    The shared covariance is :math:`\hat\Sigma = \mathrm{diag}(\text{jitter}) + FF^\top`,
    :math:`F = (u - \bar u)/\sqrt{s - 1}`; it needs :math:`G\hat\Sigma G^\top` positive
    definite, i.e. ``s > k`` draws spread across the constrained directions, or ``jitter > 0``.

    Args:
        draws: ``(s, n)`` draws (flatten ``(chain, draw)`` first).
        G, b, noise_std: as in :func:`condition`.
        method: ``"moment_match"`` (returns :class:`LowRankGaussian`) or ``"per_draw"``
            (returns the moved ``(s, n)`` draws).
        jitter: variance added to the diagonal of :math:`\hat\Sigma`.
        key: constraint-noise key for ``"per_draw"`` with :math:`\sigma_G > 0`.

    Raises:
        ValueError: for an unknown method or fewer than two draws.
    """
    if method not in ("moment_match", "per_draw"):
        raise ValueError(f"method must be 'moment_match' or 'per_draw', got {method!r}")
    draws = jnp.asarray(draws)
    if draws.ndim != 2 or draws.shape[0] < 2:
        raise ValueError(f"draws must be (s, n) with s >= 2, got shape {draws.shape}")
    centre = draws.mean(0)
    factor = ((draws - centre) / jnp.sqrt(draws.shape[0] - 1.0)).T
    diag = jnp.full(draws.shape[1], jitter, dtype=draws.dtype)
    if method == "moment_match":
        return condition_lowrank(centre, diag, factor, G, b, noise_std)
    _, _, G, b = _check(centre, G, b)
    cross = diag[:, None] * G.T + factor @ (factor.T @ G.T)
    return update_draws(draws, cross, G, b, noise_std, key)


@partial(jax.jit, static_argnames=("num_draws",))
def sample_gaussian(
    key: PRNGKey, mean: Float[Array, " n"], cov: Float[Array, "n n"], num_draws: int = 100
) -> Float[Array, "s n"]:
    """Draws of :math:`\\mathcal N(\\mu, \\Sigma)` by a Cholesky factor with a relative jitter of
    1e-10 (base-model covariances are often singular to round-off)."""
    n = jnp.shape(mean)[-1]
    scale = jnp.max(jnp.abs(jnp.diagonal(cov)))
    chol = jnp.linalg.cholesky(cov + 1e-10 * scale * jnp.eye(n, dtype=cov.dtype))
    return mean + jax.random.normal(key, (num_draws, n), cov.dtype) @ chol.T


@partial(jax.jit, static_argnames=("num_draws",))
def sample(
    key: PRNGKey,
    mean: Float[Array, " n"],
    cov: Float[Array, "n n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float | Array = 0.0,
    num_draws: int = 100,
) -> Float[Array, "s n"]:
    """Draws of the conditioned Gaussian by Matheron's rule (prior draw, then per-draw update).

    Every draw satisfies :math:`G u = b` to round-off at :math:`\\sigma_G = 0`, which an
    eigen-decomposition of the singular :math:`\\tilde\\Sigma` would not guarantee.
    """
    prior_key, noise_key = jax.random.split(key)
    prior = sample_gaussian(prior_key, mean, cov, num_draws)
    return update_draws(prior, cov @ G.T, G, b, noise_std, noise_key)


def constraint_program(
    mean: Float[Array, " n"],
    cov: Float[Array, "n n"],
    G: Float[Array, "k n"],
    b: Float[Array, " k"],
    noise_std: float,
) -> Program:
    r"""The ProbConserv update as a NumPyro :class:`~ucsciml.Program`.

    ``u ~ MultivariateNormal(mean, cov)``, ``b ~ Normal(G u, noise_std)`` observed. Its
    posterior over ``u`` is :func:`condition`'s Gaussian, so NUTS on it cross-checks the closed
    form; replacing the Gaussian prior (e.g. a log-normal field for positivity) gives the
    non-Gaussian variants the closed form cannot handle.

    Raises:
        ValueError: for ``noise_std <= 0`` (a point-mass observation has no density; use
            :func:`condition` for :math:`\sigma_G = 0`).
    """
    if not noise_std > 0:
        raise ValueError(
            f"constraint_program needs noise_std > 0 (got {noise_std}); for exact "
            "conservation use the closed form condition(..., noise_std=0)"
        )
    mean, cov, G, b = _check(mean, G, b, cov=cov)

    def model(inputs, targets=None):
        u = numpyro.sample(
            "u", dist.MultivariateNormal(inputs["mean"], covariance_matrix=inputs["cov"])
        )
        numpyro.sample(
            "b", dist.Normal(inputs["G"] @ u, inputs["noise_std"]).to_event(1), obs=targets
        )

    inputs = {"mean": mean, "cov": cov, "G": G, "noise_std": jnp.asarray(noise_std, mean.dtype)}
    return Program.from_numpyro(
        model,
        inputs,
        b,
        dims={"u": ("point",), "b": ("constraint",)},
        coords={"point": np.arange(mean.shape[0]), "constraint": np.arange(G.shape[0])},
        name="probconserv",
    )


def trapezoid_weights(x: Float[Array, " n"]) -> Float[Array, " n"]:
    r"""Trapezoid weights on a sorted grid: :math:`\int u\,dx \approx w^\top u`."""
    x = jnp.asarray(x)
    if x.ndim != 1 or x.shape[0] < 2:
        raise ValueError(f"x must be a 1-D grid of >= 2 points, got shape {x.shape}")
    dx = jnp.diff(x)
    return 0.5 * (
        jnp.concatenate([dx, jnp.zeros(1, dx.dtype)])
        + jnp.concatenate([jnp.zeros(1, dx.dtype), dx])
    )


def conservation_matrix(x: Float[Array, " n"], num_slices: int = 1) -> Float[Array, "T Tn"]:
    """Block-diagonal :math:`G`: one trapezoid row per time slice, for ``u`` flattened
    slice-major (``u.reshape(num_slices * n)`` of a ``(num_slices, n)`` field)."""
    return jnp.kron(
        jnp.eye(num_slices, dtype=jnp.result_type(x, float)), trapezoid_weights(x)[None]
    )


def conservation_constraint(
    problem: AbstractConservationLaw, x: np.ndarray, t: np.ndarray
) -> tuple[Array, Array]:
    """``(G, b)`` for the fields at times ``t`` on grid ``x`` of a conservation law.

    ``b(t)`` comes from the problem's initial mass and boundary fluxes
    (:func:`ucsciml.pde.mass_rhs`), not from its exact solution.
    """
    t = np.atleast_1d(np.asarray(t, dtype=float))
    b = mass_rhs(problem.initial_mass(), problem.net_inflow, t)
    return conservation_matrix(jnp.asarray(x, dtype=float), t.shape[0]), jnp.asarray(b)


def conservation_error(
    mean: Float[Array, "... n"], x: Float[Array, " n"], b: Float[Array, "..."]
) -> Float[Array, "..."]:
    """Signed conservation error CE = trapezoid mass of ``mean`` minus ``b``."""
    return jnp.asarray(mean) @ trapezoid_weights(x) - b


def mean_squared_error(mean: Float[Array, "... n"], truth: Float[Array, "... n"]) -> Array:
    """MSE over the grid (last axis)."""
    return jnp.mean((jnp.asarray(mean) - truth) ** 2, axis=-1)


def gaussian_log_likelihood(
    truth: Float[Array, "... n"],
    mean: Float[Array, "... n"],
    var: Float[Array, "... n"],
    min_var: float = 1e-12,
) -> Array:
    r"""Mean pointwise :math:`\log\mathcal N(u_{\rm true} \mid \mu_i, \sigma_i^2)`.

    Variances are floored at ``min_var``: at :math:`\sigma_G = 0` a conditioned marginal
    can round to zero or slightly below.
    """
    var = jnp.maximum(var, min_var)
    return jnp.mean(-0.5 * (jnp.log(2 * jnp.pi * var) + (truth - mean) ** 2 / var), axis=-1)


def crps_gaussian(
    truth: Float[Array, "... n"],
    mean: Float[Array, "... n"],
    var: Float[Array, "... n"],
    min_var: float = 1e-12,
) -> Array:
    r"""Mean pointwise CRPS of :math:`\mathcal N(\mu, \sigma^2)` (lower is better).

    .. math:: \mathrm{CRPS} = \sigma\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi],
        \quad z = (u - \mu)/\sigma.

    References:
        Gneiting & Raftery (2007), Strictly proper scoring rules, JASA 102.
    """
    std = jnp.sqrt(jnp.maximum(var, min_var))
    z = (truth - mean) / std
    pdf, cdf = jax.scipy.stats.norm.pdf(z), jax.scipy.stats.norm.cdf(z)
    return jnp.mean(std * (z * (2 * cdf - 1) + 2 * pdf - 1 / jnp.sqrt(jnp.pi)), axis=-1)


def front_position(draws: Float[Array, "... n"], x: Float[Array, " n"], level: float) -> Array:
    """Where each profile first drops below ``level`` (linear interpolation between nodes).

    For a front or shock (Stefan, advection, Burgers) pass the midpoint of the jump; a
    profile that never drops below gives ``x[-1]``.
    """
    draws, x = jnp.asarray(draws), jnp.asarray(x)
    below = draws < level
    index = jnp.clip(jnp.argmax(below, axis=-1), 1, x.shape[0] - 1)
    upper = jnp.take_along_axis(draws, index[..., None] - 1, -1)[..., 0]
    lower = jnp.take_along_axis(draws, index[..., None], -1)[..., 0]
    fraction = jnp.clip((upper - level) / jnp.where(upper == lower, 1.0, upper - lower), 0, 1)
    position = x[index - 1] + fraction * (x[index] - x[index - 1])
    return jnp.where(below.any(-1), position, x[-1])


def _check(mean, G, b, cov=None):
    mean, G, b = jnp.asarray(mean), jnp.atleast_2d(jnp.asarray(G)), jnp.atleast_1d(jnp.asarray(b))
    if mean.ndim != 1:
        raise ValueError(f"mean must be (n,) (vmap over functions), got shape {mean.shape}")
    n = mean.shape[0]
    if G.ndim != 2 or G.shape[1] != n:
        raise ValueError(f"G must be (k, {n}) to match mean, got shape {G.shape}")
    if b.shape != (G.shape[0],):
        raise ValueError(f"b must be ({G.shape[0]},), one value per row of G; got {b.shape}")
    if cov is not None:
        cov = jnp.asarray(cov)
        if cov.shape != (n, n):
            raise ValueError(f"cov must be ({n}, {n}) to match mean, got shape {cov.shape}")
    return mean, cov, G, b
