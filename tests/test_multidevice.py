"""Chains split over 4 simulated CPU devices (run with
XLA_FLAGS=--xla_force_host_platform_device_count=4; `make test` does)."""

import arviz_stats as azs
import jax
import numpy as np
import pytest
from conftest import require_or_skip

import ucsciml as uq
from ucsciml import inference

pytestmark = pytest.mark.multidevice


@pytest.fixture(scope="module", autouse=True)
def _four_devices():
    require_or_skip(
        jax.device_count() >= 4,
        "needs 4 (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4",
    )


SETTINGS = dict(num_warmup=200, num_samples=400, num_chains=8, progress_bar=False)


@pytest.fixture(scope="module")
def program():
    from conftest import regression_data, regression_model

    X, y = regression_data()
    return uq.Program.from_numpyro(regression_model, X, y, dims={"beta": ("feature",)})


@pytest.mark.parametrize("engine", ["numpyro", "blackjax"])
def test_eight_chains_on_four_devices(program, engine):
    sharded = inference.NUTS(engine=engine, **SETTINGS)
    a = sharded.run(program, jax.random.key(7))
    b = sharded.run(program, jax.random.key(7))
    assert a.attrs["shards"] == 4
    # Same seed, same layout: bit-identical draws.
    np.testing.assert_array_equal(a.samples["beta"], b.samples["beta"])
    # One device, same per-chain keys: not bit-identical (vmapped NUTS amplifies float
    # differences), so compare pooled means within 4 Monte-Carlo standard errors.
    single = inference.NUTS(engine=engine, shard=False, **SETTINGS).run(program, jax.random.key(7))
    assert single.attrs["shards"] == 1
    tree = a.to_datatree()
    mcse = azs.mcse(tree, var_names=["beta"], method="mean").to_dataset()["beta"].values
    diff = np.abs(a.samples["beta"].mean((0, 1)) - single.samples["beta"].mean((0, 1)))
    assert (diff < 4 * np.sqrt(2) * mcse).all(), diff / mcse


@pytest.mark.parametrize("engine", ["numpyro", "blackjax"])
def test_map_started_chains_on_four_devices(program, engine):
    """MAP starts come out of the fit sharded over the chain mesh; the sampler's start-up
    takes them whatever their layout (it once failed with "0th dimension of all xs should be
    replicated"): same seed, same draws, and the pooled mean within 0.5 posterior sd of the
    exact posterior (4 chains x 30 draws: ~4 Monte-Carlo standard errors)."""
    from conftest import exact_regression_posterior, regression_data

    fit = inference.MAPFit(adam_steps=30, lbfgs_steps=7)
    sampler = inference.NUTS(
        engine=engine,
        num_warmup=30,
        num_samples=30,
        num_chains=4,
        init="map",
        map=fit,
        progress_bar=False,
    )
    a = sampler.run(program, jax.random.key(3))
    b = sampler.run(program, jax.random.key(3))
    assert a.attrs["shards"] == 4
    np.testing.assert_array_equal(a.samples["beta"], b.samples["beta"])
    mean, cov = exact_regression_posterior(*regression_data())
    error = np.abs(a.samples["beta"].mean((0, 1)) - mean) / np.sqrt(np.diag(cov))
    assert (error < 0.5).all(), error
