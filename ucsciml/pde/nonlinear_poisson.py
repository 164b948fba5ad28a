"""Parametric 1-D nonlinear Poisson equation with a Chebyshev-expanded conductivity.

The problem family of Vadeboncoeur et al. (2023): unknown coefficients ``z`` (five
Chebyshev weights of the conductivity) and a known forcing ``w``. Besides the residual (for
physics-informed training) it carries its own reference solver: second-order finite
differences in flux form, solved by Newton's method with a tridiagonal Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import chebyshev
from scipy.linalg import solve_banded

from ucsciml._types import Array


@dataclass(frozen=True)
class NonlinearPoisson1D:
    r"""``-(kappa(u, x; z) u')' = w`` on :math:`x \in [-1, 1]`, ``u(-1) = u(1) = 0``.

    .. math::
        \kappa(u, x; z) = \operatorname{softplus}\Big(u \sum_{n=0}^{N-1} z_n T_n(x)\Big) + 0.1,
        \qquad z \sim \mathcal U(-1, 1)^N,\quad w \sim \mathcal U(1, 2),

    with :math:`T_n` the Chebyshev polynomials. The domain is ``[-1, 1]`` (the natural one for
    Chebyshev polynomials, and the one of the paper's FEniCS data). Hard boundary conditions
    use the ansatz ``u = B + D N`` with ``B = 0`` and ``D = cos(pi x / 2)``.

    Args:
        num_terms: Chebyshev terms ``N`` (the size of ``z``).
        z_low, z_high: bounds of the uniform prior on every ``z_n``.
        w_low, w_high: bounds of the uniform prior on the forcing ``w``.

    Example:
        >>> pde = NonlinearPoisson1D()
        >>> x, u = pde.solve(np.zeros(5), np.array([1.0]), num_points=101)
        >>> round(float(u[50]), 3)  # kappa = log 2 + 0.1: u = w (1 - x^2) / (2 kappa)
        0.63

    References:
        Vadeboncoeur, Akyildiz, Kazlauskaite, Girolami & Cirak (2023), Fully probabilistic
        deep models for forward and inverse problems in parametric PDEs, JCP 491, and
        Vadeboncoeur et al. (2023), Random Grid Neural Processes for Parametric Partial
        Differential Equations, ICML.
    """

    num_terms: int = 5
    z_low: float = -1.0
    z_high: float = 1.0
    w_low: float = 1.0
    w_high: float = 2.0

    coords = ("x",)
    domain = {"x": (-1.0, 1.0)}

    def __post_init__(self):
        if not isinstance(self.num_terms, int) or self.num_terms < 1:
            raise ValueError(f"num_terms must be a positive integer, got {self.num_terms!r}")
        if not (self.z_low < self.z_high and self.w_low < self.w_high):
            raise ValueError("prior bounds need low < high for z and w")

    @property
    def num_z(self) -> int:
        return self.num_terms

    @property
    def num_w(self) -> int:
        return 1

    @property
    def z_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.num_terms, self.z_low), np.full(self.num_terms, self.z_high)

    @property
    def w_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.w_low]), np.array([self.w_high])

    # -- physics (JAX, one point at a time) --------------------------------------------------

    def conductivity(self, u: Array, x: Array, z: Array) -> Array:
        """``kappa(u, x; z)`` for scalar ``u`` and ``x``."""
        n = jnp.arange(self.num_terms)
        chebyshev_t = jnp.cos(n * jnp.arccos(jnp.clip(x, -1.0, 1.0)))
        return jax.nn.softplus(u * jnp.dot(z, chebyshev_t)) + 0.1

    def ansatz(self, point: Array, w: Array) -> tuple[Array, Array]:
        """``(B, D)`` at one point ``(1,)``: ``u = B + D N`` meets ``u(+-1) = 0`` exactly."""
        return jnp.zeros(()), jnp.cos(0.5 * jnp.pi * point[0])

    def residual(self, u_fn, point: Array, z: Array, w: Array) -> Array:
        r"""``(kappa u')' + w`` at one point ``(1,)`` of a scalar field ``u_fn: (1,) -> ()``.

        Derivatives are nested forward-mode ``jvp`` (the total derivative of the flux
        :math:`q = \kappa(u(x), x) u'(x)`, so ``kappa``'s dependence on ``u`` is included).
        """
        tangent = jnp.ones_like(point)

        def flux(p):
            u, u_x = jax.jvp(u_fn, (p,), (tangent,))
            return self.conductivity(u, p[0], z) * u_x

        _, flux_x = jax.jvp(flux, (point,), (tangent,))
        return flux_x + w[0]

    # -- reference solver (NumPy, float64) -----------------------------------------------------

    def reference(self, z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference field on the solver grid (201 points): ``(points (n, 1), u (n,))``."""
        x, u = self.solve(z, w, num_points=201)
        return x[:, None], u

    def solve(
        self,
        z: np.ndarray,
        w: np.ndarray,
        num_points: int = 201,
        forcing=None,
        tol: float = 1e-11,
        max_iter: int = 50,
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Reference solution by finite differences and Newton's method.

        Flux-form second-order scheme on a uniform grid ``x_0 = -1, ..., x_M = 1``:

        .. math:: -\frac{\kappa_{i+1/2}(u_{i+1} - u_i) - \kappa_{i-1/2}(u_i - u_{i-1})}{h^2}
            = f_i,\qquad \kappa_{i+1/2} = \kappa\big(\tfrac{u_i + u_{i+1}}2, x_{i+1/2}\big),

        solved by Newton's method (tridiagonal Jacobian, step halving when the residual norm
        does not fall). Second-order accurate (checked in the tests by a manufactured solution).

        Args:
            z: ``(num_terms,)`` Chebyshev weights.
            w: ``(1,)`` forcing (a constant source).
            num_points: grid points including both boundaries.
            forcing: optional callable ``f(x)`` replacing the constant ``w`` (manufactured
                solutions).
            tol: Newton stops when the max-norm update is below ``tol``.
            max_iter: Newton iteration cap.

        Returns:
            ``(x, u)``: the grid ``(num_points,)`` and the solution on it.

        Raises:
            ValueError: for wrong shapes, non-finite input or too few points.
            RuntimeError: when Newton does not converge.
        """
        z = np.asarray(z, dtype=float)
        w = np.asarray(w, dtype=float).reshape(-1)
        if z.shape != (self.num_terms,) or w.shape != (1,):
            raise ValueError(
                f"solve needs z of shape ({self.num_terms},) and w of shape (1,); "
                f"got {z.shape} and {w.shape}"
            )
        if not (np.isfinite(z).all() and np.isfinite(w).all()):
            raise ValueError("solve: z and w must be finite")
        if num_points < 3:
            raise ValueError(f"num_points must be >= 3, got {num_points}")
        x = np.linspace(-1.0, 1.0, num_points)
        h = x[1] - x[0]
        f = np.full(num_points - 2, w[0]) if forcing is None else forcing(x[1:-1])
        x_half = 0.5 * (x[1:] + x[:-1])
        s_half = chebyshev.chebval(x_half, z)
        u = np.zeros(num_points)

        def residual_and_jacobian(u):
            u_half = 0.5 * (u[1:] + u[:-1])
            a = u_half * s_half
            kappa = np.logaddexp(0.0, a) + 0.1
            dkappa = 0.5 * s_half / (1.0 + np.exp(-a))  # d kappa_{i+1/2} / d u_i (and u_{i+1})
            flux = kappa * np.diff(u) / h
            res = -(flux[1:] - flux[:-1]) / h - f
            dflux_left = (dkappa * np.diff(u) - kappa) / h  # d flux_{i+1/2} / d u_i
            dflux_right = (dkappa * np.diff(u) + kappa) / h  # d flux_{i+1/2} / d u_{i+1}
            diag = -(dflux_left[1:] - dflux_right[:-1]) / h
            upper = -dflux_right[1:-1] / h
            lower = dflux_left[1:-1] / h
            return res, diag, upper, lower

        for _ in range(max_iter):
            res, diag, upper, lower = residual_and_jacobian(u)
            banded = np.zeros((3, num_points - 2))
            banded[0, 1:], banded[1], banded[2, :-1] = upper, diag, lower
            step = solve_banded((1, 1), banded, -res)
            norm, scale = np.abs(res).max(), 1.0
            while scale > 1e-3:
                trial = u.copy()
                trial[1:-1] += scale * step
                if np.abs(residual_and_jacobian(trial)[0]).max() <= norm or norm < 1e-9:
                    break
                scale *= 0.5
            u = trial
            if np.abs(scale * step).max() < tol:
                return x, u
        raise RuntimeError(f"Newton did not converge in {max_iter} iterations (z={z}, w={w})")
