"""One run of a case: data -> program -> posterior -> diagnostics -> run directory.

A run directory holds ``config.toml`` (the resolved config), ``posterior.nc`` (the DataTree,
with the field on the evaluation grid in ``predictions``), ``metrics.json``, ``report.html``
and ``log.txt``; each is written atomically, so a crash never leaves a
half-written file; files take the user's umask and ``posterior.nc`` is zlib-compressed.
``resume=True`` reuses a finished ``posterior.nc`` made from the same inputs (the config,
the bytes of a sensor data file and the versions of :data:`NUMERIC_PACKAGES`), and otherwise
lets a checkpointing backend (NUTS's MAP start and sampling, ensemble members, VI) continue
from ``checkpoints/``, which a run of other inputs never reuses and a finished
``posterior.nc`` replaces. ``[output] save_network_weights = false`` leaves the network
weights out of the final ``posterior.nc`` (physical parameters and the field on the grid
stay); such a file is resumed from its stored predictions. A report that cannot be
drawn is a warning in ``log.txt`` and in ``metrics.json``'s ``warnings`` (shown by
``ucsciml summary``). A run holds the directory's lock (:mod:`ucsciml.rundir`) throughout:
a second run on the same directory is refused instead of mixing its files with the first's.
In a distributed run process 0 writes the run directory (the others write scratch copies)
and, with ``resume``, sends its ``posterior.nc`` and ``checkpoints/`` to the other processes
first, so that all of them skip, continue or refit alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import tomli_w
import xarray as xr

from ucsciml import config as case_config
from ucsciml import data as sensor_data
from ucsciml import diagnostics, distributed, registry, replicates, rundir
from ucsciml._io import file_digest, write_datatree, write_json, write_text
from ucsciml.calibrated import calibrate_run
from ucsciml.family_case import family_metrics
from ucsciml.posterior import Posterior, load, tree_attr, without_network_weights
from ucsciml.program import compile as compile_program
from ucsciml.provenance import config_hash, package_versions
from ucsciml.report import report
from ucsciml.run_metrics import (
    field_metrics,
    field_name,
    field_prediction,
    parameter_table,
    with_predictions,
)

log = logging.getLogger("ucsciml")

#: Packages whose version changes the numbers of a fit; ``--resume`` refits when one moved.
NUMERIC_PACKAGES = ("ucsciml", "jax", "jaxlib", "numpyro", "blackjax", "optax", "equinox")


@dataclass(frozen=True)
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    metrics: dict[str, Any]
    diagnostics: diagnostics.Diagnostics


def run_case(
    cfg: Mapping[str, Any],
    *,
    backend: str | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    root: str | Path = "runs",
) -> RunResult:
    """Run a resolved case config end to end and write its run directory.

    Args:
        cfg: a config from :func:`ucsciml.config.load_case`.
        backend: backend name overriding ``[case] backend``.
        seed: seed overriding ``[case] seed`` (converted once into a PRNG key).
        out: run directory; default ``root/<case>/<backend>-seed<seed>``.
        resume: reuse ``posterior.nc`` in ``out`` when its inputs hash matches (config,
            sensor file contents, package versions).
        root: parent of default run directories.

    Raises:
        RunDirectoryBusy: when another live run holds the run directory's lock.
    """
    cfg = {**cfg, "case": {**cfg["case"]}}
    if backend is not None:
        cfg["case"]["backend"] = backend
    if seed is not None:
        cfg["case"]["seed"] = seed
    backend_name, seed = cfg["case"]["backend"], int(cfg["case"]["seed"])
    run_dir = Path(out) if out else Path(root) / cfg["case"]["name"] / f"{backend_name}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.lock(run_dir):
        return _run_locked(cfg, backend_name, seed, run_dir, resume)


def _run_locked(cfg, backend_name, seed, run_dir, resume) -> RunResult:
    handler = _BufferedLog(run_dir / "log.txt")
    previous_level = log.level
    log.setLevel(logging.INFO)  # log.txt always gets the INFO record of the run
    log.addHandler(handler)
    # A model that needs float64 (a GP's near-singular grid covariances) says so with
    # needs_float64; the whole run, data included, then computes in float64.
    family = case_config.is_family(cfg)
    names = registry.CASES if family else registry.MODELS
    model_cls = registry.resolve(names, cfg["model"]["name"], "model")
    float64 = bool(getattr(model_cls, "needs_float64", False))
    try:
        with jax.enable_x64(float64 or bool(jax.config.jax_enable_x64)):
            if float64:
                log.info("model %s computes in float64", cfg["model"]["name"])
            run = _run_family if family else _run
            return run(cfg, backend_name, seed, run_dir, resume, handler)
    finally:
        handler.flush()
        log.removeHandler(handler)
        log.setLevel(previous_level)


def _run(cfg, backend_name, seed, run_dir, resume, handler) -> RunResult:
    chash = config_hash(cfg)
    write_text(run_dir / "config.toml", tomli_w.dumps(_toml_safe(cfg)))
    pde = case_config.build(cfg["pde"], "pde")
    data = _load_data(cfg, pde)
    inputs = run_inputs(cfg)
    ihash = config_hash({"config_hash": chash, **inputs})
    resume = _shared_resume(run_dir, resume, ihash)
    settings = case_config.calibration_settings(cfg)
    holdout = None
    if settings is not None and settings.holdout > 0:
        data, holdout = replicates.split_holdout(data, settings.holdout, cfg["data"]["seed"])
        log.info(
            "calibration: %d sensors held out to check the field band", holdout.sizes["sensor"]
        )
    log.info(
        "case %s: %d sensors, backend %s, seed %d",
        cfg["case"]["name"],
        data.sizes["sensor"],
        backend_name,
        seed,
    )
    backend = _with_checkpoints(
        case_config.build_backend(cfg, backend_name), run_dir, resume, inputs_hash=ihash
    )
    base_model = case_config.build(cfg["model"], "model", pde=pde)
    # A backend may adapt the model it needs (MC dropout switches on the dropout layer), so
    # one case file serves every backend.
    model = backend.prepare_model(base_model) if hasattr(backend, "prepare_model") else base_model
    program = compile_program(model, data)
    posterior_path = run_dir / "posterior.nc"
    key = jax.random.key(seed)
    previous = _reusable_tree(posterior_path, ihash, inputs) if resume else None
    stored = None
    if previous is not None and _lacks_weights(previous, program):
        stored = _stored_prediction(previous, program.field_site)
        if settings is not None or stored is None:
            log.info(
                "resume: %s holds no network weights ([output] save_network_weights = "
                "false) and %s needs them; refitting",
                posterior_path,
                "calibration" if settings is not None else "predicting the field",
            )
            previous = stored = None
    reused = previous is not None
    if previous is not None:
        tree = previous
        wall = float(tree_attr(tree, "ucsciml_wall_time_s", float("nan")))
        posterior = Posterior.from_datatree(tree, program, jax.random.fold_in(key, 1))
    else:
        start = time.perf_counter()
        posterior = backend.run(program, key)
        wall = time.perf_counter() - start
        log.info("%s finished in %.1f s", backend_name, wall)
        tree = posterior.to_datatree()
        tree.attrs.update(_run_attrs(cfg, chash, ihash, inputs, wall))
        write_datatree(tree, posterior_path)  # the raw posterior is safe before scoring
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # posterior.nc holds it all
    handler.flush()
    diag = diagnostics.check(tree)
    grid, field_key = cfg["evaluation"]["grid"], jax.random.fold_in(key, 2)
    # File data come from an unknown field: the PDE's reference solution is not its truth.
    known = cfg["data"]["source"] != "file"
    if stored is not None:
        prediction = stored
    else:
        prediction = field_prediction(posterior, pde, grid, field_key, truth=known)
    scored = (
        prediction
        if prediction is not None and f"{field_name(prediction)}_true" in prediction
        else None
    )
    law = case_config.conservation_settings(cfg)
    conservation = None
    if law is not None:
        if stored is not None and "ucsciml_conservation" in tree.attrs:
            conservation = json.loads(tree.attrs["ucsciml_conservation"])  # already conserved
        else:
            before = scored
            prediction, conservation = _conserve(prediction, law, jax.random.fold_in(key, 4))
            scored = prediction if before is not None else None
            if before is not None:
                conservation["field_before"] = field_metrics(
                    posterior, pde, grid, field_key, prediction=before
                )
    metrics = {
        "case": cfg["case"]["name"],
        "backend": backend_name,
        "seed": seed,
        "config_hash": chash,
        "inputs_hash": ihash,
        "data_sha256": inputs["data_sha256"],
        "wall_time_s": wall,
        "resumed": reused,
        "diagnostics": diag.to_dict(),
        "parameters": parameter_table(tree, pde),
        "field": field_metrics(posterior, pde, grid, field_key, prediction=scored)
        if scored
        else {},
    }
    changed = not reused
    if prediction is not None and "predictions" not in tree.children:
        tree = with_predictions(tree, prediction)
        changed = True
    if conservation is not None:
        metrics["conservation"] = conservation
        tree = tree.copy()
        tree.attrs["ucsciml_conservation"] = json.dumps(_toml_safe(conservation), sort_keys=True)
        changed = True
        _log_conservation(conservation, metrics["field"])
    if settings is not None:
        changed = True
        result = calibrate_run(
            settings,
            pde=pde,
            # Replicates are refitted by MAP ensembles: of the model as the case file gives
            # it (without a backend's additions such as dropout masks, which MAP cannot fit).
            program=program if model is base_model else compile_program(base_model, data),
            posterior=posterior,
            refit_backend=case_config.build_backend(cfg, "ensemble"),
            data_fit=data,
            data_holdout=holdout,
            prediction=scored,
            seed=int(cfg["data"]["seed"]),
            key=jax.random.fold_in(key, 3),
        )
        metrics["calibrated"] = result.metrics
        tree = tree.copy()
        for name, group in result.groups.items():
            tree[name] = xr.DataTree(group)
        _log_calibration(result.metrics)
    if not cfg.get("output", {}).get("save_network_weights", True) and not stored:
        tree = without_network_weights(tree)
        changed = True
    if changed:
        write_datatree(tree, posterior_path)
    failure = _write_report(tree, run_dir / "report.html")
    metrics["warnings"] = [failure] if failure else []
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    log.info("diagnostics: %s", diag.verdict)
    for message in diag.messages:
        log.warning("%s", message)
    return RunResult(run_dir, metrics, diag)


def _run_family(cfg, backend_name, seed, run_dir, resume, handler) -> RunResult:
    """A family case (:mod:`ucsciml.family_case`): the family generates its problem and
    fits it; the run directory is the same as any run's."""
    chash = config_hash(cfg)
    inputs = run_inputs(cfg)
    ihash = config_hash({"config_hash": chash, **inputs})
    write_text(run_dir / "config.toml", tomli_w.dumps(_toml_safe(cfg)))
    resume = _shared_resume(run_dir, resume, ihash)
    posterior_path = run_dir / "posterior.nc"
    previous = _reusable_tree(posterior_path, ihash, inputs) if resume else None
    log.info(
        "case %s: model %s, backend %s, seed %d",
        cfg["case"]["name"],
        cfg["model"]["name"],
        backend_name,
        seed,
    )
    if previous is not None:
        tree = previous
        wall = float(tree_attr(tree, "ucsciml_wall_time_s", float("nan")))
        numbers = family_metrics(tree)
    else:
        family = case_config.build_family(cfg)
        delegated = backend_name not in family.own_backends
        settings = case_config.build_backend(cfg, backend_name) if delegated else None
        start = time.perf_counter()
        tree, numbers = family.run(backend_name, settings, key=jax.random.key(seed), progress=True)
        wall = time.perf_counter() - start
        log.info("%s finished in %.1f s", backend_name, wall)
        tree = tree.copy()
        tree.attrs.update(_run_attrs(cfg, chash, ihash, inputs, wall))
        tree.attrs["ucsciml_metrics"] = json.dumps(_toml_safe(numbers), sort_keys=True)
        write_datatree(tree, posterior_path)
    handler.flush()
    diag = diagnostics.check(tree)
    metrics = {
        "case": cfg["case"]["name"],
        "model": cfg["model"]["name"],
        "backend": backend_name,
        "seed": seed,
        "config_hash": chash,
        "inputs_hash": ihash,
        "wall_time_s": wall,
        "resumed": previous is not None,
        "diagnostics": diag.to_dict(),
        "family": numbers,
    }
    failure = _write_report(tree, run_dir / "report.html")
    metrics["warnings"] = [failure] if failure else []
    write_json(run_dir / "metrics.json", metrics)
    log.info("diagnostics: %s", diag.verdict)
    for message in diag.messages:
        log.warning("%s", message)
    return RunResult(run_dir, metrics, diag)


def _conserve(prediction, law, key) -> tuple[xr.Dataset, dict[str, Any]]:
    """The ``[conservation]`` update (:data:`ucsciml.registry.UPDATES`) of the predicted
    field, and its numbers."""
    if prediction is None:
        raise ValueError(
            "[conservation] needs a predicted field on the evaluation grid, and this "
            "model's program declares no field site (Program.field_site)"
        )
    update = registry.resolve(registry.UPDATES, "conservation", "update")
    log.info("conservation: integral of the field over %s = %g imposed", law.over, law.total)
    return update(prediction, field_name(prediction), law, key=key)


def _log_conservation(numbers: Mapping[str, Any], field: Mapping[str, Any]) -> None:
    """One log line: the conservation error of the mean, and coverage, before and after."""
    before = numbers.get("field_before", {})
    log.info(
        "conservation: max |integral - total| of the mean %.3g -> %.3g; 90%% coverage %s -> %s",
        numbers["error_before"],
        numbers["error_after"],
        f"{before['coverage_90']:.3f}" if "coverage_90" in before else "n/a",
        f"{field['coverage_90']:.3f}" if "coverage_90" in field else "n/a",
    )


def _run_attrs(cfg, chash: str, ihash: str, inputs, wall: float) -> dict[str, Any]:
    """The run's provenance attributes of ``posterior.nc`` (what ``--resume`` checks)."""
    return {
        "ucsciml_config_hash": chash,
        "ucsciml_inputs_hash": ihash,
        "ucsciml_inputs": json.dumps(inputs, sort_keys=True),
        "ucsciml_seed": int(cfg["case"]["seed"]),
        "ucsciml_backend": cfg["case"]["backend"],
        "ucsciml_wall_time_s": wall,
        "ucsciml_case": cfg["case"]["name"],
    }


def _log_calibration(metrics: Mapping[str, Any]) -> None:
    for name, row in metrics.get("parameters", {}).items():
        log.info(
            "calibrated %s: %.6g [%.6g, %.6g] (inflation x%.1f, bias %+.3g in unconstrained "
            "space)%s",
            name,
            row["mean"],
            row["q_low"],
            row["q_high"],
            row["inflation"],
            row["bias"],
            "" if "truth" not in row else f", truth {row['truth']:.6g}",
        )
    if "field" in metrics:
        log.info("calibrated field: 90%% coverage %.3f", metrics["field"]["coverage_90"])
    if "holdout" in metrics:
        h = metrics["holdout"]
        log.info(
            "held-out sensors: %d, raw coverage %.3f%s, variance scale %.2f",
            h["num_sensors"],
            h["coverage_raw"],
            f", calibrated {h['coverage_calibrated']:.3f}" if "coverage_calibrated" in h else "",
            h["variance_scale"],
        )


def _write_report(tree: xr.DataTree, path: Path) -> str | None:
    """Write the report; on failure log a warning and return it (``metrics["warnings"]``,
    shown by ``ucsciml summary``) instead of losing the saved results."""
    try:
        report(tree, path)
    except Exception as err:  # the run's results are saved; a report failure must not lose them
        message = (
            f"report.html not written: {type(err).__name__}: {err}; the posterior is saved: "
            f"retry with `ucsciml report {path.parent}`"
        )
        log.warning("%s", message)
        return message
    return None


def run_inputs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's result depends on beyond its config: the SHA-256 of a ``[data] source =
    "file"`` sensor file's bytes (``None`` for synthetic data) and the versions of
    :data:`NUMERIC_PACKAGES`. ``--resume`` reuses a posterior only when these match too."""
    spec = cfg.get("data") or {"source": "generated"}
    versions = package_versions()
    return {
        "data_sha256": file_digest(spec["path"]) if spec["source"] == "file" else None,
        "versions": {name: versions.get(name, "not installed") for name in NUMERIC_PACKAGES},
    }


def _reusable_tree(path: Path, ihash: str, inputs: Mapping[str, Any]) -> xr.DataTree | None:
    """The saved posterior when it was made from these very inputs, else ``None`` (logged)."""
    if not path.exists():
        return None
    try:
        tree = load(path)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        log.warning("resume: %s is unreadable (%s: %s); refitting", path, type(err).__name__, err)
        return None
    if tree_attr(tree, "ucsciml_inputs_hash") == ihash:
        log.info("resume: reusing %s (inputs hash %s)", path, ihash)
        return tree
    saved = tree_attr(tree, "ucsciml_inputs") or {}
    if not isinstance(saved, dict):
        saved = {}
    changed = [
        what
        for what, key in (("the sensor data file", "data_sha256"), ("package versions", "versions"))
        if key in saved and saved[key] != inputs[key]
    ]
    log.info(
        "resume: %s was made from other inputs (%s changed); refitting",
        path,
        ", ".join(changed) or "the config",
    )
    return None


def _lacks_weights(tree: xr.DataTree, program) -> bool:
    """Whether a saved tree misses latent sites of ``program`` (weights left out)."""
    saved = set(tree["posterior"].data_vars) if "posterior" in tree.children else set()
    return not set(program.latent_sites()) <= saved


def _stored_prediction(tree: xr.DataTree, field: str | None) -> xr.Dataset | None:
    """The field on the evaluation grid as a saved tree holds it (``predictions`` and, when
    known, ``predictions_constant_data``), as :func:`ucsciml.run_metrics.field_prediction`
    returns it."""
    if field is None or "predictions" not in tree.children:
        return None
    if field not in tree["predictions"].data_vars:
        return None
    prediction = tree["predictions"].to_dataset()[[field]]
    if "predictions_constant_data" in tree.children:
        truth = tree["predictions_constant_data"].to_dataset()
        if f"{field}_true" in truth:
            prediction = prediction.assign({f"{field}_true": truth[f"{field}_true"]})
    return prediction


def _shared_resume(run_dir: Path, resume: bool, ihash: str) -> bool:
    """``resume`` as every process of a distributed run can follow it: process 0's
    ``posterior.nc`` and ``checkpoints/`` are copied into every other process's (scratch)
    run directory (:func:`ucsciml.distributed.share_files`), so all of them reuse, continue
    or refit alike; ``False`` (a clean refit everywhere) when the copies differ."""
    if not resume or jax.process_count() == 1:
        return resume
    folder = run_dir / "checkpoints"
    names = ["posterior.nc"]
    if distributed.is_main() and folder.is_dir():
        names += sorted(f"checkpoints/{p.name}" for p in folder.iterdir() if p.is_file())
    if distributed.share_files(run_dir, names, agree_on=ihash):
        log.info(
            "resume: all %d processes resume from process 0's posterior.nc and checkpoints",
            jax.process_count(),
        )
        return True
    return False


def _with_checkpoints(backend, run_dir: Path, resume: bool, *, inputs_hash: str | None = None):
    """Point a backend that checkpoints (has a ``checkpoint_dir`` setting) at
    ``run_dir/checkpoints``; without ``resume`` stale checkpoints are removed first, with it
    the backend continues from them, unless they were made from other inputs (the
    ``inputs_hash`` of the config, data file and package versions recorded in
    ``checkpoints/inputs_hash``): those are removed too. A backend's own fingerprint covers
    its settings, key and data only, not the model's priors."""
    if "checkpoint_dir" not in {f.name for f in dataclasses.fields(backend)}:
        return backend
    folder = run_dir / "checkpoints"
    marker = folder / "inputs_hash"
    if resume and inputs_hash is not None and marker.exists():
        if marker.read_text(encoding="utf-8").strip() != inputs_hash:
            log.info("resume: checkpoints in %s were made from other inputs; removed", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    if inputs_hash is not None:
        write_text(marker, inputs_hash + "\n")
    if backend.checkpoint_dir is not None:
        return backend
    return dataclasses.replace(backend, checkpoint_dir=str(folder))


def _load_data(cfg, pde) -> xr.Dataset:
    # The data seed is the case's [data] seed, not the inference seed: every backend and
    # every --seed of one case sees the same sensors.
    spec = cfg["data"]
    if spec["source"] == "file":
        data = sensor_data.load(spec["path"])
        try:
            return sensor_data.check_domain(data, pde.domain)
        except sensor_data.DataError as err:
            raise sensor_data.DataError(f"{spec['path']}: {err}") from None
    return sensor_data.synthetic_sensors(
        pde, spec["num_sensors"], spec["noise"], spec["seed"], spec.get("placement", "interior")
    )


def _toml_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_toml_safe(v) for v in obj]
    return obj


class _BufferedLog(logging.Handler):
    """Collects log records and rewrites ``log.txt`` atomically on each flush."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def flush(self) -> None:
        write_text(self.path, "\n".join(self.lines) + "\n")
