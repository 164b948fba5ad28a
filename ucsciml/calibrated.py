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
from ucsciml.convergence import combine, verdicts_of
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


def fitted_parameters(
    posterior: Posterior, pde: AbstractPDE, kept: np.ndarray | None = None
) -> dict[str, float]:
    """Every PDE parameter: known values as given, unknowns at their posterior median over
    the ``kept`` draws (a mask over ``chain * draw``; default all), the point replicates are
    simulated at. The median, not the mean: one ensemble member in a poor mode must not
    move the point every replicate is simulated at."""
    out = {}
    for name, value in pde.parameters().items():
        if isinstance(value, Unknown):
            draws = np.asarray(posterior.samples[name]).ravel()
            phi = rep.to_unconstrained(value.prior, draws if kept is None else draws[kept])
            out[name] = float(rep.to_constrained(value.prior, np.median(phi)))
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
        program: the program the replicates are refitted with: the one the posterior belongs
            to, or the same model without what only the main backend handles (a B-PINN's
            dropout masks, for MC dropout: its replicates are plain MAP fits of the same
            network).
        posterior: the raw posterior.
        refit_backend: a backend with ``fit_replicates(program, targets, key)``.
        data_fit: the sensors the posterior was fitted to.
        data_holdout: held-out sensors, or ``None``.
        prediction: field draws on the evaluation grid with ``<field>_true``
            (:func:`ucsciml.run_metrics.field_prediction`), or ``None``.
        seed: the data seed (replicate noise is drawn from it).
        key: PRNG key for the refits.
    """
    metrics: dict[str, Any] = {"method": settings.method, "level": settings.level}
    groups: dict[str, xr.Dataset] = {}
    field = posterior.program.field_site or "u"  # the PDE observable that is scored
    sd_at_holdout = None
    if settings.method == "replicates":
        kept, best_misfit = _draws_that_fit(settings, posterior, data_fit, key)
        metrics["posterior_draws_kept"] = [int(kept.sum()), int(kept.size)]
        metrics["best_misfit"] = best_misfit
        metrics["max_misfit"] = settings.max_misfit
        # No draw explains the data: the calibration corrects a failed fit and says so.
        metrics["main_fit_failed"] = bool(not best_misfit <= settings.max_misfit)
        fits = _replicate_rounds(
            settings, pde, program, posterior, refit_backend, data_fit, seed, key, kept
        )
        table, calibrated_draws, cal_ds = _parameter_calibration(
            settings, pde, posterior, fits, kept
        )
        verdicts = [v for f in fits for v in verdicts_of(f["posterior"].attrs.get("optimization"))]
        if verdicts:
            metrics["refit_convergence"] = combine(verdicts, "replicate refits")
        metrics.update(
            replicates=settings.replicates,
            rounds=len(fits),
            successful=int(sum(f["ok"].sum() for f in fits)),
            parameters=table,
        )
        groups["calibrated_posterior"] = calibrated_draws
        if prediction is not None:
            truth = prediction[f"{field}_true"]
            scores, sd_grid = _field_calibration(fits, prediction, field, kept, pde, key)
            metrics["field"] = scores
            cal_ds[f"{field}_sd"] = (tuple(truth.dims), sd_grid)
            cal_ds = cal_ds.assign_coords(truth.coords)
        if data_holdout is not None:
            sd_at_holdout = _calibrated_sd_at(fits, posterior, field, pde, data_holdout, kept, key)
        groups["calibration"] = cal_ds
    if data_holdout is not None:
        kept_all = kept if settings.method == "replicates" else None
        metrics["holdout"] = _holdout_scores(
            settings, posterior, field, data_holdout, prediction, sd_at_holdout, kept_all, key
        )
    summary = xr.Dataset(attrs={"method": settings.method, "level": settings.level})
    groups.setdefault("calibration", summary).attrs.update(_scalar_scores(metrics))
    return CalibrationResult(metrics, groups)


def _scalar_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The field and held-out scores as flat netCDF-safe attributes."""
    out = {}
    for key in ("coverage_50", "coverage_90", "coverage_95", "crps", "rel_l2"):
        if key in metrics.get("field", {}):
            out[f"field_{key}"] = float(metrics["field"][key])
    held = metrics.get("holdout", {})
    for key in ("num_sensors", "coverage_raw", "coverage_calibrated", "variance_scale"):
        if key in held:
            out[f"holdout_{key}"] = float(held[key])
    if "field_recalibrated" in held:
        out["holdout_field_coverage_90"] = float(held["field_recalibrated"]["coverage_90"])
    return out


def _misfit(fitted: Posterior, data: xr.Dataset, observed: dict, key) -> np.ndarray:
    """Reduced chi-square of every draw ``(chain * draw,)`` against ``observed``: values
    ``(n,)`` shared by all draws, or ``(chain * draw, n)``, one data set per draw."""
    points, noise = sensor_data.points(data), sensor_data.noise_std(data)
    predicted = fitted.predict(points, key, sites=tuple(observed))
    total = 0.0
    for name, values in observed.items():
        draws = predicted[name].values.reshape(-1, points.shape[0])
        total = total + rep.reduced_chi2(draws, values, noise)
    return np.asarray(total / len(observed))


def _draws_that_fit(settings, posterior, data_fit, key) -> tuple[np.ndarray, float]:
    """Mask ``(chain * draw,)`` of the posterior's draws whose data misfit is acceptable, and
    the best draw's reduced chi-square.

    A draw (an ensemble member, a chain stuck far from the data) whose reduced chi-square
    exceeds ``max_misfit`` does not explain the data at their noise level: it is left out of
    the calibrated estimate (the raw posterior keeps it)."""
    names = sensor_data.observed_names(data_fit)
    observed = {n: np.asarray(data_fit[n].values, dtype=float) for n in names}
    misfit = _misfit(posterior, data_fit, observed, jax.random.fold_in(key, 5))
    kept = np.isfinite(misfit) & (misfit <= settings.max_misfit)
    if not kept.any():
        log.warning(
            "calibration: no posterior draw fits the data within reduced chi2 %g (best %.3g); "
            "using all draws. The fit has failed: more steps or another model are needed",
            settings.max_misfit,
            float(np.nanmin(misfit)),
        )
        return np.ones_like(kept), float(np.nanmin(misfit))
    if not kept.all():
        log.warning(
            "calibration: %d of %d posterior draws misfit the data (reduced chi2 > %g) and are "
            "left out of the calibrated posterior",
            int((~kept).sum()),
            kept.size,
            settings.max_misfit,
        )
    return kept, float(np.nanmin(misfit))


def _replicate_rounds(settings, pde, program, posterior, backend, data_fit, seed, key, kept):
    """Simulate, refit and score the replicates in ``settings.rounds`` rounds.

    Round 1 simulates at the fit's estimate; each later round at the estimate corrected by
    the bias the previous round measured (iterated bootstrap bias correction), so the last
    round's bias is measured where the truth most likely is. Returns one dict per round.
    """
    if not hasattr(backend, "fit_replicates"):
        raise ValueError(
            f"replicate calibration refits with a backend that has fit_replicates; "
            f"{type(backend).__name__} has none (the ensemble backend does)"
        )
    priors = {n: u.prior for n, u in pde.unknowns().items() if n in posterior.samples}
    phi_hat = {
        n: float(np.median(rep.to_unconstrained(p, np.asarray(posterior.samples[n]).ravel()[kept])))
        for n, p in priors.items()
    }
    theta = fitted_parameters(posterior, pde, kept)
    rounds = []
    sizes = rep.round_sizes(settings.replicates, settings.rounds)
    for index, count in enumerate(sizes):
        fits = _replicate_round(
            settings,
            pde,
            program,
            backend,
            data_fit,
            theta,
            count,
            [seed, 1, index],
            jax.random.fold_in(key, 7 + index),
        )
        fits["phi_sim"] = {n: float(rep.to_unconstrained(p, theta[n])) for n, p in priors.items()}
        fits["estimates"] = {
            n: _replicate_estimates(
                fits, rep.to_unconstrained(p, np.asarray(fits["posterior"].samples[n])[0])
            )
            for n, p in priors.items()
        }
        fits["round"] = index
        rounds.append(fits)
        if fits["ok"].any():
            theta = {
                **theta,
                **{
                    n: float(
                        rep.to_constrained(
                            p,
                            phi_hat[n] - (np.nanmean(fits["estimates"][n]) - fits["phi_sim"][n]),
                        )
                    )
                    for n, p in priors.items()
                },
            }
    return rounds


def _replicate_round(settings, pde, program, backend, data_fit, theta, count, seed, key):
    """One round: ``count`` datasets simulated at ``theta``, each refitted by the pipeline."""
    observed = rep.replicate_observations(
        pde,
        data_fit,
        theta,
        count,
        seed=int(np.random.SeedSequence(seed).generate_state(1)[0]),
    )
    members = settings.members or int(getattr(backend, "num_members", 1))
    # Fit r * members + m is member m of replicate r: the same pipeline as the main fit.
    repeated = {k: np.repeat(v, members, axis=0) for k, v in observed.items()}
    targets = (
        {f"{k}_obs": v for k, v in repeated.items()}
        if isinstance(program.targets, Mapping)
        else repeated[program.field_site or "u"]
    )
    log.info(
        "calibration: refitting %d replicate datasets (%d fits each) simulated at %s",
        count,
        members,
        {k: f"{v:.6g}" for k, v in theta.items()},
    )
    refit_key, predict_key = jax.random.split(key)
    fitted = backend.fit_replicates(program, targets, refit_key)
    misfit = _misfit(fitted, data_fit, repeated, predict_key).reshape(-1, members)
    fit_ok = np.isfinite(misfit) & (misfit <= settings.max_misfit)
    ok = fit_ok.any(axis=1)
    if not fit_ok.all():
        log.warning(
            "calibration: %d of %d replicate fits misfit their data (reduced chi2 > %g) and are "
            "left out, as in the main fit; %d replicate(s) lost every fit",
            int((~fit_ok).sum()),
            fit_ok.size,
            settings.max_misfit,
            int((~ok).sum()),
        )
    return {
        "posterior": fitted,
        "theta": dict(theta),
        "misfit": misfit,
        "fit_ok": fit_ok,
        "ok": ok,
        "members": members,
    }


def _replicate_estimates(fits, values: np.ndarray) -> np.ndarray:
    """Per replicate, the median over its kept fits of ``values`` ``(R * members,)``; NaN for
    a replicate without a kept fit (the main fit's estimator, applied to each replicate)."""
    grouped = np.asarray(values, dtype=float).reshape(fits["fit_ok"].shape)
    masked = np.where(fits["fit_ok"], grouped, np.nan)
    out = np.full(grouped.shape[0], np.nan)
    out[fits["ok"]] = np.nanmedian(masked[fits["ok"]], axis=1)
    return out


def _replicate_fields(fits, values: np.ndarray) -> np.ndarray:
    """Per kept replicate, the mean over its kept fits of fields ``(R * members, ...)``."""
    grouped = np.asarray(values).reshape(*fits["fit_ok"].shape, *np.shape(values)[1:])
    weights = fits["fit_ok"].astype(float)
    weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    extra = (1,) * (grouped.ndim - 2)
    means = (grouped * weights.reshape(*weights.shape, *extra)).sum(axis=1)
    return means[fits["ok"]]


def _parameter_calibration(settings, pde, posterior, rounds, kept):
    table, draws, rows = {}, {}, {}
    rng = np.random.default_rng(0)
    for name, unknown in pde.unknowns().items():
        if name not in posterior.samples:
            continue
        draws_all = np.asarray(posterior.samples[name]).ravel()
        phi = rep.to_unconstrained(unknown.prior, draws_all[kept])
        result = rep.calibrate_rounds(
            float(np.median(phi)),
            [(f["phi_sim"][name], f["estimates"][name][f["ok"]]) for f in rounds],
            rep.robust_sd(phi),
            settings.level,
        )
        phi_reps = np.concatenate([f["estimates"][name] for f in rounds])
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
    cal_ds = _calibration_dataset(settings, rounds, rows)
    return table, xr.Dataset(draws), cal_ds


def _calibration_dataset(settings, rounds, rows) -> xr.Dataset:
    names = list(rows)
    stats_of = {
        field: ("parameter", [getattr(rows[n][0], field) for n in names])
        for field in ("estimate", "bias", "spread", "posterior_sd", "sd")
    }

    def stacked(key):
        return np.concatenate([np.asarray(f[key]) for f in rounds])

    ds = xr.Dataset(
        {
            **stats_of,
            "inflation": ("parameter", [rows[n][0].inflation for n in names]),
            "replicate_round": (
                "replicate",
                np.concatenate([[f["round"]] * f["ok"].size for f in rounds]),
            ),
            "replicate_misfit": (("replicate", "member"), stacked("misfit").astype(float)),
            "replicate_fit_ok": (("replicate", "member"), stacked("fit_ok").astype(bool)),
            "replicate_ok": ("replicate", stacked("ok").astype(bool)),
            **{f"replicate_{n}": ("replicate", rows[n][1]) for n in names},
            **{
                f"simulated_{n}": (
                    "replicate",
                    np.concatenate([[f["theta"][n]] * f["ok"].size for f in rounds]),
                )
                for n in names
            },
        },
        coords={"parameter": names},
    )
    ds.attrs.update(
        method=settings.method,
        level=settings.level,
        replicates=settings.replicates,
        rounds=len(rounds),
        successful=int(stacked("ok").sum()),
        members=int(rounds[0]["members"]),
        space="unconstrained (log for positive parameters); estimate, bias, spread, sd there",
        **{f"theta_{k}": v for k, v in rounds[0]["theta"].items()},
    )
    return ds


def _kept_moments(draws: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd over the kept draws of ``(chain, draw, ...)`` values."""
    flat = np.asarray(draws).reshape(kept.size, *np.shape(draws)[2:])[kept]
    return flat.mean(0), flat.std(0)


def _field_calibration(rounds, prediction, field, kept, pde, key):
    """Calibrated pointwise field sd on the evaluation grid and its scores vs the truth."""
    raw = prediction[field]
    dims = tuple(prediction[f"{field}_true"].dims)
    mean, sd_raw = _kept_moments(raw.values, kept)
    points = np.stack(
        [m.ravel() for m in np.meshgrid(*(prediction[d].values for d in dims), indexing="ij")],
        axis=-1,
    )
    errors = []
    for index, fits in enumerate(rounds):
        pred_k = fits["posterior"].predict(
            points, jax.random.fold_in(key, 11 + index), sites=(field,)
        )
        fields = _replicate_fields(fits, pred_k[field].values[0]).reshape(-1, *mean.shape)
        truth = pde.solve_observables(points, fits["theta"])[field].reshape(mean.shape)
        errors.append(fields - truth)
    errors = np.concatenate(errors)
    sd = rep.field_sd(errors, 0.0, sd_raw)
    draws = rep.student_draws(mean, sd, errors.shape[0], FIELD_DRAWS, np.random.default_rng(1))
    pred = xr.DataArray(
        draws[None], dims=("chain", "draw", *dims), coords={d: raw[d] for d in dims}
    )
    scores = calibration.summary(pred, prediction[f"{field}_true"])
    scores["mean_width_90"] = scores["sharpness_90"]
    moving = sd_raw > 0  # points a hard constraint pins have no spread to inflate
    scores["inflation_median"] = (
        float(np.median(sd[moving] / sd_raw[moving])) if moving.any() else float("nan")
    )
    return scores, sd


def _calibrated_sd_at(rounds, posterior, field, pde, data, kept, key) -> np.ndarray:
    points = sensor_data.points(data)
    raw = posterior.predict(points, jax.random.fold_in(key, 17), sites=(field,))[field].values
    errors = []
    for index, fits in enumerate(rounds):
        key_r = jax.random.fold_in(key, 13 + index)
        reps = fits["posterior"].predict(points, key_r, sites=(field,))
        truth = pde.solve_observables(points, fits["theta"])[field]
        errors.append(_replicate_fields(fits, reps[field].values[0]) - truth)
    return rep.field_sd(np.concatenate(errors), 0.0, _kept_moments(raw, kept)[1])


def _scored_observations(data: xr.Dataset, field: str) -> np.ndarray:
    """The held-out sensors' values of the scored field (e.g. ``u``, the x-velocity of a
    stream-function PDE, when several observables are observed)."""
    values = sensor_data.observations(data)
    if values.ndim == 1:
        return values
    return values[:, sensor_data.observed_names(data).index(field)]


def _holdout_scores(settings, posterior, field, data, prediction, sd_calibrated, kept, key) -> dict:
    """Coverage of held-out noisy sensors (raw, replicate-calibrated) and the variance-scaling
    recalibration fitted on them, applied to the field on the grid."""
    points = sensor_data.points(data)
    y = _scored_observations(data, field)
    noise = sensor_data.noise_std(data)
    draws = posterior.predict(points, jax.random.fold_in(key, 19), sites=(field,))[field].values
    if kept is None:
        kept = np.ones(draws.shape[0] * draws.shape[1], dtype=bool)
    mean, sd = _kept_moments(draws, kept)
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
        raw = prediction[field]
        grid_mean, grid_sd = _kept_moments(raw.values, kept)
        grid_sd = grid_sd * scale
        z = np.random.default_rng(2).standard_normal((FIELD_DRAWS, *grid_mean.shape))
        pred = xr.DataArray(
            (grid_mean + grid_sd * z)[None],
            dims=("chain", "draw", *prediction[f"{field}_true"].dims),
            coords={d: raw[d] for d in prediction[f"{field}_true"].dims},
        )
        out["field_recalibrated"] = calibration.summary(pred, prediction[f"{field}_true"])
    out["z"] = float(stats.norm.ppf(0.5 + level / 2))
    return out
