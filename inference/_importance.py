r"""Pareto-smoothed importance resampling of an approximation's draws.

Draws :math:`z_s \sim q` of an approximation (a Laplace Gaussian) are corrected towards the
posterior :math:`p` with the ratios :math:`r_s = p(z_s, y) / q(z_s)`. Their largest values
are replaced by the expected order statistics of a generalised Pareto fit to the tail
(PSIS), whose shape :math:`\hat k` says how far the correction can be trusted (below 0.7:
the weighted draws estimate posterior expectations with a usable error; above it the
approximation misses where the posterior's mass is). The draws are then resampled by their
smoothed weights with systematic resampling, so the result is again equally weighted
``(chain, draw)`` draws that every downstream tool (predictions, diagnostics, reports) takes
as they are.

References:
    Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto smoothed importance sampling,
    JMLR 25(72).
    Kitagawa (1996), Monte Carlo filter and smoother for non-Gaussian nonlinear state
    space models, J. Comput. Graph. Stat. 5(1) (systematic resampling).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from arviz_stats.base import array_stats

from ucsciml._types import PRNGKey
from ucsciml.diagnostics import KHAT_LIMIT, untrusted_message

log = logging.getLogger(__name__)

#: Fewest finite ratios whose tail PSIS can fit (a fifth of them, at least 5, form the tail).
MIN_DRAWS = 25


def smoothed_weights(log_ratio: np.ndarray) -> tuple[np.ndarray, float | None]:
    r"""PSIS-smoothed, normalised weights of one set of log ratios ``(S,)``, and :math:`\hat k`.

    Non-finite ratios (a draw where the log joint is not finite) get weight 0; when none is
    finite, ``ValueError``. With fewer than :data:`MIN_DRAWS` finite ratios no Pareto tail can
    be fitted: the weights are the raw ratios, normalised, and :math:`\hat k` is ``None``
    (not estimable, so not trusted).
    """
    log_ratio = np.asarray(log_ratio, dtype=float)
    finite = np.isfinite(log_ratio)
    if not finite.any():
        raise ValueError(
            "importance resampling: the log joint is not finite at any draw of the "
            "approximation; use importance='none' and check the model"
        )
    weights = np.zeros(log_ratio.shape)
    kept = log_ratio[finite]
    if np.ptp(kept) <= 1e-12 * max(1.0, float(np.abs(kept).max())):
        # equal ratios: q is p up to a constant where it drew; no tail to fit
        weights[finite] = 1.0
        return weights / weights.sum(), 0.0
    if kept.size < MIN_DRAWS:
        weights[finite] = np.exp(kept - kept.max())
        return weights / weights.sum(), None
    log_weights, khat = array_stats.psislw(-kept)  # arviz takes -log ratios (LOO's sign)
    weights[finite] = np.exp(log_weights - np.max(log_weights))
    return weights / weights.sum(), float(khat)


def systematic_indices(key: PRNGKey, weights: np.ndarray) -> np.ndarray:
    """``len(weights)`` indices drawn by systematic resampling: one uniform offset, evenly
    spaced points through the cumulative weights (each index appears ``n w_i`` times, up to
    rounding)."""
    n = weights.shape[0]
    offset = float(jax.random.uniform(key, ()))
    points = (offset + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0  # round-off must not push the last point past the end
    return np.searchsorted(cumulative, points, side="right").clip(0, n - 1)


def importance_resample(
    key: PRNGKey, draws: dict[str, Any], log_ratio: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    r"""Resample ``(chain, draw, ...)`` draws within each chain by PSIS weights.

    A chain whose :math:`\hat k` exceeds :data:`KHAT_LIMIT` keeps its draws as they are: its
    weights are dominated by a few draws, and resampling would collapse it onto them. So does
    a chain of fewer than :data:`MIN_DRAWS` draws, whose :math:`\hat k` is ``None``. The
    failure is logged as a warning and recorded, so :func:`ucsciml.diagnostics.check` warns.

    Args:
        key: the resampling key (one offset per chain, ``fold_in(key, chain)``).
        draws: site name to array ``(chain, draw, ...)``.
        log_ratio: ``log p(z, y) - log q(z)`` up to a constant per chain, ``(chain, draw)``.

    Returns:
        ``(resampled, record)``: the draws, and ``{"method": "psis", "pareto_k": [per
        chain], "ess": [per chain], "resampled": [per chain], "khat_limit"}`` where ``ess``
        is :math:`1/\sum_s w_s^2` of the smoothed weights.
    """
    chains, num = log_ratio.shape
    index, khats, ess, resampled = [], [], [], []
    for c in range(chains):
        weights, khat = smoothed_weights(log_ratio[c])
        trusted = khat is not None and khat <= KHAT_LIMIT
        keep = np.arange(num)  # an untrusted correction leaves the draws as they are
        if trusted:
            keep = systematic_indices(jax.random.fold_in(key, c), weights)
        index.append(keep)
        khats.append(khat)
        ess.append(float(1.0 / np.sum(weights**2)))
        resampled.append(bool(trusted))
    rows = np.arange(chains)[:, None]
    index = np.stack(index)
    out = {k: np.asarray(v)[rows, index] for k, v in draws.items()}
    if not all(resampled):
        log.warning("%s", untrusted_message(khats, min(ess), num))
    record = {
        "method": "psis",
        "pareto_k": khats,
        "ess": ess,
        "resampled": resampled,
        "khat_limit": KHAT_LIMIT,
    }
    return out, record
