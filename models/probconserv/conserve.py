"""ProbConserv after any backend: a run's predictive field conditioned on a conservation law.

:func:`conserve_prediction` takes the field draws a run predicted on its evaluation grid
(``(chain, draw, *coords)``, from NUTS, VI, Laplace, an ensemble or MC dropout alike) and the
case file's ``[conservation]`` law (:class:`ucsciml.conservation.ConservationSettings`):
``G u = b``, one trapezoid row over ``over`` per value of the other coordinates. Every draw
is moved with the gain of the draws' moment-matched Gaussian,
:math:`\\tilde u_i = u_i - K(G u_i - b + \\varepsilon_i)`
(:func:`~ucsciml.models.probconserv.condition_draws`, ``method="per_draw"``), so at
:math:`\\sigma_G = 0` every draw, and hence the predictive mean, conserves the total exactly,
and the draws' mean and covariance are those of the conditioned Gaussian (Hansen et al.,
2023, Eq. 5). The runner reaches this function through :data:`ucsciml.registry.UPDATES`.

References:
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (ProbConserv).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ucsciml._types import PRNGKey
from ucsciml.conservation import ConservationSettings
from ucsciml.models.probconserv import probconserv as pc

SAMPLE_DIMS = ("chain", "draw")


def conserve_prediction(
    prediction: xr.Dataset, field: str, law: ConservationSettings, *, key: PRNGKey
) -> tuple[xr.Dataset, dict[str, Any]]:
    """The prediction with ``field``'s draws conditioned on ``law``, and the law's numbers.

    Args:
        prediction: the run's field prediction (``ucsciml.run_metrics.field_prediction``):
            ``field`` with dims ``(chain, draw, *coords)`` and coordinate values, other
            variables (the true field) passed through unchanged.
        field: the field variable.
        law: the ``[conservation]`` settings.
        key: the constraint-noise key (used when ``law.noise_std > 0``).

    Returns:
        ``(conserved, numbers)``: the prediction with the moved draws, and ``{"over",
        "total", "noise_std", "constraints", "fixed_slices", "draws", "error_before",
        "error_after", "draw_error_before", "draw_error_after"}``: the largest ``|G mean -
        b|`` of the predictive mean and the mean over draws of each draw's largest ``|G u_i
        - b|``, before and after. ``fixed_slices`` counts the slices whose integral is the
        same in every draw (an initial condition the model builds in): at ``noise_std = 0``
        and no ``jitter`` the update cannot move them and leaves them as they are; their
        error stays in ``error_after``.

    Raises:
        ValueError: when ``over`` is not a dim of the field, the grid has fewer than two
            points along it, or the update is not finite (too few draws for the number of
            constraints and no ``jitter``).
    """
    draws = prediction[field]
    if law.over not in draws.dims:
        raise ValueError(
            f"[conservation] over = {law.over!r} is not a dimension of the predicted field "
            f"{field!r} {tuple(draws.dims)}"
        )
    if draws.sizes[law.over] < 2:
        raise ValueError(
            f"[conservation] needs >= 2 evaluation-grid points along {law.over!r} to integrate"
        )
    others = [d for d in draws.dims if d not in (*SAMPLE_DIMS, law.over)]
    ordered = draws.transpose(*SAMPLE_DIMS, *others, law.over)
    chains, num = ordered.sizes["chain"], ordered.sizes["draw"]
    slices = int(np.prod([ordered.sizes[d] for d in others]))
    width = ordered.sizes[law.over]
    x = np.asarray(ordered[law.over].values, dtype=float)
    flat = np.asarray(ordered.values, dtype=float).reshape(chains * num, slices * width)
    with jax.enable_x64(True):
        G = np.asarray(pc.conservation_matrix(jnp.asarray(x), slices))
    active = _varying(flat @ G.T, law)
    moved = flat
    if active.any():
        with jax.enable_x64(True):
            moved = np.asarray(
                pc.condition_draws(
                    jnp.asarray(flat),
                    jnp.asarray(G[active]),
                    jnp.full((int(active.sum()),), float(law.total)),
                    law.noise_std,
                    method="per_draw",
                    jitter=law.jitter,
                    key=key if law.noise_std > 0 else None,
                )
            )
    if not np.all(np.isfinite(moved)):
        raise ValueError(
            f"[conservation] the update of {chains * num} draws on {slices} constraints is not "
            "finite: the draws do not span the constrained directions; set [conservation] "
            "jitter > 0 (e.g. 1e-8) or take more posterior draws"
        )
    conserved = ordered.copy(data=moved.reshape(ordered.shape).astype(draws.dtype))
    numbers = {
        "over": law.over,
        "total": float(law.total),
        "noise_std": float(law.noise_std),
        "constraints": slices,
        "fixed_slices": int(slices - active.sum()),
        "draws": chains * num,
        **_errors(flat, G, float(law.total), "before"),
        **_errors(moved, G, float(law.total), "after"),
    }
    out = prediction.copy()
    out[field] = conserved.transpose(*draws.dims)
    return out, numbers


def _varying(integrals: np.ndarray, law: ConservationSettings) -> np.ndarray:
    """Which constraints the update can move: those whose integral varies across the draws
    (a slice every draw shares, such as an initial condition built into the model, has a
    zero-variance integral and is left as it is), or all of them when the law has a
    tolerance or a jitter to regularise the update."""
    if law.noise_std > 0 or law.jitter > 0:
        return np.ones(integrals.shape[1], bool)
    spread = integrals.std(axis=0)
    return spread > 1e-9 * max(float(spread.max()), float(np.abs(integrals).max()), 1e-30)


def _errors(flat: np.ndarray, G: np.ndarray, total: float, when: str) -> dict[str, float]:
    """Largest ``|G u - b|`` of the mean of ``flat`` ``(s, n)``, and of each draw, averaged."""
    mean_defect = np.abs(G @ flat.mean(0) - total).max()
    draw_defect = np.abs(flat @ G.T - total).max(axis=1).mean()
    return {f"error_{when}": float(mean_defect), f"draw_error_{when}": float(draw_defect)}
