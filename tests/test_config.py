import logging

import pytest

from ucsciml.config import ConfigError, build, build_backend, build_prior, load_case, resolve_config
from ucsciml.pde import Unknown

BASE = {
    "case": {"name": "t"},
    "pde": {
        "name": "heat",
        "kappa": {"prior": "LogNormal", "loc": -2.0, "scale": 0.5, "truth": 0.1},
    },
    "model": {"name": "bpinn", "width": 4},
    "backend": {"nuts": {"num_samples": 10}},
}


def _cfg(**changes):
    import copy

    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        table, key = path.split("__")
        cfg.setdefault(table, {})[key] = value
    return cfg


def test_resolves_defaults_and_builds_objects():
    cfg = resolve_config(_cfg())
    assert cfg["case"]["backend"] == "nuts" and cfg["case"]["seed"] == 0
    assert cfg["model"]["depth"] == 3 and cfg["data"]["num_sensors"] == 200
    assert cfg["backend"]["nuts"]["num_warmup"] == 500
    pde = build(cfg["pde"], "pde")
    assert isinstance(pde.kappa, Unknown) and pde.kappa.truth == 0.1
    assert build_backend(cfg, "nuts").num_samples == 10


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model__widht": 3}, r"unknown key\(s\) \['widht'\] in \[model\]"),
        ({"case__colour": "red"}, r"unknown key\(s\) \['colour'\] in \[case\]"),
        ({"data__noise": -0.1}, "noise must be >= 0"),
        ({"data__placement": "edges"}, "placement must be one of"),
        ({"data__num_sensors": "many"}, "num_sensors must be int"),
        ({"pde__name": "navier"}, "unknown pde 'navier'"),
        ({"case__backend": "magic"}, "unknown backend 'magic'"),
        ({"pde__kappa": {"prior": "Cauchyish", "loc": 0.0}}, "unknown prior 'Cauchyish'"),
        ({"pde__kappa": {"prior": "Normal", "mean": 0.0}}, r"no parameter\(s\) \['mean'\]"),
        ({"data__source": "file"}, "needs path"),
    ],
)
def test_bad_configs_name_the_key(changes, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(_cfg(**changes))


def test_unknown_backend_settings_and_top_level():
    cfg = _cfg()
    cfg["backend"]["nuts"]["num_samplez"] = 3
    with pytest.raises(ConfigError, match=r"\[backend.nuts\]"):
        resolve_config(cfg)
    cfg = _cfg()
    cfg["extras"] = {}
    with pytest.raises(ConfigError, match="top level"):
        resolve_config(cfg)


def test_bad_values_fail_at_build_with_table_name():
    cfg = resolve_config(_cfg(model__width=-3))
    with pytest.raises(ConfigError, match=r"\[model\].*width"):
        build(cfg["model"], "model", pde=build(cfg["pde"], "pde"))
    with pytest.raises(ConfigError, match="scale"):
        build_prior({"prior": "Normal", "loc": 0.0, "scale": -1.0})


def test_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="case file not found"):
        load_case(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[case\nname = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_case(bad)


def test_shipped_cases_are_valid(caplog, monkeypatch):
    from pathlib import Path

    # The CLI stops "ucsciml" records at its own handler; let them reach caplog here.
    monkeypatch.setattr(logging.getLogger("ucsciml"), "propagate", True)
    cases = sorted((Path(__file__).resolve().parents[1] / "case_studies").glob("*.toml"))
    assert cases, "no case files found"
    with caplog.at_level(logging.WARNING, logger="ucsciml.config"):
        for path in cases:
            load_case(path)
    assert "deprecated" not in caplog.text  # shipped cases use the current spellings
