"""PDEs with a forcing term and a manufactured (closed-form) solution.

The residual of such a PDE is ``L[u] - f``: the operator ``L`` comes from named derivatives as
for every :class:`~ucsciml.pde.AbstractPDE`, and the forcing ``f`` at the same points is passed
in the derivative mapping under the name ``"f"`` (a solver gets it from :meth:`source`). The
forcing is manufactured from the chosen solution by forward-mode autodiff
(:func:`ucsciml.pde.derivatives`), so any smooth closed form can be studied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array
from ucsciml.pde.autodiff import derivatives
from ucsciml.pde.base import AbstractPDE, Unknown


@dataclass(frozen=True, eq=False)
class AbstractManufacturedPDE(AbstractPDE):
    """A PDE ``L[u] = f`` whose forcing is manufactured from ``solution``.

    Class attributes (besides :class:`AbstractPDE`'s):
        linear: whether ``L`` is linear in ``u`` (linear PDEs admit an exact Gaussian solve).
        boundary_faces: faces with Dirichlet data, ``"x-"`` is ``x = low``, ``"t+"`` is
            ``t = high``; default: every face.

    Subclasses define :meth:`operator`; the field ``solution`` is a batched closed form
    ``(n, d) -> (n,)`` (see the ``*_solution`` helpers of this module).
    """

    linear: ClassVar[bool] = True
    boundary_faces: ClassVar[tuple[str, ...] | None] = None

    def parameters(self) -> dict[str, float | Unknown]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solution"}

    def operator(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        """``L[u]`` from named derivatives."""
        raise NotImplementedError

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        """``L[u] - f``; ``derivs["f"]`` is the forcing at the same points."""
        return self.operator(derivs, params) - derivs["f"]

    def source(self, points: Array, params: Mapping[str, float] | None = None) -> Array:
        """The manufactured forcing ``f = L[solution]`` at ``points`` (``(n, d)``)."""
        params = self.true_parameters() if params is None else params
        derivs = derivatives(self.solution, jnp.asarray(points), self.derivatives, self.coords)
        if "u" in self.derivatives:
            derivs["u"] = self.solution(jnp.asarray(points))
        return self.operator(derivs, params)

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """The manufactured solution at ``points``, float64 numpy."""
        return np.asarray(self.solution(jnp.asarray(points)), dtype=np.float64)

    def faces(self) -> tuple[str, ...]:
        """Faces that carry Dirichlet data."""
        if self.boundary_faces is not None:
            return self.boundary_faces
        return tuple(f"{c}{s}" for c in self.coords for s in "-+")


def sin_solution(a: float) -> Callable[[Array], Array]:
    """``u = sin(a x)``."""
    return lambda p: jnp.sin(a * p[:, 0])


def sin_cos_solution(a: float, b: float) -> Callable[[Array], Array]:
    """``u = sin(a x) cos(b x)`` (multi-scale)."""
    return lambda p: jnp.sin(a * p[:, 0]) * jnp.cos(b * p[:, 0])


def x_sin_solution(a: float) -> Callable[[Array], Array]:
    """``u = x sin(a x)``."""
    return lambda p: p[:, 0] * jnp.sin(a * p[:, 0])


def sin_sin_solution(a: float, b: float) -> Callable[[Array], Array]:
    """``u = sin(a x) sin(b y)``."""
    return lambda p: jnp.sin(a * p[:, 0]) * jnp.sin(b * p[:, 1])


def sum_sin_cos_solution(a: float, b: float) -> Callable[[Array], Array]:
    """``u = sin(a x)cos(b x) + sin(a y)cos(b y)``."""

    def solution(p):
        return sum(jnp.sin(a * p[:, i]) * jnp.cos(b * p[:, i]) for i in range(2))

    return solution


def travelling_wave_solution(beta: float) -> Callable[[Array], Array]:
    """``u = sin(x - beta t)``, the solution of ``beta u_x + u_t = 0``."""
    return lambda p: jnp.sin(p[:, 0] - beta * p[:, 1])
