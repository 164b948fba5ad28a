"""What a PDE is to ucsciml: named derivatives in, residual out, parameters known or latent.

A PDE states the derivatives it needs by name (``"u_t"``, ``"u_xx"``: the letters after the
underscore are the coordinates differentiated, in any order) and builds its residual from a
mapping of those names to arrays. A network supplies the mapping by forward-mode autodiff
(:func:`ucsciml.pde.derivatives`), a GP by kernel derivatives, so both share one residual.
Parameters are numbers or :class:`Unknown` (a NumPyro prior); unknowns become latent sites.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import jax
import numpy as np
from numpyro.distributions import Distribution

from ucsciml._types import Array


@dataclass(frozen=True, eq=False)
class Unknown:
    """An unknown PDE parameter: a latent site with the given NumPyro prior.

    Args:
        prior: a ``numpyro.distributions.Distribution`` (scalar, batch shape ``()``).
        truth: the true value when known (synthetic studies); used to generate data and
            shown in reports, never by inference.

    Example:
        >>> import numpyro.distributions as dist
        >>> Unknown(dist.LogNormal(-5.0, 1.0), truth=0.0032).truth
        0.0032
    """

    prior: Distribution
    truth: float | None = None

    def __post_init__(self):
        if not isinstance(self.prior, Distribution):
            raise TypeError(
                f"Unknown(prior=...) needs a numpyro Distribution, got {type(self.prior).__name__}; "
                "e.g. Unknown(numpyro.distributions.LogNormal(0.0, 1.0))"
            )
        if self.prior.batch_shape != () or self.prior.event_shape != ():
            raise ValueError(
                f"Unknown prior must be scalar; got batch_shape {self.prior.batch_shape}, "
                f"event_shape {self.prior.event_shape}"
            )
        if self.truth is not None and not math.isfinite(self.truth):
            raise ValueError(f"Unknown(truth=...) must be finite, got {self.truth}")


def derivative_indices(name: str, coords: tuple[str, ...]) -> tuple[int, ...]:
    """Coordinate indices differentiated in a derivative name: ``"u_xt"`` -> ``(0, 1)``."""
    if name == "u":
        return ()
    head, _, letters = name.partition("_")
    if head != "u" or not letters:
        raise ValueError(
            f"derivative name '{name}' must look like 'u' or 'u_<coords>', e.g. 'u_xx'"
        )
    unknown = [c for c in letters if c not in coords]
    if unknown:
        raise ValueError(f"derivative '{name}' uses coordinate(s) {unknown}; PDE has {coords}")
    return tuple(sorted(coords.index(c) for c in letters))


@dataclass(frozen=True, eq=False)
class AbstractPDE:
    """Base of every PDE. Subclasses are frozen dataclasses whose fields are parameters.

    Class attributes:
        coords: coordinate names in column order, e.g. ``("x", "t")``.
        derivatives: derivative names the residual needs.
        domain: ``{coord: (low, high)}`` bounds for collocation.
        positive: names of parameters that must be > 0.
        linear: whether the residual is affine in ``u`` and its derivatives (a GP solver
            then solves for the field exactly).
    """

    coords: ClassVar[tuple[str, ...]] = ()
    linear: ClassVar[bool] = False
    derivatives: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[Mapping[str, tuple[float, float]]] = {}
    positive: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for name, value in self.parameters().items():
            if isinstance(value, Unknown):
                support_low = _support_lower_bound(value.prior)
                if name in self.positive and support_low is not None and support_low < 0:
                    raise ValueError(
                        f"{type(self).__name__}.{name} must be positive but its prior "
                        f"{type(value.prior).__name__} allows negative values; use a prior on "
                        "(0, inf), e.g. LogNormal or HalfNormal"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"{type(self).__name__}.{name} must be a number or Unknown(prior), "
                    f"got {type(value).__name__}"
                )
            if not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}.{name} must be finite, got {value}")
            if name in self.positive and value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0, got {value}")

    def parameters(self) -> dict[str, float | Unknown]:
        """All parameters by name: numbers or :class:`Unknown`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def unknowns(self) -> dict[str, Unknown]:
        """The parameters that are latent sites."""
        return {k: v for k, v in self.parameters().items() if isinstance(v, Unknown)}

    def true_parameters(self) -> dict[str, float]:
        """Numeric parameter values for generating synthetic truth.

        Raises:
            ValueError: when an unknown parameter has no ``truth``.
        """
        out = {}
        for name, value in self.parameters().items():
            if isinstance(value, Unknown):
                if value.truth is None:
                    raise ValueError(
                        f"{type(self).__name__}.{name} is Unknown without truth=...; give the "
                        "true value to generate synthetic data"
                    )
                value = value.truth
            out[name] = float(value)
        return out

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        """PDE residual from named derivatives and parameter values (zero for a solution)."""
        raise NotImplementedError

    def ansatz(self) -> tuple[Callable[[Array], Array], Callable[[Array], Array]] | None:
        """Hard-constraint ansatz ``(B, D)`` with ``u = B + D * N``, or ``None``."""
        return None

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """Reference solution at ``points`` (shape ``(n, len(coords))``), float64 numpy."""
        raise NotImplementedError

    def observables(self) -> dict[str, dict[str, float]]:
        """What sensors measure: ``{name: {derivative name: coefficient}}``, each observable a
        linear combination of derivatives of the field. The default, ``{"u": {"u": 1.0}}``,
        observes the field itself; a stream-function PDE observes velocity instead, e.g.
        ``{"u": {"u_y": 1.0}, "v": {"u_x": -1.0}}``."""
        return {"u": {"u": 1.0}}

    def solve_observables(
        self, points: np.ndarray, params: Mapping[str, float] | None = None
    ) -> dict[str, np.ndarray]:
        """Reference values of :meth:`observables` at ``points``; default ``{"u": solve(...)}``."""
        return {"u": self.solve(points, params)}

    def derivative_indices(self) -> dict[str, tuple[int, ...]]:
        """Each needed derivative's coordinate indices."""
        return {d: derivative_indices(d, self.coords) for d in self.derivatives}


def _support_lower_bound(prior: Distribution) -> float | None:
    support = prior.support
    low = getattr(support, "lower_bound", None)
    if low is None:
        return 0.0 if "positive" in type(support).__name__.lower() else -math.inf
    try:
        return float(jax.device_get(low))
    except TypeError:
        return None
