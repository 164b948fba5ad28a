r"""Exact likelihood of the fractional OU process under MA-fBM noise, by Kalman filtering.

With linear drift the augmented state ``z = (X, Y_1..Y_K)`` solves the linear SDE

.. math::
    dz = F z\,dt + G\,dW,\qquad
    F = \begin{pmatrix} -θ & -σ (ω ∘ γ)^\top \\ 0 & -\mathrm{diag}(γ) \end{pmatrix},\qquad
    G = \begin{pmatrix} σ \textstyle\sum_k ω_k \\ \mathbf 1_K \end{pmatrix},

so between observation times it moves by ``z' = Φ z + ε``, ``ε ~ N(0, Q)``, with
``Φ = e^{FΔ}`` and ``Q = ∫_0^Δ e^{Fs} G G^\top e^{F^\top s} ds`` (Van Loan's matrix
exponential). Observations ``y_i = X(t_i) + N(0, σ_obs^2)`` make this a linear-Gaussian
state-space model whose log-likelihood the Kalman filter returns exactly; it is
differentiable in ``(θ, σ, H)`` (``ω(H)`` through :func:`._mafbm.omega`), so NUTS samples
the exact posterior of the MA-fBM model — the gold standard the variational fit is judged by.

References:
    Daems, Opper, Crevecoeur & Birdal (2024), Variational Inference for SDEs Driven by
    Fractional Noise, ICLR 2024 (the MA-fBM model).
    Van Loan (1978), Computing integrals involving the matrix exponential, IEEE TAC 23(3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import scipy.linalg
from jax.scipy.linalg import expm

from ucsciml._types import Array, PRNGKey
from ucsciml.models.fbm_sde import _mafbm
from ucsciml.program import Program


def transition(theta, sigma, omega, gammas, dt) -> tuple[Array, Array]:
    """``(Φ, Q)`` of the augmented fOU state over a step ``dt`` (Van Loan)."""
    g = jnp.asarray(gammas, omega.dtype)
    k = g.shape[0]
    top = jnp.concatenate([jnp.reshape(-theta, (1,)), -sigma * omega * g])
    bottom = jnp.concatenate([jnp.zeros((k, 1), omega.dtype), -jnp.diag(g)], axis=1)
    F = jnp.concatenate([top[None], bottom], axis=0)
    G = jnp.concatenate([jnp.reshape(sigma * jnp.sum(omega), (1,)), jnp.ones(k, omega.dtype)])
    n = k + 1
    block = jnp.block([[-F, jnp.outer(G, G)], [jnp.zeros((n, n), omega.dtype), F.T]]) * dt
    M = expm(block)
    phi = M[n:, n:].T
    Q = phi @ M[:n, n:]
    return phi, 0.5 * (Q + Q.T)


def _transition_numpy(theta, sigma, omega, gammas, dt):
    """Float64 twin of :func:`transition` for simulation."""
    k = len(gammas)
    F = np.zeros((k + 1, k + 1))
    F[0, 0], F[0, 1:] = -theta, -sigma * omega * gammas
    F[1:, 1:] = -np.diag(gammas)
    G = np.concatenate([[sigma * np.sum(omega)], np.ones(k)])
    n = k + 1
    block = np.block([[-F, np.outer(G, G)], [np.zeros((n, n)), F.T]]) * dt
    M = scipy.linalg.expm(block)
    phi = M[n:, n:].T
    Q = phi @ M[:n, n:]
    return phi, 0.5 * (Q + Q.T)


def initial_covariance(gammas, kind: str, dtype) -> Array:
    """Covariance of ``z(0)`` given ``X(0)``: zero, plus ``Σ`` on ``Y`` for type I."""
    k = len(gammas)
    P = np.zeros((k + 1, k + 1))
    if kind == "I":
        P[1:, 1:] = _mafbm.stationary_covariance(gammas)
    return jnp.asarray(P, dtype)


def kalman_log_likelihood(
    values, times, *, theta, sigma, hurst, noise_std, x0=0.0, gammas, horizon, kind="II"
) -> Array:
    r"""``log p(y_{1:M} | θ, σ, H)`` of fOU observations by the Kalman filter.

    Args:
        values: observations ``(M,)`` at ``times`` ``(M,)``, all ``> 0``; ``X(0) = x0``.
        theta, sigma, hurst: mean reversion, noise scale, Hurst index (traced).
        noise_std: observation noise sd.
        gammas, horizon, kind: the MA-fBM (speeds tuple, ``T`` of the weights, type).

    Returns:
        The scalar log-likelihood (sum of the innovations' Gaussian log-densities).
    """
    values = jnp.asarray(values)
    dtype = values.dtype
    omega = _mafbm.omega(jnp.asarray(hurst, dtype), horizon, tuple(gammas), kind)
    if isinstance(times, np.ndarray):
        # Concrete times: one matrix exponential per distinct step, not one per observation.
        steps = np.round(np.diff(np.concatenate([[0.0], times.astype(np.float64)])), 9)
        unique, index = np.unique(steps, return_inverse=True)
        phis, Qs = jax.vmap(lambda d: transition(theta, sigma, omega, gammas, d))(
            jnp.asarray(unique, dtype)
        )
        phis, Qs = phis[index], Qs[index]
    else:
        dts = jnp.diff(jnp.concatenate([jnp.zeros((1,), dtype), jnp.asarray(times, dtype)]))
        phis, Qs = jax.vmap(lambda d: transition(theta, sigma, omega, gammas, d))(dts)
    n = len(gammas) + 1
    mean0 = jnp.zeros((n,), dtype).at[0].set(x0)
    r = jnp.asarray(noise_std, dtype) ** 2

    def step(carry, inputs):
        m, P = carry
        phi, Q, y = inputs
        m = phi @ m
        P = phi @ P @ phi.T + Q
        s = P[0, 0] + r
        gain = P[:, 0] / s
        innovation = y - m[0]
        loglik = -0.5 * (jnp.log(2 * jnp.pi * s) + innovation**2 / s)
        m = m + gain * innovation
        P = P - jnp.outer(gain, P[0])
        return (m, 0.5 * (P + P.T)), loglik

    P0 = initial_covariance(gammas, kind, dtype)
    _, logliks = jax.lax.scan(step, (mean0, P0), (phis, Qs, values))
    return jnp.sum(logliks)


def simulate(
    key: PRNGKey, times, *, theta, sigma, hurst, noise_std, x0=0.0, gammas, horizon, kind="II"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact draw of the MA-fBM fOU at ``times`` and noisy observations of it (float64).

    Returns:
        ``(x, y)``: the latent values and the observations, each ``(M,)``.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    g = np.asarray(gammas, np.float64)
    omega = _mafbm.omega_numpy(hurst, horizon, g, kind)[0]
    z = np.zeros(len(g) + 1)
    z[0] = x0
    if kind == "I":
        z[1:] = rng.multivariate_normal(np.zeros(len(g)), _mafbm.stationary_covariance(g))
    x, last = [], 0.0
    for t in np.asarray(times, np.float64):
        phi, Q = _transition_numpy(theta, sigma, omega, g, t - last)
        z = phi @ z + rng.multivariate_normal(np.zeros(len(z)), Q, method="eigh")
        x.append(z[0])
        last = t
    x = np.asarray(x)
    return x, x + noise_std * rng.standard_normal(x.shape)


class FOUKalman(dist.Distribution):
    """Observations of the MA-fBM fOU at fixed times: ``log_prob`` by the Kalman filter,
    ``sample`` by the exact transitions. One event of shape ``(M,)``.

    A distribution rather than ``numpyro.factor`` so the observed site also yields
    posterior-predictive replicates (ArviZ's ``posterior_predictive`` group).
    """

    support = dist.constraints.real_vector

    def __init__(self, times, *, theta, sigma, hurst, noise_std, x0, gammas, horizon, kind):
        self.times = np.asarray(times, np.float64)
        self.theta, self.sigma, self.hurst = theta, sigma, hurst
        self.noise_std, self.x0, self.gammas, self.horizon, self.kind = (
            noise_std,
            x0,
            tuple(gammas),
            horizon,
            kind,
        )
        super().__init__(batch_shape=(), event_shape=(self.times.shape[0],))

    def _kwargs(self):
        return dict(
            theta=self.theta,
            sigma=self.sigma,
            hurst=self.hurst,
            noise_std=self.noise_std,
            x0=self.x0,
            gammas=self.gammas,
            horizon=self.horizon,
            kind=self.kind,
        )

    def log_prob(self, value):
        return kalman_log_likelihood(value, self.times, **self._kwargs())

    def sample(self, key, sample_shape=()):
        if sample_shape:
            keys = jax.random.split(key, int(np.prod(sample_shape)))
            draws = jax.vmap(lambda k: self.sample(k))(keys)
            return draws.reshape(tuple(sample_shape) + self.event_shape)
        dtype = jnp.result_type(float)
        omega = _mafbm.omega(jnp.asarray(self.hurst, dtype), self.horizon, self.gammas, self.kind)
        steps = np.diff(np.concatenate([[0.0], self.times]))
        phis, Qs = jax.vmap(lambda d: transition(self.theta, self.sigma, omega, self.gammas, d))(
            jnp.asarray(steps, dtype)
        )
        n = len(self.gammas) + 1
        k0, k_steps, k_obs = jax.random.split(key, 3)
        chol0 = jnp.linalg.cholesky(
            initial_covariance(self.gammas, self.kind, dtype) + 1e-9 * jnp.eye(n)
        )
        z0 = jnp.zeros((n,), dtype).at[0].set(self.x0) + chol0 @ jax.random.normal(k0, (n,), dtype)

        def step(z, inputs):
            phi, Q, k = inputs
            # eigh, not Cholesky: Q is only positive semi-definite in float32 for short steps
            vals, vecs = jnp.linalg.eigh(Q)
            noise = vecs @ (jnp.sqrt(jnp.clip(vals, 0.0)) * jax.random.normal(k, (n,), dtype))
            z = phi @ z + noise
            return z, z[0]

        _, xs = jax.lax.scan(step, z0, (phis, Qs, jax.random.split(k_steps, steps.shape[0])))
        return xs + self.noise_std * jax.random.normal(k_obs, xs.shape, dtype)


def fou_program(
    times,
    values,
    noise_std: float,
    *,
    num_components: int = 5,
    gamma_max: float = 20.0,
    kind: str = "II",
    horizon: float | None = None,
    x0: float = 0.0,
    attrs: dict | None = None,
) -> Program:
    r"""NumPyro program of the fOU posterior with the exact Kalman likelihood.

    .. math:: g \sim \mathcal N(0, 1),\ H = \mathrm{sigmoid}(g),\ θ \sim \mathrm{LogNormal}(0, 1),
        \ σ \sim \mathrm{LogNormal}(0, 1),\ y \sim \text{FOUKalman}(θ, σ, H).

    These priors match the variational fit's defaults (:func:`._fbm_vi.default_priors`), so
    both posteriors target the same distribution. Sites: ``hurst_logit``, ``theta``,
    ``sigma`` (latent), ``H`` (deterministic), ``y`` (observed, :class:`FOUKalman`: the
    Kalman log-likelihood; equivalent to ``numpyro.factor`` of it, but it can also be
    sampled). The observation times are fixed when the program is built (one matrix
    exponential per distinct step).
    """
    times = np.asarray(times, np.float32)
    values = np.asarray(values, np.float32)
    if times.ndim != 1 or values.shape != times.shape:
        raise ValueError(
            f"times and values must be matching 1-d arrays, got {times.shape} and {values.shape}"
        )
    if not (np.all(np.diff(times) > 0) and times[0] > 0):
        raise ValueError("times must be increasing and > 0 (X(0) = x0 is the known start)")
    gammas = tuple(float(g) for g in _mafbm.speeds(num_components, gamma_max))
    horizon = float(times[-1]) if horizon is None else float(horizon)

    def model(inputs, targets=None):
        hurst_logit = numpyro.sample("hurst_logit", dist.Normal(0.0, 1.0))
        hurst = numpyro.deterministic("H", jax.nn.sigmoid(hurst_logit))
        theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        numpyro.sample(
            "y",
            FOUKalman(
                times,
                theta=theta,
                sigma=sigma,
                hurst=hurst,
                noise_std=noise_std,
                x0=x0,
                gammas=gammas,
                horizon=horizon,
                kind=kind,
            ),
            obs=targets,
        )

    return Program.from_numpyro(
        model,
        times,
        values,
        name="fou_kalman",
        attrs={"noise_std": noise_std, "kind": kind, **(attrs or {})},
    )
