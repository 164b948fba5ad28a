"""Parametric viscous Burgers' equation: method-of-lines solver and an exact Cole–Hopf series."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import diags

from ucsciml._types import Array


@dataclass(frozen=True)
class ParametricBurgers:
    r"""``u_t + z_1 u u_x - z_0 u_xx = 0`` on :math:`(x, t) \in [0, 1] \times [0, 1]`.

    .. math::
        u(x, 0) = \sin(2 w \pi x)\sin(\pi x),\quad u(0, t) = u(1, t) = 0,\qquad
        z_0 \sim \mathcal U(0.01, 0.1),\ z_1 \sim \mathcal U(0.5, 1),\ w \sim \mathcal U(0.5, 2).

    Hard conditions: ``u = B + D N`` with ``B = sin(2 w pi x) sin(pi x)`` and
    ``D = t sin(pi x)``. Points are ``(x, t)`` rows.

    Args:
        z_low, z_high: bounds of the uniform priors on ``(z_0, z_1)``.
        w_low, w_high: bounds of the uniform prior on ``w``.

    References:
        Vadeboncoeur et al. (2023), Random Grid Neural Processes for Parametric Partial
        Differential Equations, ICML (problem and priors; the priors here follow that paper's
        released notebooks, ``z_0 ~ U(0.01, 0.1)``).
    """

    z_low: tuple[float, float] = (0.01, 0.5)
    z_high: tuple[float, float] = (0.1, 1.0)
    w_low: float = 0.5
    w_high: float = 2.0

    coords = ("x", "t")
    domain = {"x": (0.0, 1.0), "t": (0.0, 1.0)}

    def __post_init__(self):
        if not (
            all(a < b for a, b in zip(self.z_low, self.z_high, strict=True))
            and self.w_low < self.w_high
        ):
            raise ValueError("prior bounds need low < high for z and w")
        if self.z_low[0] <= 0:
            raise ValueError(f"the viscosity z_0 must be > 0; z_low[0] = {self.z_low[0]}")

    @property
    def num_z(self) -> int:
        return 2

    @property
    def num_w(self) -> int:
        return 1

    @property
    def z_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.z_low, float), np.asarray(self.z_high, float)

    @property
    def w_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.w_low]), np.array([self.w_high])

    def initial_condition(self, x, w):
        """``u(x, 0) = sin(2 w pi x) sin(pi x)`` (NumPy or JAX arrays)."""
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.sin(2.0 * w * xp.pi * x) * xp.sin(xp.pi * x)

    def ansatz(self, point: Array, w: Array) -> tuple[Array, Array]:
        """``(B, D)`` at one point ``(x, t)``."""
        x, t = point[0], point[1]
        return self.initial_condition(x, w[0]), t * jnp.sin(jnp.pi * x)

    def residual(self, u_fn, point: Array, z: Array, w: Array) -> Array:
        """``u_t + z_1 u u_x - z_0 u_xx`` at one point of a scalar field ``u_fn: (2,) -> ()``."""
        e_x, e_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

        def u_and_ux(p):
            return jax.jvp(u_fn, (p,), (e_x,))

        (u, u_x), (_, u_xx) = jax.jvp(u_and_ux, (point,), (e_x,))
        _, u_t = jax.jvp(u_fn, (point,), (e_t,))
        return u_t + z[1] * u * u_x - z[0] * u_xx

    def reference(self, z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference field on a 65 x 51 ``(x, t)`` grid (every other point of a 129 x 101
        method-of-lines solve): ``(points (n, 2), u (n,))``."""
        x, t, u = self.solve(z, w, num_x=129, num_t=101)
        xx, tt = np.meshgrid(x[::2], t[::2], indexing="ij")
        return np.stack([xx.ravel(), tt.ravel()], axis=-1), u[::2, ::2].T.ravel()

    def solve(
        self, z: np.ndarray, w: np.ndarray, num_x: int = 257, num_t: int = 101, rtol: float = 1e-8
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Reference solution by the method of lines.

        Second-order central differences in ``x`` (conservative form
        :math:`z_1 (u^2/2)_x`) on ``num_x`` points, integrated in time by SciPy's BDF with
        the exact tridiagonal Jacobian. Checked against :meth:`cole_hopf` in the tests.

        Args:
            z: ``(2,)`` as ``(z_0, z_1)``.
            w: ``(1,)``.
            num_x, num_t: grid points in ``x`` (boundaries included) and output times.
            rtol: BDF relative tolerance (``atol = rtol / 100``).

        Returns:
            ``(x, t, u)`` with ``u`` of shape ``(num_t, num_x)``.
        """
        z, w = _check_params(z, w, 2)
        x = np.linspace(0.0, 1.0, num_x)
        t = np.linspace(0.0, 1.0, num_t)
        h = x[1] - x[0]
        nu, a = z

        def padded(v):
            return np.concatenate([[0.0], v, [0.0]])

        def rhs(_, v):
            u = padded(v)
            return (
                -a * (u[2:] ** 2 - u[:-2] ** 2) / (4 * h)
                + nu * (u[2:] - 2 * u[1:-1] + u[:-2]) / h**2
            )

        def jac(_, v):
            u = padded(v)
            lower = a * u[1:-2] / (2 * h) + nu / h**2
            upper = -a * u[2:-1] / (2 * h) + nu / h**2
            return diags([lower, np.full(len(v), -2 * nu / h**2), upper], [-1, 0, 1], format="csc")

        # BDF may try a step whose Newton iterate overflows; it rejects that step and halves
        # h, so the floating-point warnings of the rejected try are silenced here and the
        # accepted solution is checked for finiteness below instead.
        with np.errstate(over="ignore", invalid="ignore"):
            sol = solve_ivp(
                rhs,
                (0.0, 1.0),
                self.initial_condition(x[1:-1], w[0]),
                method="BDF",
                t_eval=t,
                jac=jac,
                rtol=rtol,
                atol=rtol / 100,
            )
        if not sol.success:
            raise RuntimeError(f"Burgers MOL solve failed: {sol.message}")
        if not np.all(np.isfinite(sol.y)):
            raise RuntimeError(
                f"Burgers MOL solve gave non-finite values for z={z.tolist()}, w={w.tolist()}; "
                "raise num_x or lower rtol"
            )
        u = np.zeros((num_t, num_x))
        u[:, 1:-1] = sol.y.T
        return x, t, u

    def cole_hopf(
        self, z: np.ndarray, w: np.ndarray, x: np.ndarray, t: np.ndarray, num_modes: int = 400
    ) -> np.ndarray:
        r"""Exact solution by the Cole–Hopf transform, valid for every ``z_1 > 0``.

        With :math:`v = z_1 u` (so :math:`v_t + v v_x = z_0 v_{xx}`) and
        :math:`v = -2 z_0 \theta_x / \theta`, :math:`\theta` solves the heat equation with
        Neumann conditions, so

        .. math:: \theta = \sum_n a_n e^{-z_0 n^2 \pi^2 t} \cos(n\pi x),\quad
            \theta(x, 0) = \exp\Big(-\frac{z_1}{2 z_0}\int_0^x u(s, 0)\, ds\Big).

        Cosine coefficients by the trapezoid rule on 8193 points; the initial primitive by
        cumulative Simpson-accurate trapezoid on the same grid.

        Args:
            z, w: parameters as in :meth:`solve`.
            x, t: 1-D arrays; the result is on their tensor grid.
            num_modes: cosine modes kept.

        Returns:
            ``u`` of shape ``(len(t), len(x))``.
        """
        z, w = _check_params(z, w, 2)
        nu, a = z
        s = np.linspace(0.0, 1.0, 8193)
        u0 = self.initial_condition(s, w[0])
        primitive = np.concatenate([[0.0], np.cumsum(0.5 * (u0[1:] + u0[:-1]) * np.diff(s))])
        log_theta0 = -a / (2 * nu) * primitive
        theta0 = np.exp(log_theta0 - log_theta0.max())
        n = np.arange(num_modes)
        coef = np.trapezoid(theta0[None, :] * np.cos(np.pi * n[:, None] * s[None, :]), s, axis=1)
        coef[1:] *= 2.0
        x, t = np.asarray(x, float), np.asarray(t, float)
        decay = np.exp(-nu * (np.pi * n[None, :]) ** 2 * t[:, None]) * coef[None, :]  # (t, n)
        theta = decay @ np.cos(np.pi * n[:, None] * x[None, :])
        theta_x = decay @ (-np.pi * n[:, None] * np.sin(np.pi * n[:, None] * x[None, :]))
        return -2.0 * nu / a * theta_x / theta


def _check_params(z, w, num_z):
    z = np.asarray(z, dtype=float).reshape(-1)
    w = np.asarray(w, dtype=float).reshape(-1)
    if z.shape != (num_z,) or w.shape != (1,):
        raise ValueError(
            f"need z of shape ({num_z},) and w of shape (1,); got {z.shape}, {w.shape}"
        )
    if not (np.isfinite(z).all() and np.isfinite(w).all()):
        raise ValueError("z and w must be finite")
    return z, w
