"""Linear advection with a travelling-wave solution."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array
from ucsciml.pde.base import Unknown
from ucsciml.pde.manufactured import AbstractManufacturedPDE


@dataclass(frozen=True, eq=False)
class Advection(AbstractManufacturedPDE):
    r"""Advection :math:`\beta u_x + u_t = 0` on :math:`[0, 2\pi] \times [0, 1]`.

    Data on the inflow faces only: the initial line ``t = 0`` and both ends in ``x``.
    Without a ``solution`` the reference is the travelling wave :math:`u = \sin(x - \beta t)`
    at β's value (its ``truth`` when β is :class:`~ucsciml.pde.Unknown`), which solves the
    homogeneous equation for every β, so the forcing is zero and a case file with sensor data
    (``[pde] name = "advection"``) needs no forcing. A given ``solution`` manufactures its
    forcing as for every :class:`~ucsciml.pde.AbstractManufacturedPDE`.

    Args:
        beta: advection speed, a number or :class:`~ucsciml.pde.Unknown`.
        solution: manufactured solution ``(n, 2) -> (n,)``, columns ``(x, t)``, or ``None``
            (the travelling wave at β).
    """

    beta: float | Unknown = 200.0
    solution: Callable[[Array], Array] | None = None

    coords = ("x", "t")
    derivatives = ("u_x", "u_t")
    domain = {"x": (0.0, 2.0 * np.pi), "t": (0.0, 1.0)}
    boundary_faces = ("x-", "x+", "t-")

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return params["beta"] * derivs["u_x"] + derivs["u_t"]

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        """``beta u_x + u_t - f``; without a ``solution`` the forcing is zero and ``f`` may be
        left out of ``derivs`` (a solver that does not pass forcing, e.g. the B-PINN)."""
        if self.solution is None and "f" not in derivs:
            return self.operator(derivs, params)
        return super().residual(derivs, params)

    def source(self, points: Array, params: Mapping[str, float] | None = None) -> Array:
        """The forcing at ``points``: zero for the travelling wave, else manufactured."""
        if self.solution is None:
            return jnp.zeros(jnp.shape(points)[0])
        return super().source(points, params)

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """The reference solution: ``sin(x - beta t)`` at ``params["beta"]`` (default: β's
        true value), or the given ``solution``.

        Raises:
            ValueError: for the travelling wave when β is Unknown without ``truth``.
        """
        if self.solution is not None:
            return super().solve(points, params)
        beta = (self.true_parameters() if params is None else params)["beta"]
        points = np.asarray(points, dtype=float)
        return np.sin(points[:, 0] - float(beta) * points[:, 1])
