"""Laplace with Pareto-smoothed importance resampling (``importance="psis"``)."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

import ucsciml as uq
from ucsciml.config import ConfigError, build_backend, resolve_config
from ucsciml.inference import Laplace
from ucsciml.inference._importance import smoothed_weights, systematic_indices

COUNTS = np.array([0, 1, 0, 2, 0])


def _poisson_model(y, targets=None):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Poisson(rate), obs=targets)


def _gamma_poisson():
    """A skewed conjugate posterior: rate | y ~ Gamma(2 + sum y, 1 + n) = Gamma(5, 6)."""
    program = uq.Program.from_numpyro(_poisson_model, COUNTS, COUNTS, dims={"y": ("obs",)})
    exact = stats.gamma(2 + COUNTS.sum(), scale=1 / (1 + COUNTS.size))
    return program, exact


def test_psis_corrects_a_skewed_posterior_to_its_exact_quantiles():
    program, exact = _gamma_poisson()
    levels = [0.05, 0.5, 0.95]
    truth = exact.ppf(levels)
    plain = Laplace(num_samples=4000).run(program, jax.random.key(0))
    fixed = Laplace(num_samples=4000, importance="psis").run(program, jax.random.key(0))
    record = fixed.attrs["optimization"]["importance"]
    assert record["resampled"] == [True] and record["pareto_k"][0] < 0.7
    assert record["ess"][0] > 2000
    rate = fixed.samples["rate"].ravel()
    # The log-normal Laplace puts its 95% quantile 0.24 too high: the test can tell.
    assert abs(np.quantile(plain.samples["rate"].ravel(), 0.95) - truth[2]) > 0.15
    # Quantile MC error at ESS ~3600 is about 0.015 at the 95% point (density ~0.25 there);
    # 0.05 is over three of those. The mean's MC sd is 0.37 / 60 = 0.006.
    np.testing.assert_allclose(np.quantile(rate, levels), truth, atol=0.05)
    assert rate.mean() == pytest.approx(exact.mean(), abs=0.02)
    assert uq.diagnostics.check(fixed.to_datatree()).verdict == "n/a"  # nothing to warn


def _vague_model(x, targets=None):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0).expand([10]).to_event(1))
    numpyro.sample("y", dist.Normal(theta, 100.0).to_event(1), obs=targets)


def test_untrusted_correction_keeps_the_gaussian_draws_and_warns():
    # The floor forces q's sd to 0.2 where the posterior's is ~3 in 10 dimensions: the
    # ratios' tail is far heavier than k = 0.7 (in 50 numpy replications of this design the
    # estimated k-hat ranged 0.75-2, median 1.3).
    program = uq.Program.from_numpyro(_vague_model, np.zeros(10), np.zeros(10))
    backend = Laplace(num_samples=500, min_eigenvalue=25.0, importance="psis")
    posterior = backend.run(program, jax.random.key(1))
    record = posterior.attrs["optimization"]["importance"]
    assert record["resampled"] == [False] and record["pareto_k"][0] > 0.7
    theta = posterior.samples["theta"].reshape(500, 10)
    assert np.unique(theta, axis=0).shape[0] == 500  # not collapsed onto a few draws
    assert theta.std() == pytest.approx(0.2, rel=0.15)
    diag = uq.diagnostics.check(posterior.to_datatree())
    assert diag.verdict == "warn"
    assert any("Pareto k-hat" in m and "use NUTS" in m for m in diag.messages)


def test_systematic_resampling_keeps_each_draw_its_share():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(50))
    index = systematic_indices(jax.random.key(3), weights)
    counts = np.bincount(index, minlength=50)
    assert counts.sum() == 50
    assert np.all(np.abs(counts - 50 * weights) < 1.0 + 1e-9)


def test_smoothed_weights_drop_non_finite_ratios():
    log_ratio = np.random.default_rng(0).normal(size=60)
    log_ratio[1::6], log_ratio[2::6] = -np.inf, np.nan
    weights, khat = smoothed_weights(log_ratio)
    assert weights.sum() == pytest.approx(1.0) and np.isfinite(khat)
    assert np.all(weights[1::6] == 0) and np.all(weights[2::6] == 0)
    assert np.all(weights[0::6] > 0)
    # equal ratios: equal weights (no tail to smooth)
    weights, khat = smoothed_weights(np.zeros(40))
    np.testing.assert_allclose(weights, 1 / 40)
    with pytest.raises(ValueError, match="not finite at any draw"):
        smoothed_weights(np.full(20, np.nan))


def test_too_few_draws_for_a_pareto_fit_are_kept_unchecked_with_a_warning():
    # PSIS fits a tail of a fifth of the draws, at least 5: 24 draws are too few.
    weights, khat = smoothed_weights(np.random.default_rng(1).normal(size=24))
    assert khat is None and weights.sum() == pytest.approx(1.0)
    program, _ = _gamma_poisson()
    posterior = Laplace(num_samples=24, importance="psis").run(program, jax.random.key(0))
    record = posterior.attrs["optimization"]["importance"]
    assert record["pareto_k"] == [None] and record["resampled"] == [False]
    assert np.unique(posterior.samples["rate"]).size == 24
    diag = uq.diagnostics.check(posterior.to_datatree())
    assert diag.verdict == "warn"
    assert any("too few to estimate the Pareto k-hat" in m for m in diag.messages)


def test_bad_importance_setting_names_the_field():
    with pytest.raises(ValueError, match="Laplace.importance must be one of"):
        Laplace(importance="sir")
    cfg = {
        "case": {"name": "t", "backend": "laplace"},
        "pde": {"name": "heat", "kappa": {"prior": "LogNormal", "loc": -2.0, "scale": 0.5}},
        "model": {"name": "bpinn", "width": 4},
        "backend": {"laplace": {"importance": "psis"}},
    }
    assert build_backend(resolve_config(cfg), "laplace").importance == "psis"
    cfg["backend"]["laplace"]["importance"] = 3
    with pytest.raises(ConfigError, match="importance"):
        resolve_config(cfg)
