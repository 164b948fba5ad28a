"""RGNP: reference solvers, residuals, GICNet invariances, training/prediction smoke, errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev

from ucsciml.models import RGNP
from ucsciml.models.rgnp import GICNet
from ucsciml.models.rgnp._gicnet import bounded_gaussian  # a family test (see test_layout)
from ucsciml.pde import NonlinearPoisson1D, ParametricBurgers

POISSON = NonlinearPoisson1D()
BURGERS = ParametricBurgers()


def tiny(problem=POISSON, **overrides):
    """A model small enough to compile and train in seconds."""
    settings = dict(
        width=16,
        depth=2,
        num_frequencies=4,
        num_points=8,
        grid_shape=(8,) * len(problem.coords),
        channels=4,
        cnn_channels=4,
        cnn_layers=1,
        branch_size=8,
        trunk_size=8,
        head_width=16,
        head_depth=1,
    )
    settings.update(overrides)
    return RGNP(problem, **settings)


@pytest.fixture(scope="module")
def trained():
    model = tiny()
    params, history = model.fit(
        jax.random.key(0), num_steps=20, batch_size=4, chunk_size=10, progress_bar=False
    )
    return model, params, history


def manufactured(z):
    """``u* = sin(pi x)`` and its source ``f = -(kappa(u*, x) u*')'`` in closed form."""

    def source(x):
        u, ux, uxx = np.sin(np.pi * x), np.pi * np.cos(np.pi * x), -(np.pi**2) * np.sin(np.pi * x)
        s, sx = chebyshev.chebval(x, z), chebyshev.chebval(x, chebyshev.chebder(z))
        a = u * s
        kappa, kappa_x = np.logaddexp(0.0, a) + 0.1, (ux * s + u * sx) / (1.0 + np.exp(-a))
        return -(kappa_x * ux + kappa * uxx)

    return source


# -- reference solvers -------------------------------------------------------------------------


def test_poisson_solver_is_second_order():
    z = np.array([0.7, -0.4, 0.9, -0.8, 0.3])
    errors = []
    for n in (41, 81, 161):
        x, u = POISSON.solve(z, np.array([1.0]), num_points=n, forcing=manufactured(z))
        errors.append(np.abs(u - np.sin(np.pi * x)).max())
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # Flux-form central differences: O(h^2); measured rates 1.999-2.000.
    np.testing.assert_allclose(rates, 2.0, atol=0.05)


def test_poisson_solver_constant_conductivity_is_exact():
    # z = 0: kappa = log 2 + 0.1, u = w (1 - x^2) / (2 kappa), a quadratic FD reproduces exactly.
    x, u = POISSON.solve(np.zeros(5), np.array([1.7]), num_points=51)
    np.testing.assert_allclose(u, 1.7 * (1 - x**2) / (2 * (np.log(2.0) + 0.1)), atol=1e-10)


def test_burgers_method_of_lines_matches_cole_hopf_and_converges():
    z, w = np.array([0.02, 0.8]), np.array([1.5])
    errors = []
    for num_x in (129, 257):
        x, t, u = BURGERS.solve(z, w, num_x=num_x, num_t=11)
        exact = BURGERS.cole_hopf(z, w, x, t[1:])
        errors.append(np.abs(u[1:] - exact).max())
    # Second-order central differences: error falls ~4x per halving of h (measured 3.9x);
    # at 257 points the error is ~1e-4 of an O(1) field.
    assert errors[1] < 2e-3 * np.abs(u).max()
    assert 3.0 < errors[0] / errors[1] < 5.0


def test_solver_inputs_are_checked():
    with pytest.raises(ValueError, match="shape"):
        POISSON.solve(np.zeros(4), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        POISSON.solve(np.full(5, np.nan), np.array([1.0]))
    with pytest.raises(ValueError, match="shape"):
        BURGERS.solve(np.array([0.05]), np.array([1.0]))


# -- residuals by autodiff ---------------------------------------------------------------------


def test_poisson_residual_matches_closed_form():
    z = jnp.array([0.7, -0.4, 0.9, -0.8, 0.3])
    x = np.linspace(-0.9, 0.9, 7)
    r = jax.vmap(
        lambda p: POISSON.residual(lambda q: jnp.sin(jnp.pi * q[0]), p, z, jnp.array([1.2]))
    )(jnp.asarray(x)[:, None])
    # (kappa u')' + w = -f + w for the manufactured pair; float32 autodiff vs float64 formula.
    np.testing.assert_allclose(r, 1.2 - manufactured(np.asarray(z))(x), rtol=1e-4, atol=1e-4)


def test_burgers_residual_vanishes_on_exact_solution():
    # A travelling-wave-free exact check: u = x / (1 + t) solves u_t + u u_x = nu u_xx (z1 = 1).
    z = jnp.array([0.05, 1.0])
    points = jnp.array([[0.3, 0.2], [0.7, 0.9]])
    r = jax.vmap(lambda p: BURGERS.residual(lambda q: q[0] / (1.0 + q[1]), p, z, jnp.ones(1)))(
        points
    )
    np.testing.assert_allclose(r, 0.0, atol=1e-6)


def test_ansatz_enforces_conditions(trained):
    model, params, _ = trained
    z, w = jnp.full(5, 0.3), jnp.array([1.5])
    pred = model.predict(params, z, w, jnp.array([[-1.0], [1.0]]), jax.random.key(0), 3)
    np.testing.assert_allclose(pred["u"], 0.0, atol=1e-6)
    np.testing.assert_allclose(pred["u_sd"], 0.0, atol=1e-6)


# -- the Gaussian heads and GICNet -------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, 2])
def test_bounded_gaussian_marginals_in_bounds(rank):
    raw = 20.0 * jax.random.normal(jax.random.key(0), (200, 3 + 3 + (3 + 3 * rank if rank else 0)))
    _, diag, factor = jax.jit(jax.vmap(lambda r: bounded_gaussian(r, 3, rank, 1e-3)))(raw)
    marginal = diag + jnp.sum(factor**2, axis=-1)
    assert jnp.all(diag >= 1e-3 - 1e-7) and jnp.all(marginal <= 1.0 + 1e-6)
    assert float(marginal.min()) < 0.01 and float(marginal.max()) > 0.99  # bounds are reached


def test_gicnet_is_permutation_invariant_and_masks_padding():
    net = GICNet(
        1,
        5,
        1,
        grid_shape=(8,),
        channels=4,
        cnn_channels=4,
        cnn_layers=1,
        head_width=16,
        head_depth=1,
        branch_size=8,
        trunk_size=8,
        key=jax.random.key(0),
    )
    points = jax.random.uniform(jax.random.key(1), (40, 1), minval=-1, maxval=1)
    values = jnp.sin(3 * points[:, 0])
    w = jnp.array([0.2])
    call = eqx.filter_jit(lambda net, *args: net(*args))
    mean, var, _ = call(net, points, values, w)
    order = jax.random.permutation(jax.random.key(2), 40)
    mean_p, var_p, _ = call(net, points[order], values[order], w)
    # Sums over points commute up to float32 rounding.
    np.testing.assert_allclose(mean_p, mean, atol=1e-5)
    np.testing.assert_allclose(var_p, var, atol=1e-6)
    padded = (
        jnp.concatenate([points, jnp.zeros((5, 1))]),
        jnp.concatenate([values, 9 * jnp.ones(5)]),
    )
    mask = jnp.arange(45) < 40
    mean_m, _, _ = call(net, *padded, w, mask)
    np.testing.assert_allclose(mean_m, mean, atol=1e-5)


def test_gicnet_rejects_grid_too_small():
    with pytest.raises(ValueError, match="latent grid"):
        GICNet(1, 5, 1, grid_shape=(4,), cnn_layers=3, kernel_size=3, key=jax.random.key(0))


# -- training and prediction smoke -------------------------------------------------------------


def test_fit_predict_infer_smoke(trained):
    model, params, history = trained
    assert history.shape == (20,) and np.isfinite(history).all()
    points = jnp.linspace(-1, 1, 11)[:, None]
    z, w = jnp.full(5, 0.1), jnp.array([1.4])
    pred = model.predict(params, z, w, points, jax.random.key(2), num_samples=7)
    assert pred["u"].dims == ("chain", "draw", "point") and pred["u"].shape == (1, 7, 11)
    assert np.isfinite(pred["u_sd"]).all() and float(pred["u_sd"][0]) < 1e-6
    again = model.predict(params, z, w, points, jax.random.key(2), num_samples=7)
    np.testing.assert_array_equal(pred["u"], again["u"])
    post = model.infer(params, points, pred["u_mean"].values, w, jax.random.key(3), num_samples=5)
    assert post["z"].shape == (1, 5, 5) and (post["z_sd"] > 0).all()
    metrics = model.evaluate(params, jax.random.key(4), num_tests=2)
    assert set(metrics) == {"nse_u", "coverage_u", "nse_z", "coverage_z"}
    assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.slow
def test_low_rank_elbo_and_burgers_elbo_are_finite():
    elbo = eqx.filter_jit(lambda model, params: model.elbo(params, jax.random.key(1), 2))
    low_rank = tiny(rank=2, inverse_rank=1, learn_residual_sd=True)
    assert np.isfinite(elbo(low_rank, low_rank.init(key=jax.random.key(0))))
    burgers = tiny(BURGERS, grid_shape=(6, 6))
    assert np.isfinite(elbo(burgers, burgers.init(key=jax.random.key(0))))


def test_refinement_program_likelihood_is_the_gaussian_marginal(trained):
    model, params, _ = trained
    points = jnp.linspace(-0.8, 0.8, 6)[:, None]
    w, y = jnp.array([1.3]), jnp.linspace(0.1, 0.3, 6)
    program = model.refinement_program(params, points, y, w, noise_sd=0.05)
    assert program.latent_sites() == ("z",) and program.observed == ("u_obs",)
    trace = program.trace(jax.random.key(0))
    z = trace["z"]["value"]
    assert jnp.all(jnp.abs(z) < 1.0)
    mean, var, _ = eqx.filter_jit(model.field)(params, z, w, points)
    sd = np.sqrt(np.asarray(var) + 0.05**2)
    expected = np.sum(-0.5 * ((y - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(trace["u_obs"]["fn"].log_prob(y), expected, rtol=1e-5)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_raise(trained):
    model, params, _ = trained
    points = jnp.linspace(-1, 1, 5)[:, None]
    with pytest.raises(ValueError, match="z must have shape"):
        model.predict(params, jnp.zeros(3), jnp.ones(1), points, jax.random.key(0))
    with pytest.raises(ValueError, match="points must have shape"):
        model.predict(params, jnp.zeros(5), jnp.ones(1), jnp.zeros(5), jax.random.key(0))
    with pytest.raises(ValueError, match="NaN"):
        model.infer(
            params, points, jnp.array([0.0, jnp.nan, 0, 0, 0]), jnp.ones(1), jax.random.key(0)
        )
    with pytest.raises(ValueError, match="values must have shape"):
        model.infer(params, points, jnp.zeros(4), jnp.ones(1), jax.random.key(0))
    with pytest.raises(ValueError, match="noise_sd"):
        model.refinement_program(params, points, jnp.zeros(5), jnp.ones(1), noise_sd=0.0)
    with pytest.raises(ValueError, match="width"):
        RGNP(POISSON, width=0)
    with pytest.raises(ValueError, match="variance_floor"):
        RGNP(POISSON, variance_floor=1.5)
    with pytest.raises(TypeError, match="parametric PDE family"):
        RGNP(object())
    with pytest.raises(ValueError, match="num_steps"):
        model.fit(jax.random.key(0), num_steps=0)


@pytest.mark.slow
def test_nuts_refinement_runs_on_a_tiny_model(trained):
    from ucsciml.inference.nuts import NUTS

    model, params, _ = trained
    z, w = np.array([0.5, -0.3, 0.2, 0.1, -0.4]), np.array([1.5])
    points, u = POISSON.reference(z, w)
    program = model.refinement_program(params, points[10:-1:20], u[10:-1:20], w, noise_sd=0.01)
    posterior = NUTS(num_warmup=50, num_samples=50, num_chains=2, progress_bar=False).run(
        program, jax.random.key(0)
    )
    draws = posterior.samples["z"]
    assert draws.shape == (2, 50, 5) and np.all(np.abs(draws) <= 1.0)
