"""The ``[conservation]`` table of a PDE-sensor case: a conservation law the predicted field
must satisfy, imposed after any backend.

The law is linear in the field: at every value of the other coordinates, the integral of
the field over ``over`` equals ``total``,

.. math:: \\int u(x, t)\\,dx = b \\quad\\text{for every } t,

discretised by the trapezoid rule on the evaluation grid, ``G u = b`` with one row per
slice, and imposed with noise ``noise_std`` (:math:`\\sigma_G`; 0 for an exact law). The
update itself is ProbConserv's (:func:`ucsciml.models.probconserv.conserve_prediction`,
reached through :data:`ucsciml.registry.UPDATES`): the runner moves every predictive draw
of the field, so the run's band, coverage, CRPS and report describe the conserved field,
and it records the conservation error and field scores before and after.

Where a law holds, say so in the case file: on ``x in [-1, 1]`` with ``u(x, 0) = -sin(pi x)``
and ``u(+-1, t) = 0``, the heat and Burgers solutions stay odd in ``x``, so their integral over
``x`` is 0 at every time (``total = 0``).

References:
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (ProbConserv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ConservationSettings:
    """The ``[conservation]`` table of a case file.

    Args:
        total: the conserved integral ``b`` (the same at every slice).
        over: the coordinate integrated over; the field's other coordinates index the
            constraints (one per evaluation-grid value).
        noise_std: :math:`\\sigma_G`, the law's tolerance (0: exact).
        jitter: variance added to the diagonal of the draws' moment-matched covariance;
            needed only when the draws are fewer than the constraints or do not vary in
            the constrained directions.
    """

    total: float
    over: str = "x"
    noise_std: float = 0.0
    jitter: float = 0.0

    def __post_init__(self):
        for name in ("total", "noise_std", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"[conservation] {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"[conservation] {name} must be finite, got {value!r}")
        if self.noise_std < 0 or self.jitter < 0:
            raise ValueError(
                f"[conservation] noise_std and jitter must be >= 0, got noise_std = "
                f"{self.noise_std}, jitter = {self.jitter}"
            )
        if not isinstance(self.over, str) or not self.over:
            raise ValueError(f"[conservation] over must name a coordinate, got {self.over!r}")

    def check_coords(self, coords: tuple[str, ...]) -> None:
        """``ValueError`` unless ``over`` is one of the PDE's ``coords`` and another is left
        to index the constraints."""
        if self.over not in coords:
            raise ValueError(
                f"[conservation] over = {self.over!r} is not a coordinate of the PDE; choose "
                f"one of {list(coords)}"
            )
        if len(coords) < 2:
            raise ValueError(
                "[conservation] needs a PDE with two or more coordinates: one to integrate "
                f"over and one to index the constraints; this PDE has {list(coords)}"
            )
