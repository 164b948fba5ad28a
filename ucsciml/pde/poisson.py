"""Poisson equations in one and two dimensions with manufactured solutions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ucsciml._types import Array
from ucsciml.pde.manufactured import AbstractManufacturedPDE, sin_solution, sum_sin_cos_solution

TWO_PI = 2.0 * np.pi


@dataclass(frozen=True, eq=False)
class Poisson1D(AbstractManufacturedPDE):
    r"""1-D Poisson equation on :math:`[0, 2\pi]` with Dirichlet data at both ends.

    .. math:: u_{xx} = f(x),\qquad f = u^{\star\prime\prime}

    Args:
        solution: manufactured solution ``(n, 1) -> (n,)``; default ``sin(100 x)``.

    Example:
        >>> import numpy as np
        >>> pde = Poisson1D()
        >>> float(pde.source(np.array([[0.01]]))[0])  # -100^2 sin(1)
        -8414.709848078966
    """

    solution: Callable[[Array], Array] = field(default_factory=lambda: sin_solution(100.0))

    coords = ("x",)
    derivatives = ("u_xx",)
    domain = {"x": (0.0, TWO_PI)}

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_xx"]


@dataclass(frozen=True, eq=False)
class Poisson2D(AbstractManufacturedPDE):
    r"""2-D Poisson equation on :math:`[0, 2\pi]^2` with Dirichlet data on the boundary.

    .. math:: u_{xx} + u_{yy} = f(x, y)

    Args:
        solution: manufactured solution ``(n, 2) -> (n,)``; default
            ``sin(6x)cos(20x) + sin(6y)cos(20y)``.
    """

    solution: Callable[[Array], Array] = field(
        default_factory=lambda: sum_sin_cos_solution(6.0, 20.0)
    )

    coords = ("x", "y")
    derivatives = ("u_xx", "u_yy")
    domain = {"x": (0.0, TWO_PI), "y": (0.0, TWO_PI)}

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_xx"] + derivs["u_yy"]
