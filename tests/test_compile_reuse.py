"""Compile budget: a second run, or a new program of the same model on new data of the same
shapes, reuses the compiled sampler and MAP fits instead of tracing and compiling again."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import regression_data, regression_model

import ucsciml as uq
from ucsciml import inference
from ucsciml.inference import ensemble, nuts


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
    fit, _, _ = backend._fitter(_program(1), 2)
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
