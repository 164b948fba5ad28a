r"""Replicate calibration: the fitting pipeline's own error, measured on data it can simulate.

A neural-PDE posterior accounts for sensor noise and the prior, but not for the surrogate's
own error (a network that draws a shock too wide reads the viscosity too high) nor, with few
restarts, for the spread between optimisation modes. Both are properties of the *pipeline*,
so they can be measured by running it on data whose truth is known: a parametric bootstrap
with the project's reference solver.

Given the fitted parameters :math:`\hat\theta` (the posterior median over the draws that
fit the data), ``K`` replicate datasets are simulated at
:math:`\hat\theta` with the same sensor locations and noise level, and each is refitted by
the same pipeline (an ensemble of the same size, from fresh initialisations), giving
:math:`\hat\theta_k`. In the
unconstrained space :math:`\phi = T^{-1}(\theta)` of each parameter's prior support (log for
a positive parameter)

.. math::
    \hat b = \frac1K\sum_k (\hat\phi_k - \hat\phi),\qquad
    s^2 = \frac1{K-1}\sum_k (\hat\phi_k - \bar\phi_k)^2,

and the calibrated interval is

.. math::
    \hat\phi - \hat b \pm t_{K-1,(1+\ell)/2}\,\sqrt{\max\!\big(s^2 (1 + 1/K),\ \sigma^2_{post}\big)},

the prediction interval of a new pipeline error from ``K`` exchangeable ones: the
bias-corrected estimate, widened to the pipeline's replicate spread (never narrower than the
posterior, whose sd :math:`\sigma_{post}` is taken robustly, ``1.4826 MAD``). The ratio of the calibrated to the posterior sd is the *inflation factor*. For
the field, the replicate errors :math:`e_k(x) = \hat u_k(x) - u_{\hat\theta}(x)` give a
pointwise band :math:`\bar u(x) \pm t_{K,(1+\ell)/2}\sqrt{\max(\frac1K\sum_k e_k(x)^2,
\sigma^2_{post}(x))}`, with no bias correction (``K`` replicates are too few to estimate a
bias field point by point). Fits whose data misfit says they failed (reduced
:math:`\chi^2` above ``max_misfit``) are left out and counted.

Everything here is pure NumPy on arrays; :mod:`ucsciml.runner` wires it to a backend's
replicate refits and writes the result beside (never over) the raw posterior.

References:
    Efron & Tibshirani (1993), An Introduction to the Bootstrap, ch. 6 (parametric
    bootstrap). Kaipio & Somersalo (2007), Statistical inverse problems: discretization,
    model reduction and inverse crimes, J. Comput. Appl. Math. 198 (Bayesian approximation
    error). Syring & Martin (2019), Calibrating general posterior credible regions,
    Biometrika 106(2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import xarray as xr
from numpyro.distributions import biject_to
from scipy import optimize, stats

from ucsciml import data as sensor_data

METHODS = ("replicates", "none")


@dataclass(frozen=True)
class CalibrationSettings:
    """The ``[calibration]`` table of a case file.

    Args:
        method: ``"replicates"`` (replicate calibration, above) or ``"none"`` (raw posterior
            only; held-out sensors are still scored when ``holdout > 0``).
        replicates: ``K``, replicate datasets refitted (>= 3).
        level: the nominal level of the calibrated intervals.
        holdout: fraction of the sensors set aside before fitting to check and recalibrate
            the field band (0 keeps every sensor for the fit).
        max_misfit: a fit whose reduced :math:`\\chi^2` on its data exceeds this failed.
        num_draws: draws of the calibrated posterior stored in the DataTree.
        rounds: replicates are simulated in this many rounds; round 1 at the estimate, each
            later one at the estimate corrected by the previous round's bias (iterated
            bootstrap: the bias is then measured near the truth, not at the biased estimate).
        members: fits per replicate; 0 (default) uses the refit backend's ``num_members``,
            so each replicate is refitted by the same pipeline as the data (an ensemble's
            estimate is the median of its members, its field their mean).
    """

    method: str = "replicates"
    replicates: int = 8
    level: float = 0.9
    holdout: float = 0.1
    max_misfit: float = 4.0
    num_draws: int = 1000
    members: int = 0
    rounds: int = 2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"[calibration] method must be one of {list(METHODS)}, got {self.method!r}"
            )
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int):
            raise ValueError(
                f"[calibration] replicates must be an integer, got {self.replicates!r}"
            )
        if self.replicates < 3:
            raise ValueError(
                f"[calibration] replicates must be >= 3 (a spread needs a few), got "
                f"{self.replicates}"
            )
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"[calibration] level must be in (0, 1), got {self.level}")
        if not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"[calibration] holdout must be in [0, 0.5], got {self.holdout}")
        if not self.max_misfit > 1.0:
            raise ValueError(f"[calibration] max_misfit must be > 1, got {self.max_misfit}")
        if isinstance(self.num_draws, bool) or not isinstance(self.num_draws, int):
            raise ValueError(f"[calibration] num_draws must be an integer, got {self.num_draws!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"[calibration] rounds must be an integer >= 1, got {self.rounds!r}")
        if self.replicates < 2 * self.rounds + 1:
            raise ValueError(
                f"[calibration] replicates = {self.replicates} leave too few per round for "
                f"rounds = {self.rounds}; give at least {2 * self.rounds + 1} replicates or "
                "fewer rounds"
            )
        if isinstance(self.members, bool) or not isinstance(self.members, int):
            raise ValueError(f"[calibration] members must be an integer, got {self.members!r}")
        if self.members < 0:
            raise ValueError(f"[calibration] members must be >= 0, got {self.members}")
        if self.num_draws < 100:
            raise ValueError(f"[calibration] num_draws must be >= 100, got {self.num_draws}")


class ParameterCalibration(NamedTuple):
    """One parameter's calibration, in its unconstrained space (``phi``)."""

    estimate: float  # phi-hat, the posterior median
    bias: float  # mean replicate error
    spread: float  # replicate sd (ddof=1)
    posterior_sd: float
    sd: float  # calibrated sd
    dof: int
    level: float

    @property
    def center(self) -> float:
        """The bias-corrected estimate."""
        return self.estimate - self.bias

    @property
    def inflation(self) -> float:
        """Calibrated sd over posterior sd (``inf`` for a point-estimate posterior)."""
        return self.sd / self.posterior_sd if self.posterior_sd > 0 else float("inf")

    def interval(self) -> tuple[float, float]:
        """The calibrated central interval at ``level`` (unconstrained space)."""
        half = stats.t.ppf(0.5 + self.level / 2, self.dof) * self.sd
        return self.center - half, self.center + half


def split_holdout(data: xr.Dataset, fraction: float, seed: int) -> tuple[xr.Dataset, xr.Dataset]:
    """Split sensors at random into ``(fit, holdout)``; ``fraction`` of them held out.

    The split is drawn from its own ``numpy`` generator seeded by ``seed``, so it depends on
    the data seed alone, never on the inference seed.

    Raises:
        ValueError: when the split would leave fewer than 2 held-out or 2 fitting sensors.
    """
    n = data.sizes["sensor"]
    k = round(fraction * n)
    if k < 2 or n - k < 2:
        raise ValueError(
            f"[calibration] holdout = {fraction} of {n} sensors leaves {k} held out and "
            f"{n - k} to fit; both need >= 2 (raise holdout, or set holdout = 0)"
        )
    order = np.random.default_rng(seed).permutation(n)
    held, kept = np.sort(order[:k]), np.sort(order[k:])
    return data.isel(sensor=kept), data.isel(sensor=held)


def replicate_observations(
    pde, data: xr.Dataset, params: dict[str, float], num_replicates: int, seed: int
) -> dict[str, np.ndarray]:
    """Noisy observations ``{name: (K, n)}`` simulated at ``params`` at the data's sensors.

    Each replicate keeps the sensor locations and the per-sensor noise sd of ``data`` and
    draws fresh Gaussian noise from a generator seeded by ``seed``.

    Raises:
        ValueError: when the data has no ``noise_std`` (nothing to simulate noise with).
    """
    noise = sensor_data.noise_std(data)
    if noise is None:
        raise ValueError(
            "replicate calibration simulates sensor noise and needs the data's noise_std; "
            "give the data a noise_std variable or set [calibration] method = 'none'"
        )
    clean = pde.solve_observables(sensor_data.points(data), params)
    rng = np.random.default_rng(seed)
    return {
        name: value[None, :] + noise[None, :] * rng.normal(size=(num_replicates, value.size))
        for name, value in clean.items()
    }


def reduced_chi2(predicted: np.ndarray, observed: np.ndarray, noise_sd: np.ndarray) -> np.ndarray:
    """Mean squared standardised misfit over the last axis (``~1`` for a fit at the noise)."""
    return np.mean(((observed - predicted) / noise_sd) ** 2, axis=-1)


def to_unconstrained(prior, values: np.ndarray) -> np.ndarray:
    """Map constrained values into the unconstrained space of ``prior``'s support."""
    return np.asarray(biject_to(prior.support).inv(np.asarray(values, dtype=float)))


def to_constrained(prior, values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_unconstrained`."""
    return np.asarray(biject_to(prior.support)(np.asarray(values, dtype=float)))


def robust_sd(values: np.ndarray) -> float:
    """``1.4826 * MAD``: the sd of Gaussian draws, unmoved by a few outlying ones (a member
    in a poor mode); the plain sd when the MAD is zero (e.g. two draws)."""
    values = np.asarray(values, dtype=float).ravel()
    mad = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return mad if mad > 0 else float(values.std())


def round_sizes(replicates: int, rounds: int) -> list[int]:
    """Replicates per round, as even as possible, the later rounds the larger."""
    base, extra = divmod(replicates, rounds)
    return [base + (1 if i >= rounds - extra else 0) for i in range(rounds)]


def calibrate_parameter(
    estimate: float, replicate_estimates: np.ndarray, posterior_sd: float, level: float
) -> ParameterCalibration:
    """One round of replicates simulated at ``estimate`` (see :func:`calibrate_rounds`)."""
    return calibrate_rounds(estimate, [(estimate, replicate_estimates)], posterior_sd, level)


def calibrate_rounds(
    estimate: float, rounds, posterior_sd: float, level: float
) -> ParameterCalibration:
    r"""Bias and spread of the pipeline from replicate rounds (see the module doc).

    Round ``j`` simulated at :math:`\phi_j` and refitted to :math:`\hat\phi_{jk}`. The
    bias is the last round's, :math:`\hat b = \overline{\hat\phi_{Jk}} - \phi_J`
    (iterated bootstrap: :math:`\phi_J` is already bias-corrected, so the bias is measured
    near the truth); the spread pools every round's deviations from its own mean
    (:math:`K - J` degrees of freedom); the prediction sd is
    :math:`\max(s\sqrt{1 + 1/K_J}, \sigma_{post})`.

    Args:
        estimate: the fitted value (unconstrained).
        rounds: ``[(phi_j, estimates_j), ...]``: where round ``j`` was simulated and its
            ``(K_j,)`` refitted values (unconstrained), failed fits removed.
        posterior_sd: the raw posterior's sd (unconstrained).
        level: nominal level.

    Raises:
        ValueError: with fewer than 2 estimates in the last round or under 2 dof in all.
    """
    rounds = [(float(at), np.asarray(est, dtype=float).ravel()) for at, est in rounds]
    last_at, last = rounds[-1]
    dof = sum(est.size - 1 for _, est in rounds if est.size)
    if last.size < 2 or dof < 2:
        raise ValueError(
            f"replicate calibration needs >= 2 successful fits in its last round and >= 2 "
            f"degrees of freedom in all, got {[est.size for _, est in rounds]}; raise "
            "[calibration] replicates or the fitting steps"
        )
    bias = float(last.mean() - last_at)
    squares = sum(float(np.sum((est - est.mean()) ** 2)) for _, est in rounds if est.size)
    spread = float(np.sqrt(squares / dof))
    sd = float(np.sqrt(max(spread**2 * (1.0 + 1.0 / last.size), posterior_sd**2)))
    return ParameterCalibration(estimate, bias, spread, float(posterior_sd), sd, dof, level)


def field_sd(
    replicate_fields: np.ndarray, truth_field: np.ndarray, posterior_sd: np.ndarray
) -> np.ndarray:
    """Pointwise calibrated field sd: the replicate RMS error, never below the posterior's.

    Args:
        replicate_fields: ``(K, ...)`` refitted fields (or their errors, with truth 0).
        truth_field: ``(...)`` the field at the replicates' true parameters.
        posterior_sd: ``(...)`` the raw predictive sd.
    """
    rms = np.sqrt(np.mean((np.asarray(replicate_fields) - truth_field) ** 2, axis=0))
    return np.maximum(rms, np.asarray(posterior_sd))


def student_draws(
    center: np.ndarray, sd: np.ndarray, dof: int, num_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``(num_draws, *shape)`` draws of ``center + sd * T_dof`` (one ``T`` per draw and point)."""
    center, sd = np.asarray(center, dtype=float), np.asarray(sd, dtype=float)
    return center + sd * rng.standard_t(dof, size=(num_draws, *np.shape(center)))


def holdout_scale(
    mean: np.ndarray, sd: np.ndarray, observed: np.ndarray, noise_sd: np.ndarray, level: float
) -> float:
    r"""The factor ``s`` on the field sd at which held-out observations are covered at ``level``.

    Held-out observations are :math:`y_i = u(x_i) + \epsilon_i`; the scaled predictive
    interval is :math:`\bar u_i \pm z\,\sqrt{s^2\sigma_i^2 + \sigma_{n,i}^2}`. Coverage is
    monotone in ``s``, so ``s`` solves ``coverage(s) = level`` by bisection on the
    continuous version of coverage (the ``level``-quantile of the standardised misfits).
    ``s = 0`` when noise alone already covers at ``level``.
    """
    mean, sd, y, noise = (np.asarray(a, dtype=float) for a in (mean, sd, observed, noise_sd))
    z = stats.norm.ppf(0.5 + level / 2)
    sd = np.maximum(sd, 1e-12 * np.maximum(np.abs(mean).max(), 1.0))

    def excess(log_s):
        s = np.exp(log_s)
        ratio = np.abs(y - mean) / np.sqrt(s**2 * sd**2 + noise**2)
        return float(np.quantile(ratio, level) - z)

    if excess(-30.0) <= 0:
        return 0.0
    hi = 0.0
    while excess(hi) > 0 and hi < 30:
        hi += 2.0
    return float(np.exp(optimize.brentq(excess, -30.0, hi, xtol=1e-6)))


def interval_coverage(
    mean: np.ndarray, sd: np.ndarray, observed: np.ndarray, noise_sd: np.ndarray, level: float
) -> float:
    """Fraction of held-out observations inside ``mean +- z sqrt(sd^2 + noise^2)``."""
    z = stats.norm.ppf(0.5 + level / 2)
    half = z * np.sqrt(np.asarray(sd) ** 2 + np.asarray(noise_sd) ** 2)
    return float(np.mean(np.abs(np.asarray(observed) - mean) <= half))
