r"""Markov-approximate fractional Brownian motion (MA-fBM): speeds, optimal weights, moments.

fBM is written as a weighted sum of ``K`` Ornstein--Uhlenbeck processes driven by one
Brownian motion ``W``,

.. math::
    \hat B^H(t) = \sum_k \omega_k \,(Y_k(t) - Y_k(0)),\qquad dY_k = -\gamma_k Y_k\,dt + dW,

with type I (Mandelbrot--van Ness: ``Y(0) ~ N(0, Σ)``, ``Σ_ij = 1/(γ_i+γ_j)``) or type II
(Riemann--Liouville: ``Y(0) = 0``). The weights minimise
``E ∫_0^T (B^H(t) - \hat B^H(t))^2 dt``, a quadratic in ``ω`` whose minimiser solves
``A ω = b(H)`` with (``a = H + 1/2``, ``c = γ_i + γ_j``, ``P``/``Q`` the regularised lower and
upper incomplete gamma functions)

.. math::
    \text{II:}\quad A_{ij} = \frac{T}{c} + \frac{e^{-cT} - 1}{c^2},\qquad
    b_k = \frac{T\,P(a, γ_kT)}{γ_k^{a}} - \frac{a\,P(a+1, γ_kT)}{γ_k^{a+1}},

.. math::
    \text{I:}\quad A_{ij} = \frac{2T}{c} - \frac{1 - e^{-γ_iT}}{γ_i c} - \frac{1 - e^{-γ_jT}}{γ_j c},
    \qquad b_k = γ_k^{-a}\Big[2T - \frac{1 - e^{-γ_kT}}{γ_k}
    - \frac{e^{γ_kT} Q(a, γ_kT) - 1 + (γ_kT)^a / Γ(a+1)}{γ_k}\Big].

The target processes are normalised as in the paper,
``B^H(t) = Γ(H+1/2)^{-1} ∫ [(t-s)_+^{H-1/2} - (-s)_+^{H-1/2}] dW(s)`` (type I, the second
term absent for type II), so ``Var B^H(t) = t^{2H} / (Γ(2H+1) \sin πH)`` (type I: a scaled
standard fBM) and ``t^{2H} / (2H Γ(H+1/2)^2)`` (type II).

``A`` has condition numbers near ``10^7``, so the solve runs in NumPy float64 whatever JAX's
precision; :func:`omega` wraps it as a differentiable JAX function of ``H`` through
``jax.pure_callback`` with a custom JVP (``dω/dH = A^{-1} db/dH``, ``db/dH`` by a float64
central difference), leaving the global x64 flag alone.

References:
    Daems, Opper, Crevecoeur & Birdal (2024), Variational Inference for SDEs Driven by
    Fractional Noise, ICLR 2024.
    Harms & Stefanovits (2019), Affine representations of fractional processes with
    applications in mathematical finance, Stochastic Processes and their Applications 129.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gamma as gamma_fn
from scipy.special import gammainc, gammaincc, gammaln

KINDS = ("I", "II")
_CF_SWITCH = 30.0  # above this x, e^x Q(a, x) comes from the continued fraction
_CF_ITERATIONS = 200
_FD_STEP = 1e-6


def speeds(num_components: int = 5, gamma_max: float = 20.0) -> np.ndarray:
    """Geometric OU speeds ``γ_k`` spanning ``[1/γ_max, γ_max]`` (float64, ascending)."""
    if isinstance(num_components, bool) or not isinstance(num_components, int):
        raise TypeError(f"num_components must be an int, got {num_components!r}")
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}")
    if not gamma_max > 1.0:
        raise ValueError(
            f"gamma_max must be > 1 (speeds span [1/gamma_max, gamma_max]), got {gamma_max}"
        )
    if num_components == 1:
        return np.ones(1)
    return np.geomspace(1.0 / gamma_max, gamma_max, num_components)


def scaled_upper_gamma(a, x) -> np.ndarray:
    r"""``e^x Q(a, x)`` without overflow: direct below ``x = 30``, else the continued fraction.

    .. math:: e^x Q(a, x) = \frac{x^a}{Γ(a)}\cfrac{1}{x + 1 - a - \cfrac{1\cdot(1-a)}{x + 3 - a - \cdots}}

    evaluated by the modified Lentz algorithm (Numerical Recipes, §6.2), which converges fast
    for ``x > a + 1``; the direct product ``exp(x) * Q`` overflows in float64 near ``x = 710``.
    """
    a, x = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(x, np.float64))
    direct = np.exp(np.minimum(x, _CF_SWITCH)) * gammaincc(a, np.minimum(x, _CF_SWITCH))
    xs = np.maximum(x, _CF_SWITCH)
    tiny = 1e-300
    b = xs + 1.0 - a
    c = np.full_like(xs, 1.0 / tiny)
    d = 1.0 / b
    h = d.copy()
    for i in range(1, _CF_ITERATIONS):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        h = h * d * c
    continued = np.exp(a * np.log(xs) - gammaln(a)) * h
    return np.where(x > _CF_SWITCH, continued, direct)


def weight_system(hurst: float, horizon: float, gammas: np.ndarray, kind: str = "II"):
    """The float64 system ``(A, b)`` of the optimal weights.

    The squared L2 error of weights ``ω`` is ``c0 - 2 bᵀω + ωᵀAω`` (``c0`` from
    :func:`target_energy`); at the optimum ``c0 - bᵀω``.
    """
    _check_kind(kind)
    g = np.asarray(gammas, np.float64)
    a = float(hurst) + 0.5
    T = float(horizon)
    c = g[:, None] + g[None, :]
    if kind == "II":
        A = T / c + np.expm1(-c * T) / c**2
        b = T * gammainc(a, g * T) / g**a - a * gammainc(a + 1.0, g * T) / g ** (a + 1.0)
    else:
        e = -np.expm1(-g * T) / g
        A = 2 * T / c - e[:, None] / c - e[None, :] / c
        tail = (scaled_upper_gamma(a, g * T) - 1.0 + (g * T) ** a / gamma_fn(a + 1.0)) / g
        b = g ** (-a) * (2 * T - e - tail)
    return A, b


def target_energy(hurst: float, horizon: float, kind: str = "II") -> float:
    """``c0 = E ∫_0^T B^H(t)^2 dt = ∫_0^T Var B^H(t) dt`` (see :func:`fbm_variance`)."""
    return float(fbm_variance(horizon, hurst, kind) * horizon / (2 * hurst + 1))


def omega_numpy(hurst, horizon: float, gammas: np.ndarray, kind: str = "II"):
    """Optimal weights ``ω(H, T)`` and ``dω/dH`` in float64, for an array of Hurst indices.

    Returns:
        ``(ω, dω/dH)``, each of shape ``hurst.shape + (K,)``.
    """
    h = np.asarray(hurst, np.float64)
    flat = h.reshape(-1)
    out = np.empty((flat.size, len(gammas)))
    grad = np.empty_like(out)
    for i, value in enumerate(flat):
        A, b = weight_system(value, horizon, gammas, kind)
        _, b_plus = weight_system(value + _FD_STEP, horizon, gammas, kind)
        _, b_minus = weight_system(value - _FD_STEP, horizon, gammas, kind)
        solved = np.linalg.solve(A, np.stack([b, (b_plus - b_minus) / (2 * _FD_STEP)], axis=1))
        out[i], grad[i] = solved[:, 0], solved[:, 1]
    shape = h.shape + (len(gammas),)
    return out.reshape(shape), grad.reshape(shape)


def relative_error(hurst: float, horizon: float, gammas: np.ndarray, kind: str = "II") -> float:
    """Relative squared L2 error ``(c0 - bᵀω)/c0`` of the optimal MA-fBM on ``[0, T]``."""
    A, b = weight_system(hurst, horizon, gammas, kind)
    c0 = target_energy(hurst, horizon, kind)
    return float((c0 - b @ np.linalg.solve(A, b)) / c0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def omega(hurst, horizon: float, gammas: tuple[float, ...], kind: str = "II") -> jax.Array:
    """Optimal MA-fBM weights ``ω(H, T)`` as a differentiable JAX function of ``H``.

    Args:
        hurst: Hurst index (any shape; traced), in ``(0, 1)``.
        horizon: ``T``, the interval ``[0, T]`` the weights are optimal on (static).
        gammas: the OU speeds as a tuple of floats (static, hashable).
        kind: ``"I"`` or ``"II"`` (static).

    Returns:
        Weights of shape ``hurst.shape + (K,)`` in ``hurst``'s floating dtype, solved in
        float64 by NumPy (see the module docstring).

    Example:
        >>> w = omega(0.7, 1.0, tuple(speeds(5, 20.0)), "II")  # ≈ (-0.935, 3.268, ...)
    """
    return _omega_callback(hurst, horizon, gammas, kind)[0]


@omega.defjvp
def _omega_jvp(horizon, gammas, kind, primals, tangents):
    (hurst,), (tangent,) = primals, tangents
    w, dw = _omega_callback(hurst, horizon, gammas, kind)
    return w, dw * jnp.asarray(tangent, w.dtype)[..., None]


def _omega_callback(hurst, horizon, gammas, kind):
    _check_kind(kind)
    hurst = jnp.asarray(hurst)
    dtype = hurst.dtype if jnp.issubdtype(hurst.dtype, jnp.floating) else jnp.result_type(float)
    shape = jax.ShapeDtypeStruct(hurst.shape + (len(gammas),), dtype)
    g = np.asarray(gammas, np.float64)

    def host(h):
        w, dw = omega_numpy(np.asarray(h), horizon, g, kind)
        return w.astype(dtype), dw.astype(dtype)

    return jax.pure_callback(host, (shape, shape), hurst, vmap_method="expand_dims")


def stationary_covariance(gammas) -> np.ndarray:
    """``Σ_ij = 1/(γ_i+γ_j)``: the stationary covariance of ``Y`` (type I start)."""
    g = np.asarray(gammas, np.float64)
    return 1.0 / (g[:, None] + g[None, :])


def fbm_variance(t, hurst, kind: str = "II"):
    """Variance of the target process at time ``t`` in the paper's normalisation."""
    _check_kind(kind)
    t, h = np.asarray(t, np.float64), np.asarray(hurst, np.float64)
    if kind == "II":
        return t ** (2 * h) / (2 * h * gamma_fn(h + 0.5) ** 2)
    return t ** (2 * h) / (gamma_fn(2 * h + 1) * np.sin(np.pi * h))


def standard_fbm_scale(hurst) -> np.ndarray:
    """``sqrt(Γ(2H+1) sin πH)``: multiply the type I process by this to get standard fBM
    (``Var B^H(t) = t^{2H}``)."""
    h = np.asarray(hurst, np.float64)
    return np.sqrt(gamma_fn(2 * h + 1) * np.sin(np.pi * h))


def approximate_covariance(s, t, omega_weights, gammas, kind: str = "II") -> float:
    r"""Exact ``Cov(\hat B(s), \hat B(t))`` of the MA-fBM for ``s <= t`` (float64).

    ``Cov(Y_i(s), Y_j(t)) = e^{-γ_j(t-s)} (1 - e^{-c s}) / c`` for type II (``c = γ_i+γ_j``);
    type I adds the stationary start and subtracts ``Y(0)``.
    """
    _check_kind(kind)
    if s > t:
        s, t = t, s
    g = np.asarray(gammas, np.float64)
    w = np.asarray(omega_weights, np.float64)
    c = g[:, None] + g[None, :]
    if kind == "II":
        return float(w @ (np.exp(-g[None, :] * (t - s)) * -np.expm1(-c * s) / c) @ w)

    def cov(u, v):  # Cov(Y_i(u), Y_j(v)), u <= v, stationary
        return np.exp(-g[None, :] * (v - u)) / c

    return float(w @ (cov(s, t) - cov(0.0, t) - cov(0.0, s).T + cov(0.0, 0.0)) @ w)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"kind must be 'I' (Mandelbrot-van Ness) or 'II' (Riemann-Liouville), got {kind!r}"
        )
