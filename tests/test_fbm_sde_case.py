"""The fractional-noise SDE as a family case (models.fbm_sde.case): fOU Hurst recovery by NUTS
on the exact Kalman likelihood and by the family's latent-SDE VI, from a case file."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from ucsciml import config, inference
from ucsciml.family_case import FamilyRun
from ucsciml.models.fbm_sde import HurstCase, hurst_data
from ucsciml.posterior import tree_attr

CASE_FILE = Path(__file__).resolve().parents[1] / "case_studies" / "fbm_hurst.toml"
SITES = ("H", "theta", "sigma")

#: A short series and a tiny fit: seconds, not minutes.
TINY = dict(
    horizon=2.0,
    num_observations=10,
    num_steps=20,
    num_paths=2,
    grid_steps_per_observation=2,
    width=8,
    num_draws=50,
)


def _check_metrics(metrics, truth):
    for name in SITES:
        m = metrics[name]
        assert all(math.isfinite(m[k]) for k in ("mean", "sd", "q05", "q95")), (name, m)
        assert m["q05"] <= m["mean"] <= m["q95"] and m["sd"] > 0
        assert m["truth"] == truth[name]
        assert m["truth_in_90"] == (m["q05"] <= truth[name] <= m["q95"])
    assert metrics["seconds"] > 0


def test_vi_backend_gives_the_posterior_tree_an_optimization_group_and_a_verdict():
    case = HurstCase(**TINY)
    run = case.run("vi", None, key=jax.random.key(0), progress=False)
    assert isinstance(run, FamilyRun)
    post = run.tree["posterior"].to_dataset()
    assert post["H"].shape == (1, 50) and post["theta"].shape == (1, 50)
    assert 0 < float(post["H"].min()) and float(post["H"].max()) < 1
    assert run.tree["optimization"]["loss"].shape == (20,)
    assert tree_attr(run.tree, "ucsciml_kind") == "vi"
    assert tree_attr(run.tree, "ucsciml_physical_sites") == list(SITES)
    verdict = tree_attr(run.tree, "ucsciml_attrs")["optimization"]["convergence"]
    assert isinstance(verdict["converged"], bool) and verdict["stochastic"]
    assert tree_attr(run.tree, "ucsciml_program_attrs")["truth"]["H"] == 0.7
    _check_metrics(run.metrics, case.truth)
    assert isinstance(run.metrics["converged"], bool)


def test_nuts_backend_runs_the_kalman_program_with_the_same_sites():
    case = HurstCase(**TINY)
    nuts = inference.NUTS(num_warmup=20, num_samples=20, num_chains=1, progress_bar=False)
    run = case.run("nuts", nuts, key=jax.random.key(1), progress=False)
    post = run.tree["posterior"].to_dataset()
    assert post["H"].shape == (1, 20)
    assert set(SITES) <= set(post.data_vars)
    assert tree_attr(run.tree, "ucsciml_physical_sites") == list(SITES)
    assert tree_attr(run.tree, "ucsciml_program_attrs")["truth"]["theta"] == 1.0
    _check_metrics(run.metrics, case.truth)
    assert run.metrics["divergences"] >= 0


def test_data_match_the_hurst_study_and_depend_on_the_seed_only():
    times, x, y = hurst_data(0.7, 0)
    np.testing.assert_allclose(times, np.round(np.arange(1, 51) * 0.1, 10))
    assert x.shape == y.shape == (50,)
    times2, _, y2 = HurstCase().data()
    np.testing.assert_array_equal(times2, times)
    np.testing.assert_array_equal(y2, y)
    assert not np.array_equal(HurstCase(data_seed=1).data()[2], y)


@pytest.mark.parametrize(
    "field, value",
    [
        ("hurst", 1.0),
        ("hurst", 0.0),
        ("theta", -1.0),
        ("sigma", 0.0),
        ("noise_std", float("nan")),
        ("horizon", 0.0),
        ("num_observations", 1),
        ("num_steps", 0),
        ("num_paths", 1.5),
        ("width", 0),
        ("data_seed", -1),
        ("init_hurst", 1.5),
        ("learning_rate", 0.0),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        HurstCase(**{field: value})


def test_unknown_backend_and_missing_nuts_settings_raise():
    case = HurstCase(**TINY)
    with pytest.raises(ValueError, match="backend"):
        case.run("laplace", None, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="nuts"):
        case.run("nuts", None, key=jax.random.key(0), progress=False)


def test_case_file_builds_the_case_and_its_nuts():
    cfg = config.load_case(CASE_FILE)
    case = config.build_family(cfg)
    assert case == HurstCase()
    nuts = config.build_backend(cfg, "nuts")
    assert (nuts.num_warmup, nuts.num_samples, nuts.num_chains, nuts.dense_mass) == (
        300,
        300,
        4,
        True,
    )


@pytest.mark.slow
def test_full_case_nuts_interval_covers_the_true_hurst_index():
    cfg = config.load_case(CASE_FILE)
    run = config.build_family(cfg).run(
        "nuts", config.build_backend(cfg, "nuts"), key=jax.random.key(1), progress=False
    )
    assert run.metrics["H"]["truth"] == 0.7
    assert run.metrics["H"]["truth_in_90"], run.metrics["H"]
