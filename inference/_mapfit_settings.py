"""One settings object for every MAP fit: :class:`MAPFit`, and the deprecated spellings.

NUTS and VI start from MAP fits, Laplace sits at one and a deep ensemble is several; all of
them take ``map=MAPFit(...)``. The keywords each backend used before (``map_steps``,
``map_learning_rate``, ``map_lbfgs_steps``; Laplace's and the ensemble's own names) are still
accepted for one release: :func:`legacy` declares such a keyword as a field and
:func:`fold_legacy` moves a given value into ``map`` with a ``DeprecationWarning``. Both
conventions are dataclass field metadata, so that case files (:mod:`ucsciml.config`) read
them without importing a backend: ``metadata["table"]`` marks a field written as a
sub-table (``[backend.nuts.map]``), ``metadata["deprecated"]`` names the new spelling of an
old key (``"map.adam_steps"``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from ucsciml.convergence import GTOL
from ucsciml.optimize import SCHEDULES


@dataclass(frozen=True)
class MAPFit:
    r"""How a MAP fit runs: Adam steps, then L-BFGS steps, in unconstrained space.

    The fit minimises the potential :math:`U(z) = -\log p(y, z)` with ``adam_steps`` Adam
    steps at rate :math:`\eta_t` and then ``lbfgs_steps`` L-BFGS steps (zoom line search),

    .. math::
        \eta_t = \eta_0\ (\text{constant}),\qquad
        \eta_t = \eta_0\, f^{t/T}\ (\text{exponential}),\qquad
        \eta_t = \eta_0\big(f + (1 - f)\tfrac12(1 + \cos(\pi t / T))\big)\ (\text{cosine}),

    with :math:`T` = ``adam_steps`` and :math:`f = 0.01`. Every step runs (there is no early
    stop): each phase is a fixed-length scan, and a fit repeats bit for bit. The end point is
    then judged (:func:`ucsciml.convergence.judge`): it converged when the Newton decrease
    along the gradient is within ``convergence.DTOL`` nats or its largest gradient component
    is at most ``lbfgs_tol``.

    Args:
        adam_steps: Adam steps (0: L-BFGS only).
        learning_rate: Adam's initial rate :math:`\eta_0`.
        schedule: ``"exponential"`` (the default: decay to 1% over the Adam steps),
            ``"cosine"`` (cosine decay to 1%) or ``"constant"``.
        lbfgs_steps: L-BFGS steps polishing the Adam point (0: none).
        lbfgs_tol: gradient tolerance of the end-point verdict (``gtol``), in the potential's
            units per unconstrained unit.

    Example:
        >>> from ucsciml.inference import NUTS, MAPFit
        >>> fit = MAPFit(adam_steps=1000, learning_rate=3e-3, lbfgs_steps=2500)
        >>> NUTS(init="map", map=fit).map.lbfgs_steps
        2500

    References:
        Kingma & Ba (2015), Adam: a method for stochastic optimization, ICLR. Liu & Nocedal
        (1989), On the limited memory BFGS method for large scale optimization, Math.
        Programming 45.
    """

    adam_steps: int = 2000
    learning_rate: float = 1e-2
    schedule: Literal["constant", "exponential", "cosine"] = "exponential"
    lbfgs_steps: int = 200
    lbfgs_tol: float = GTOL

    def __post_init__(self):
        for name in ("adam_steps", "lbfgs_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"MAPFit.{name} must be an integer >= 0, got {value!r}; e.g. "
                    f"MAPFit({name}={getattr(MAPFit, name)})"
                )
        if self.adam_steps + self.lbfgs_steps == 0:
            raise ValueError(
                "MAPFit needs adam_steps > 0 or lbfgs_steps > 0: a fit of no steps finds no "
                "mode; e.g. MAPFit(adam_steps=2000)"
            )
        for name in ("learning_rate", "lbfgs_tol"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(
                    f"MAPFit.{name} must be a finite number > 0, got {value!r}; e.g. "
                    f"MAPFit({name}={getattr(MAPFit, name)})"
                )
            object.__setattr__(self, name, float(value))
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"MAPFit.schedule must be one of {SCHEDULES}, got {self.schedule!r}; "
                "'exponential' is the default"
            )


def map_field(**defaults: Any) -> Any:
    """A backend's ``map`` setting: a :class:`MAPFit` with this backend's defaults, written
    as the sub-table ``[backend.<name>.map]`` in case files."""
    return field(default=MAPFit(**defaults), metadata={"table": MAPFit})


def legacy(new: str) -> Any:
    """A deprecated keyword kept for one release, now ``map.<new>``: ``None`` unless given,
    keyword-only, out of ``repr`` and comparisons; :func:`fold_legacy` moves it into ``map``."""
    if new not in {f.name for f in dataclasses.fields(MAPFit)}:
        raise ValueError(f"legacy({new!r}): MAPFit has no field {new!r}")
    return field(
        default=None,
        kw_only=True,
        repr=False,
        compare=False,
        metadata={"deprecated": f"map.{new}"},
    )


def legacy_names(backend: Any) -> tuple[str, ...]:
    """The deprecated keywords ``backend``'s class accepts."""
    return tuple(f.name for f in dataclasses.fields(backend) if "deprecated" in f.metadata)


def fold_legacy(backend: Any) -> None:
    """Check ``backend.map`` and move the deprecated keywords given to ``backend`` into it.

    Each given keyword warns (``DeprecationWarning``, naming the new spelling) and overrides
    that field of ``map``; the keyword is then reset to ``None``, so that
    ``dataclasses.replace(backend, ...)`` neither warns again nor undoes a new ``map``. Call
    it first in the backend's ``__post_init__`` (frozen dataclasses: ``object.__setattr__``).

    Raises:
        ValueError: when ``map`` is not a :class:`MAPFit`, or a moved value is invalid (the
            message names the old keyword and the MAPFit field).
    """
    cls = type(backend).__name__
    if not isinstance(backend.map, MAPFit):
        raise ValueError(
            f"{cls}.map must be a MAPFit, got {backend.map!r}; write "
            f"{cls}(map=MAPFit(adam_steps=..., learning_rate=..., lbfgs_steps=...))"
        )
    moved = {}
    for f in dataclasses.fields(backend):
        new = f.metadata.get("deprecated")
        value = getattr(backend, f.name)
        if new is None or value is None:
            continue
        key = new.split(".", 1)[1]
        warnings.warn(
            f"{cls}({f.name}=...) is deprecated; use {cls}(map=MAPFit({key}=...))",
            DeprecationWarning,
            stacklevel=4,  # fold_legacy <- __post_init__ <- __init__ <- the caller
        )
        moved[f.name] = (key, value)
        object.__setattr__(backend, f.name, None)
    if not moved:
        return
    try:
        fit = dataclasses.replace(backend.map, **{key: value for key, value in moved.values()})
    except ValueError as err:
        given = ", ".join(f"{name}={value!r}" for name, (_, value) in moved.items())
        raise ValueError(f"{cls}({given}): {err}") from None
    object.__setattr__(backend, "map", fit)


def settings_of(backend: Any) -> dict[str, Any]:
    """``backend``'s settings as a plain dict for provenance (``map`` a nested dict, the
    deprecated keywords, always folded into it, left out)."""
    skip = legacy_names(backend)
    return {k: v for k, v in dataclasses.asdict(backend).items() if k not in skip}
