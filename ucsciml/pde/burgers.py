"""Viscous Burgers' equation and its Cole–Hopf reference solution."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array
from ucsciml.pde.base import AbstractPDE, Unknown

NU_RAISSI = 0.01 / math.pi


@dataclass(frozen=True, eq=False)
class Burgers(AbstractPDE):
    r"""Viscous Burgers' equation on :math:`x \in [-1, 1]`, :math:`t \in [0, 1]`.

    .. math:: u_t + \lambda_1 u u_x - \lambda_2 u_{xx} = 0,\quad u(x, 0) = -\sin(\pi x),
        \quad u(\pm 1, t) = 0.

    With :math:`\lambda_1 = 1, \lambda_2 = 0.01/\pi` this is the shock problem of Raissi et
    al. (2019). ``lambda2`` is the viscosity (``nu`` in DESIGN.md).

    Args:
        lambda1: advection coefficient, a number or :class:`Unknown`.
        lambda2: viscosity (> 0), a number or :class:`Unknown` with a positive prior.

    References:
        Raissi, Perdikaris & Karniadakis (2019), Physics-informed neural networks, JCP 378.
        Basdevant et al. (1986), Spectral and finite difference solutions of the Burgers
        equation, Computers & Fluids 14 (the Cole–Hopf quadrature used by :meth:`solve`).
    """

    lambda1: float | Unknown = 1.0
    lambda2: float | Unknown = NU_RAISSI

    coords = ("x", "t")
    derivatives = ("u", "u_t", "u_x", "u_xx")
    domain = {"x": (-1.0, 1.0), "t": (0.0, 1.0)}
    positive = ("lambda2",)

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        u, u_t, u_x, u_xx = (derivs[k] for k in ("u", "u_t", "u_x", "u_xx"))
        return u_t + params["lambda1"] * u * u_x - params["lambda2"] * u_xx

    def ansatz(self):
        def boundary(p):
            return -jnp.sin(jnp.pi * p[:, 0])

        def distance(p):
            return p[:, 1] * (1.0 - p[:, 0] ** 2)

        return boundary, distance

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """Exact solution by the Cole–Hopf transform (see :func:`burgers_cole_hopf`)."""
        p = self.true_parameters() if params is None else dict(params)
        points = np.asarray(points, dtype=float)
        return burgers_cole_hopf(points[:, 0], points[:, 1], p["lambda1"], p["lambda2"])


def burgers_cole_hopf(
    x: np.ndarray,
    t: np.ndarray,
    lambda1: float = 1.0,
    lambda2: float = NU_RAISSI,
    num_nodes: int = 4001,
    chunk: int = 4096,
) -> np.ndarray:
    r"""Exact Burgers solution for :math:`u(x,0) = -\sin(\pi x)` by Cole–Hopf.

    With :math:`\theta_0(y) = \exp(-\lambda_1 \cos(\pi y) / (2\pi\lambda_2))` and
    :math:`s = \sqrt{4 \lambda_2 t}`,

    .. math:: u(x, t) = -\frac{\int \sin(\pi(x - s z))\, \theta_0(x - s z)\, e^{-z^2} dz}
                              {\int \theta_0(x - s z)\, e^{-z^2} dz}.

    The integrals use the trapezoid rule on ``z in [-10, 10]`` (spectrally accurate for a
    smooth, rapidly decaying integrand) with log-domain weights, since ``theta_0`` spans
    ``exp(+-1/(2 pi lambda2))`` ~ ``e^{+-50}`` at the Raissi viscosity. The periodic, odd
    initial data make ``u(+-1, t) = 0`` hold exactly.

    Args:
        x, t: arrays of the same shape.
        lambda1, lambda2: PDE coefficients (``lambda2 > 0``).
        num_nodes: quadrature nodes.
        chunk: points processed per batch (bounds memory to ``chunk * num_nodes``).

    Returns:
        ``u`` with the shape of ``x``.
    """
    if lambda2 <= 0:
        raise ValueError(f"lambda2 (viscosity) must be > 0, got {lambda2}")
    x = np.asarray(x, dtype=float)
    t = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
    flat_x, flat_t = x.ravel(), t.ravel()
    z = np.linspace(-10.0, 10.0, num_nodes)
    out = np.empty_like(flat_x)
    for start in range(0, flat_x.size, chunk):
        xs = flat_x[start : start + chunk, None]
        ts = flat_t[start : start + chunk, None]
        y = xs - np.sqrt(4.0 * lambda2 * ts) * z[None, :]
        log_w = -lambda1 * np.cos(np.pi * y) / (2.0 * np.pi * lambda2) - z[None, :] ** 2
        w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
        out[start : start + chunk] = -(w * np.sin(np.pi * y)).sum(axis=1) / w.sum(axis=1)
    return out.reshape(x.shape)
