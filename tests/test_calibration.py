"""Known-answer tests of ucsciml.calibration, ucsciml.recalibration and ucsciml.sbc."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from scipy import stats

import ucsciml as uq
from ucsciml import calibration as cal
from ucsciml import recalibration as rc
from ucsciml import sbc as sbc_module

DIMS = ("chain", "draw", "point")


def _draws(rng, num_points, num_draws, loc=0.0, scale=1.0, chains=4):
    x = loc + scale * rng.normal(size=(chains, num_draws // chains, num_points))
    return xr.DataArray(x, dims=DIMS)


def test_crps_standard_normal_at_zero():
    # CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi). Each point's estimate uses 400 draws; the mean
    # over 2000 independent points has sd ~ 0.003 (measured spread of single-point estimates
    # ~0.13 / sqrt(2000)), so 0.015 is a 5-sigma bound.
    rng = np.random.default_rng(0)
    exact = 2 * stats.norm.pdf(0.0) - 1 / math.sqrt(math.pi)
    pred = _draws(rng, 2000, 400)
    value = float(cal.crps(pred, np.zeros(2000)).mean())
    assert abs(value - exact) < 0.015
    assert abs(float(cal.crps_gaussian(0.0, 1.0, 0.0)) - 0.233695) < 1e-6
    # The per-point score from scores() is the same estimator.
    assert abs(float(cal.scores(pred, np.zeros(2000)).crps.mean()) - value) < 1e-5


def test_crps_gaussian_matches_draws_off_centre():
    rng = np.random.default_rng(1)
    y = rng.normal(size=500) * 2.0
    pred = _draws(rng, 500, 800, loc=0.5, scale=1.5)
    sample = cal.crps(pred, y).values
    exact = np.asarray(cal.crps_gaussian(0.5, 1.5, y))
    # fair estimator: unbiased per point; mean over 500 points, MC sd ~ 0.01
    assert abs(sample.mean() - exact.mean()) < 0.04


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_coverage_is_nominal_when_truth_comes_from_the_predictive(level):
    rng = np.random.default_rng(2)
    n = 4000
    loc = rng.normal(size=n)
    pred = _draws(rng, n, 200, loc=loc, scale=0.7)
    # truth drawn from the predictive's law (same loc), independent of the draws
    truth = loc + 0.7 * rng.normal(size=n)
    observed = float(cal.coverage(pred, truth, (level,)).squeeze())
    # Discrete-rank nominal: with S = 200 draws the empirical-CDF interval covers
    # #{r : |2r/S - 1| <= level} / (S + 1) of exchangeable truths.
    s = 200
    nominal = np.mean(np.abs(2 * np.arange(s + 1) / s - 1) <= level)
    lo, hi = stats.binom.interval(0.99, n, nominal)
    assert lo / n <= observed <= hi / n, (observed, nominal)


def test_coverage_of_exchangeable_truth_exact_ranks():
    rng = np.random.default_rng(3)
    n, s = 5000, 200
    everything = rng.standard_t(df=3, size=(n, s + 1))
    pred = xr.DataArray(everything[:, :s].T.reshape(2, s // 2, n), dims=DIMS)
    truth = everything[:, s]
    cov = cal.coverage(pred, truth, (0.5, 0.9, 0.95))
    for level, observed in zip(cov.level.values, cov.values, strict=True):
        nominal = np.mean(np.abs(2 * np.arange(s + 1) / s - 1) <= level)
        lo, hi = stats.binom.interval(0.99, n, nominal)
        assert lo / n <= observed <= hi / n, (level, observed)


def test_pit_uniform_and_calibration_metrics_small():
    rng = np.random.default_rng(4)
    n, s = 3000, 200
    everything = rng.normal(size=(n, s + 1))
    pred = xr.DataArray(everything[:, :s].T.reshape(2, s // 2, n), dims=DIMS)
    truth = everything[:, s]
    p = cal.pit(pred, truth).values
    assert stats.kstest(p, "uniform").pvalue > 0.001
    # calibrated: area is Monte-Carlo noise, O(1/sqrt(n)) ~ 0.02
    assert cal.miscalibration_area(pred, truth) < 0.03
    assert cal.rmsce(pred, truth) < 0.035
    overconfident = pred * 0.3
    assert cal.miscalibration_area(overconfident, truth) > 0.2


def test_nll_gaussian_and_kde_agree_on_gaussian_draws():
    rng = np.random.default_rng(5)
    n = 1000
    pred = _draws(rng, n, 800)
    truth = rng.normal(size=n)
    exact = float(np.mean(cal.nll_gaussian(0.0, 1.0, truth)))
    # KDE smoothing inflates the variance by h^2 ~ 0.07 -> NLL bias ~ +0.03 on average
    assert abs(float(cal.nll(pred, truth).mean()) - exact) < 0.06
    assert abs(float(cal.nll(pred, truth, method="gaussian").mean()) - exact) < 0.02


def test_interval_score_sharpness_rel_l2():
    rng = np.random.default_rng(6)
    pred = _draws(rng, 500, 2000)
    width = float(cal.sharpness(pred, 0.9))
    assert abs(width - 2 * stats.norm.ppf(0.95)) < 0.05
    # truth at the centre: the interval score is just the width
    assert abs(float(cal.interval_score(pred, np.zeros(500)).mean()) - width) < 1e-6
    shifted = pred + 1.0
    assert float(cal.rel_l2(shifted, np.full(500, 2.0))) == pytest.approx(0.5, abs=0.01)


def test_energy_score_reduces_to_crps_in_one_dimension():
    rng = np.random.default_rng(7)
    pred = _draws(rng, 3, 300)
    y = np.array([0.0, 1.0, -2.0])
    es = cal.energy_score(pred.expand_dims(field=1, axis=-1), y[:, None], field_dims=["field"])
    np.testing.assert_allclose(es.values, cal.crps(pred, y).values, rtol=1e-4)


def test_simultaneous_band_covers_jointly_where_pointwise_does_not():
    rng = np.random.default_rng(8)
    n_field, s = 50, 1000
    pred = xr.DataArray(rng.normal(size=(2, s // 2, n_field)), dims=("chain", "draw", "x"))
    band = cal.simultaneous_band(pred, 0.9)
    # independent fields from the same law: joint coverage of the band ~ 0.9 (binomial sd
    # ~0.013 over 500 fields), while pointwise 90% intervals cover all 50 points ~0.9^50.
    fields = rng.normal(size=(500, n_field))
    joint = np.mean([bool(cal.band_covers(band, f)) for f in fields])
    assert 0.85 < joint < 0.95
    lo, hi = np.quantile(pred.values.reshape(s, n_field), [0.05, 0.95], axis=0)
    pointwise = np.mean(np.all((fields >= lo) & (fields <= hi), axis=1))
    assert pointwise < 0.1
    cmap = cal.coverage_map(pred, fields[0])
    assert cmap.dims == ("x",) and set(np.unique(cmap.values)) <= {0.0, 1.0}


def test_bad_inputs_raise():
    pred = xr.DataArray(np.zeros((2, 3, 4)), dims=("a", "b", "point"))
    with pytest.raises(ValueError, match="sample dim"):
        cal.crps(pred, np.zeros(4))
    with pytest.raises(TypeError, match="DataArray"):
        cal.crps(np.zeros((2, 3, 4)), np.zeros(4))
    good = xr.DataArray(np.zeros((2, 3, 4)), dims=DIMS)
    with pytest.raises(ValueError, match="levels"):
        cal.coverage(good, np.zeros(4), (1.5,))
    with pytest.raises(ValueError, match="shape"):
        cal.pit(good, np.zeros(5))


# ------------------------------------------------------------------------------ recalibration


def _overconfident(rng, n, s=200):
    """Predictive with the right mean but 0.3x the true spread (truth sd 1)."""
    mu = rng.normal(size=n)
    truth = mu + rng.normal(size=n)
    pred = xr.DataArray(mu + 0.3 * rng.normal(size=(2, s // 2, n)), dims=DIMS)
    return pred, truth


def test_conformal_reaches_nominal_on_held_out_points():
    # The split-conformal guarantee is on average over calibration sets: with n = 199
    # calibration points at level 0.9, E[coverage] = ceil(200 * 0.9) / 200 = 0.9 exactly.
    # Averaging 40 independent splits (1000 test points each) gives sd ~ 0.0037 (beta variance
    # of the conditional coverage, 4.5e-4 / 40, plus binomial test noise), so the mean must
    # exceed 0.9 - 3 sd; the raw overconfident intervals cover less than half.
    rng = np.random.default_rng(10)
    covered, raw = [], []
    for _ in range(40):
        calib, calib_y = _overconfident(rng, 199)
        test, test_y = _overconfident(rng, 1000)
        intervals = rc.fit_conformal(calib, calib_y, 0.9).apply(test)
        covered.append(float(((test_y >= intervals.lower) & (test_y <= intervals.upper)).mean()))
        raw.append(float(cal.coverage(test, test_y, (0.9,)).squeeze()))
    assert np.mean(raw) < 0.5
    assert np.mean(covered) >= 0.9 - 0.011, np.mean(covered)
    with pytest.raises(ValueError, match="held-out points"):
        rc.fit_conformal(calib.isel(point=slice(0, 5)), calib_y[:5], 0.9)


def test_isotonic_halves_miscalibration_area_and_does_not_mutate():
    rng = np.random.default_rng(11)
    calib, calib_y = _overconfident(rng, 1000)
    test, test_y = _overconfident(rng, 1000)
    before_values = test.values.copy()
    recal = rc.fit_isotonic(calib, calib_y)
    new = recal.apply(test)
    assert new.dims == test.dims and new.shape == test.shape
    np.testing.assert_array_equal(test.values, before_values)
    before = cal.miscalibration_area(test, test_y)
    after = cal.miscalibration_area(new, test_y)
    assert after <= 0.5 * before, (before, after)


def test_variance_scaling_recovers_spread():
    rng = np.random.default_rng(12)
    calib, calib_y = _overconfident(rng, 2000)
    scaling = rc.fit_variance_scaling(calib, calib_y)
    # truth sd 1 around mu, draws sd 0.3 -> s = sqrt(1 + 0.09)/0.3 ~ 3.48 (the +0.09 is the
    # draws' own spread entering (y - mean)); 2000 points give ~2% error
    assert scaling.scale == pytest.approx(math.sqrt(1.0) / 0.3, rel=0.06)
    test, test_y = _overconfident(rng, 1000)
    assert cal.miscalibration_area(scaling.apply(test), test_y) < 0.05


# ------------------------------------------------------------------------------------- SBC


def _regression_program():
    def model(features, targets=None):
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with numpyro.plate("obs", features.shape[0], dim=-1):
            numpyro.sample("y", dist.Normal(features @ beta, 0.5), obs=targets)

    features = jnp.asarray(np.random.default_rng(0).normal(size=(10, 2)))
    return uq.Program.from_numpyro(
        model, features, jnp.zeros(10), dims={"beta": ("feature",), "y": ("obs",)}
    )


class _ConjugateBackend:
    """Exact posterior draws of the conjugate regression (tests SBC's plumbing fast)."""

    kind = "mcmc"

    def run(self, program, key):
        x, y = np.asarray(program.inputs), np.asarray(program.targets)
        precision = np.eye(2) + x.T @ x / 0.25
        cov = np.linalg.inv(precision)
        mean = cov @ x.T @ y / 0.25
        seed = np.asarray(jax.random.key_data(key)).ravel()
        draws = np.random.default_rng(seed).multivariate_normal(mean, cov, size=(2, 100))
        return uq.Posterior({"beta": draws}, program, key)


class _BiasedBackend(_ConjugateBackend):
    def run(self, program, key):
        post = super().run(program, key)
        return uq.Posterior({"beta": post.samples["beta"] + 0.5}, program, key)


def test_sbc_exact_posterior_is_uniform_and_biased_one_is_not():
    program = _regression_program()
    good = cal.sbc(program, _ConjugateBackend(), jax.random.key(0), num_replications=100)
    assert set(good.ranks) == {"beta[0]", "beta[1]"}
    assert all(r.shape == (100,) and r.min() >= 0 and r.max() <= 99 for r in good.ranks.values())
    assert good.passed(0.01), good.pvalues
    bad = cal.sbc(program, _BiasedBackend(), jax.random.key(0), num_replications=100)
    assert not bad.passed(0.01), bad.pvalues


@pytest.fixture
def compilation_cache(tmp_path):
    # NUTS.run builds a fresh sampler per call, so each SBC replication would re-compile.
    # The persistent cache keys on the HLO, which is identical across replications
    # (data are jit arguments), cutting ~15 s per replication to ~5 s on 2 busy cores.
    from jax._src import compilation_cache

    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
        jax.config.jax_persistent_cache_min_entry_size_bytes,
    )
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", old[2])
    compilation_cache.reset_cache()


def _nuts(num_samples):
    from ucsciml.inference import NUTS

    return NUTS(num_warmup=150, num_samples=num_samples, num_chains=2, progress_bar=False)


@pytest.mark.slow  # one NUTS compilation alone takes 30-60 s on 2 busy cores
def test_sbc_nuts_tiny(compilation_cache):
    result = sbc_module.sbc(
        _regression_program(),
        _nuts(20),
        jax.random.key(1),
        num_replications=5,
        num_draws=39,
        num_bins=5,
    )
    assert set(result.pvalues) == {"beta[0]", "beta[1]"}
    assert all(0 <= r.min() and r.max() <= 39 for r in result.ranks.values())


@pytest.mark.slow
def test_sbc_nuts_conjugate_regression_ranks_uniform(compilation_cache):
    result = sbc_module.sbc(
        _regression_program(),
        _nuts(100),
        jax.random.key(2),
        num_replications=100,
        num_draws=99,
        num_bins=10,
    )
    print("SBC chi-square p-values:", result.pvalues)  # shown with -s; the measured numbers
    # acceptance: every parameter's rank histogram passes chi-square uniformity at p > 0.01
    assert min(result.pvalues.values()) > 0.01, result.pvalues


# ----------------------------------------------------------------------------------- physics


def test_residual_rms_per_draw_matches_closed_form():
    # u_k(x, t) = -exp(-k pi^2 t) sin(pi x) solves the heat equation only for k = kappa; for
    # other k the residual is (kappa - k) pi^2 u exactly, so its RMS is |kappa - k| pi^2 rms(u).
    from ucsciml import physics
    from ucsciml.pde.heat import Heat

    def field(sample, p):
        return -jnp.exp(-sample["k"] * jnp.pi**2 * p[:, 1]) * jnp.sin(jnp.pi * p[:, 0])

    def model(points, targets=None):
        k = numpyro.sample("k", dist.LogNormal(-2.0, 0.5))
        with numpyro.plate("sensor", points.shape[0], dim=-1):
            numpyro.sample("y", dist.Normal(field({"k": k}, points), 0.1), obs=targets)

    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-1, 1, 40), rng.uniform(0, 1, 40)])
    program = uq.Program.from_numpyro(model, jnp.asarray(points), field_fn=field)
    k = np.array([[0.1, 0.2, 0.05], [0.1, 0.3, 0.0]])
    posterior = uq.Posterior({"k": k}, program, jax.random.key(0))
    rms = physics.residual_rms(posterior, Heat(kappa=0.1), points)
    assert rms.dims == ("chain", "draw")
    for c in range(2):
        for d in range(3):
            u = np.asarray(field({"k": k[c, d]}, points))
            expected = abs(0.1 - k[c, d]) * np.pi**2 * np.sqrt(np.mean(u**2))
            # float32 forward-mode derivatives: ~1e-6 relative rounding
            assert float(rms[c, d]) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="field_fn"):
        physics.residual_rms(
            uq.Posterior({"k": k}, uq.Program.from_numpyro(model, jnp.asarray(points)), None),
            Heat(kappa=0.1),
            points,
        )


def test_conservation_defect():
    from ucsciml import physics

    x = np.linspace(0, 1, 101)
    t = np.linspace(0, 1, 5)
    # draw 0 conserves its total (a travelling shape on a periodic grid stand-in: constant);
    # draw 1 gains mass linearly, total(t) = t.
    fields = np.stack([np.ones((101, 5)), np.ones((101, 5)) + t[None, :]])[None]
    da = xr.DataArray(fields, dims=("chain", "draw", "x", "t"), coords={"x": x, "t": t})
    defect = physics.conservation_defect(da, over="x", along="t")
    np.testing.assert_allclose(defect.values, [[0.0, 1.0]], atol=1e-12)


def test_summary_leaves_pinned_points_out_of_calibration_scores():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=50)
    truth = centre + rng.normal(size=50)
    draws = centre + rng.normal(size=(1, 400, 50))
    # Ten points pinned by construction: every draw equals the truth up to float32 round-off.
    draws[:, :, :10] = truth[:10] + 1e-7 * rng.normal(size=(1, 400, 10))
    pred = xr.DataArray(draws, dims=("chain", "draw", "point"))
    out = uq.calibration.summary(pred, xr.DataArray(truth, dims="point"))
    assert out["pinned_points"] == 10
    # The 40 free points are calibrated standard normals: NLL near 0.5 log(2 pi e) = 1.42
    # (the KDE widens the unit variance by ~7%); its sd over 40 points is about 0.11.
    assert abs(out["nll"] - 1.42) < 0.35
    assert abs(out["coverage_90"] - 0.9) < 0.15  # 40 Bernoulli(0.9) points: 3 sd is 0.14
    # rel. L2 still uses every point.
    mean = draws.mean(axis=(0, 1))
    expected = np.linalg.norm(mean - truth) / np.linalg.norm(truth)
    assert out["rel_l2"] == pytest.approx(expected, rel=1e-5)
