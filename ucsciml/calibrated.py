"""The ``[calibration]`` step of a run: replicate calibration and held-out sensors.

:mod:`ucsciml.replicates` holds the statistics; this module runs them on a finished
posterior: it simulates replicate datasets at the fitted parameters with the PDE's reference
solver, refits them with a backend's ``fit_replicates`` (one compiled, vmapped computation),
scores the held-out sensors, and returns

- ``metrics``: the calibrated parameter table and field scores (``metrics.json`` →
  ``calibrated``), raw scores being left where they were;
- ``groups``: DataTree groups ``calibrated_posterior`` (draws of the unknowns from the
  calibrated distribution) and ``calibration`` (every number the calibration used:
  replicate estimates, misfits, bias, spread, inflation, the calibrated field sd).

The raw posterior is never altered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import xarray as xr
from scipy import stats

from ucsciml import calibration
from ucsciml import data as sensor_data
from ucsciml import replicates as rep
from ucsciml.pde.base import AbstractPDE, Unknown
from ucsciml.posterior import Posterior
from ucsciml.program import Program

log = logging.getLogger("ucsciml")

FIELD_DRAWS = 200


@dataclass(frozen=True)
class CalibrationResult:
    """What the calibration step adds to a run."""

    metrics: dict[str, Any]
    groups: dict[str, xr.Dataset]


def fitted_parameters(posterior: Posterior, pde: AbstractPDE) -> dict[str, float]:
    """Every PDE parameter: known values as given, unknowns at their posterior mean in
    unconstrained space (mapped back), the point replicates are simulated at."""
    out = {}
    for name, value in pde.parameters().items():
        if isinstance(value, Unknown):
            phi = rep.to_unconstrained(value.prior, np.asarray(posterior.samples[name]))
            out[name] = float(rep.to_constrained(value.prior, phi.mean()))
        else:
            out[name] = float(value)
    return out


def calibrate_run(
    settings: rep.CalibrationSettings,
    *,
    pde: AbstractPDE,
    program: Program,
    posterior: Posterior,
    refit_backend: Any,
    data_fit: xr.Dataset,
    data_holdout: xr.Dataset | None,
    prediction: xr.Dataset | None,
    seed: int,
    key,
) -> CalibrationResult:
    """Run the calibration a case's ``[calibration]`` table asks for.

    Args:
        settings: the ``[calibration]`` table.
        pde: the case's PDE (its reference solver simulates the replicates).
        program: the compiled program the posterior belongs to.
        posterior: the raw posterior.
        refit_backend: a backend with ``fit_replicates(program, targets, key)``.
        data_fit: the sensors the posterior was fitted to.
        data_holdout: held-out sensors, or ``None``.
        prediction: field draws on the evaluation grid with ``u_true``
            (:func:`ucsciml.runner.field_prediction`), or ``None``.
        seed: the data seed (replicate noise is drawn from it).
        key: PRNG key for the refits.
    """
    metrics: dict[str, Any] = {"method": settings.method, "level": settings.level}
    groups: dict[str, xr.Dataset] = {}
    sd_at_holdout = None
    if settings.method == "replicates":
        fits = _replicate_fits(
            settings, pde, program, posterior, refit_backend, data_fit, seed, key
        )
        table, calibrated_draws, cal_ds = _parameter_calibration(settings, pde, posterior, fits)
        metrics.update(
            replicates=settings.replicates,
            successful=int(fits["ok"].sum()),
            parameters=table,
        )
        groups["calibrated_posterior"] = calibrated_draws
        if prediction is not None:
            field, sd_grid = _field_calibration(settings, posterior, pde, fits, prediction, key)
            metrics["field"] = field
            cal_ds["u_sd"] = (tuple(prediction["u_true"].dims), sd_grid)
            cal_ds = cal_ds.assign_coords(prediction["u_true"].coords)
        if data_holdout is not None:
            sd_at_holdout = _calibrated_sd_at(fits, posterior, pde, data_holdout, key)
        groups["calibration"] = cal_ds
    if data_holdout is not None:
        metrics["holdout"] = _holdout_scores(
            settings, posterior, data_holdout, prediction, sd_at_holdout, key
        )
    return CalibrationResult(metrics, groups)


def _replicate_fits(settings, pde, program, posterior, backend, data_fit, seed, key) -> dict:
    """Simulate, refit and score the replicates; ``ok`` marks fits that did not fail."""
    if not hasattr(backend, "fit_replicates"):
        raise ValueError(
            f"replicate calibration refits with a backend that has fit_replicates; "
            f"{type(backend).__name__} has none (the ensemble backend does)"
        )
    theta = fitted_parameters(posterior, pde)
    observed = rep.replicate_observations(
        pde,
        data_fit,
        theta,
        settings.replicates,
        seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]),
    )
    targets = (
        {f"{k}_obs": v for k, v in observed.items()}
        if isinstance(program.targets, Mapping)
        else observed["u"]
    )
    log.info(
        "calibration: refitting %d replicate datasets simulated at %s",
        settings.replicates,
        {k: f"{v:.6g}" for k, v in theta.items()},
    )
    refit_key, predict_key = jax.random.split(jax.random.fold_in(key, 7))
    fitted = backend.fit_replicates(program, targets, refit_key)
    points = sensor_data.points(data_fit)
    at_sensors = fitted.predict(points, predict_key, sites=tuple(observed))
    noise = sensor_data.noise_std(data_fit)
    misfit = sum(
        rep.reduced_chi2(at_sensors[k].values[0], observed[k], noise) for k in observed
    ) / len(observed)
    ok = np.isfinite(misfit) & (misfit <= settings.max_misfit)
    if not ok.all():
        log.warning(
            "calibration: %d of %d replicate fits failed (reduced chi2 %s > %g) and are left "
            "out; more fitting steps may help",
            int((~ok).sum()),
            ok.size,
            np.round(misfit[~ok], 2).tolist(),
            settings.max_misfit,
        )
    return {"posterior": fitted, "theta": theta, "misfit": misfit, "ok": ok}


def _parameter_calibration(settings, pde, posterior, fits):
    table, draws, rows = {}, {}, {}
    rng = np.random.default_rng(0)
    ok = fits["ok"]
    for name, unknown in pde.unknowns().items():
        if name not in posterior.samples:
            continue
        phi = rep.to_unconstrained(unknown.prior, np.asarray(posterior.samples[name]).ravel())
        phi_reps = rep.to_unconstrained(
            unknown.prior, np.asarray(fits["posterior"].samples[name])[0]
        )
        result = rep.calibrate_parameter(
            float(phi.mean()), phi_reps[ok], float(phi.std()), settings.level
        )
        phi_draws = rep.student_draws(result.center, result.sd, result.dof, settings.num_draws, rng)
        values = rep.to_constrained(unknown.prior, phi_draws)
        draws[name] = (("chain", "draw"), values[None])
        low, high = (float(rep.to_constrained(unknown.prior, v)) for v in result.interval())
        q90 = result._replace(level=0.9).interval()
        q05, q95 = (float(rep.to_constrained(unknown.prior, v)) for v in q90)
        row = {
            "mean": float(values.mean()),
            "sd": float(values.std()),
            "q05": q05,
            "q95": q95,
            "q_low": low,
            "q_high": high,
            "bias": result.bias,
            "spread": result.spread,
            "posterior_sd": result.posterior_sd,
            "calibrated_sd": result.sd,
            "inflation": result.inflation,
            "space": "unconstrained",
        }
        if unknown.truth is not None:
            truth = float(unknown.truth)
            row.update(
                truth=truth,
                rel_error=abs(row["mean"] - truth) / abs(truth),
                truth_in_90=bool(q05 <= truth <= q95),
                truth_in_interval=bool(low <= truth <= high),
            )
        table[name] = row
        rows[name] = (result, phi_reps)
    cal_ds = _calibration_dataset(settings, fits, rows)
    return table, xr.Dataset(draws), cal_ds


def _calibration_dataset(settings, fits, rows) -> xr.Dataset:
    names = list(rows)
    stats_of = {
        field: ("parameter", [getattr(rows[n][0], field) for n in names])
        for field in ("estimate", "bias", "spread", "posterior_sd", "sd")
    }
    ds = xr.Dataset(
        {
            **stats_of,
            "inflation": ("parameter", [rows[n][0].inflation for n in names]),
            "replicate_misfit": ("replicate", np.asarray(fits["misfit"], dtype=float)),
            "replicate_ok": ("replicate", np.asarray(fits["ok"], dtype=bool)),
            **{f"replicate_{n}": ("replicate", rows[n][1]) for n in names},
        },
        coords={"parameter": names},
    )
    ds.attrs.update(
        method=settings.method,
        level=settings.level,
        replicates=settings.replicates,
        successful=int(fits["ok"].sum()),
        space="unconstrained (log for positive parameters); estimate, bias, spread, sd there",
        **{f"theta_{k}": v for k, v in fits["theta"].items()},
    )
    return ds


def _field_calibration(settings, posterior, pde, fits, prediction, key):
    """Calibrated pointwise field sd on the evaluation grid and its scores vs the truth."""
    raw = prediction["u"]
    dims = tuple(prediction["u_true"].dims)
    mean = raw.mean(("chain", "draw")).values
    sd_raw = raw.std(("chain", "draw")).values
    points = np.stack(
        [m.ravel() for m in np.meshgrid(*(prediction[d].values for d in dims), indexing="ij")],
        axis=-1,
    )
    ok = fits["ok"]
    rep_fields = fits["posterior"].predict(points, jax.random.fold_in(key, 11), sites=("u",))
    rep_fields = rep_fields["u"].values[0][ok].reshape(int(ok.sum()), *mean.shape)
    truth_at_theta = pde.solve_observables(points, fits["theta"])["u"].reshape(mean.shape)
    sd = rep.field_sd(rep_fields, truth_at_theta, sd_raw)
    draws = rep.student_draws(mean, sd, int(ok.sum()), FIELD_DRAWS, np.random.default_rng(1))
    pred = xr.DataArray(draws[None], dims=("chain", "draw", *dims), coords=raw.coords)
    scores = calibration.summary(pred, prediction["u_true"])
    scores["mean_width_90"] = scores["sharpness_90"]
    scores["inflation_median"] = float(np.median(sd / np.maximum(sd_raw, 1e-300)))
    return scores, sd


def _calibrated_sd_at(fits, posterior, pde, data, key) -> np.ndarray:
    points = sensor_data.points(data)
    ok = fits["ok"]
    reps = fits["posterior"].predict(points, jax.random.fold_in(key, 13), sites=("u",))
    raw = posterior.predict(points, jax.random.fold_in(key, 17), sites=("u",))["u"].values
    truth = pde.solve_observables(points, fits["theta"])["u"]
    return rep.field_sd(reps["u"].values[0][ok], truth, raw.reshape(-1, points.shape[0]).std(0))


def _holdout_scores(settings, posterior, data, prediction, sd_calibrated, key) -> dict:
    """Coverage of held-out noisy sensors (raw, replicate-calibrated) and the variance-scaling
    recalibration fitted on them, applied to the field on the grid."""
    points = sensor_data.points(data)
    y = sensor_data.observations(data)
    noise = sensor_data.noise_std(data)
    draws = posterior.predict(points, jax.random.fold_in(key, 19), sites=("u",))["u"].values
    draws = draws.reshape(-1, points.shape[0])
    mean, sd = draws.mean(0), draws.std(0)
    level = settings.level
    scale = rep.holdout_scale(mean, sd, y, noise, level)
    out = {
        "num_sensors": int(points.shape[0]),
        "coverage_raw": rep.interval_coverage(mean, sd, y, noise, level),
        "variance_scale": scale,
    }
    if sd_calibrated is not None:
        out["coverage_calibrated"] = rep.interval_coverage(mean, sd_calibrated, y, noise, level)
    if prediction is not None and scale > 0:
        raw = prediction["u"]
        grid_mean = raw.mean(("chain", "draw")).values
        grid_sd = raw.std(("chain", "draw")).values * scale
        z = np.random.default_rng(2).standard_normal((FIELD_DRAWS, *grid_mean.shape))
        pred = xr.DataArray(
            (grid_mean + grid_sd * z)[None],
            dims=("chain", "draw", *prediction["u_true"].dims),
            coords=raw.coords,
        )
        out["field_recalibrated"] = calibration.summary(pred, prediction["u_true"])
    out["z"] = float(stats.norm.ppf(0.5 + level / 2))
    return out
