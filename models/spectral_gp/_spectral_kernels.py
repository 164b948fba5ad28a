r"""One-dimensional stationary kernels and their derivatives in closed form.

Every kernel is a function of the lag :math:`r = x - x'`:

.. math::
    k(r) = \sum_{q=1}^{Q} w_q\, \gamma_q(r) \cos(2\pi \mu_q r),\qquad w_q = e^{\eta_q},

with :math:`\gamma_q` a Matérn-5/2 (``"student_t"``: Student-t mixture spectrum) or squared
exponential (``"gaussian"``: Gaussian mixture spectrum, the spectral mixture kernel) envelope of
length-scale :math:`\ell_q`. The baselines ``"matern"`` and ``"se"`` drop the cosine
(:math:`\mu_q = 0`, one component).

Derivatives with respect to the first argument are ``d^m k / dr^m``; those with respect to the
second argument flip sign per order. They are written out by hand, not by autodiff: the
Matérn envelope contains :math:`|r|`, whose autodiff derivative at ``r = 0`` (every diagonal
entry of a gram matrix) is a subgradient that is wrong for the second derivative, and the
closed forms are also cheaper than nested ``jvp`` on an ``n x n`` lag matrix. gpjax's
``Matern52``/``RBF`` are used as the oracle for the order-0 values in the tests; gpjax
exposes no kernel derivatives or spectral mixtures with per-component envelopes, so the
mixtures are built here.

References:
    Fang, Wang, Li, Li, Zhe & Kirby (2024), Solving High Frequency and Multi-Scale PDEs with
    Gaussian Processes, ICLR 2024.
    Wilson & Adams (2013), Gaussian Process Kernels for Pattern Discovery and Extrapolation,
    ICML 2013.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array

#: Kernel kinds: two spectral mixtures and two single-envelope baselines.
KINDS = ("student_t", "gaussian", "matern", "se")
#: Envelope of each kind.
ENVELOPE = {"student_t": "matern", "gaussian": "se", "matern": "matern", "se": "se"}
#: Kinds with a cosine factor (a spectral mixture).
MIXTURES = ("student_t", "gaussian")
#: Fewer grid points than this per period of the highest frequency cannot resolve it.
MIN_POINTS_PER_PERIOD = 3.0


class KernelParams(NamedTuple):
    r"""Parameters of one dimension's kernel; each leaf has shape ``(Q,)``.

    Attributes:
        eta: log weights, :math:`w_q = e^{\eta_q}` (a flat prior on ``eta`` is the Jeffreys
            prior on ``w``; a component whose ``eta`` drifts to ``-inf`` is pruned).
        mu: spectral means (frequency in cycles per unit length); zeros for the baselines.
        log_ell: log envelope length-scales.
    """

    eta: Array
    mu: Array
    log_ell: Array


def envelope(kind: str, r: Array, ell: Array, order: int) -> Array:
    r"""The envelope :math:`\gamma(r)` or its ``order``-th derivative (0, 1, 2) in ``r``.

    Matérn-5/2 with :math:`a = \sqrt 5/\ell`, :math:`s = |r|`:
    :math:`\gamma = (1 + as + a^2s^2/3)e^{-as}`, :math:`\gamma' = -\tfrac{a^2}{3} r (1 + as)e^{-as}`,
    :math:`\gamma'' = -\tfrac{a^2}{3}(1 + as - a^2 s^2)e^{-as}`. SE: :math:`\gamma = e^{-r^2/2\ell^2}`,
    :math:`\gamma' = -r\gamma/\ell^2`, :math:`\gamma'' = (r^2/\ell^4 - 1/\ell^2)\gamma`.
    """
    _check_order(order)
    return envelopes(kind, r, ell, order)[order]


def envelopes(kind: str, r: Array, ell: Array, max_order: int) -> list[Array]:
    """The envelope's derivatives of orders ``0..max_order`` (at most 2), sharing the
    exponential and the scaled lag between them (:func:`envelope` gives the formulas)."""
    if ENVELOPE[kind] == "matern":
        a = jnp.sqrt(5.0) / ell
        s = jnp.abs(r)
        e = jnp.exp(-a * s)
        out = [
            lambda: (1.0 + a * s + (a * s) ** 2 / 3.0) * e,
            lambda: -(a**2) / 3.0 * r * (1.0 + a * s) * e,
            lambda: -(a**2) / 3.0 * (1.0 + a * s - (a * s) ** 2) * e,
        ]
    else:
        g = jnp.exp(-0.5 * (r / ell) ** 2)
        out = [
            lambda: g,
            lambda: -r / ell**2 * g,
            lambda: (r**2 / ell**4 - 1.0 / ell**2) * g,
        ]
    return [term() for term in out[: max_order + 1]]


def _check_order(order: int) -> None:
    if order not in (0, 1, 2):
        raise ValueError(f"kernel derivative order must be 0, 1 or 2, got {order}")


def kernel(kind: str, params: KernelParams, r: Array, order: int = 0) -> Array:
    r"""``d^order k / dr^order`` at lags ``r`` (any shape), summed over components.

    By Leibniz, with :math:`c = \cos(\omega r)`, :math:`\omega = 2\pi\mu`:
    :math:`k' = \sum w(\gamma' c + \gamma c')`,
    :math:`k'' = \sum w(\gamma'' c + 2\gamma' c' + \gamma c'')`, :math:`c' = -\omega\sin\omega r`,
    :math:`c'' = -\omega^2 c`.

    Args:
        kind: one of :data:`KINDS`.
        params: the dimension's :class:`KernelParams`.
        r: lags ``x - x'``.
        order: derivative order in the first argument (0, 1 or 2).

    Returns:
        Array of ``r``'s shape.
    """
    return kernels(kind, params, r, (order,))[order]


def kernels(kind: str, params: KernelParams, r: Array, orders) -> dict[int, Array]:
    """:func:`kernel` for several derivative ``orders`` at the same lags, from one
    evaluation of the envelopes and the cosine (a gram matrix and its derivative operators
    share one pass over the lags: a smaller program to compile and less work)."""
    orders = sorted(set(orders))
    for order in orders:
        _check_order(order)
    w = jnp.exp(params.eta)
    ell = jnp.exp(params.log_ell)
    rq = r[..., None]
    gam = envelopes(kind, rq, ell, orders[-1])
    if kind not in MIXTURES:
        return {m: jnp.sum(w * gam[m], axis=-1) for m in orders}
    omega = 2.0 * jnp.pi * params.mu
    c = jnp.cos(omega * rq)
    s = jnp.sin(omega * rq) if orders[-1] > 0 else None
    terms = {
        0: lambda: gam[0] * c,
        1: lambda: gam[1] * c - gam[0] * omega * s,
        2: lambda: gam[2] * c - 2.0 * gam[1] * omega * s - gam[0] * omega**2 * c,
    }
    return {m: jnp.sum(w * terms[m](), axis=-1) for m in orders}


def gram(kind: str, params: KernelParams, x1: Array, x2: Array, order: int = 0) -> Array:
    """Matrix ``[d^order k(x1_i, x2_j) / dx1^order]`` for 1-D point sets ``x1``, ``x2``."""
    return kernel(kind, params, x1[:, None] - x2[None, :], order)


def lattice_gram(
    kind: str, params: KernelParams, x1: np.ndarray, x2: np.ndarray, order: int = 0
) -> Array:
    """:func:`gram` for fixed (NumPy) point sets, the kernel evaluated once per distinct lag.

    A grid and its midpoints share a lattice of half the spacing, so their ``(2n-1) x n``
    lags take ``4n - 3`` values: evaluating ``Q`` exponentials and cosines on those and
    gathering is ~``n/4`` times less work, and its reverse pass a scatter-add instead of a
    pass over every pair (most of a midpoint-collocation step's cost otherwise).
    """
    return lattice_grams(kind, params, x1, x2, (order,))[order]


def lattice_grams(
    kind: str, params: KernelParams, x1: np.ndarray, x2: np.ndarray, orders
) -> dict[int, Array]:
    """:func:`lattice_gram` for several derivative ``orders`` (:func:`kernels`)."""
    lags = np.subtract.outer(np.asarray(x1, np.float64), np.asarray(x2, np.float64))
    scale = float(np.abs(lags).max()) or 1.0
    _, first, inverse = np.unique(
        np.round(lags.ravel() / scale * 1e12), return_index=True, return_inverse=True
    )
    values = kernels(kind, params, jnp.asarray(lags.ravel()[first]), orders)
    index = inverse.reshape(lags.shape)
    return {m: v[index] for m, v in values.items()}


def toeplitz_gram(kind: str, params: KernelParams, n: int, spacing: float, order: int = 0) -> Array:
    """:func:`gram` on a uniform grid of ``n`` points, from the ``2n - 1`` distinct lags.

    On a uniform grid the gram matrix is Toeplitz, so the kernel (``Q`` exponentials and
    cosines per entry) is evaluated on ``2n - 1`` lags instead of ``n^2`` pairs and gathered;
    this is most of a 1-D step's cost otherwise.
    """
    return toeplitz_grams(kind, params, n, spacing, (order,))[order]


def toeplitz_grams(
    kind: str, params: KernelParams, n: int, spacing: float, orders
) -> dict[int, Array]:
    """:func:`toeplitz_gram` for several derivative ``orders`` (:func:`kernels`); the lags
    include 0, so order 0 there also gives the prior variance ``k(0)`` (entry ``[0, 0]``)."""
    lags = jnp.arange(-(n - 1), n) * spacing
    values = kernels(kind, params, lags, orders)
    index = jnp.arange(n)[:, None] - jnp.arange(n)[None, :] + (n - 1)
    return {m: v[index] for m, v in values.items()}


def default_params(
    kind: str, num_components: int, max_frequency: float, length: float, dtype=jnp.float64
) -> KernelParams:
    """Initial parameters: spectral means spread evenly over ``(0, max_frequency]``.

    Args:
        kind: one of :data:`KINDS`.
        num_components: ``Q`` (the baselines always use one component).
        max_frequency: highest initial spectral mean, cycles per unit length.
        length: the domain's extent along this dimension (sets the envelope scale).
        dtype: floating dtype of the parameters.

    Returns:
        :class:`KernelParams` with equal weights summing to one.
    """
    q = num_components if kind in MIXTURES else 1
    if kind in MIXTURES:
        mu = jnp.linspace(max_frequency / q, max_frequency, q, dtype=dtype)
        # A wide envelope (a narrow spectral peak) a few grid periods long, as in Fang et al.
        log_ell = jnp.full((q,), jnp.log(length / 4.0), dtype=dtype)
    else:
        mu = jnp.zeros((1,), dtype=dtype)
        log_ell = jnp.full((1,), jnp.log(length / 20.0), dtype=dtype)
    eta = jnp.full((q,), -jnp.log(q), dtype=dtype)
    return KernelParams(eta=eta, mu=mu, log_ell=log_ell)
