r"""The Generalised Porous Medium Equation family and two hyperbolic laws, with exact solutions.

Every problem here is a 1-D conservation law :math:`u_t + \partial_x F(u, u_x) = 0` on an
interval, so the mass :math:`M(t) = \int u(x, t)\,dx` obeys

.. math:: M(t) = M(0) + \int_0^t \big(F(x_{\rm left}, s) - F(x_{\rm right}, s)\big)\,ds,

the right-hand side :math:`b(t)` of the ProbConserv constraint. For the GPME,
:math:`F = -k(u) u_x` with

* heat (constant diffusivity ``c``, periodic, :math:`u = e^{-ct}\sin x`, :math:`b = 0`),
* porous medium (:math:`k = u^m`, :math:`u = (m(t - x)_+)^{1/m}`),
* Stefan (:math:`k = 1\{u \ge u^*\}`, erf profile behind the front :math:`x^*(t) = \alpha\sqrt t`);

and from the paper's appendix, linear advection :math:`F = \beta u` and inviscid Burgers
:math:`F = a u^2/2`, both from a Riemann step (a moving shock). Each problem gives the exact
solution (:meth:`solve`), the closed-form mass (:meth:`mass`), the boundary data it comes from
(:meth:`initial_mass`, :meth:`net_inflow`), the front (:meth:`front`, hyperbolic and Stefan)
and the PDE residual in its smooth region. Parameter ranges and test values follow the paper.

References:
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (ProbConserv), section 4 and appendix.
    Vázquez (2007), The Porous Medium Equation, Oxford (the travelling-wave PME solution).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq
from scipy.special import erf

from ucsciml._types import Array
from ucsciml.pde.base import AbstractPDE


def mass_rhs(
    initial_mass: float,
    net_inflow: Callable[[np.ndarray], np.ndarray],
    t: np.ndarray,
    num_nodes: int = 64,
) -> np.ndarray:
    r"""The conservation right-hand side :math:`b(t) = M(0) + \int_0^t q(s)\,ds`.

    ``q`` is the net boundary inflow (flux in at the left minus flux out at the right). The
    integral uses Gauss–Legendre after the substitution :math:`s = t v^2`, which removes the
    :math:`s^{-1/2}` and :math:`s^{1/m}` singularities at :math:`s = 0` (Stefan, PME).

    Args:
        initial_mass: :math:`\int u(x, 0)\,dx`.
        net_inflow: vectorised ``q(s)``.
        t: times (any shape, >= 0).
        num_nodes: quadrature nodes.

    Returns:
        ``b`` with the shape of ``t``.
    """
    t = np.asarray(t, dtype=float)
    if np.any(t < 0):
        raise ValueError(f"mass_rhs(t=...) needs times >= 0, got min {t.min()}")
    nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
    v, w = 0.5 * (nodes + 1.0), 0.5 * weights
    s = t[..., None] * v**2
    return initial_mass + np.sum(w * net_inflow(s) * 2.0 * t[..., None] * v, axis=-1)


@dataclass(frozen=True, eq=False)
class AbstractConservationLaw(AbstractPDE):
    """A 1-D conservation law with an exact solution and its mass balance.

    Class attributes (besides :class:`AbstractPDE`'s):
        parameter: name of the parameter that varies across the family.
        parameter_range: ``(low, high)`` of its uniform family distribution.
        test_values: the paper's test values.
        t_star: the evaluation time used by the ProbConserv study.
    """

    coords = ("x", "t")
    parameter: ClassVar[str] = ""
    parameter_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    test_values: ClassVar[tuple[float, ...]] = ()
    t_star: ClassVar[float] = 0.5

    def _value(self, params: Mapping[str, float] | None) -> float:
        return float((self.true_parameters() if params is None else params)[self.parameter])

    def initial_mass(self) -> float:
        """:math:`\\int u(x, 0)\\,dx` over the domain."""
        raise NotImplementedError

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        """Boundary flux in at the left minus out at the right, at times ``t``."""
        raise NotImplementedError

    def mass(self, t: np.ndarray) -> np.ndarray:
        """Closed-form :math:`b(t) = \\int u(x, t)\\,dx` (equal to :func:`mass_rhs`)."""
        raise NotImplementedError

    def front(self, t: np.ndarray) -> np.ndarray | None:
        """Position of the moving front/shock at ``t``, or ``None`` for smooth problems."""
        return None


@dataclass(frozen=True, eq=False)
class GPMEHeat(AbstractConservationLaw):
    r"""Heat equation :math:`u_t = c\,u_{xx}` on :math:`[0, 2\pi]` periodic, :math:`t \in [0, 1]`.

    Exact solution :math:`u = e^{-ct}\sin x`; the mass is zero at all times (:math:`b = 0`).
    Family: :math:`c \sim U[1, 5]`; test values :math:`c \in \{1, 5\}`.
    """

    c: float = 1.0

    derivatives = ("u_t", "u_xx")
    domain = {"x": (0.0, 2.0 * np.pi), "t": (0.0, 1.0)}
    positive = ("c",)
    parameter = "c"
    parameter_range = (1.0, 5.0)
    test_values = (1.0, 5.0)
    t_star = 0.5

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_t"] - params["c"] * derivs["u_xx"]

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        return np.exp(-self._value(params) * points[:, 1]) * np.sin(points[:, 0])

    def initial_mass(self) -> float:
        return 0.0

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        return np.zeros_like(np.asarray(t, dtype=float))

    def mass(self, t: np.ndarray) -> np.ndarray:
        return np.zeros_like(np.asarray(t, dtype=float))


@dataclass(frozen=True, eq=False)
class PorousMedium(AbstractConservationLaw):
    r"""Porous medium equation :math:`u_t = (u^m u_x)_x` on :math:`x, t \in [0, 1]`.

    :math:`u(x, 0) = 0`, :math:`u(0, t) = (mt)^{1/m}`, :math:`u(1, t) = 0`; exact solution
    :math:`u = (m(t - x)_+)^{1/m}`, a front at :math:`x = t` that sharpens as :math:`m` grows.
    The inflow :math:`-u^m u_x|_{x=0} = (mt)^{1/m}` gives
    :math:`b(t) = m^{1 + 1/m} t^{1 + 1/m} / (m + 1)`.
    Family: :math:`m \sim U[1, 6]`; test values :math:`m \in \{1, 3, 6\}`.
    """

    m: float = 3.0

    derivatives = ("u", "u_t", "u_x", "u_xx")
    domain = {"x": (0.0, 1.0), "t": (0.0, 1.0)}
    positive = ("m",)
    parameter = "m"
    parameter_range = (1.0, 6.0)
    test_values = (1.0, 3.0, 6.0)
    t_star = 0.5

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        u, m = jnp.maximum(derivs["u"], 0.0), params["m"]
        flux_derivative = m * u ** (m - 1) * derivs["u_x"] ** 2 + u**m * derivs["u_xx"]
        return derivs["u_t"] - flux_derivative

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        m = self._value(params)
        points = np.asarray(points, dtype=float)
        return (m * np.maximum(points[:, 1] - points[:, 0], 0.0)) ** (1.0 / m)

    def initial_mass(self) -> float:
        return 0.0

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        m = self._value(None)
        return (m * np.asarray(t, dtype=float)) ** (1.0 / m)

    def mass(self, t: np.ndarray) -> np.ndarray:
        m = self._value(None)
        return m ** (1.0 + 1.0 / m) / (m + 1.0) * np.asarray(t, dtype=float) ** (1.0 + 1.0 / m)

    def front(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, dtype=float)


@dataclass(frozen=True, eq=False)
class Stefan(AbstractConservationLaw):
    r"""Stefan problem :math:`u_t = (k(u) u_x)_x`, :math:`k = 1\{u \ge u^*\}`, on :math:`[0, 1]`.

    :math:`u(x, 0) = 0`, :math:`u(0, t) = 1`. Behind the free boundary
    :math:`x^*(t) = \alpha\sqrt t` the solution is
    :math:`u = 1 - A\,\mathrm{erf}(x / 2\sqrt t)` with :math:`A = (1 - u^*)/\mathrm{erf}(\alpha/2)`;
    ahead of it :math:`u = 0`. Mass balance at the front (no flux beyond it) fixes
    :math:`z = \alpha/2` through :math:`u^* z\,\mathrm{erf}(z)\,e^{z^2} = (1 - u^*)/\sqrt\pi`,
    and the inflow :math:`-u_x(0, t) = A/\sqrt{\pi t}` gives :math:`b(t) = 2A\sqrt{t/\pi}`.
    Times :math:`t \in [0, 0.1]` keep the front inside the domain; :math:`t^* = 0.05`.
    Family: :math:`u^* \sim U[0.55, 0.7]`; test values :math:`u^* \in \{0.5, 0.6\}`.
    """

    u_star: float = 0.6

    derivatives = ("u", "u_t", "u_xx")
    domain = {"x": (0.0, 1.0), "t": (0.0, 0.1)}
    positive = ("u_star",)
    parameter = "u_star"
    parameter_range = (0.55, 0.7)
    test_values = (0.5, 0.6)
    t_star = 0.05

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.u_star < 1.0:
            raise ValueError(f"Stefan.u_star must be in (0, 1), got {self.u_star}")

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        k = (derivs["u"] >= params["u_star"]).astype(derivs["u"].dtype)
        return derivs["u_t"] - k * derivs["u_xx"]

    @staticmethod
    def front_coefficient(u_star: float) -> float:
        """:math:`\\alpha` of the free boundary :math:`x^* = \\alpha\\sqrt t`."""
        target = (1.0 - u_star) / np.sqrt(np.pi)
        z = brentq(lambda z: u_star * z * erf(z) * np.exp(z**2) - target, 1e-12, 10.0, xtol=1e-15)
        return 2.0 * z

    def _coefficients(self, params) -> tuple[float, float, float]:
        u_star = self._value(params)
        alpha = self.front_coefficient(u_star)
        return u_star, alpha, (1.0 - u_star) / erf(alpha / 2.0)

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        _, alpha, amplitude = self._coefficients(params)
        points = np.asarray(points, dtype=float)
        x, t = points[:, 0], points[:, 1]
        safe_t = np.where(t > 0, t, 1.0)
        inside = 1.0 - amplitude * erf(x / (2.0 * np.sqrt(safe_t)))
        u = np.where(x <= alpha * np.sqrt(np.maximum(t, 0.0)), inside, 0.0)
        return np.where(x == 0.0, 1.0, u)

    def initial_mass(self) -> float:
        return 0.0

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        _, _, amplitude = self._coefficients(None)
        return amplitude / np.sqrt(np.pi * np.asarray(t, dtype=float))

    def mass(self, t: np.ndarray) -> np.ndarray:
        _, _, amplitude = self._coefficients(None)
        return 2.0 * amplitude * np.sqrt(np.asarray(t, dtype=float) / np.pi)

    def front(self, t: np.ndarray) -> np.ndarray:
        _, alpha, _ = self._coefficients(None)
        return alpha * np.sqrt(np.asarray(t, dtype=float))


@dataclass(frozen=True, eq=False)
class LinearAdvection(AbstractConservationLaw):
    r"""Linear advection :math:`u_t + \beta u_x = 0` on :math:`[0, 1]` from a step.

    :math:`u(x, 0) = 1\{x \le 1/2\}`, inflow :math:`u(0, t) = 1`; exact solution
    :math:`u = 1\{x \le 1/2 + \beta t\}`, :math:`b(t) = 1/2 + \beta t`. Times
    :math:`t \in [0, 0.1]` keep the shock inside; :math:`t^* = 0.05`. Family
    :math:`\beta \sim U[1, 5]` (this module's choice of range).
    """

    beta: float = 1.0

    derivatives = ("u_t", "u_x")
    domain = {"x": (0.0, 1.0), "t": (0.0, 0.1)}
    positive = ("beta",)
    parameter = "beta"
    parameter_range = (1.0, 5.0)
    test_values = (1.0, 3.0)
    t_star = 0.05

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_t"] + params["beta"] * derivs["u_x"]

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        return (points[:, 0] <= 0.5 + self._value(params) * points[:, 1]).astype(float)

    def initial_mass(self) -> float:
        return 0.5

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        return np.full_like(np.asarray(t, dtype=float), self._value(None))

    def mass(self, t: np.ndarray) -> np.ndarray:
        return 0.5 + self._value(None) * np.asarray(t, dtype=float)

    def front(self, t: np.ndarray) -> np.ndarray:
        return 0.5 + self._value(None) * np.asarray(t, dtype=float)


@dataclass(frozen=True, eq=False)
class BurgersShock(AbstractConservationLaw):
    r"""Inviscid Burgers :math:`u_t + (a u^2/2)_x = 0` on :math:`[0, 1]` from a step.

    :math:`u(x, 0) = 1\{x \le 1/2\}`, inflow :math:`u(0, t) = 1`. The Rankine–Hugoniot speed
    is :math:`s = a/2`, so :math:`u = 1\{x \le 1/2 + at/2\}` and :math:`b(t) = 1/2 + at/2`.
    Times :math:`t \in [0, 0.2]`, :math:`t^* = 0.1`; family :math:`a \sim U[1, 4]` (this
    module's choice of range).
    """

    a: float = 1.0

    derivatives = ("u", "u_t", "u_x")
    domain = {"x": (0.0, 1.0), "t": (0.0, 0.2)}
    positive = ("a",)
    parameter = "a"
    parameter_range = (1.0, 4.0)
    test_values = (1.0, 3.0)
    t_star = 0.1

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_t"] + params["a"] * derivs["u"] * derivs["u_x"]

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        return (points[:, 0] <= 0.5 + 0.5 * self._value(params) * points[:, 1]).astype(float)

    def initial_mass(self) -> float:
        return 0.5

    def net_inflow(self, t: np.ndarray) -> np.ndarray:
        return np.full_like(np.asarray(t, dtype=float), 0.5 * self._value(None))

    def mass(self, t: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * self._value(None) * np.asarray(t, dtype=float)

    def front(self, t: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * self._value(None) * np.asarray(t, dtype=float)
