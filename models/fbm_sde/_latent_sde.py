r"""The latent SDE on the augmented MA-fBM state: noise, drifts, diffusions, control, solvers.

See :mod:`ucsciml.models.fbm_sde` for the model and its equations.

References:
    Daems, Opper, Crevecoeur & Birdal (2024), Variational Inference for SDEs Driven by
    Fractional Noise, ICLR 2024.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array, Float, PRNGKey
from ucsciml.models.fbm_sde import _mafbm


class MAfBM(eqx.Module):
    """The MA-fBM noise: ``K`` speeds geometric in ``[1/γ_max, γ_max]``, kind, horizon ``T``.

    Args:
        num_components: ``K``.
        gamma_max: largest speed (the smallest is its inverse).
        kind: ``"I"`` (Mandelbrot--van Ness, stationary start) or ``"II"`` (Riemann--Liouville).
        horizon: ``T``: the weights minimise the L2 error on ``[0, T]``.
    """

    num_components: int = eqx.field(static=True, default=5)
    gamma_max: float = eqx.field(static=True, default=20.0)
    kind: str = eqx.field(static=True, default="II")
    horizon: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        _mafbm.speeds(self.num_components, self.gamma_max)
        _mafbm._check_kind(self.kind)
        if not self.horizon > 0:
            raise ValueError(f"MAfBM.horizon must be > 0, got {self.horizon}")

    @property
    def gammas(self) -> tuple[float, ...]:
        return tuple(float(g) for g in _mafbm.speeds(self.num_components, self.gamma_max))

    def omega(self, hurst) -> Array:
        """Optimal weights ``ω(H, T)`` (float64 solve; differentiable in ``H``)."""
        return _mafbm.omega(hurst, self.horizon, self.gammas, self.kind)

    def initial_state(self, key: PRNGKey, dim: int, dtype=jnp.float32) -> Float[Array, "K D"]:
        """``Y(0)``: zeros (type II) or a draw from ``N(0, Σ)``, ``Σ_ij = 1/(γ_i+γ_j)`` (type I)."""
        if self.kind == "II":
            return jnp.zeros((self.num_components, dim), dtype)
        chol = np.linalg.cholesky(_mafbm.stationary_covariance(self.gammas))
        z = jax.random.normal(key, (self.num_components, dim), dtype)
        return jnp.asarray(chol, dtype) @ z


class ZeroDrift(eqx.Module):
    """``b = 0`` (the fBM bridge)."""

    def __call__(self, t, x, params):
        return jnp.zeros_like(x)


class LinearDrift(eqx.Module):
    """``b = -θ x``: fractional Ornstein--Uhlenbeck, ``θ = params["theta"]``."""

    def __call__(self, t, x, params):
        return -params["theta"] * x


class NeuralDrift(eqx.Module):
    """``b = MLP(t, x)`` (point-estimated weights)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int = 1, width: int = 64, depth: int = 2, *, key: PRNGKey):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, depth, activation=jnp.tanh, key=key)

    def __call__(self, t, x, params):
        return self.mlp(jnp.concatenate([jnp.reshape(t, (1,)), x]))


class ConstantDiffusion(eqx.Module):
    """``s = σ = params["sigma"]``."""

    def __call__(self, t, x, params):
        return params["sigma"] * jnp.ones_like(x)


class NeuralDiffusion(eqx.Module):
    """``s = σ · softplus(MLP(t, x))`` (point-estimated weights)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int = 1, width: int = 64, depth: int = 2, *, key: PRNGKey):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, depth, activation=jnp.tanh, key=key)

    def __call__(self, t, x, params):
        return params["sigma"] * jax.nn.softplus(
            self.mlp(jnp.concatenate([jnp.reshape(t, (1,)), x]))
        )


class Observations(NamedTuple):
    """Gaussian observations ``y_i ~ N(X(t_i), noise_std²)``: times ``(M,)``, values ``(M, D)``."""

    times: Array
    values: Array
    noise_std: float


class Control(eqx.Module):
    """The variational control ``u_φ(t, X, Y, y_next, t_next - t) ∈ R^D``.

    The next observation and the time to it are inputs so that one network can steer paths
    towards data anywhere in ``[0, T]``. The last layer starts at zero, so ``q`` starts at
    the prior.
    """

    mlp: eqx.nn.MLP
    horizon: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_components: int,
        horizon: float,
        width: int = 128,
        depth: int = 2,
        *,
        key: PRNGKey,
    ):
        mlp = eqx.nn.MLP(
            dim * (num_components + 2) + 2, dim, width, depth, activation=jnp.tanh, key=key
        )
        last = mlp.layers[-1]
        last = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            last,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, last)
        self.horizon = float(horizon)

    def __call__(self, t, x, y, observations: Observations):
        times, values = observations.times, observations.values
        index = jnp.searchsorted(times, t + 1e-6 * self.horizon, side="right")
        ahead = index < times.shape[0]
        safe = jnp.minimum(index, times.shape[0] - 1)
        target = jnp.where(ahead, values[safe], 0.0)
        to_go = jnp.where(ahead, times[safe] - t, 0.0) / self.horizon
        features = jnp.concatenate(
            [
                jnp.reshape(t / self.horizon, (1,)),
                x,
                y.reshape(-1),
                target,
                jnp.reshape(to_go, (1,)),
            ]
        )
        return self.mlp(features)


class LatentSDE(eqx.Module):
    """Drift, diffusion, optional control and MA-fBM noise of the latent SDE.

    Args:
        drift: ``b(t, x, params)``: :class:`ZeroDrift`, :class:`LinearDrift`, :class:`NeuralDrift`.
        diffusion: ``s(t, x, params)``: :class:`ConstantDiffusion`, :class:`NeuralDiffusion`.
        noise: the :class:`MAfBM`.
        control: :class:`Control`, or ``None`` for the prior.
    """

    drift: eqx.Module
    diffusion: eqx.Module
    noise: MAfBM
    control: eqx.Module | None = None

    def vector_fields(self, t, x, y, params, omega, observations):
        """``(f_X, f_Y, f_KL)`` and the noise loadings ``(g_X, g_Y)`` at one time."""
        u = jnp.zeros_like(x) if self.control is None else self.control(t, x, y, observations)
        dy_drift = -jnp.asarray(self.noise.gammas, x.dtype)[:, None] * y + u
        s = self.diffusion(t, x, params)
        fx = self.drift(t, x, params) + s * (omega @ dy_drift)
        return (fx, dy_drift, 0.5 * jnp.sum(u**2)), (s * jnp.sum(omega), jnp.ones_like(y))


class Path(NamedTuple):
    """A solved path: ``x`` on the time grid ``(N+1, D)``, ``y`` the final OU state, ``kl``."""

    x: Array
    y: Array
    kl: Array


def euler(
    sde: LatentSDE,
    params: dict,
    x0: Float[Array, " D"],
    y0: Float[Array, "K D"],
    times: Float[Array, " N1"],
    increments: Float[Array, "N D"],
    observations: Observations | None = None,
) -> Path:
    r"""Euler--Maruyama on the augmented state ``(X, Y, KL)`` with shared increments.

    .. math:: ΔY = f_Y Δt + ΔW,\quad ΔX = b Δt + s\,ω^\top ΔY,\quad ΔKL = ½|u|^2 Δt.

    Args:
        sde: the latent SDE.
        params: constrained physical parameters (``hurst`` and what drift/diffusion use).
        x0, y0: initial state.
        times: the grid ``t_0 < ... < t_N``.
        increments: Brownian increments ``ΔW_n ~ N(0, Δt_n)``, shape ``(N, D)``.
        observations: what the control conditions on (``None`` without control).

    Returns:
        The :class:`Path` (``x`` at every grid time, final ``y``, accumulated ``kl``).
    """
    omega = sde.noise.omega(params["hurst"]).astype(x0.dtype)

    def step(carry, inputs):
        x, y, kl = carry
        t, dt, dw = inputs
        (fx, fy, fkl), (gx, _) = sde.vector_fields(t, x, y, params, omega, observations)
        dy = fy * dt + dw
        x_new = x + fx * dt + gx * dw
        return (x_new, y + dy, kl + fkl * dt), x_new

    dts = jnp.diff(times)
    (_, y, kl), xs = jax.lax.scan(
        step, (x0, y0, jnp.zeros((), x0.dtype)), (times[:-1], dts, increments)
    )
    return Path(jnp.concatenate([x0[None], xs]), y, kl)


def solve_diffrax(
    sde: LatentSDE,
    params: dict,
    x0: Float[Array, " D"],
    y0: Float[Array, "K D"],
    times: Float[Array, " N1"],
    brownian: diffrax.AbstractBrownianPath,
    observations: Observations | None = None,
    solver: diffrax.AbstractSolver | None = None,
) -> Path:
    """The augmented SDE through ``diffrax.diffeqsolve`` on the grid ``times``.

    One ``ControlTerm`` driven by ``brownian`` (shape ``(D,)``) loads both ``X`` (with
    ``s ω^T 1``) and every ``Y_k`` (with 1), so they share each increment exactly as in
    :func:`euler`; with ``diffrax.Euler()`` (the default) the two agree on the increments
    ``brownian.evaluate(t_n, t_{n+1})``. Other solvers (e.g. ``diffrax.Heun()``) apply as usual.
    """
    omega = sde.noise.omega(params["hurst"]).astype(x0.dtype)
    dim = x0.shape[0]
    shape_y = y0.shape
    eye = jnp.eye(dim, dtype=x0.dtype)

    # One flat state [X, vec(Y), KL], so the ControlTerm's loading is a single matrix.
    def unpack(z):
        return z[:dim], z[dim:-1].reshape(shape_y)

    def drift(t, z, args):
        x, y = unpack(z)
        fx, fy, fkl = sde.vector_fields(t, x, y, params, omega, observations)[0]
        return jnp.concatenate([fx, fy.reshape(-1), fkl[None]])

    def diffusion(t, z, args):
        x, y = unpack(z)
        _, (gx, gy) = sde.vector_fields(t, x, y, params, omega, observations)
        loading_y = (gy[..., None] * eye).reshape(-1, dim)
        return jnp.concatenate([gx[:, None] * eye, loading_y, jnp.zeros((1, dim), x.dtype)])

    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))
    z0 = jnp.concatenate([x0, y0.reshape(-1), jnp.zeros((1,), x0.dtype)])
    solution = diffrax.diffeqsolve(
        terms,
        solver or diffrax.Euler(),
        t0=times[0],
        t1=times[-1],
        dt0=None,
        y0=z0,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.StepTo(ts=times),
        max_steps=times.shape[0],
    )
    zs = solution.ys
    return Path(zs[:, :dim], unpack(zs[-1])[1], zs[-1, -1])


def brownian_increments(brownian: diffrax.AbstractBrownianPath, times) -> Array:
    """The increments ``W(t_{n+1}) - W(t_n)`` of a diffrax Brownian path on a grid."""
    return jax.vmap(brownian.evaluate)(times[:-1], times[1:])


def sample_prior(
    key: PRNGKey,
    sde: LatentSDE,
    params: dict,
    times: Float[Array, " N1"],
    num_paths: int,
    x0: Float[Array, " D"] | None = None,
) -> Float[Array, "P N1 D"]:
    """Prior paths (``u = 0``) by :func:`euler`; ``x0`` defaults to zeros of dimension 1."""
    x0 = jnp.zeros((1,), jnp.result_type(float)) if x0 is None else jnp.asarray(x0)
    times = jnp.asarray(times, x0.dtype)
    prior = LatentSDE(sde.drift, sde.diffusion, sde.noise, None)

    def one(k):
        k_y, k_w = jax.random.split(k)
        y0 = sde.noise.initial_state(k_y, x0.shape[0], x0.dtype)
        dw = jax.random.normal(k_w, (times.shape[0] - 1, x0.shape[0]), x0.dtype)
        dw = dw * jnp.sqrt(jnp.diff(times))[:, None]
        return euler(prior, params, x0, y0, times, dw).x

    return jax.vmap(one)(jax.random.split(key, num_paths))
