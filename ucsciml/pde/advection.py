"""Linear advection with a travelling-wave solution."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ucsciml._types import Array
from ucsciml.pde.base import Unknown
from ucsciml.pde.manufactured import AbstractManufacturedPDE, travelling_wave_solution


@dataclass(frozen=True, eq=False)
class Advection(AbstractManufacturedPDE):
    r"""Advection :math:`\beta u_x + u_t = 0` on :math:`[0, 2\pi] \times [0, 1]`.

    Data on the inflow faces only: the initial line ``t = 0`` and both ends in ``x``.
    The default solution is :math:`u = \sin(x - \beta t)`; its forcing is zero.

    Args:
        beta: advection speed.
        solution: manufactured solution ``(n, 2) -> (n,)``, columns ``(x, t)``.
    """

    beta: float | Unknown = 200.0
    solution: Callable[[Array], Array] = field(
        default_factory=lambda: travelling_wave_solution(200.0)
    )

    coords = ("x", "t")
    derivatives = ("u_x", "u_t")
    domain = {"x": (0.0, 2.0 * np.pi), "t": (0.0, 1.0)}
    boundary_faces = ("x-", "x+", "t-")

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return params["beta"] * derivs["u_x"] + derivs["u_t"]
