import arviz_stats as azs
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ucsciml as uq
from ucsciml import inference
from ucsciml.inference import MAPFit

SETTINGS = dict(num_warmup=300, num_samples=500, num_chains=4, progress_bar=False)


@pytest.fixture(scope="module", params=["numpyro", "blackjax"])
def fitted(request):
    from conftest import exact_regression_posterior, regression_data, regression_model

    X, y = regression_data()
    program = uq.Program.from_numpyro(
        regression_model,
        X,
        y,
        dims={"beta": ("feature",), "y": ("obs",), "inputs": ("obs", "feature")},
    )
    posterior = inference.NUTS(engine=request.param, **SETTINGS).run(program, jax.random.key(1))
    return request.param, program, posterior, exact_regression_posterior(X, y)


def test_conjugate_posterior_within_3_mcse(fitted):
    engine, _, posterior, (mean, cov) = fitted
    tree = posterior.to_datatree()
    mcse_mean = azs.mcse(tree, var_names=["beta"], method="mean").to_dataset()["beta"].values
    mcse_sd = azs.mcse(tree, var_names=["beta"], method="sd").to_dataset()["beta"].values
    draws = posterior.samples["beta"].reshape(-1, 3)
    # MCSE z-test (as in BlackJAX's sampling tests): |estimate - exact| / MCSE < 3.
    z_mean = np.abs(draws.mean(0) - mean) / mcse_mean
    z_sd = np.abs(draws.std(0) - np.sqrt(np.diag(cov))) / mcse_sd
    assert (z_mean < 3).all(), (engine, z_mean)
    assert (z_sd < 3).all(), (engine, z_sd)


def test_sample_stats_and_shapes(fitted):
    _, _, posterior, _ = fitted
    assert posterior.samples["beta"].shape == (4, 500, 3)
    for name in ("diverging", "tree_depth", "step_size", "energy", "lp", "acceptance_rate"):
        assert posterior.sample_stats[name].shape == (4, 500), name
    assert posterior.kind == "mcmc"
    assert posterior.attrs["settings"]["num_chains"] == 4


def test_same_key_same_draws(regression):
    program, *_ = regression
    backend = inference.NUTS(num_warmup=20, num_samples=20, num_chains=2, progress_bar=False)
    a = backend.run(program, jax.random.key(3)).samples["beta"]
    b = backend.run(program, jax.random.key(3)).samples["beta"]
    c = backend.run(program, jax.random.key(4)).samples["beta"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_map_initialisation_handles_constrained_sites():
    def model(x, targets=None):
        scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("y", dist.Normal(0.0, scale), obs=targets)

    rng = np.random.default_rng(0)
    y = 2.0 * rng.normal(size=200)
    program = uq.Program.from_numpyro(model, np.zeros(200), y)
    backend = inference.NUTS(
        num_warmup=100,
        num_samples=100,
        num_chains=2,
        init="map",
        map=MAPFit(adam_steps=300, lbfgs_steps=20),
        progress_bar=False,
    )
    draws = backend.run(program, jax.random.key(0)).samples["scale"]
    assert np.all(draws > 0)
    # The posterior of the scale concentrates near the sample sd (~2) with sd ~ 2/sqrt(400).
    assert abs(draws.mean() - y.std()) < 0.3


def test_discrete_latents_are_rejected_before_compute():
    def model(x, targets=None):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=targets)

    program = uq.Program.from_numpyro(model, np.zeros(1), np.zeros(()))
    with pytest.raises(ValueError, match="discrete"):
        inference.NUTS().run(program, jax.random.key(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_chains": 1.5}, "num_chains"),
        ({"engine": "stan"}, "engine"),
        ({"init": "zeros"}, "init"),
        ({"target_accept_prob": 1.0}, "target_accept_prob"),
        ({"map": {"adam_steps": 10}}, "NUTS.map must be a MAPFit"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inference.NUTS(**kwargs)


@pytest.mark.parametrize("engine", ["numpyro", "blackjax"])
def test_subspace_sampling_matches_the_exact_conditional(engine):
    """``sample_sites``: the held site sits at the MAP, the sampled one follows its exact
    Gaussian conditional given that MAP value."""
    from conftest import NOISE_SD, PRIOR_SD, regression_data

    def model(X, targets=None):
        a = numpyro.sample("a", dist.Normal(0.0, PRIOR_SD))
        beta = numpyro.sample("beta", dist.Normal(0.0, PRIOR_SD).expand([3]).to_event(1))
        with numpyro.plate("obs", X.shape[0], dim=-1):
            numpyro.sample("y", dist.Normal(a + X @ beta, NOISE_SD), obs=targets)

    X, y = regression_data()
    y = y + 0.7
    program = uq.Program.from_numpyro(model, X, y)
    backend = inference.NUTS(
        num_warmup=300,
        num_samples=500,
        num_chains=4,
        engine=engine,
        init="map",
        map=MAPFit(adam_steps=2000, learning_rate=0.05, lbfgs_steps=50),
        sample_sites=["a"],
        progress_bar=False,
    )
    posterior = backend.run(program, jax.random.key(2))
    # Joint posterior (Gaussian): its mode is its mean, the MAP the held beta must sit at.
    Xa = np.column_stack([np.ones(len(y)), X])
    precision = Xa.T @ Xa / NOISE_SD**2 + np.eye(4) / PRIOR_SD**2
    joint_mean = np.linalg.solve(precision, Xa.T @ y / NOISE_SD**2)
    beta = posterior.samples["beta"]
    assert beta.shape == (4, 500, 3)
    assert np.ptp(beta.reshape(-1, 3), axis=0).max() == 0.0
    np.testing.assert_allclose(beta[0, 0], joint_mean[1:], atol=1e-3)
    # Conditional of a given beta: precision n / s^2 + 1 / t^2.
    cond_prec = len(y) / NOISE_SD**2 + 1 / PRIOR_SD**2
    cond_mean = np.sum(y - X @ beta[0, 0]) / NOISE_SD**2 / cond_prec
    a = posterior.samples["a"]
    assert a.shape == (4, 500)
    mcse_mean = azs.mcse(posterior.to_datatree(), var_names=["a"], method="mean")
    mcse = float(mcse_mean.to_dataset()["a"].values)
    assert abs(a.mean() - cond_mean) / mcse < 3
    assert abs(a.std() - cond_prec**-0.5) / (cond_prec**-0.5) < 0.1
    # Diagnostics judge the sampled site and call the held one constant, not unmixed.
    rows = {r.name.split("[")[0]: r for r in uq.diagnostics.check(posterior.to_datatree()).rows}
    assert rows["beta"].verdict == "constant" and rows["beta"].rhat is None
    assert rows["a"].rhat is not None and rows["a"].rhat < 1.01


def test_subspace_sampling_checks_its_settings(regression):
    program, *_ = regression
    with pytest.raises(ValueError, match="init='map'"):
        inference.NUTS(sample_sites=["beta"])
    with pytest.raises(ValueError, match="sample_sites"):
        inference.NUTS(sample_sites="beta", init="map")
    backend = inference.NUTS(sample_sites=["gamma"], init="map", progress_bar=False)
    with pytest.raises(ValueError, match="gamma.*latent sites"):
        backend.run(program, jax.random.key(0))
