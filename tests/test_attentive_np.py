"""Attentive neural process: shapes, determinism, bad input, a short training run, ProbConserv."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsciml.models import probconserv as pc
from ucsciml.models.probconserv import attentive_np as anp
from ucsciml.pde import gpme


@pytest.fixture(scope="module")
def data():
    return anp.family_data(jax.random.key(0), gpme.PorousMedium, 8, num_targets=20)


@pytest.fixture(scope="module")
def model():
    return anp.AttentiveNP(key=jax.random.key(1), width=16, latent_dim=4, heads=2)


def test_family_data_shapes_ranges_and_exact_values(data):
    assert data.xc.shape == (8, 100, 2) and data.yc.shape == (8, 100)
    assert data.xt.shape == (8, 20, 2) and data.yt.shape == (8, 20)
    low, high = gpme.PorousMedium.parameter_range
    assert np.all((data.parameter >= low) & (data.parameter <= high))
    assert data.xc.min() >= 0 and data.xc.max() <= 1
    # 10 stratified times: one context time per tenth of the (unit) time axis.
    times = np.unique(data.xc[0, :, 1])
    np.testing.assert_array_equal(np.floor(times * 10), np.arange(10))
    # values are the family member's exact solution (PME domain is the unit square)
    member = gpme.PorousMedium(m=float(data.parameter[3]))
    np.testing.assert_allclose(data.yt[3], member.solve(data.xt[3]), rtol=1e-12)


def test_prediction_shapes_psd_and_same_key_same_output(model, data):
    xq = np.stack([np.linspace(0, 1, 7), np.full(7, 0.5)], -1)
    first = anp.predict(model, jax.random.key(2), data.xc[0], data.yc[0], xq, num_draws=5)
    again = anp.predict(model, jax.random.key(2), data.xc[0], data.yc[0], xq, num_draws=5)
    assert first.mean.shape == (7,) and first.diag.shape == (7,) and first.factor.shape == (7, 5)
    np.testing.assert_array_equal(first.mean, again.mean)
    np.testing.assert_allclose(first.variance(), jnp.diagonal(first.covariance()), rtol=1e-6)
    assert np.all(np.linalg.eigvalsh(np.asarray(first.covariance())) > 0)
    # moment matching: the mean is the average of the decoder means over the latent draws
    np.testing.assert_allclose(first.factor.sum(-1), 0.0, atol=1e-5)


def test_bad_input_raises(model, data):
    xq = np.zeros((3, 2))
    with pytest.raises(ValueError, match="xc"):
        anp.predict(model, jax.random.key(0), data.xc[0][:, :1], data.yc[0], xq)
    with pytest.raises(ValueError, match="xq"):
        anp.predict(model, jax.random.key(0), data.xc[0], data.yc[0], np.zeros(3))
    with pytest.raises(ValueError, match="num_draws"):
        anp.predict(model, jax.random.key(0), data.xc[0], data.yc[0], xq, num_draws=1)
    with pytest.raises(ValueError, match="heads"):
        anp.AttentiveNP(key=jax.random.key(0), width=10, heads=4)
    with pytest.raises(TypeError, match="family"):
        anp.family_data(jax.random.key(0), gpme.PorousMedium(3.0), 2)
    with pytest.raises(ValueError, match="num_steps"):
        anp.train(jax.random.key(0), model, data, num_steps=0)


def test_training_lowers_the_loss_and_feeds_probconserv(model, data):
    result = anp.train(
        jax.random.key(3), model, data, num_steps=40, chunk=20, learning_rate=3e-3, progress=False
    )
    assert result.losses.shape == (40,) and np.all(np.isfinite(result.losses))
    # 40 Adam steps on 8 functions: the first-10 vs last-10 average falls (measured 0.89 ->
    # 0.60 per target point; half that drop required); a broken gradient or optimiser wiring
    # leaves it flat.
    assert result.losses[-10:].mean() < result.losses[:10].mean() - 0.15
    # The shared loop judges the trace (40 minibatch steps: too noisy to tell a trend, the
    # measured change is 0); the verdict is the one the families store.
    assert result.verdict["phase"] == "ANP" and result.verdict["stochastic"] is True
    assert result.verdict["fits"] == 1 and result.verdict["relative_change"] >= 0
    changed = jax.tree.leaves(eqx.filter(result.model, eqx.is_inexact_array))
    before = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    assert any(not np.array_equal(a, b) for a, b in zip(changed, before, strict=True))

    # The moment-matched prediction goes through the low-rank ProbConserv update.
    problem = gpme.PorousMedium(m=3.0)
    x = np.linspace(0, 1, 41)
    xq = anp.scale_inputs(problem, np.stack([x, np.full_like(x, problem.t_star)], -1))
    pred = anp.predict(result.model, jax.random.key(4), data.xc[0], data.yc[0], xq, 8)
    mean, diag, factor = (np.asarray(a, dtype=np.float64) for a in pred)
    with jax.enable_x64(True):  # the update itself in float64 (exact conservation)
        G, b = pc.conservation_constraint(problem, x, problem.t_star)
        post = pc.condition_lowrank(mean, diag, factor, G, b)
        assert abs(float(pc.conservation_error(post.mean, x, b[0]))) <= 1e-12
