r"""Recalibration fitted on held-out points and applied to predictive draws.

Three recalibrators, each a frozen result of a ``fit_*`` function with an ``apply`` method
that returns a **new** predictive and never alters its input:

* :func:`fit_variance_scaling`: one factor :math:`s` on the spread about the mean
  (the Gaussian-NLL optimum :math:`s^2 = \mathrm{mean}(z^2)`);
* :func:`fit_isotonic`: Kuleshov et al. (2018): an isotonic map :math:`R` of the predictive
  CDF fitted on held-out PIT values, so that :math:`R\circ F` is calibrated;
* :func:`fit_conformal`: split-conformal (conformalised quantile) intervals with the
  finite-sample guarantee :math:`P(y \in C) \ge 1 - a`.

Fit on points the posterior did not see (held-out sensors); scoring on the fitting points
themselves is optimistic.

References:
    Kuleshov, Fenner & Ermon (2018), Accurate uncertainties for deep learning using
    calibrated regression, ICML.
    Levi, Gispan, Giladi & Fetaya (2022), Evaluating and calibrating uncertainty prediction
    in regression tasks, Sensors 22(15).
    Romano, Patterson & Candès (2019), Conformalized quantile regression, NeurIPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.optimize import isotonic_regression

from ucsciml import calibration as cal

SAMPLE_DIMS = cal.SAMPLE_DIMS


@dataclass(frozen=True)
class VarianceScaling:
    r"""Scale the spread of draws about their mean: :math:`x'_s = \bar x + s\,(x_s - \bar x)`.

    Attributes:
        scale: the factor :math:`s` (> 1 widens an overconfident predictive).
    """

    scale: float

    def apply(self, pred: xr.DataArray, *, sample_dims=SAMPLE_DIMS) -> xr.DataArray:
        """A new predictive with the spread scaled; ``pred`` is left unchanged."""
        cal._check_pred(pred, sample_dims)
        mean = pred.mean(sample_dims)
        return (mean + self.scale * (pred - mean)).transpose(*pred.dims).rename(pred.name)


def fit_variance_scaling(pred: xr.DataArray, truth, *, sample_dims=SAMPLE_DIMS) -> VarianceScaling:
    r"""Fit :math:`s^2 = \frac1n\sum_i (y_i - \bar x_i)^2 / \hat\sigma_i^2` on held-out points.

    This is the maximiser of the Gaussian log-likelihood in :math:`s` (Levi et al., 2022).
    """
    cal._check_pred(pred, sample_dims)
    mean, sd = pred.mean(sample_dims), pred.std(sample_dims)
    y = cal._truth_like(truth, mean)
    z2 = (((y - mean) / xr.where(sd > 0, sd, np.nan)) ** 2).values
    if not np.isfinite(z2).any():
        raise ValueError("fit_variance_scaling needs points with a positive predictive sd")
    return VarianceScaling(float(np.sqrt(np.nanmean(z2))))


@dataclass(frozen=True)
class IsotonicRecalibration:
    r"""An isotonic map :math:`R: [0,1] \to [0,1]` of predictive CDF values.

    Attributes:
        pit: sorted held-out PIT values (knots of :math:`R`).
        target: :math:`R` at the knots (non-decreasing).
    """

    pit: np.ndarray
    target: np.ndarray

    def cdf(self, p):
        """:math:`R(p)`: the recalibrated CDF value of a raw CDF value ``p``."""
        return np.interp(p, self._x(), self._y())

    def apply(self, pred: xr.DataArray, *, sample_dims=SAMPLE_DIMS) -> xr.DataArray:
        r"""A new predictive whose CDF is :math:`R\circ \hat F`.

        Its draws are the raw predictive's quantiles at :math:`R^{-1}(u_k)`,
        :math:`u_k = (k + \tfrac12)/S`, a stratified sample of the recalibrated
        distribution: deterministic, same shape and dims as ``pred``, but not Markov-chain
        draws (do not compute R-hat on them).
        """
        cal._check_pred(pred, sample_dims)
        size = math.prod(pred.sizes[d] for d in sample_dims)
        u = (np.arange(size) + 0.5) / size
        probs = np.clip(self._inverse(u), 0.0, 1.0)
        q = cal.quantiles(pred, probs, sample_dims=sample_dims)
        shape = [pred.sizes[d] for d in sample_dims]
        values = q.values.reshape(*q.shape[:-1], *shape)
        out = xr.DataArray(
            values, dims=(*q.dims[:-1], *sample_dims), coords=q.drop_vars("quantile").coords
        )
        return out.transpose(*pred.dims).rename(pred.name)

    def _x(self):
        return np.concatenate([[0.0], self.pit, [1.0]])

    def _y(self):
        return np.concatenate([[0.0], self.target, [1.0]])

    def _inverse(self, u):
        # R is non-decreasing and piecewise linear; where it is flat np.interp on the
        # (y, x) pairs picks one point of the plateau, which any quantile of it satisfies.
        x, y = self._x(), self._y()
        y_unique, first = np.unique(y, return_index=True)
        return np.interp(u, y_unique, x[first])


def fit_isotonic(pred: xr.DataArray, truth, *, sample_dims=SAMPLE_DIMS) -> IsotonicRecalibration:
    r"""Fit Kuleshov et al.'s recalibration map on held-out points.

    .. math::
        p_i = \hat F_i(y_i),\quad \hat P(p) = \frac1n \#\{j: p_j \le p\},\quad
        R = \text{isotonic fit of } \{(p_i, \hat P(p_i))\}

    Args:
        pred: predictive draws at the held-out points.
        truth: their observed values.

    Returns:
        An :class:`IsotonicRecalibration`.

    References:
        Kuleshov, Fenner & Ermon (2018), Algorithm 1.
    """
    p = np.sort(cal.pit(pred, truth, sample_dims=sample_dims).values.ravel())
    if p.size < 2:
        raise ValueError("fit_isotonic needs at least 2 held-out points")
    empirical = np.searchsorted(p, p, side="right") / p.size
    fitted = isotonic_regression(empirical, increasing=True).x
    return IsotonicRecalibration(pit=p, target=np.clip(fitted, 0.0, 1.0))


@dataclass(frozen=True)
class ConformalIntervals:
    r"""Split-conformal central intervals :math:`[q_{lo} - \hat q,\; q_{hi} + \hat q]`.

    Attributes:
        level: nominal coverage :math:`1 - a`.
        margin: :math:`\hat q`, the conformal correction (negative shrinks the intervals).
        num_calibration: held-out points used.
    """

    level: float
    margin: float
    num_calibration: int

    def apply(self, pred: xr.DataArray, *, sample_dims=SAMPLE_DIMS) -> xr.Dataset:
        """Intervals at new points: ``Dataset`` with ``lower`` and ``upper``."""
        lo, hi = _interval(pred, self.level, sample_dims)
        return xr.Dataset({"lower": lo - self.margin, "upper": hi + self.margin})


def fit_conformal(
    pred: xr.DataArray, truth, level: float = 0.9, *, sample_dims=SAMPLE_DIMS
) -> ConformalIntervals:
    r"""Fit split-conformal intervals on ``n`` held-out points (conformalised quantiles).

    .. math::
        E_i = \max(q_{lo}(x_i) - y_i,\; y_i - q_{hi}(x_i)),\quad
        \hat q = E_{(\lceil (n+1)(1-a) \rceil)}

    For exchangeable held-out and test points, :math:`P(y \in C) \ge 1 - a` in finite samples.

    Raises:
        ValueError: when ``n`` is too small for the level (``(n+1)(1-a) > n``).

    References:
        Romano, Patterson & Candès (2019), Theorem 1.
    """
    lo, hi = _interval(pred, level, sample_dims)
    y = cal._truth_like(truth, lo)
    errors = np.sort(np.maximum(lo - y, y - hi).values.ravel())
    n = errors.size
    rank = math.ceil((n + 1) * level)
    if rank > n:
        raise ValueError(
            f"fit_conformal needs at least {math.ceil(level / (1 - level))} held-out points "
            f"for level {level}; got {n}"
        )
    return ConformalIntervals(level=float(level), margin=float(errors[rank - 1]), num_calibration=n)


def _interval(pred, level, sample_dims):
    (level,) = cal._levels((level,))
    q = cal.quantiles(pred, ((1 - level) / 2, (1 + level) / 2), sample_dims=sample_dims)
    return q.isel(quantile=0, drop=True), q.isel(quantile=1, drop=True)
