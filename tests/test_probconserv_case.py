"""ProbConserv as a family case (``models/probconserv/case.py``) and as a posterior operation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsciml.models import probconserv as pc
from ucsciml.models.probconserv import context_gp
from ucsciml.models.probconserv.case import ConservationCase, condition_posterior, fit_gp_traced


@pytest.fixture(scope="module")
def tiny_run():
    case = ConservationCase(num_functions=2, num_grid=41, num_draws=64)
    return case, case.run("closed_form", None, key=jax.random.key(0), progress=False)


def test_tree_shapes(tiny_run):
    case, run = tiny_run
    tree = run.tree
    assert tree.attrs["ucsciml_kind"] == "closed_form"
    assert tree["posterior"]["u"].shape == (1, 64, 2, 41)
    assert tree["predictions"]["u"].shape == (1, 64, 41)
    assert tree["predictions"]["u_base"].shape == (1, 64, 41)
    np.testing.assert_array_equal(tree["predictions"]["u"], tree["posterior"]["u"][:, :, 0])
    assert tree["predictions_constant_data"]["u_true"].shape == (41,)
    assert "optimization" in tree.children


def test_conservation_and_metrics(tiny_run):
    case, run = tiny_run
    m = run.metrics
    assert all(np.isfinite(v) for v in m.values() if isinstance(v, float))
    assert m["max_abs_CE_probconserv"] < 1e-10 < m["max_abs_CE_base"]
    assert abs(m["CE_probconserv"]) < abs(m["CE_base"])
    assert 0.0 <= m["coverage90_probconserv"] <= 1.0
    assert m["gp_fits_converged"] == case.num_functions
    # every conditioned draw conserves mass (sigma_g = 0, Matheron draws)
    law = case.law()
    x = run.tree["posterior"]["x"].values
    G, b = pc.conservation_constraint(law, x, case.t_star)
    with jax.enable_x64(True):
        masses = np.asarray(run.tree["posterior"]["u"].values) @ np.asarray(G[0])
    np.testing.assert_allclose(masses, float(b[0]), atol=1e-9)


def test_traced_fit_matches_context_gp():
    inputs = np.random.default_rng(0).uniform(size=(30, 2))
    targets = np.sin(3 * inputs[:, 0]) * inputs[:, 1]
    fit, losses, (gmax, _) = fit_gp_traced(inputs, targets)
    reference = context_gp.fit(inputs, targets)
    np.testing.assert_allclose(fit.lengthscale, reference.lengthscale, rtol=1e-10)
    assert np.isclose(fit.noise, reference.noise) and losses[-1] <= losses[0]
    assert np.isfinite(gmax)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("problem", "heat"),
        ("base", "anp"),
        ("parameter", 9.0),
        ("num_functions", 0),
        ("t_star", 0.0),
        ("sigma_g", -1.0),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ConservationCase(**{field: value})


def test_bad_backend():
    with pytest.raises(ValueError, match="closed_form"):
        ConservationCase().run("nuts", None, key=jax.random.key(0), progress=False)


def test_condition_posterior_matches_closed_form():
    """Draws of a known Gaussian, conditioned by moment matching, against :func:`condition`.

    Monte-Carlo error: with ``S`` draws the updated mean is ``(I - K̂G)ū + K̂b``. Its error is
    ``(I - KG)(ū - μ)`` (sd ``≤ sqrt(Σ_ii / S)``, the projection only shrinks it) plus
    ``(K̂ - K)(Gμ - b)`` with ``K̂ - K = O(1/sqrt(S))`` relative; ``b`` is set one prior sd of
    ``Gu`` away from ``Gμ``, so both terms are ``O(sqrt(max Σ_ii / S))`` and 6 of those
    bounds the worst of ``n`` coordinates. The marginal variances, a sample covariance of
    ``S`` draws, have relative sd ``≈ sqrt(2 / S)``: 6 of those again.
    """
    with jax.enable_x64(True):
        n, num = 25, 40_000
        x = jnp.linspace(0.0, 1.0, n)
        cov = 0.3 * jnp.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 0.2**2) + 1e-3 * jnp.eye(n)
        mean = jnp.sin(3 * x)
        G = pc.conservation_matrix(x)
        b = G @ mean + jnp.sqrt(G @ cov @ G.T)[0]
        draws = pc.sample_gaussian(jax.random.key(1), mean, cov, num)
        out = condition_posterior(np.asarray(draws).reshape(4, num // 4, n), G, b)
        assert out.shape == (4, num // 4, n)
        flat = out.reshape(num, n)
        exact = pc.condition(mean, cov, G, b)
        np.testing.assert_allclose(np.asarray(G @ flat.mean(0)), np.asarray(b), atol=1e-10)
        np.testing.assert_allclose(flat @ np.asarray(G[0]), float(b[0]), atol=1e-10)
        sd = float(jnp.sqrt(jnp.max(jnp.diagonal(cov)) / num))
        np.testing.assert_allclose(flat.mean(0), np.asarray(exact.mean), atol=6 * sd)
        var = np.asarray(exact.variance())
        np.testing.assert_allclose(flat.var(0, ddof=1), var, rtol=6 * np.sqrt(2 / num))


def test_condition_posterior_on_a_tree(tiny_run):
    case, run = tiny_run
    base = run.tree["predictions"]["u_base"].values
    x = run.tree["predictions"]["x"].values
    with jax.enable_x64(True):
        G, b = pc.conservation_constraint(case.law(), x, case.t_star)
        out = condition_posterior(base, G, b, jitter=1e-8)
        np.testing.assert_allclose(out @ np.asarray(G[0]), float(b[0]), atol=1e-8)
        from_tree = condition_posterior(run.tree, G, b, var="u_base", jitter=1e-8)
        np.testing.assert_allclose(from_tree, out)
    with pytest.raises(ValueError, match="chain, draw, n"):
        condition_posterior(base[0], G, b)
