"""Allen–Cahn equations (nonlinear) in one and two dimensions with manufactured solutions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ucsciml._types import Array
from ucsciml.pde.manufactured import AbstractManufacturedPDE, sin_sin_solution, sin_solution

TWO_PI = 2.0 * np.pi


@dataclass(frozen=True, eq=False)
class AllenCahn1D(AbstractManufacturedPDE):
    r"""1-D Allen–Cahn equation on :math:`[0, 2\pi]`: :math:`u_{xx} + u(u^2 - 1) = f`.

    Nonlinear, so a GP solver keeps the joint optimisation of values and kernel.

    Args:
        solution: manufactured solution; default ``sin(100 x)``.
    """

    solution: Callable[[Array], Array] = field(default_factory=lambda: sin_solution(100.0))

    linear = False
    coords = ("x",)
    derivatives = ("u", "u_xx")
    domain = {"x": (0.0, TWO_PI)}

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        u = derivs["u"]
        return derivs["u_xx"] + u * (u**2 - 1.0)


@dataclass(frozen=True, eq=False)
class AllenCahn2D(AbstractManufacturedPDE):
    r"""2-D Allen–Cahn equation on :math:`[0, 2\pi]^2`: :math:`u_{xx} + u_{yy} + u(u^2-1) = f`.

    Args:
        solution: manufactured solution; default ``sin(6x) sin(6y)``.
    """

    solution: Callable[[Array], Array] = field(default_factory=lambda: sin_sin_solution(6.0, 6.0))

    linear = False
    coords = ("x", "y")
    derivatives = ("u", "u_xx", "u_yy")
    domain = {"x": (0.0, TWO_PI), "y": (0.0, TWO_PI)}

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        u = derivs["u"]
        return derivs["u_xx"] + derivs["u_yy"] + u * (u**2 - 1.0)
