"""Laplace(num_modes=M): an equal-weight mixture of Gaussians at M MAP modes, and the
within/between-mode split of its variance that diagnostics report."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr

import ucsciml as uq
from ucsciml import inference
from ucsciml.diagnostics import variance_decomposition
from ucsciml.inference import MAPFit
from ucsciml.inference.laplace import _check_finite

# Bimodal toy: theta ~ N(0, PRIOR^2), y ~ N(theta^2, NOISE^2), y = Y. Its potential
# U = theta^2 / (2 PRIOR^2) + (theta^2 - Y)^2 / (2 NOISE^2) has minima where
# theta^2 = Y - NOISE^2 / (2 PRIOR^2), with curvature U'' = 4 Y / NOISE^2 - 2 / PRIOR^2.
PRIOR, NOISE, Y = 3.0, 0.1, 4.0
MODE = np.sqrt(Y - NOISE**2 / (2 * PRIOR**2))  # 1.99986
LAPLACE_SD = 1 / np.sqrt(4 * Y / NOISE**2 - 2 / PRIOR**2)  # 0.0250


def bimodal_model(x, targets=None):
    theta = numpyro.sample("theta", dist.Normal(0.0, PRIOR))
    numpyro.sample("y", dist.Normal(theta**2 + 0.0 * x, NOISE), obs=targets)


@pytest.fixture(scope="module")
def bimodal():
    program = uq.Program.from_numpyro(
        bimodal_model, jnp.zeros(1), jnp.full(1, Y), dims={"y": ("obs",)}, name="bimodal"
    )
    backend = inference.Laplace(
        map=MAPFit(adam_steps=500, learning_rate=0.05, lbfgs_steps=30),
        num_samples=2000,
        num_modes=8,
    )
    return backend.run(program, jax.random.key(0))


def test_conjugate_regression_every_mode_is_the_exact_posterior(regression):
    program, mean, cov = regression
    sd = np.sqrt(np.diag(cov))
    num_samples = 4000
    posterior = inference.Laplace(
        map=MAPFit(adam_steps=2000, learning_rate=0.05, lbfgs_steps=0),
        num_samples=num_samples,
        num_modes=3,
    ).run(program, jax.random.key(1))
    beta = posterior.samples["beta"]
    assert beta.shape == (3, num_samples, 3)
    # The posterior is Gaussian, so the Laplace approximation at its one mode is exact. The
    # pooled mean of 12,000 independent draws has MC error 0.009 sd (0.05 sd is > 5 MCSE);
    # one mode's 4,000 draws 0.016 sd (0.08 sd is 5 MCSE); an sd's relative error is 1.1%.
    assert (np.abs(beta.reshape(-1, 3).mean(0) - mean) / sd < 0.05).all()
    for m in range(3):
        assert (np.abs(beta[m].mean(0) - mean) / sd < 0.08).all(), m
        assert (np.abs(beta[m].std(0) / sd - 1) < 0.05).all(), m
    opt = posterior.attrs["optimization"]
    # Every start reached the same MAP: between-mode variance of the modes themselves ~ 0.
    assert opt["map_spread_ratio"] < 1e-6, opt["map_spread_ratio"]
    assert np.ptp(opt["final_loss_per_mode"]) < 1e-4 * abs(opt["final_loss"])
    # In the draws, what is left between modes is Monte Carlo noise of the mode means:
    # M * B / (W / N) ~ chi^2_{M-1}, and P(chi^2_2 > 30) = 3e-7.
    draws = xr.Dataset({"beta": (("chain", "draw", "feature"), beta)})
    for j in range(3):
        split = variance_decomposition(draws, "beta", sel={"feature": j})
        assert 3 * split["between"] < 30 * split["within"] / num_samples, (j, split)


def test_variance_decomposition_hand_computed():
    # Chains [1, 2, 3] and [5, 7, 9]: chain means 2 and 7, grand mean 4.5.
    # Within: mean(var([1,2,3]), var([5,7,9])) = mean(2/3, 8/3) = 5/3.
    # Between: var([2, 7]) = 6.25. Pooled: sum of squared deviations 47.5 over 6 draws.
    x = np.array([[1.0, 2.0, 3.0], [5.0, 7.0, 9.0]])
    ds = xr.Dataset({"x": (("chain", "draw"), x)})
    split = variance_decomposition(ds, "x")
    assert abs(split["within"] - 5 / 3) < 1e-12
    assert abs(split["between"] - 6.25) < 1e-12
    assert abs(split["pooled"] - 47.5 / 6) < 1e-12
    assert abs(split["within"] + split["between"] - split["pooled"]) < 1e-12
    assert abs(split["between_sd"] - 2.5) < 1e-12
    assert (split["num_chains"], split["num_draws"]) == (2, 3)
    # A DataTree's posterior group and an element of a vector variable give the same split.
    vec = xr.Dataset({"v": (("chain", "draw", "k"), np.stack([x, -x], axis=-1))})
    tree = xr.DataTree.from_dict({"posterior": vec})
    assert variance_decomposition(tree, "v", sel={"k": 1})["between"] == pytest.approx(6.25)
    with pytest.raises(ValueError, match="sel="):
        variance_decomposition(vec, "v")
    with pytest.raises(ValueError, match="no variable"):
        variance_decomposition(ds, "nope")


def test_bimodal_modes_found_and_variance_split(bimodal):
    theta = bimodal.samples["theta"]
    assert theta.shape == (8, 2000)
    centres = theta.mean(axis=1)
    assert np.allclose(np.abs(centres), MODE, atol=2e-3), centres
    signs = np.sign(centres)
    assert 0 < (signs > 0).sum() < 8, signs  # both modes found
    split = variance_decomposition(bimodal.to_datatree(), "theta")
    # Between: chain means are +-MODE, so B = MODE^2 (1 - mean(sign)^2) up to MC noise of
    # the means (0.025 / sqrt(2000) = 6e-4).
    expected_between = MODE * np.sqrt(1 - signs.mean() ** 2)
    assert abs(split["between_sd"] - expected_between) < 0.01, split
    assert 1.5 < split["between_sd"] <= 2.0
    # Within: the Gaussian at each mode has sd 1 / sqrt(U''); 16,000 draws estimate it to
    # 0.6% (3% is 5 MCSE).
    assert abs(split["within_sd"] / LAPLACE_SD - 1) < 0.03, split
    opt = bimodal.attrs["optimization"]
    assert opt["num_modes"] == 8 and opt["map_spread_ratio"] > 1e3


def test_diagnostics_report_modes_not_unmixed_chains(bimodal):
    tree = bimodal.to_datatree()
    diag = uq.diagnostics.check(tree)
    text = diag.to_text()
    assert diag.kind == "laplace" and diag.verdict == "n/a"
    assert "did NOT mix" not in text and "not converged" not in text
    assert all(r.rhat is None for r in diag.rows)
    assert "do not apply" in diag.messages[0] and "mixture" in diag.messages[0]
    (split,) = diag.mode_splits
    reference = variance_decomposition(tree, "theta")
    assert split.name == "theta"
    assert split.within_sd == pytest.approx(reference["within_sd"], rel=1e-9)
    assert split.between_sd == pytest.approx(reference["between_sd"], rel=1e-9)
    assert "between-mode sd" in text and "disagree" in text
    assert diag.to_dict()["mode_splits"][0]["name"] == "theta"


def test_layout_attrs_and_determinism(regression):
    program = regression[0]
    backend = inference.Laplace(
        map=MAPFit(adam_steps=20, lbfgs_steps=0), num_samples=5, num_modes=2
    )
    posterior = backend.run(program, jax.random.key(3))
    assert posterior.samples["beta"].shape == (2, 5, 3)
    tree = posterior.to_datatree()
    assert tree["posterior"].sizes["chain"] == 2 and tree["posterior"].sizes["draw"] == 5
    opt = posterior.attrs["optimization"]
    assert opt["num_modes"] == 2 and posterior.attrs["settings"]["num_modes"] == 2
    assert len(opt["final_loss_per_mode"]) == len(opt["floored_eigenvalues_per_mode"]) == 2
    assert len(opt["trace"]) > 0 and opt["trace_mode"] in (0, 1)
    again = backend.run(program, jax.random.key(3))
    np.testing.assert_array_equal(posterior.samples["beta"], again.samples["beta"])
    # The modes start from different prior draws.
    assert not np.array_equal(posterior.samples["beta"][0], posterior.samples["beta"][1])


@pytest.mark.parametrize("bad", [0, 1.5, True, -2])
def test_invalid_num_modes(bad):
    with pytest.raises(ValueError, match="num_modes must be an integer >= 1"):
        inference.Laplace(num_modes=bad)


def test_non_finite_modes_warn_unless_all_are(caplog):
    with caplog.at_level(logging.WARNING, logger="ucsciml.inference.laplace"):
        _check_finite(np.array([1.0, np.nan, 2.0]))
    assert "modes [1] of 3" in caplog.text
    with pytest.raises(FloatingPointError, match="all 2 modes"):
        _check_finite(np.array([np.nan, np.inf]))
    with pytest.raises(FloatingPointError, match="lower map.learning_rate"):
        _check_finite(np.array([np.nan]))


def _flat_direction(inputs, targets=None):
    # "flat": a wide prior and no data (curvature 1e-4, below the floor); "x": data.
    numpyro.sample("flat", dist.Normal(0.0, 100.0))
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(x, 0.1), obs=targets)


def test_floored_eigenvalues_count_their_negative_ones_and_cap_flat_directions(caplog):
    program = uq.Program.from_numpyro(_flat_direction, jnp.zeros(()), jnp.asarray(0.3))
    backend = inference.Laplace(map=MAPFit(adam_steps=200, lbfgs_steps=50), num_samples=400)
    with caplog.at_level(logging.WARNING, logger="ucsciml.inference.laplace"):
        posterior = backend.run(program, jax.random.key(0))
    assert "1 of 2 Hessian eigenvalues were below 1 (0 negative" in caplog.text
    assert "barely constrain" in caplog.text
    opt = posterior.attrs["optimization"]
    assert opt["floored_eigenvalues_per_mode"] == [1] and opt["negative_eigenvalues_per_mode"] == [
        0
    ]
    # The floored direction's sd is capped at 1/sqrt(floor) = 1 (the prior's 100 is not seen).
    assert np.std(posterior.samples["flat"]) == pytest.approx(1.0, rel=0.15)
