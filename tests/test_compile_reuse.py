"""Compile budget: a second run, or a new program of the same model on new data of the same
shapes, reuses the compiled sampler and MAP fits instead of tracing and compiling again.

The budget is counted with JAX's own monitoring events: every jaxpr trace and every XLA
compilation reports a duration event, so "no event" means no function was traced or compiled
(eager operations on shapes already seen hit JAX's caches and report nothing).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import regression_data, regression_model

import ucsciml as uq
from ucsciml import inference
from ucsciml.inference import MAPFit, ensemble, nuts
from ucsciml.sbc import sbc

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations():
    """Count JAX's trace and compile events inside the block: ``{event name: count}``."""
    events = collections.Counter()

    def listener(event, duration, **kwargs):
        events[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _program(seed: int) -> uq.Program:
    X, y = regression_data(seed=seed)
    return uq.Program.from_numpyro(regression_model, jnp.asarray(X), jnp.asarray(y))


def test_ensemble_fits_compile_once_across_datasets():
    backend = inference.DeepEnsemble(
        num_members=2, map=inference.MAPFit(adam_steps=20, lbfgs_steps=5), shard=False
    )
    first = backend.run(_program(0), jax.random.key(0))
    misses = ensemble._map_fitter.cache_info().misses
    second = backend.run(_program(1), jax.random.key(0))
    assert ensemble._map_fitter.cache_info().misses == misses  # the same cached fitter
    fit, _ = backend._fitter(_program(1), 2)
    executables = fit.fitter.executables()
    assert executables and all(f._cache_size() == 1 for f in executables)
    # New data, new answer: the cache reuses code, never results.
    assert not np.allclose(first.samples["beta"], second.samples["beta"])


def test_blackjax_nuts_compiles_once_across_datasets():
    backend = inference.NUTS(
        engine="blackjax", num_warmup=30, num_samples=30, num_chains=2, shard=False
    )
    first = backend.run(_program(0), jax.random.key(0))
    misses = nuts._blackjax_sampler.cache_info().misses
    second = backend.run(_program(1), jax.random.key(0))
    assert nuts._blackjax_sampler.cache_info().misses == misses
    sampler = nuts._blackjax_sampler(
        inference._map.ProgramSignature(_program(1)), 30, 30, 2, 0.8, 10, False, False, True
    )
    assert sampler._cache_size() == 1
    assert not np.allclose(first.samples["beta"], second.samples["beta"])
    # Same key and data, same draws, whether or not the code was cached.
    again = backend.run(_program(0), jax.random.key(0))
    np.testing.assert_array_equal(first.samples["beta"], again.samples["beta"])


def _dropout_model(X, targets=None):
    """A one-hidden-layer network with a dropout keep-mask site (MC dropout's contract)."""
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([X.shape[1], 8]).to_event(2))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
    mask = numpyro.sample("mask", dist.Bernoulli(0.9).expand([8]).to_event(1))
    f = numpyro.deterministic("f", (jnp.tanh(X @ w1) * mask / 0.9) @ w2)
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(f, 0.5), obs=targets)


def _dropout_program(seed: int) -> uq.Program:
    X, y = regression_data(seed=seed)
    return uq.Program.from_numpyro(
        _dropout_model,
        jnp.asarray(X),
        jnp.asarray(np.sin(y)),
        network_sites=("w1", "w2"),
        attrs={"dropout_sites": ["mask"]},
    )


SMALL = {
    "laplace": (
        inference.Laplace(map=MAPFit(adam_steps=30, lbfgs_steps=5), num_samples=16),
        _program,
    ),
    "laplace-modes": (
        inference.Laplace(map=MAPFit(adam_steps=30, lbfgs_steps=0), num_samples=8, num_modes=3),
        _program,
    ),
    "vi": (inference.VI(guide="fullrank", num_steps=40, num_samples=16), _program),
    "vi-map": (
        inference.VI(
            num_steps=40,
            num_samples=16,
            init="map",
            map=MAPFit(adam_steps=20, lbfgs_steps=5),
            checkpoint_every=15,
        ),
        _program,
    ),
    "dropout": (inference.MCDropout(num_steps=40, num_passes=8), _dropout_program),
    "ensemble": (
        inference.DeepEnsemble(num_members=3, map=MAPFit(adam_steps=20, lbfgs_steps=5)),
        _program,
    ),
    "ensemble-anchored": (
        inference.DeepEnsemble(
            num_members=3, anchored=True, map=MAPFit(adam_steps=20, lbfgs_steps=5)
        ),
        _program,
    ),
    "nuts-numpyro": (
        inference.NUTS(num_warmup=20, num_samples=20, num_chains=2, progress_bar=False),
        _program,
    ),
    "nuts-numpyro-progress": (
        inference.NUTS(num_warmup=20, num_samples=20, num_chains=1, progress_bar=True),
        _program,
    ),
    "nuts-map": (
        inference.NUTS(
            num_warmup=20,
            num_samples=20,
            num_chains=2,
            init="map",
            map=MAPFit(adam_steps=20, lbfgs_steps=5),
            progress_bar=False,
        ),
        _program,
    ),
    "nuts-blackjax": (
        inference.NUTS(
            engine="blackjax", num_warmup=20, num_samples=20, num_chains=2, progress_bar=False
        ),
        _program,
    ),
    "nuts-blackjax-progress": (
        inference.NUTS(
            engine="blackjax", num_warmup=20, num_samples=20, num_chains=1, progress_bar=True
        ),
        _program,
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_second_run_and_new_data_compile_nothing(name):
    backend, make = SMALL[name]
    first_program, other_program = make(0), make(1)
    first = backend.run(first_program, jax.random.key(0))
    with compilations() as same:
        again = backend.run(first_program, jax.random.key(0))
    with compilations() as new:
        other = backend.run(other_program, jax.random.key(0))
    assert same[TRACE] == same[COMPILE] == 0, dict(same)
    assert new[TRACE] == new[COMPILE] == 0, dict(new)
    site = next(iter(first_program.latent_sites()))
    # Reused code, never reused results: same key and data, same draws; new data, new draws.
    np.testing.assert_array_equal(first.samples[site], again.samples[site])
    assert not np.allclose(first.samples[site], other.samples[site])


def test_predict_and_datatree_compile_once():
    backend = inference.Laplace(map=MAPFit(adam_steps=20, lbfgs_steps=0), num_samples=8)
    posterior = backend.run(_program(0), jax.random.key(0))
    other = backend.run(_program(1), jax.random.key(0))
    posterior.predict(np.ones((5, 3)), jax.random.key(1))
    posterior.to_datatree()
    with compilations() as events:
        posterior.predict(np.zeros((5, 3)), jax.random.key(2))
        other.predict(np.ones((5, 3)), jax.random.key(1))
        other.to_datatree()
    assert events[TRACE] == events[COMPILE] == 0, dict(events)


def test_numpyro_engine_draws_are_numpyro_mcmc_draws():
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS
    from numpyro.infer.initialization import init_to_sample

    program = _program(0)
    settings = dict(num_warmup=30, num_samples=30, num_chains=2)
    ours = inference.NUTS(progress_bar=False, **settings).run(program, jax.random.key(0))
    run_key = jax.random.split(jax.random.key(0))[0]  # as NUTS.run derives the chain keys
    keys = jax.vmap(lambda i: jax.random.fold_in(run_key, i))(np.arange(2))
    mcmc = MCMC(
        NumPyroNUTS(regression_model, init_strategy=init_to_sample),
        chain_method="vectorized",
        progress_bar=False,
        **settings,
    )
    mcmc.run(keys, program.inputs, targets=program.targets, extra_fields=("num_steps",))
    np.testing.assert_allclose(
        ours.samples["beta"], mcmc.get_samples(group_by_chain=True)["beta"], rtol=1e-5
    )
    np.testing.assert_array_equal(
        ours.sample_stats["n_steps"], mcmc.get_extra_fields(group_by_chain=True)["num_steps"]
    )


@pytest.mark.parametrize("engine", ["numpyro", "blackjax"])
def test_the_progress_bar_changes_no_draw(engine):
    # With a bar, sampling runs in 20 calls of the one executable: the draws of one call.
    settings = dict(engine=engine, num_warmup=30, num_samples=40, num_chains=2)
    plain = inference.NUTS(progress_bar=False, **settings).run(_program(0), jax.random.key(4))
    shown = inference.NUTS(progress_bar=True, **settings).run(_program(0), jax.random.key(4))
    np.testing.assert_array_equal(plain.samples["beta"], shown.samples["beta"])
    np.testing.assert_array_equal(plain.sample_stats["n_steps"], shown.sample_stats["n_steps"])


REPLICATES = inference.NUTS(
    engine="blackjax", num_warmup=30, num_samples=30, num_chains=2, progress_bar=False
)


def _replicates():
    program = _program(0)
    targets = np.random.default_rng(1).normal(size=(3, *np.shape(program.targets)))
    return program, targets, jax.random.split(jax.random.key(0), 3)


def test_one_replicate_per_chunk_is_the_run_it_replaces():
    program, targets, keys = _replicates()
    # A chunk of one replicate is the run's own executable: the very same draws.
    samples, _ = REPLICATES.sample_replicates(program, targets, keys, chunk_size=1)
    for r in range(3):
        run = REPLICATES.run(dataclasses.replace(program, targets=targets[r]), keys[r])
        np.testing.assert_array_equal(samples["beta"][r], run.samples["beta"])


def test_vmapped_replicates_sample_their_own_posteriors_and_compile_once():
    from conftest import exact_regression_posterior

    program, targets, keys = _replicates()
    # Chunks of two (the last one padded) share one executable of four chains. A batch of
    # another size rounds float32 sums differently, so its chains drift from the runs'; each
    # replicate must still sample its own dataset's posterior (a mix-up is many sd off).
    samples, stats = REPLICATES.sample_replicates(program, targets, keys, chunk_size=2)
    assert samples["beta"].shape == (3, 2, 30, 3)
    assert stats["diverging"].shape == (3, 2, 30)
    for r in range(3):
        mean, cov = exact_regression_posterior(np.asarray(program.inputs), targets[r])
        z = np.abs(samples["beta"][r].reshape(-1, 3).mean(0) - mean) / np.sqrt(np.diag(cov))
        assert (z < 1.5).all(), (r, z)
    with compilations() as events:
        REPLICATES.sample_replicates(program, targets[::-1], keys, chunk_size=2)
    assert events[TRACE] == events[COMPILE] == 0, dict(events)


@pytest.mark.slow  # 100 replications: one compile of a 50-chain sampler, then ~1 s (13 s)
def test_vmapped_sbc_passes_on_the_conjugate_regression():
    backend = inference.NUTS(
        engine="blackjax", num_warmup=150, num_samples=100, num_chains=2, progress_bar=False
    )
    result = sbc(_program(0), backend, jax.random.key(2), num_replications=100)
    assert result.passed(0.01), result.pvalues
