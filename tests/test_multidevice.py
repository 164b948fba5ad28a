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
