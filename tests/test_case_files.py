"""Every shipped case file runs end to end in a tiny configuration (PDE cases: slow).

Each case keeps its model family, PDE, data source and backend; only sizes shrink (sensors,
networks, steps, draws, grids), so this walks the whole path of every case file: config
validation, data generation, fit, diagnostics, run directory, report (opened in headless
Chromium, which must log no console error).
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest
from conftest import render_in_chromium

from ucsciml import registry
from ucsciml.config import resolve_config
from ucsciml.posterior import load
from ucsciml.runner import run_case

ROOT = Path(__file__).resolve().parents[1]
CASES = sorted((ROOT / "case_studies").glob("*.toml"))

TINY_MAP = {"adam_steps": 20, "learning_rate": 0.003, "lbfgs_steps": 5}
#: Tiny sizes per backend of a PDE case.
TINY_BACKENDS = {
    "ensemble": {"num_members": 1, "map": TINY_MAP},
    "laplace": {"num_samples": 20, "map": TINY_MAP},
    "nuts": {"num_warmup": 10, "num_samples": 10, "num_chains": 1},
}
#: Tiny model settings per model of a PDE case (only keys the case already sets change).
TINY_MODELS = {
    "bpinn": {"width": 8, "depth": 2, "num_collocation": 50},
    "spectral_gp": {"grid": [8, 8], "fit_steps": 20, "fit_lbfgs_steps": 5},
}
#: Tiny [model] settings of each family case (only keys the case sets change) and of the
#: backends it hands to the inference layer.
TINY_FAMILIES = {
    "fbm_sde": {"num_steps": 20, "num_draws": 50, "num_paths": 4},
    "rgnp": {"num_steps": 20, "width": 16, "depth": 2, "num_test": 3, "num_draws": 20},
    "probconserv": {"num_functions": 2, "num_draws": 20},
}


def _tiny(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    name = raw["model"]["name"]
    if name in registry.CASES:
        if name not in TINY_FAMILIES:
            pytest.fail(f"add tiny settings for family {name!r} to TINY_FAMILIES")
        tiny = TINY_FAMILIES[name]
    else:
        tiny = TINY_MODELS[name]
        raw.pop("calibration", None)
        if raw.get("data", {}).get("source", "synthetic") == "synthetic":
            raw.setdefault("data", {})["num_sensors"] = 30
        coords = registry.resolve(registry.PDES, raw["pde"]["name"], "pde").coords
        raw["evaluation"] = {"grid": [6] * (len(coords) - 1) + [3]}
    raw["model"].update({k: v for k, v in tiny.items() if k in raw["model"]})
    backend = raw["case"].get("backend", "nuts")
    if backend in TINY_BACKENDS:
        table = raw.setdefault("backend", {}).setdefault(backend, {})
        table.update(TINY_BACKENDS[backend])
        if backend == "nuts":
            table.pop("init", None)
            table.pop("map", None)
    return raw


def _is_family(path: Path) -> bool:
    return tomllib.loads(path.read_text())["model"]["name"] in registry.CASES


# The PDE cases take 40-260 s each even tiny (reference solutions, compiles, the report), so
# they run with the slow tests; the family cases (seconds each) run in the default suite.
PARAMS = [
    pytest.param(p, id=p.stem, marks=() if _is_family(p) else pytest.mark.slow) for p in CASES
]


@pytest.mark.parametrize("path", PARAMS)
def test_case_file_runs_tiny(path, tmp_path):
    raw = tomllib.loads(path.read_text())
    cfg = resolve_config(_tiny(raw), source=str(path))
    result = run_case(cfg, out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("posterior.nc", "metrics.json", "report.html", "config.toml", "log.txt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["warnings"] == []
    assert "posterior" in load(run / "posterior.nc").children
    assert result.metrics["case"] == raw["case"]["name"]
    render_in_chromium(run / "report.html", tmp_path)  # opens with no console errors
    # an unknown key in the case's model table is refused
    bad = copy.deepcopy(raw)
    bad["model"]["no_such_setting"] = 1
    with pytest.raises(ValueError, match="no_such_setting"):
        resolve_config(bad, source=str(path))
