"""Tests for the spectral-mixture GP PDE solver (GP-HM): kernels, Kronecker algebra, solves."""

from __future__ import annotations

import gpjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsciml.models.spectral_gp import SpectralGP, _gp_solve, _kron
from ucsciml.models.spectral_gp import _spectral_kernels as sk
from ucsciml.pde.allen_cahn import AllenCahn1D
from ucsciml.pde.manufactured import sin_solution, sum_sin_cos_solution
from ucsciml.pde.poisson import Poisson1D, Poisson2D


@pytest.fixture(autouse=True)
def x64():
    # The grid covariances are near-singular by design (narrow spectral peaks): float64 only.
    with jax.enable_x64(True):
        yield


def _params(kind, q=3):
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    mu = jax.random.uniform(k2, (q,), minval=0.5, maxval=3.0) if kind in sk.MIXTURES else None
    return sk.KernelParams(
        eta=jax.random.normal(k1, (q,)) * 0.3,
        mu=mu if mu is not None else jnp.zeros(q),
        log_ell=jnp.log(jax.random.uniform(k3, (q,), minval=0.3, maxval=1.5)),
    )


@pytest.mark.parametrize("kind", sk.KINDS)
@pytest.mark.parametrize("order", [1, 2])
def test_kernel_derivatives_match_finite_differences(kind, order):
    params = _params(kind)
    # Lags away from 0 (|r| kink of the Matern envelope) and r = 0 itself, where the
    # closed form must equal the two-sided limit.
    r = jnp.concatenate([jnp.linspace(-2.0, -0.05, 20), jnp.zeros(1), jnp.linspace(0.05, 2.0, 20)])
    h = 1e-5
    lower = sk.kernel(kind, params, r + h, order - 1)
    upper = sk.kernel(kind, params, r - h, order - 1)
    fd = (lower - upper) / (2 * h)
    exact = sk.kernel(kind, params, r, order)
    # Central differences: O(h^2 k''') ~ 1e-9 truncation plus 1e-16/h round-off ~ 1e-11,
    # relative to kernel values of order 1-100; 1e-6 leaves a wide margin and would still
    # catch any wrong term (those are O(1)).
    np.testing.assert_allclose(exact, fd, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(exact))))


@pytest.mark.parametrize("kind", sk.KINDS)
def test_joint_orders_equal_one_order_at_a_time_on_every_layout(kind):
    # One pass for orders (0, 1, 2) must give each order exactly as its own pass does, and
    # the lattice and Toeplitz gathers the dense gram of every pair.
    params = _params(kind)
    grid = np.linspace(0.0, 2.0, 9)
    mids = 0.5 * (grid[1:] + grid[:-1])
    joint = sk.lattice_grams(kind, params, mids, grid, (2, 0, 1))
    toeplitz = sk.toeplitz_grams(kind, params, grid.size, grid[1] - grid[0], (0, 1, 2))
    for order in (0, 1, 2):
        dense = sk.gram(kind, params, jnp.asarray(mids), jnp.asarray(grid), order)
        np.testing.assert_allclose(joint[order], dense, rtol=1e-12, atol=1e-12)
        square = sk.gram(kind, params, jnp.asarray(grid), jnp.asarray(grid), order)
        np.testing.assert_allclose(toeplitz[order], square, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
        sk.kernels(kind, params, jnp.zeros(2), (0, 3))


@pytest.mark.parametrize(
    ("kind", "oracle"), [("matern", gpjax.kernels.Matern52), ("se", gpjax.kernels.RBF)]
)
def test_baseline_kernels_match_gpjax(kind, oracle):
    params = sk.KernelParams(jnp.log(jnp.array([1.7])), jnp.zeros(1), jnp.log(jnp.array([0.4])))
    x = jnp.linspace(0.0, 2.0, 7)
    ours = sk.gram(kind, params, x, x)
    theirs = oracle(lengthscale=0.4, variance=1.7).gram(x[:, None]).to_dense()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_kron_logpdf_and_derivatives_match_dense():
    params = [_params("student_t"), _params("gaussian", q=2)]
    axes = [jnp.linspace(0.0, 1.0, 5), jnp.linspace(0.0, 2.0, 4)]
    covs = [
        sk.gram(k, p, x, x) + 1e-6 * jnp.eye(x.size)
        for k, p, x in zip(["student_t", "gaussian"], params, axes, strict=True)
    ]
    chols = [jnp.linalg.cholesky(c) for c in covs]
    u = jax.random.normal(jax.random.key(1), (5, 4))
    dense_cov = _kron.kron_dense(covs)
    sign, logdet = jnp.linalg.slogdet(dense_cov)
    vec = u.ravel()
    dense = -0.5 * vec @ jnp.linalg.solve(dense_cov, vec) - 0.5 * logdet - 10 * jnp.log(2 * jnp.pi)
    # Same quantity by two exact routes; only float64 round-off separates them.
    np.testing.assert_allclose(_kron.kron_logpdf(chols, u), dense, rtol=1e-9)
    ops = [
        {
            2: _kron.derivative_operator(
                sk.gram("student_t", params[0], axes[0], axes[0], 2), chols[0]
            )
        },
        {
            1: _kron.derivative_operator(
                sk.gram("gaussian", params[1], axes[1], axes[1], 1), chols[1]
            )
        },
    ]
    mixed = _kron.grid_derivative(ops, (2, 1), u)
    dense_op = jnp.kron(ops[0][2], ops[1][1])
    np.testing.assert_allclose(mixed.ravel(), dense_op @ vec, rtol=1e-9, atol=1e-9)


def _rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_low_frequency_poisson_solve_and_band():
    pde = Poisson1D(solution=sin_solution(20.0))
    model = SpectralGP(pde=pde, grid=(100,), num_components=30)
    result = _gp_solve.fit(model, num_steps=100, learning_rate=1e-2)
    xs = np.linspace(0.0, 2 * np.pi, 501)
    mean, sd = _gp_solve.predict(model, result, (xs,))
    truth = pde.solve(xs[:, None])
    # Acceptance threshold of the issue (measured 5.6e-5 after 200 steps); a kernel that
    # missed the frequency gives O(0.1-1).
    assert _rel_l2(mean, truth) < 1e-2
    # The learned spectral peak sits at the solution's frequency, 20 / 2 pi cycles per unit.
    weights = np.exp(result.sites["eta_x"])
    assert abs(result.sites["mu_x"][np.argmax(weights)] / (20 / (2 * np.pi)) - 1) < 0.01
    assert np.all(np.isfinite(sd)) and np.all(sd > 0)
    assert np.mean(np.abs(mean - truth) <= 1.96 * sd) >= 0.9


@pytest.mark.slow
def test_joint_adam_runs_on_nonlinear_pde():
    model = SpectralGP(pde=AllenCahn1D(solution=sin_solution(2.0)), grid=(24,), num_components=4)
    result = _gp_solve.fit(model, num_steps=5, method="joint")
    assert result.losses.shape == (5,) and bool(jnp.all(jnp.isfinite(result.losses)))
    with pytest.raises(ValueError, match="nonlinear"):
        _gp_solve.fit(model, num_steps=5, method="alternating")


def test_cg_solve_matches_dense_on_small_2d_grid():
    model = SpectralGP(pde=Poisson2D(), grid=(12, 10), num_components=3, max_frequency=0.3)
    program = model.compile()
    theta = {k: v for k, v in model.init_params().items() if k != "u_grid"}

    @jax.jit
    def both(theta):
        system = _gp_solve.linear_system(model, theta, program.inputs, program.targets)
        z_dense, _ = _gp_solve.solve_dense(system, model.grid)
        zero = jnp.zeros(model.grid)
        z_cg, relres = _gp_solve.solve_cg_checked(system, model.grid, system.y, zero, 1e-12, 5000)
        return z_dense, z_cg, relres

    z_dense, z_cg, relres = both(theta)
    # The reported residual is the real one: converged here, so the warning path stays quiet.
    assert float(relres) <= 1e-10
    np.testing.assert_allclose(
        z_cg, z_dense, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(z_dense)))
    )


def test_fit_warns_when_cg_stops_at_its_cap(monkeypatch):
    model = SpectralGP(pde=Poisson2D(), grid=(12, 10), num_components=3, max_frequency=0.3)
    # Force the CG path on this small grid; two iterations cannot solve a 120-unknown system.
    monkeypatch.setattr(_gp_solve, "DENSE_LIMIT", 10)
    with pytest.warns(RuntimeWarning, match="conjugate gradients stopped"):
        capped = _gp_solve.fit(model, num_steps=1, cg_maxiter=1, cg_final_maxiter=2)
    assert float(capped.cg_relres) > 1e-8


def test_coarse_grid_warns_with_points_per_period_limit():
    with pytest.warns(UserWarning, match="~3 points per period"):
        SpectralGP(pde=Poisson1D(), grid=(100,), max_frequency=100 / (2 * np.pi))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"grid": (1, 2)}, ValueError, "grid"),
        ({"kernel": "rbf"}, ValueError, "kernel"),
        ({"num_components": 0}, ValueError, "num_components"),
        ({"jitter": 0.0}, ValueError, "jitter"),
    ],
)
def test_bad_configuration_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        SpectralGP(pde=Poisson1D(solution=sin_solution(1.0)), **{"grid": (50,), **kwargs})


def test_program_traces_with_documented_sites():
    model = SpectralGP(pde=Poisson1D(solution=sin_solution(1.0)), grid=(20,), num_components=2)
    program = model.compile()
    assert set(program.latent_sites()) == {
        "eta_x",
        "mu_x",
        "log_ell_x",
        "log_tau1",
        "log_tau2",
        "u_grid",
    }
    assert program.observed == ("boundary",)


@pytest.mark.slow
def test_high_frequency_poisson_acceptance():
    """Fang et al.'s 1-D headline case: u = sin(100 x) on [0, 2 pi], N = 400 (~6 CPU-min)."""
    pde = Poisson1D(solution=sin_solution(100.0))
    xs = np.linspace(0.0, 2 * np.pi, 2001)
    truth = pde.solve(xs[:, None])
    model = SpectralGP(pde=pde, grid=(400,))
    result = _gp_solve.fit(model, num_steps=600, learning_rate=1e-2)
    mean, sd = _gp_solve.predict(model, result, (xs,))
    error = _rel_l2(mean, truth)
    # Issue acceptance: 1e-3 (measured 6.7e-7 off-grid after 600 steps).
    assert error < 1e-3
    weights = np.exp(result.sites["eta_x"])
    assert abs(result.sites["mu_x"][np.argmax(weights)] / (100 / (2 * np.pi)) - 1) < 0.01
    assert np.mean(np.abs(mean - truth) <= 1.96 * sd) >= 0.9
    baseline = SpectralGP(pde=pde, grid=(400,), kernel="se")
    base_result = _gp_solve.fit(baseline, num_steps=600, learning_rate=1e-2)
    base_mean, _ = _gp_solve.predict(baseline, base_result, (xs,))
    assert _rel_l2(base_mean, truth) > 10 * error


@pytest.mark.slow
def test_two_dimensional_poisson_acceptance():
    """u = sin(6x)cos(20x) + sin(6y)cos(20y) on [0, 2 pi]^2, N = 200^2, CG path (~10 CPU-min)."""
    pde = Poisson2D(solution=sum_sin_cos_solution(6.0, 20.0))
    model = SpectralGP(pde=pde, grid=(200, 200))
    # The final solve must converge (fit warns otherwise, an error here): 1500 iterations
    # stopped at relative residual 3e-5 and 5000 at 2.0e-6, so it gets up to 20000 to reach
    # 1e-6 (the cap only bounds the loop; measured: the whole test takes 148 s either way).
    result = _gp_solve.fit(
        model,
        num_steps=300,
        learning_rate=1e-1,
        cg_maxiter=150,
        cg_tol=1e-6,
        cg_final_maxiter=20000,
    )
    axes = tuple(np.linspace(0.0, 2 * np.pi, 399) for _ in range(2))
    mesh = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=-1)
    mean, _ = _gp_solve.predict(
        model, result, axes, key=jax.random.key(0), num_samples=2, cg_maxiter=1000, cg_tol=1e-3
    )
    # Issue acceptance: 1e-2 off-grid (measured 6.3e-3 in the case study with 8 band draws;
    # the mean does not depend on the draws). The earlier 200-step, lr 1e-2 setting stalled
    # at 6.4e-2: with the true frequencies fixed the exact solve reaches 1.4e-3, so the
    # limit was the kernel's learning speed, not the solver.
    assert _rel_l2(mean, pde.solve(mesh).reshape(mean.shape)) < 1e-2
