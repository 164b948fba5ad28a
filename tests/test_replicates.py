"""Replicate calibration: exact statistics of the pieces, and nominal coverage on a model whose
estimator is biased and overconfident by construction (a known misspecification)."""

from __future__ import annotations

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import exact_regression_posterior, regression_data, regression_model
from scipy import stats

import ucsciml as uq
from ucsciml import config as case_config
from ucsciml import inference
from ucsciml import replicates as rep


def test_calibrate_parameter_matches_its_formula():
    reps = np.array([1.2, 0.8, 1.1, 1.5, 0.9])
    result = rep.calibrate_parameter(1.0, reps, posterior_sd=0.01, level=0.9)
    assert result.bias == pytest.approx(reps.mean() - 1.0, abs=1e-15)
    assert result.spread == pytest.approx(np.std(reps, ddof=1), abs=1e-15)
    assert result.sd == pytest.approx(np.std(reps, ddof=1) * np.sqrt(1 + 1 / 5), abs=1e-15)
    assert result.dof == 4
    low, high = result.interval()
    half = stats.t.ppf(0.95, 4) * result.sd
    assert (low, high) == pytest.approx((1.0 - result.bias - half, 1.0 - result.bias + half))
    assert result.inflation == pytest.approx(result.sd / 0.01)


def test_calibrate_parameter_never_narrows_the_posterior():
    result = rep.calibrate_parameter(0.0, np.array([0.0, 1e-3, -1e-3]), posterior_sd=0.5, level=0.9)
    assert result.sd == 0.5
    assert result.inflation == 1.0


def test_calibrate_parameter_needs_enough_fits():
    with pytest.raises(ValueError, match="degrees of freedom"):
        rep.calibrate_parameter(0.0, np.array([0.1, 0.2]), posterior_sd=0.1, level=0.9)


def test_round_sizes_split_evenly_later_rounds_larger():
    assert rep.round_sizes(6, 2) == [3, 3]
    assert rep.round_sizes(7, 2) == [3, 4]
    assert rep.round_sizes(8, 1) == [8]


def test_iterated_rounds_cover_when_the_bias_grows_with_the_parameter():
    """The pipeline ``1.25 * mean(y)``: its bias (0.25 theta) is larger at the biased
    estimate than at the truth, so one round (bias measured at theta_hat) under-corrects and
    covers ~1/3 of the time; a second round simulated at the corrected estimate measures the
    bias near the truth. Measured (4000 trials, seed 0): 0.332 and 0.900; the binomial sd is
    0.0047, the tolerance 0.025 (> 5 sd)."""
    rng = np.random.default_rng(0)
    theta, sigma, n = 2.0, 0.2, 25

    def pipeline(y):
        return 1.25 * y.mean(axis=-1)

    coverage = {}
    for rounds in (1, 2):
        hits, trials = 0, 4000
        for _ in range(trials):
            estimate = pipeline(theta + sigma * rng.normal(size=n))
            at, results = estimate, []
            for size in rep.round_sizes(6, rounds):
                refits = pipeline(at + sigma * rng.normal(size=(size, n)))
                results.append((at, refits))
                at = estimate - (refits.mean() - at)
            low, high = rep.calibrate_rounds(estimate, results, 1e-3, 0.9).interval()
            hits += low <= theta <= high
        coverage[rounds] = hits / trials
    assert coverage[1] < 0.5
    assert coverage[2] == pytest.approx(0.9, abs=0.025)


def test_replicate_calibration_covers_a_biased_overconfident_estimator():
    """The pipeline ``theta_hat = mean(y) + 0.3`` (a fixed bias, like a smeared front) with a
    posterior sd 100x too small: raw 90% intervals never cover. Replicates simulated at
    ``theta_hat`` and refitted by the same pipeline make ``(theta_hat - b_hat - theta) /
    (s sqrt(1 + 1/K))`` exactly Student-t with K - 1 dof, so calibrated coverage is exactly
    nominal. 4000 trials: binomial sd 0.0047, tolerance 0.02 (> 4 sd)."""
    rng = np.random.default_rng(0)
    theta, sigma, n, k, bias = 2.0, 1.0, 25, 8, 0.3

    def pipeline(y):
        return y.mean(axis=-1) + bias

    post_sd = 0.01 * sigma / np.sqrt(n)
    raw_hits, cal_hits, trials = 0, 0, 4000
    for _ in range(trials):
        estimate = pipeline(theta + sigma * rng.normal(size=n))
        replicate_estimates = pipeline(estimate + sigma * rng.normal(size=(k, n)))
        result = rep.calibrate_parameter(estimate, replicate_estimates, post_sd, 0.9)
        low, high = result.interval()
        cal_hits += low <= theta <= high
        raw_hits += abs(estimate - theta) <= 1.645 * post_sd
    assert raw_hits / trials < 0.05
    assert cal_hits / trials == pytest.approx(0.9, abs=0.02)


def test_unconstrained_round_trip_uses_the_support():
    prior = dist.LogNormal(-5.0, 2.0)
    values = np.array([1e-4, 3e-3, 0.2])
    phi = rep.to_unconstrained(prior, values)
    np.testing.assert_allclose(phi, np.log(values), rtol=1e-6)
    np.testing.assert_allclose(rep.to_constrained(prior, phi), values, rtol=1e-6)
    normal = dist.Normal(1.0, 0.5)
    np.testing.assert_allclose(rep.to_unconstrained(normal, values), values)


def test_field_sd_is_rms_error_floored_by_posterior():
    fields = np.array([[1.0, 2.0], [3.0, 2.0]])
    truth = np.array([2.0, 2.0])
    sd = rep.field_sd(fields, truth, posterior_sd=np.array([0.5, 0.25]))
    np.testing.assert_allclose(sd, [1.0, 0.25])


def test_holdout_scale_recovers_the_missing_variance():
    """Observations drawn with field sd 3x the stated one: the fitted scale makes the
    empirical coverage exactly the level (it is the level-quantile) and is close to 3."""
    rng = np.random.default_rng(1)
    n = 20000
    mean, sd, noise = np.zeros(n), np.full(n, 0.2), np.full(n, 0.1)
    y = rng.normal(size=n) * np.sqrt((3.0 * sd) ** 2 + noise**2)
    s = rep.holdout_scale(mean, sd, y, noise, 0.9)
    assert s == pytest.approx(3.0, rel=0.03)
    assert rep.interval_coverage(mean, s * sd, y, noise, 0.9) == pytest.approx(0.9, abs=1e-3)
    assert rep.holdout_scale(mean, sd, 0.01 * y, noise, 0.9) == 0.0


def test_split_holdout_is_disjoint_and_set_by_the_seed():
    data = uq.data.sensors(x=np.arange(20.0), t=np.zeros(20), u=np.arange(20.0), noise_std=0.1)
    fit, held = rep.split_holdout(data, 0.25, seed=3)
    assert held.sizes["sensor"] == 5 and fit.sizes["sensor"] == 15
    assert set(fit.u.values).isdisjoint(held.u.values)
    again, _ = rep.split_holdout(data, 0.25, seed=3)
    np.testing.assert_array_equal(again.u.values, fit.u.values)
    with pytest.raises(ValueError, match="holdout"):
        rep.split_holdout(data, 0.05, seed=0)


def test_replicate_observations_keep_sensors_and_noise():
    pde = uq.pde.Burgers()
    rng = np.random.default_rng(0)
    x, t = rng.uniform(-1, 1, 30), rng.uniform(0, 1, 30)
    data = uq.data.sensors(x=x, t=t, u=np.zeros(30), noise_std=0.05)
    params = {"lambda1": 0.9, "lambda2": 0.005}
    obs = rep.replicate_observations(pde, data, params, 4000, seed=0)["u"]
    clean = pde.solve(np.column_stack([x, t]), params)
    # Mean of 4000 draws: sd 0.05/sqrt(4000) = 8e-4 per sensor; 5e-3 is > 6 sd.
    np.testing.assert_allclose(obs.mean(0), clean, atol=5e-3)
    np.testing.assert_allclose(obs.std(0), 0.05, rtol=0.08)
    no_noise = data.drop_vars("noise_std")
    with pytest.raises(ValueError, match="noise_std"):
        rep.replicate_observations(pde, no_noise, params, 2, seed=0)


def test_fit_replicates_equals_exact_conjugate_posterior_modes():
    X, y = regression_data(40)
    program = uq.Program.from_numpyro(
        regression_model, X, y, dims={"beta": ("feature",), "y": ("obs",)}
    )
    targets = y[None] + np.random.default_rng(1).normal(size=(4, 40))
    backend = inference.DeepEnsemble(
        map=inference.MAPFit(adam_steps=500, learning_rate=0.05, lbfgs_steps=50)
    )
    fitted = backend.fit_replicates(program, targets, jax.random.key(0))
    beta = np.asarray(fitted.samples["beta"])
    assert beta.shape == (1, 4, 3)
    for r in range(4):
        mean, _ = exact_regression_posterior(X, targets[r])
        np.testing.assert_allclose(beta[0, r], mean, atol=1e-4)
    with pytest.raises(ValueError, match="leading replicate axis"):
        backend.fit_replicates(program, y, jax.random.key(0))


def test_calibration_table_is_checked():
    base = {
        "case": {"name": "c"},
        "pde": {"name": "burgers"},
        "model": {"name": "bpinn"},
    }
    cfg = case_config.resolve_config({**base, "calibration": {"replicates": 5}})
    settings = case_config.calibration_settings(cfg)
    assert settings.replicates == 5 and settings.method == "replicates"
    assert case_config.calibration_settings(case_config.resolve_config(base)) is None
    with pytest.raises(case_config.ConfigError, match=r"unknown key\(s\) \['replicate'\]"):
        case_config.resolve_config({**base, "calibration": {"replicate": 5}})
    with pytest.raises(case_config.ConfigError, match="replicates must be >= 3"):
        case_config.resolve_config({**base, "calibration": {"replicates": 2}})
    with pytest.raises(case_config.ConfigError, match="too few per round"):
        case_config.resolve_config({**base, "calibration": {"replicates": 4, "rounds": 2}})
    with pytest.raises(case_config.ConfigError, match="method must be one of"):
        case_config.resolve_config({**base, "calibration": {"method": "magic"}})


TINY_CALIBRATED = """
[case]
name = "tiny_heat_calibrated"
seed = 0
backend = "ensemble"

[pde]
name = "heat"
kappa = { prior = "LogNormal", loc = -2.3, scale = 0.5, truth = 0.1 }

[data]
num_sensors = 40
noise = 0.01

[model]
name = "bpinn"
width = 8
depth = 1
residual_at = "sensors"
hard_constraints = true

[backend.ensemble]
num_members = 2

[backend.ensemble.map]
adam_steps = 300
learning_rate = 0.01
lbfgs_steps = 50

[calibration]
replicates = 5
holdout = 0.2
max_misfit = 50.0

[evaluation]
grid = [8, 4]
"""


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    from ucsciml.cli import main

    root = tmp_path_factory.mktemp("calibrated")
    case = root / "case.toml"
    case.write_text(TINY_CALIBRATED)
    assert main(["-q", "run", str(case), "--out", str(root / "run")]) == 0
    return root / "run"


def test_calibrated_run_records_everything_beside_the_raw_posterior(calibrated_run):
    import json

    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    cal = metrics["calibrated"]
    assert cal["method"] == "replicates" and cal["replicates"] == 5 and cal["rounds"] == 2
    assert 4 <= cal["successful"] <= 5
    raw, new = metrics["parameters"]["kappa"], cal["parameters"]["kappa"]
    # Never narrower than the posterior, and the stated inflation is the sd ratio used.
    assert new["inflation"] >= 1.0
    assert new["calibrated_sd"] == pytest.approx(new["inflation"] * new["posterior_sd"])
    assert new["q05"] < new["q95"] and raw["q05"] < raw["q95"]
    assert 0.0 <= cal["field"]["coverage_90"] <= 1.0
    held = cal["holdout"]
    assert held["num_sensors"] == 8 and 0.0 <= held["coverage_raw"] <= 1.0
    tree = uq.load(calibrated_run / "posterior.nc")
    assert {"calibration", "calibrated_posterior", "posterior"} <= set(tree.children)
    group = tree["calibration"].to_dataset()
    assert group.sizes["replicate"] == 5 and list(group.parameter.values) == ["kappa"]
    np.testing.assert_array_equal(group.replicate_round.values, [0, 0, 1, 1, 1])
    # Round 2 is simulated at the estimate corrected by round 1's bias.
    assert group.simulated_kappa.values[2] != group.simulated_kappa.values[0]
    assert tree["calibrated_posterior"]["kappa"].shape == (1, 1000)
    # The raw posterior keeps the ensemble's two members.
    assert tree["posterior"]["kappa"].shape == (1, 2)
    page = (calibrated_run / "report.html").read_text()
    assert "Calibration under model error" in page and "inflation" in page


def test_summary_prints_raw_and_calibrated(calibrated_run, capsys):
    from ucsciml.cli import main

    assert main(["summary", str(calibrated_run)]) == 0
    out = capsys.readouterr().out
    assert "raw posterior" in out and "replicate refits" in out and "held-out sensors" in out


def test_use_every_core_sets_and_respects_xla_flags():
    from ucsciml.cli import use_every_core

    env = {}
    use_every_core(env)
    assert "xla_force_host_platform_device_count=" in env["XLA_FLAGS"]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    use_every_core(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    env = {"UCSCIML_CPU_DEVICES": "1"}
    use_every_core(env)
    assert env["XLA_FLAGS"].endswith("=1")
    with pytest.raises(ValueError, match="UCSCIML_CPU_DEVICES"):
        use_every_core({"UCSCIML_CPU_DEVICES": "two"})


def test_held_out_scores_use_the_scored_field_when_several_are_observed():
    # A stream-function PDE observes (u, v); the field band and the held-out check score u.
    from ucsciml.calibrated import _scored_observations

    values = {"u": np.array([1.0, 2.0, 3.0]), "v": np.array([-1.0, -2.0, -3.0])}
    data = uq.data.sensors(values=values, noise_std=0.1, x=np.zeros(3), y=np.ones(3))
    np.testing.assert_array_equal(_scored_observations(data, "u"), values["u"])
    np.testing.assert_array_equal(_scored_observations(data, "v"), values["v"])
    single = uq.data.sensors(u=values["v"], x=np.zeros(3))
    np.testing.assert_array_equal(_scored_observations(single, "u"), values["v"])


def test_mc_dropout_runs_are_calibrated_by_map_refits_of_the_plain_network(tmp_path):
    # MC dropout's program has discrete masks that MAP cannot fit; its replicates are refitted
    # as plain MAP fits of the same network (dropout off), so the step runs for it too.
    import json

    from ucsciml.cli import main

    case = tmp_path / "case.toml"
    case.write_text(
        TINY_CALIBRATED.replace('backend = "ensemble"', 'backend = "dropout"').replace(
            "[calibration]",
            "[backend.dropout]\nrate = 0.05\nnum_steps = 200\nnum_passes = 20\n\n[calibration]",
        )
    )
    assert main(["-q", "run", str(case), "--out", str(tmp_path / "run")]) == 0
    cal = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibrated"]
    assert cal["successful"] >= 1 and "kappa" in cal["parameters"]
