"""2-D Navier–Stokes: spectral solver vs Taylor–Green, residual through autodiff, velocity
observables in the data and the B-PINN, and the slow inverse-problem recovery."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ucsciml as uq
from ucsciml.pde import NavierStokes2D, Unknown, derivatives
from ucsciml.pde import navier_stokes as ns

NU = 0.05


def _taylor_green(points, mean_flow=(0.0, 0.0), nu=NU):
    """Exact (translated) Taylor–Green vortex: psi = sin(x - Ut) sin(y - Vt) e^{-2 nu t}."""
    x, y, t = (points[:, i] for i in range(3))
    big_x, big_y, decay = x - mean_flow[0] * t, y - mean_flow[1] * t, np.exp(-2 * nu * t)
    return {
        "psi": np.sin(big_x) * np.sin(big_y) * decay,
        "omega": 2 * np.sin(big_x) * np.sin(big_y) * decay,
        "u": mean_flow[0] + np.sin(big_x) * np.cos(big_y) * decay,
        "v": mean_flow[1] - np.cos(big_x) * np.sin(big_y) * decay,
    }


def _random_points(n, t_end, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0.0, 2 * np.pi, size=(n, 3))
    pts[:, 2] = rng.uniform(0.0, t_end, size=n)
    return pts


@pytest.mark.parametrize("mean_flow", [(0.0, 0.0), (0.7, -0.3)])
def test_solver_matches_taylor_green(mean_flow):
    x, y = ns.grid(32)
    sol = ns.solve_vorticity(
        np.fft.fft2(2 * np.sin(x) * np.sin(y)),
        1.0,
        NU,
        dt=0.01,
        num_steps=100,
        store_every=10,
        mean_flow=mean_flow,
    )
    pts = _random_points(400, 1.0)
    exact = _taylor_green(pts, mean_flow)
    # Without mean flow the advection term is zero and the integrating factor is exact: only
    # round-off (~1e-11) is left. With it, advection is active: RK4 error (dt = 0.01, rate
    # |U.k| < 1) plus cubic-Hermite interpolation between stores 0.1 apart,
    # (0.1)^4 / 384 * |U.k|^4 ~ 1e-7 in psi.
    tol = 1e-9 if mean_flow == (0.0, 0.0) else 1e-6
    for field in ("psi", "omega", "u", "v"):
        np.testing.assert_allclose(sol.evaluate(pts, field), exact[field], atol=2 * tol)


def test_solver_is_fourth_order_in_time_for_a_nonlinear_flow():
    omega0 = ns.initial_vorticity(32)

    def final(dt):
        steps = round(0.5 / dt)
        return ns.solve_vorticity(omega0, 1.0, NU, dt=dt, num_steps=steps, store_every=steps)

    reference = final(0.00625).omega_hat[-1]
    errors = [
        np.abs(np.fft.ifft2(final(dt).omega_hat[-1] - reference)).max() for dt in (0.05, 0.025)
    ]
    # RK4: halving dt divides the error by 2^4 = 16 (the reference's own error is 256x smaller
    # than the coarse one); 12..20 allows for higher-order terms.
    assert 12.0 < errors[0] / errors[1] < 20.0


def test_solver_converges_spectrally_in_space():
    pts = _random_points(200, 0.5, seed=1)
    pts[:, 2] = 0.5

    def velocity(n):
        sol = ns.solve_vorticity(ns.initial_vorticity(n), 1.0, NU, dt=0.01, num_steps=50)
        return sol.evaluate(pts, "u")

    fine = velocity(128)
    errors = [np.abs(velocity(n) - fine).max() for n in (32, 64)]
    # Spectral accuracy: doubling the grid from 32 to 64 gains ~750x here (a 2nd-order scheme
    # would gain 4x); 64^2, the grid NavierStokes2D uses, is accurate to ~3e-6 in velocity.
    assert errors[1] < 1e-5
    assert errors[0] / errors[1] > 100.0


def test_reference_velocity_is_divergence_free():
    pde = NavierStokes2D()
    pts = _random_points(100, 1.0, seed=2)
    h = 1e-4

    def shifted(axis, sign):
        p = pts.copy()
        p[:, axis] += sign * h
        return pde.solve_observables(p)

    u_x = (shifted(0, 1)["u"] - shifted(0, -1)["u"]) / (2 * h)
    v_y = (shifted(1, 1)["v"] - shifted(1, -1)["v"]) / (2 * h)
    # Central differences: O(h^2 |u_xxx|) ~ 1e-8 truncation plus 1e-12 / h round-off, while
    # u_x itself is O(1).
    assert np.abs(u_x).max() > 0.5
    np.testing.assert_allclose(u_x + v_y, 0.0, atol=1e-6)


def test_advection_is_active_so_lambda1_is_identifiable():
    """Least squares of omega_t on (-(u.grad)omega, lap omega) over the stored states: the
    regressors are far from collinear for the default flow, and advection vanishes for
    Taylor–Green (where lambda1 would be unidentifiable)."""
    n = 32
    kx, ky, k2 = ns._wavenumbers(n)
    sol = ns.solve_vorticity(
        ns.initial_vorticity(n), 1.0, NU, dt=0.01, num_steps=100, store_every=20
    )

    def regressors(omega_hat):
        adv = np.real(np.fft.ifft2(ns.vorticity_tendency(omega_hat, 1.0, 0.0)))
        return adv.ravel(), np.real(np.fft.ifft2(-k2 * omega_hat)).ravel()

    adv, lap = (np.concatenate(r) for r in zip(*map(regressors, sol.omega_hat), strict=True))
    target = np.real(np.fft.ifft2(sol.omega_hat_t)).ravel()
    design = np.stack([adv, lap], axis=1)
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(coef, [1.0, NU], rtol=1e-8)
    assert abs(np.corrcoef(adv, lap)[0, 1]) < 0.5
    assert np.std(adv) > np.std(NU * lap)
    x, y = ns.grid(n)
    tg_adv, _ = regressors(np.fft.fft2(2 * np.sin(x) * np.sin(y)))
    assert np.abs(tg_adv).max() < 1e-12


@pytest.mark.parametrize("lambda1, expect_zero", [(1.0, True), (1.3, False)])
def test_residual_of_exact_solution_through_autodiff(lambda1, expect_zero):
    pde = NavierStokes2D()
    flow = (0.7, -0.3)

    def psi(p):
        x, y, t = p[:, 0] - flow[0] * p[:, 2], p[:, 1] - flow[1] * p[:, 2], p[:, 2]
        return (
            jnp.sin(x) * jnp.sin(y) * jnp.exp(-2 * NU * t) + flow[0] * p[:, 1] - flow[1] * p[:, 0]
        )

    pts = jnp.asarray(_random_points(300, 2.0, seed=3), dtype=jnp.float32)
    derivs = jax.jit(lambda p: derivatives(psi, p, pde.derivatives, pde.coords))(pts)
    res = pde.residual(derivs, {"lambda1": lambda1, "lambda2": NU})
    np.testing.assert_allclose(derivs["u_y"], _taylor_green(np.asarray(pts), flow)["u"], atol=1e-5)
    # float32: each term is O(1), four nested jvps lose a few ulps each -> 1e-4 absolute.
    # A wrong lambda1 leaves 0.3 U.grad omega, O(0.1-1).
    if expect_zero:
        assert np.abs(res).max() < 1e-4
    else:
        assert np.abs(res).max() > 0.1


def test_high_order_autodiff_names():
    d = derivatives(
        lambda p: p[:, 0] ** 3 * p[:, 1] ** 2 * p[:, 2],
        jnp.array([[1.0, 2.0, 3.0]]),
        ["u_xxyy", "u_xxt", "u_yxx", "u_xxxx"],
        ("x", "y", "t"),
    )
    # d^4/dx^2dy^2 = 6x * 2 * t; d^3/dx^2dt = 6x y^2; u_yxx = u_xxy = 6x * 2y * t.
    assert float(d["u_xxyy"][0]) == pytest.approx(36.0)
    assert float(d["u_xxt"][0]) == pytest.approx(24.0)
    assert float(d["u_yxx"][0]) == pytest.approx(72.0)
    assert float(d["u_xxxx"][0]) == pytest.approx(0.0)


def _velocity_sensors(pde, n=60, noise=0.01, seed=0):
    pts = _random_points(n, pde.domain["t"][1], seed=seed)
    values = pde.solve_observables(pts)
    return uq.data.sensors(
        values=values, noise_std=noise, x=pts[:, 0], y=pts[:, 1], t=pts[:, 2]
    ), values


def test_velocity_sensor_data_round_trip(tmp_path):
    data, values = _velocity_sensors(NavierStokes2D())
    assert uq.data.observed_names(data) == ("u", "v")
    assert uq.data.observations(data).shape == (60, 2)
    loaded = uq.data.load(uq.data.save(data, tmp_path / "ns.nc"))
    assert uq.data.observed_names(loaded) == ("u", "v")
    np.testing.assert_array_equal(loaded["v"].values, values["v"])
    with pytest.raises(uq.data.DataError, match="save it as .nc"):
        uq.data.save(data, tmp_path / "ns.csv")


def test_bpinn_observes_velocity_of_the_stream_function():
    from ucsciml.models.bpinn import BayesianPINN

    pde = NavierStokes2D(lambda1=Unknown(dist.Normal(0.0, 2.0), truth=1.0))
    data, _ = _velocity_sensors(pde)
    model = BayesianPINN(pde=pde, width=6, depth=1, num_collocation=16)
    program = uq.compile(model, data)
    assert program.observed == ("u_obs", "v_obs")
    assert set(program.targets) == {"u_obs", "v_obs"}
    sites = ("u", "v", "residual", *program.network_sites)
    trace = jax.jit(lambda k: {s: t["value"] for s, t in program.trace(k).items() if s in sites})(
        jax.random.key(0)
    )
    sample = {k: trace[k] for k in program.network_sites}
    pts = program.inputs["points"]
    grad = jax.vmap(jax.grad(lambda p: program.field_fn(sample, p[None])[0]))(pts)
    np.testing.assert_allclose(trace["u"], grad[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trace["v"], -grad[:, 0], rtol=1e-5, atol=1e-6)
    assert trace["residual"].shape == (16,)
    only_u = uq.data.sensors(
        u=data["u"].values,
        noise_std=0.01,
        x=data["x"].values,
        y=data["y"].values,
        t=data["t"].values,
    )
    with pytest.raises(ValueError, match="observes"):
        uq.compile(model, only_u)


def test_bad_input():
    pde = NavierStokes2D()
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        pde.solve(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="t must lie"):
        pde.solve(np.array([[0.0, 0.0, 5.0]]))
    with pytest.raises(ValueError, match="lambda2"):
        NavierStokes2D(lambda2=-0.1)
    with pytest.raises(ValueError, match="positive"):
        NavierStokes2D(lambda2=Unknown(dist.Normal(0.05, 0.1)))
    with pytest.raises(ValueError, match="num_steps"):
        ns.solve_vorticity(ns.initial_vorticity(16), 1.0, NU, dt=0.01, num_steps=10, store_every=3)
    with pytest.raises(uq.data.DataError, match="either as u"):
        uq.data.sensors(u=np.ones(2), values={"v": np.ones(2)}, x=np.zeros(2))


# Reduced CPU configuration of case_studies/ns_inverse.toml (measured: 823 s for both members
# on 2 heavily shared cores, incl. a 2 min compile).
REDUCED = {
    "num_sensors": 500,
    "noise": 0.01,
    "model": {"width": 32, "depth": 3, "num_collocation": 500, "residual_std": 0.05},
    "ensemble": {"num_members": 2},
    "map": {"adam_steps": 3000, "learning_rate": 5e-3, "lbfgs_steps": 1000},
}


@pytest.mark.slow
def test_reduced_inverse_problem_recovers_lambdas():
    from ucsciml.inference import DeepEnsemble, MAPFit
    from ucsciml.models.bpinn import BayesianPINN

    pde = NavierStokes2D(
        lambda1=Unknown(dist.Normal(0.0, 2.0), truth=1.0),
        lambda2=Unknown(dist.LogNormal(-4.0, 1.5), truth=NU),
    )
    rng = np.random.default_rng(0)
    pts = _random_points(REDUCED["num_sensors"], 1.0, seed=0)
    clean = pde.solve_observables(pts)
    sd = REDUCED["noise"] * float(np.std(np.concatenate(list(clean.values()))))
    noisy = {k: v + sd * rng.normal(size=v.shape) for k, v in clean.items()}
    data = uq.data.sensors(values=noisy, noise_std=sd, x=pts[:, 0], y=pts[:, 1], t=pts[:, 2])
    program = uq.compile(BayesianPINN(pde=pde, **REDUCED["model"]), data)
    backend = DeepEnsemble(**REDUCED["ensemble"], map=MAPFit(**REDUCED["map"]))
    posterior = backend.run(program, jax.random.key(0))
    lambda1 = np.asarray(posterior.samples["lambda1"]).ravel()
    lambda2 = np.asarray(posterior.samples["lambda2"]).ravel()
    # Acceptance (issue 5): the ensemble's estimate within 10%. Measured: mean lambda1 0.980
    # (2.0%), lambda2 0.0535 (7.0%); members 0.6% / 3.3% and 4.6% / 9.4%. The members' spread
    # is model error of a small, briefly trained network, so members get 15%.
    np.testing.assert_allclose(lambda1.mean(), 1.0, rtol=0.1)
    np.testing.assert_allclose(lambda2.mean(), NU, rtol=0.1)
    np.testing.assert_allclose(lambda1, 1.0, rtol=0.15)
    np.testing.assert_allclose(lambda2, NU, rtol=0.15)
    test_pts = _random_points(1000, 1.0, seed=5)
    truth = pde.solve_observables(test_pts)
    pred = posterior.predict(test_pts, jax.random.key(1), sites=("u", "v"))
    mean = {k: np.asarray(pred[k].values).mean(axis=(0, 1)) for k in ("u", "v")}
    error = np.sqrt(sum(np.sum((mean[k] - truth[k]) ** 2) for k in mean))
    # Measured 2.3% (members 2.9% and 2.3%); 5% leaves room for the network's model error.
    assert error / np.sqrt(sum(np.sum(truth[k] ** 2) for k in truth)) < 0.05
