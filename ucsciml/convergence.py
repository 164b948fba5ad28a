"""Convergence verdicts for optimisations: every fit ends with one, none is assumed.

A fit (a MAP fit, an ensemble member, Laplace's mode search, VI, a dropout fit) is judged
from its loss trace and, where the backend has it, the gradient's largest component at the
end point, in the space the optimiser works in:

* **loss change**: the mean loss over the last window (10% of the steps) against the window
  before it, relative to ``max(1, |loss|)``. For stochastic objectives (VI's ELBO, dropout's
  masked loss) it is the least-squares trend over the last two windows, projected over one
  window, less three standard errors of the trend, so noise alone does not fail a fit;
* **end point**, where the backend measured it (deterministic MAP fits): the largest
  gradient component ``max |g|`` and the loss decrease a Newton step along the gradient
  predicts, ``d = |g|^4 / (2 g^T H g)`` (one Hessian-vector product). ``d`` is in nats of
  log density whatever the parameters' scale: near a Gaussian optimum a point ``delta``
  posterior standard deviations away along the gradient has ``d = delta^2 / 2``, so the
  default ``dtol = 5e-3`` asks for ``delta <= 0.1``. (Along the gradient only: an offset in
  a flat direction the gradient barely sees is underestimated.)

A fit converges when its losses are finite and, where the end point was measured,
``d <= dtol`` or ``max |g| <= gtol`` (the latter for a point so close that the curvature
along ``g`` is lost in rounding); where it was not (stochastic objectives), when the loss
change is at most ``rtol``. The end point decides when it is known because the loss change
alone misleads both ways: Adam on a decayed rate stalls with a flat loss far from the optimum, and a trace whose
last window spans an Adam-to-L-BFGS switch changes a lot even when L-BFGS has converged.
The first of these is also the limit of a loss-only verdict: a stochastic fit whose rate has
decayed to nearly nothing reads as converged however far it stopped from the optimum, so
VI and dropout verdicts are only as good as their schedules. The verdict of a phase of several fits
(members, chains, replicates) counts those that failed and names the worst; it is a plain,
JSON-able dict so that it travels in ``Posterior.attrs["optimization"]["convergence"]`` into
the DataTree, ``diagnostics.check``, ``ucsciml summary`` and the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Default tolerance on the relative loss change over the last window.
RTOL = 1e-5
#: Default tolerance on the largest gradient component at the end point.
GTOL = 1e-3
#: Default tolerance on the Newton decrease along the gradient (nats): 0.1 sd.
DTOL = 5e-3
#: Fraction of the steps in the final window.
WINDOW = 0.1
#: Fewest steps of a stochastic loss that can be judged: two final windows of 10 points,
#: the least over which a slope is told from the noise at all. A shorter trace is reported
#: as not converged (too short to judge), never as converged.
MIN_STOCHASTIC_STEPS = 100


def judge(
    losses: np.ndarray,
    end_checks: np.ndarray | Sequence[float] | None = None,
    *,
    phase: str,
    rtol: float = RTOL,
    gtol: float = GTOL,
    dtol: float = DTOL,
    stochastic: bool = False,
    hint: str = "raise the number of steps (or L-BFGS steps), or lower the learning rate",
    decisive: bool = True,
    trend_fraction: float | None = None,
) -> dict[str, Any]:
    """The convergence verdict of one or several fits.

    Args:
        losses: ``(steps,)`` or ``(fits, steps)`` loss traces.
        end_checks: ``(fits, 2)`` (or ``(2,)`` for one fit): ``[max |g|, d]`` at each end
            point (``inference._map.end_point_checks``), or ``None`` when the backend did
            not measure them (then the loss change is judged).
        phase: what was optimised, for the message (e.g. ``"ensemble members"``).
        rtol: tolerance on the relative loss change over the last window.
        gtol: tolerance on the largest gradient component.
        dtol: tolerance on the Newton decrease along the gradient, in nats.
        stochastic: the loss is a Monte Carlo estimate; allow its noise.
        hint: what to do when fits fail, appended to the message.
        decisive: the fits are the result (ensemble members, Laplace's mode, VI's guide),
            not a starting point (NUTS's or VI's MAP start, which later steps move on from);
            ``diagnostics.check`` warns only for decisive failures and mentions the others.
        trend_fraction: stochastic losses only: the fraction of the trace (at least two
            windows) over which the trend is fitted; ``None`` fits the last two windows. A
            longer stretch sees a slow, steady descent that the noise of two windows hides
            (a neural process's ELBO still falling 1% per window reads as flat over two).

    Returns:
        ``{"phase", "converged", "fits", "failed", "relative_change", "grad_norm",
        "decrease", "rtol", "gtol", "dtol", "stochastic", "decisive", "message"}``; the
        measures are the worst over fits (``grad_norm`` and ``decrease`` are ``None`` when
        not measured). A stochastic loss of fewer than :data:`MIN_STOCHASTIC_STEPS` steps
        is too short to judge and fails. A failed verdict is also logged as a warning.

    Raises:
        ValueError: for an empty trace or mismatched gradient norms.
    """
    traces = np.atleast_2d(np.asarray(losses, dtype=float))
    if traces.ndim != 2 or traces.shape[1] == 0:
        raise ValueError(f"judge(losses=...) needs (steps,) or (fits, steps), got {traces.shape}")
    if not (rtol > 0 and gtol > 0 and dtol > 0):
        raise ValueError(f"judge needs rtol, gtol, dtol > 0, got {rtol}, {gtol}, {dtol}")
    if trend_fraction is not None and not 0 < trend_fraction <= 1:
        raise ValueError(f"judge(trend_fraction=...) must be in (0, 1], got {trend_fraction}")
    change = np.array([_relative_change(t, stochastic, trend_fraction) for t in traces])
    finite = np.isfinite(traces).all(axis=1)
    grads = decrease = None
    if end_checks is None:
        ok = finite & (change <= rtol)
    else:
        checks = np.asarray(end_checks, dtype=float).reshape(-1, 2)
        if checks.shape[0] != traces.shape[0]:
            raise ValueError(
                f"judge: {checks.shape[0]} end-point checks for {traces.shape[0]} loss traces"
            )
        grads, decrease = checks[:, 0], checks[:, 1]
        ok = finite & ((grads <= gtol) | (decrease <= dtol))
    short = stochastic and end_checks is None and traces.shape[1] < MIN_STOCHASTIC_STEPS
    if short:
        ok = np.zeros_like(ok)
    failed = int((~ok).sum())
    worst_change = float(np.nanmax(np.where(np.isfinite(change), change, np.inf)))
    worst_grad = None if grads is None else _worst(grads)
    worst_decrease = None if decrease is None else _worst(decrease)
    verdict = {
        "phase": phase,
        "converged": failed == 0,
        "fits": int(traces.shape[0]),
        "failed": failed,
        "relative_change": worst_change,
        "grad_norm": worst_grad,
        "decrease": worst_decrease,
        "rtol": float(rtol),
        "gtol": float(gtol),
        "dtol": float(dtol),
        "stochastic": bool(stochastic),
        "decisive": bool(decisive),
    }
    steps = int(traces.shape[1]) if short else None
    verdict["message"] = _message(verdict, int((~finite).sum()), hint, steps)
    if failed:
        (log.warning if decisive else log.info)("%s", verdict["message"])
    return verdict


def combine(verdicts: Sequence[dict[str, Any]], phase: str) -> dict[str, Any]:
    """One verdict for several phases judged alike (e.g. batches of replicate refits)."""
    if not verdicts:
        raise ValueError("combine needs at least one verdict")
    grads = [v["grad_norm"] for v in verdicts if v["grad_norm"] is not None]
    decrease = [v["decrease"] for v in verdicts if v.get("decrease") is not None]
    out = {
        "phase": phase,
        "converged": all(v["converged"] for v in verdicts),
        "fits": sum(v["fits"] for v in verdicts),
        "failed": sum(v["failed"] for v in verdicts),
        "relative_change": max(v["relative_change"] for v in verdicts),
        "grad_norm": max(grads) if grads else None,
        "decrease": max(decrease) if decrease else None,
        "rtol": verdicts[0]["rtol"],
        "gtol": verdicts[0]["gtol"],
        "dtol": verdicts[0].get("dtol", DTOL),
        "stochastic": verdicts[0]["stochastic"],
        "decisive": any(v.get("decisive", True) for v in verdicts),
    }
    failing = [v["message"] for v in verdicts if not v["converged"]]
    out["message"] = (
        failing[0].replace(verdicts[0]["phase"], phase, 1)
        if failing
        else (f"{phase}: all {out['fits']} converged")
    )
    return out


def verdicts_of(record: Any) -> list[dict[str, Any]]:
    """The verdicts stored in an ``optimization`` record (one dict or a list under
    ``"convergence"``); empty when the backend stored none."""
    if not isinstance(record, dict):
        return []
    found = record.get("convergence")
    if isinstance(found, dict):
        return [found]
    if isinstance(found, list):
        return [v for v in found if isinstance(v, dict)]
    return []


def _worst(values: np.ndarray) -> float:
    return float(np.max(np.where(np.isfinite(values), values, np.inf)))


def _relative_change(
    trace: np.ndarray, stochastic: bool, trend_fraction: float | None = None
) -> float:
    """How much the loss still moves over one window (10% of the steps), relative to
    ``max(1, |loss|)``.

    Deterministic losses: the last window's mean against the window before. Stochastic
    losses: the least-squares slope over the last two windows times the window length, less
    three standard errors of that slope (never below 0), so that noise alone reads as 0 and
    a trend shows once the data can tell it from noise.
    """
    n = trace.shape[0]
    if not np.isfinite(trace).all():
        return float("inf")
    if n < 2:
        return 0.0
    window = min(max(1, int(round(WINDOW * n))), n // 2)
    last = trace[-window:]
    scale = max(1.0, abs(float(last.mean())))
    if not stochastic or 2 * window < 4:
        prev = trace[-2 * window : -window]
        return abs(float(last.mean() - prev.mean())) / scale
    span = 2 * window if trend_fraction is None else max(2 * window, int(trend_fraction * n))
    tail = trace[-span:]
    steps = np.arange(tail.shape[0], dtype=float)
    steps -= steps.mean()
    slope = float(steps @ (tail - tail.mean()) / (steps @ steps))
    resid = tail - tail.mean() - slope * steps
    slope_se = float(np.sqrt(resid @ resid / (tail.shape[0] - 2) / (steps @ steps)))
    return max(0.0, abs(slope) - 3.0 * slope_se) * window / scale


def _message(verdict: dict[str, Any], nonfinite: int, hint: str, short: int | None) -> str:
    phase, fits, failed = verdict["phase"], verdict["fits"], verdict["failed"]
    if short is not None:
        return (
            f"{phase}: {'the fits are' if fits > 1 else 'the fit is'} too short to judge "
            f"({short} steps of a stochastic loss; at least {MIN_STOCHASTIC_STEPS} are needed "
            f"to tell a trend from the noise), so NOT CONVERGED is assumed. "
            f"{hint[0].upper() + hint[1:]}."
        )
    grad, change = verdict["grad_norm"], verdict["relative_change"]
    if grad is None:
        measured = f"loss change over the last window {change:.2g}, rtol {verdict['rtol']:.2g}"
    else:
        measured = (
            f"Newton decrease along the gradient {verdict['decrease']:.2g} nats, dtol "
            f"{verdict['dtol']:.2g}; largest gradient component {grad:.2g}, gtol "
            f"{verdict['gtol']:.2g}; loss change over the last window {change:.2g}"
        )
    if not failed:
        return f"{phase}: {'all ' + str(fits) if fits > 1 else 'the fit'} converged ({measured})"
    which = f"{failed} of {fits}" if fits > 1 else "the fit"
    nan = f"; {nonfinite} ended at a non-finite loss" if nonfinite else ""
    return (
        f"{phase}: {which} did NOT converge (worst: {measured}{nan}); the estimates sit "
        f"short of the optimum. {hint[0].upper() + hint[1:]}."
    )
