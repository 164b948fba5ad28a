"""The heat equation with an exact solution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array
from ucsciml.pde.base import AbstractPDE, Unknown


@dataclass(frozen=True, eq=False)
class Heat(AbstractPDE):
    r"""Heat equation on :math:`x \in [-1, 1]`, :math:`t \in [0, 1]`.

    .. math:: u_t - \kappa u_{xx} = 0,\quad u(x, 0) = -\sin(\pi x),\quad u(\pm 1, t) = 0,

    with exact solution :math:`u = -e^{-\kappa \pi^2 t} \sin(\pi x)`.

    Args:
        kappa: diffusivity (> 0), a number or :class:`Unknown` with a positive prior.
    """

    kappa: float | Unknown = 0.1

    coords = ("x", "t")
    derivatives = ("u_t", "u_xx")
    domain = {"x": (-1.0, 1.0), "t": (0.0, 1.0)}
    positive = ("kappa",)
    linear = True
    boundary_faces = ("x-", "x+", "t-")

    def faces(self) -> tuple[str, ...]:
        """Faces with data: both ends in ``x`` and the initial line."""
        return self.boundary_faces

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        return derivs["u_t"] - params["kappa"] * derivs["u_xx"]

    def ansatz(self):
        def boundary(p):
            return -jnp.sin(jnp.pi * p[:, 0])

        def distance(p):
            return p[:, 1] * (1.0 - p[:, 0] ** 2)

        return boundary, distance

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """Exact solution ``-exp(-kappa pi^2 t) sin(pi x)``."""
        kappa = (self.true_parameters() if params is None else params)["kappa"]
        points = np.asarray(points, dtype=float)
        return -np.exp(-kappa * np.pi**2 * points[:, 1]) * np.sin(np.pi * points[:, 0])
