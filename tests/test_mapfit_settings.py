"""``MAPFit``: one settings object for every MAP fit, its validation, its case-file sub-table
``[backend.<name>.map]`` and the deprecated spellings it replaces."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import pytest
from conftest import regression_data, regression_model

import ucsciml as uq
from ucsciml import inference
from ucsciml.config import ConfigError, build_backend, load_case, resolve_config
from ucsciml.inference import MAPFit
from ucsciml.optimize import adam_schedule

# Each backend's deprecated keywords, their MAPFit fields, and the backend's default fit.
OLD = {
    inference.NUTS: (
        {"map_steps": "adam_steps", "map_learning_rate": "learning_rate"}
        | {"map_lbfgs_steps": "lbfgs_steps"},
        MAPFit(adam_steps=2000, learning_rate=1e-2, lbfgs_steps=200),
    ),
    inference.VI: (
        {"map_steps": "adam_steps", "map_learning_rate": "learning_rate"}
        | {"map_lbfgs_steps": "lbfgs_steps"},
        MAPFit(adam_steps=2000, learning_rate=1e-2, lbfgs_steps=200),
    ),
    inference.Laplace: (
        {"map_steps": "adam_steps", "learning_rate": "learning_rate"}
        | {"lbfgs_steps": "lbfgs_steps"},
        MAPFit(adam_steps=3000, learning_rate=1e-2, lbfgs_steps=200),
    ),
    inference.DeepEnsemble: (
        {"num_steps": "adam_steps", "learning_rate": "learning_rate"}
        | {"lbfgs_steps": "lbfgs_steps"},
        MAPFit(adam_steps=3000, learning_rate=1e-2, lbfgs_steps=200),
    ),
}
VALUES = {"adam_steps": 70, "learning_rate": 0.003, "lbfgs_steps": 25}


def test_defaults_are_the_backends_former_defaults():
    for cls, (_, default) in OLD.items():
        assert cls().map == default
        assert cls().map.schedule == "exponential" and cls().map.lbfgs_tol == 1e-3


@pytest.mark.parametrize("cls", list(OLD), ids=lambda c: c.__name__)
def test_old_keywords_warn_and_give_the_same_backend(cls):
    renames, _ = OLD[cls]
    old = {key: VALUES[new] for key, new in renames.items()}
    with pytest.warns(DeprecationWarning) as record:
        legacy = cls(**old)
    messages = [str(w.message) for w in record]
    for key, new in renames.items():
        assert (
            f"{cls.__name__}({key}=...) is deprecated; use {cls.__name__}(map=MAPFit({new}=...))"
            in messages
        )
    assert {w.filename for w in record} == {__file__}  # points at the caller
    current = cls(map=MAPFit(**VALUES))
    assert legacy.map == current.map and legacy == current and hash(legacy) == hash(current)
    assert all(getattr(legacy, key) is None for key in renames)
    assert repr(legacy) == repr(current)


def test_an_old_keyword_changes_only_its_field_of_the_backends_default():
    with pytest.warns(DeprecationWarning, match=r"Laplace\(learning_rate=\.\.\.\)"):
        laplace = inference.Laplace(learning_rate=0.05)
    assert laplace.map == MAPFit(adam_steps=3000, learning_rate=0.05, lbfgs_steps=200)


def test_replace_keeps_working_and_does_not_warn_again():
    with pytest.warns(DeprecationWarning):
        backend = inference.DeepEnsemble(num_steps=40)
    moved = dataclasses.replace(backend, num_members=3)  # would raise if it warned again
    assert moved.map == backend.map and moved.num_members == 3
    fit = MAPFit(adam_steps=5, lbfgs_steps=0, schedule="cosine")
    assert dataclasses.replace(backend, map=fit).map == fit


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"adam_steps": -1}, "adam_steps"),
        ({"adam_steps": 1.5}, "adam_steps"),
        ({"lbfgs_steps": True}, "lbfgs_steps"),
        ({"lbfgs_steps": -3}, "lbfgs_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"schedule": "linear"}, "schedule"),
        ({"lbfgs_tol": -1e-3}, "lbfgs_tol"),
        ({"adam_steps": 0, "lbfgs_steps": 0}, "adam_steps > 0 or lbfgs_steps > 0"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MAPFit(**kwargs)


def test_a_bad_old_keyword_names_both_spellings():
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"NUTS\(map_learning_rate=-1.0\): MAPFit.learning_rate"),
    ):
        inference.NUTS(map_learning_rate=-1.0)
    with pytest.raises(ValueError, match="VI.map must be a MAPFit"):
        inference.VI(map={"adam_steps": 10})


def test_schedules():
    lr, steps = 0.1, 100
    assert adam_schedule(lr, steps, "constant") == lr
    for name in ("exponential", "cosine"):
        schedule = adam_schedule(lr, steps, name)
        assert float(schedule(0)) == pytest.approx(lr)
        assert float(schedule(steps)) == pytest.approx(0.01 * lr)
    assert float(adam_schedule(lr, steps, "cosine")(steps // 2)) == pytest.approx(0.505 * lr)


def test_provenance_records_the_map_settings_and_the_verdict_its_tolerance():
    X, y = regression_data()
    program = uq.Program.from_numpyro(regression_model, jnp.asarray(X), jnp.asarray(y))
    fit = MAPFit(adam_steps=30, learning_rate=0.05, lbfgs_steps=5, lbfgs_tol=0.25)
    posterior = inference.Laplace(map=fit, num_samples=4).run(program, jax.random.key(0))
    settings = posterior.attrs["settings"]
    assert settings["map"] == dataclasses.asdict(fit)
    assert not {"map_steps", "learning_rate", "lbfgs_steps"} & set(settings)
    assert posterior.attrs["optimization"]["convergence"]["gtol"] == 0.25
    assert len(posterior.attrs["optimization"]["trace"]) == 35


CASE = """
[case]
name = "t"
backend = "nuts"

[pde]
name = "burgers"

[model]
name = "bpinn"
"""
OLD_TABLES = """
[backend.nuts]
init = "map"
map_steps = 70
map_learning_rate = 0.003
map_lbfgs_steps = 25

[backend.vi]
map_steps = 70
map_learning_rate = 0.003
map_lbfgs_steps = 25

[backend.laplace]
map_steps = 70
learning_rate = 0.003
lbfgs_steps = 25

[backend.ensemble]
num_members = 2
num_steps = 70
learning_rate = 0.003
lbfgs_steps = 25
"""
NEW_TABLES = """
[backend.nuts]
init = "map"

[backend.nuts.map]
adam_steps = 70
learning_rate = 0.003
lbfgs_steps = 25

[backend.vi.map]
adam_steps = 70
learning_rate = 0.003
lbfgs_steps = 25

[backend.laplace.map]
adam_steps = 70
learning_rate = 0.003
lbfgs_steps = 25

[backend.ensemble]
num_members = 2

[backend.ensemble.map]
adam_steps = 70
learning_rate = 0.003
lbfgs_steps = 25
"""


@pytest.fixture
def config_log(caplog, monkeypatch):
    # The CLI stops "ucsciml" records at its own handler; let them reach caplog here.
    monkeypatch.setattr(logging.getLogger("ucsciml"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="ucsciml.config"):
        yield caplog


def test_a_case_file_with_old_keys_warns_and_builds_the_same_backends(tmp_path, config_log):
    old_path, new_path = tmp_path / "old.toml", tmp_path / "new.toml"
    old_path.write_text(CASE + OLD_TABLES)
    new_path.write_text(CASE + NEW_TABLES)
    new = load_case(new_path)
    assert not config_log.text
    old = load_case(old_path)
    assert old == new
    text = config_log.text
    assert (
        f"{old_path}: [backend.nuts] map_steps, map_learning_rate, map_lbfgs_steps are "
        "deprecated; write them in a [backend.nuts.map] table: adam_steps = 70, "
        "learning_rate = 0.003, lbfgs_steps = 25"
    ) in text
    assert f"{old_path}: [backend.ensemble] num_steps, learning_rate, lbfgs_steps" in text
    assert "[backend.laplace.map]" in text and "[backend.vi.map]" in text
    for name in ("nuts", "vi", "laplace", "ensemble"):
        built = build_backend(old, name)
        assert built == build_backend(new, name)
        assert built.map == MAPFit(**VALUES)
    # The resolved table is the full MAPFit, defaults included, with no old key left.
    assert old["backend"]["nuts"]["map"] == dataclasses.asdict(MAPFit(**VALUES))
    assert "map_steps" not in old["backend"]["nuts"]


def test_a_partial_map_table_keeps_the_backends_other_defaults():
    cfg = resolve_config(
        {
            "case": {"name": "t"},
            "pde": {"name": "burgers"},
            "model": {"name": "bpinn"},
            "backend": {"laplace": {"map": {"learning_rate": 0.05}}},
        }
    )
    assert build_backend(cfg, "laplace").map == MAPFit(adam_steps=3000, learning_rate=0.05)
    assert build_backend(cfg, "nuts").map == MAPFit()


def _raw(backend: dict) -> dict:
    return {
        "case": {"name": "t"},
        "pde": {"name": "burgers"},
        "model": {"name": "bpinn"},
        "backend": backend,
    }


@pytest.mark.parametrize(
    ("backend", "match"),
    [
        (
            {"nuts": {"map": {"adam_step": 10}}},
            r"unknown key\(s\) \['adam_step'\] in \[backend.nuts.map\]; allowed: "
            r"\['adam_steps', 'lbfgs_steps', 'lbfgs_tol', 'learning_rate', 'schedule'\]",
        ),
        ({"ensemble": {"map": {"num_steps": 10}}}, r"\['num_steps'\] in \[backend.ensemble.map\]"),
        ({"vi": {"map": 3}}, r"\[backend.vi.map\] must be a table"),
        ({"laplace": {"map": {"learning_rate": 0.0}}}, r"\[backend.laplace.map\].*learning_rate"),
        ({"nuts": {"map": {"schedule": "linear"}}}, r"\[backend.nuts.map\].*schedule"),
        ({"nuts": {"map": {"adam_steps": -5}}}, r"\[backend.nuts.map\].*adam_steps"),
    ],
)
def test_bad_map_tables_name_the_key(backend, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(_raw(backend))


def test_an_old_key_and_its_new_spelling_together_are_refused(config_log):
    both = {"nuts": {"map_steps": 10, "map": {"adam_steps": 20}}}
    with pytest.raises(ConfigError, match=r"map_steps \(deprecated\).*keep only"):
        resolve_config(_raw(both))
