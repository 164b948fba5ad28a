import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.io

import ucsciml as uq
from ucsciml.pde import NU_RAISSI, Burgers, Heat, Unknown, burgers_cole_hopf, derivatives


def test_cole_hopf_matches_raissi_reference(shared_data):
    ref = scipy.io.loadmat(shared_data / "raissi_pinns" / "burgers_shock.mat")
    x, t, usol = ref["x"].ravel(), ref["t"].ravel(), ref["usol"]
    X, T = np.meshgrid(x, t, indexing="ij")
    u = burgers_cole_hopf(X, T, 1.0, NU_RAISSI)
    # Issue target: max abs error below 1e-3 on the reference grid (we reach ~1e-10).
    assert np.abs(u - usol).max() < 1e-3


def _fd_residual(h, x=0.45, t=0.3, nu=NU_RAISSI):
    def u(xx, tt):
        return burgers_cole_hopf(np.array([xx]), np.array([tt]), 1.0, nu)[0]

    u0 = u(x, t)
    u_t = (u(x, t + h) - u(x, t - h)) / (2 * h)
    u_x = (u(x + h, t) - u(x - h, t)) / (2 * h)
    u_xx = (u(x + h, t) - 2 * u0 + u(x - h, t)) / h**2
    return abs(u_t + u0 * u_x - nu * u_xx)


def test_cole_hopf_satisfies_burgers_at_second_order():
    # Central differences have O(h^2) truncation error, so the residual of the exact
    # solution must fall ~4x per halving of h (tolerance 3-5x for higher-order terms).
    r = [_fd_residual(h) for h in (0.02, 0.01, 0.005)]
    assert r[2] < 1e-3
    for coarse, fine in zip(r, r[1:], strict=False):
        assert 3.0 < coarse / fine < 5.0


def test_cole_hopf_boundary_and_initial_conditions():
    x = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(
        burgers_cole_hopf(x, np.zeros_like(x)), -np.sin(np.pi * x), atol=1e-12
    )
    t = np.linspace(0.1, 1.0, 5)
    np.testing.assert_allclose(burgers_cole_hopf(np.ones_like(t), t), 0.0, atol=1e-10)
    np.testing.assert_allclose(burgers_cole_hopf(-np.ones_like(t), t), 0.0, atol=1e-10)


def test_forward_mode_derivatives_are_exact():
    pts = jnp.array([[0.3, 0.7], [-0.2, 0.1]])

    def f(p):
        return jnp.sin(p[:, 0]) * p[:, 1] ** 2

    d = derivatives(f, pts, ["u", "u_x", "u_t", "u_xx", "u_xt", "u_tt"], ("x", "t"))
    x, t = pts[:, 0], pts[:, 1]
    np.testing.assert_allclose(d["u_x"], jnp.cos(x) * t**2, rtol=1e-6)
    np.testing.assert_allclose(d["u_t"], 2 * jnp.sin(x) * t, rtol=1e-6)
    np.testing.assert_allclose(d["u_xx"], -jnp.sin(x) * t**2, rtol=1e-6)
    np.testing.assert_allclose(d["u_xt"], 2 * jnp.cos(x) * t, rtol=1e-6)
    np.testing.assert_allclose(d["u_tt"], 2 * jnp.sin(x), rtol=1e-6)


def test_heat_exact_solution_has_zero_residual():
    pde = Heat(kappa=0.2)

    def u(p):
        return -jnp.exp(-0.2 * jnp.pi**2 * p[:, 1]) * jnp.sin(jnp.pi * p[:, 0])

    pts = jnp.stack([jnp.linspace(-0.9, 0.9, 7), jnp.linspace(0.0, 1.0, 7)], axis=-1)
    res = pde.residual(derivatives(u, pts, pde.derivatives, pde.coords), {"kappa": 0.2})
    np.testing.assert_allclose(res, 0.0, atol=1e-5)
    np.testing.assert_allclose(pde.solve(np.asarray(pts)), np.asarray(u(pts)), rtol=1e-6)


def test_burgers_residual_matches_definition():
    d = {
        "u": jnp.array([2.0]),
        "u_t": jnp.array([1.0]),
        "u_x": jnp.array([3.0]),
        "u_xx": jnp.array([4.0]),
    }
    res = Burgers().residual(d, {"lambda1": 0.5, "lambda2": 0.25})
    np.testing.assert_allclose(res, 1.0 + 0.5 * 2.0 * 3.0 - 0.25 * 4.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lambda2": -0.1}, ValueError, "lambda2 must be > 0"),
        ({"lambda2": 0.0}, ValueError, "lambda2 must be > 0"),
        ({"lambda1": float("nan")}, ValueError, "finite"),
        ({"lambda1": "1.0"}, TypeError, "number or Unknown"),
        ({"lambda2": Unknown(dist.Normal(0.0, 1.0))}, ValueError, "positive"),
    ],
)
def test_bad_pde_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        Burgers(**kwargs)


def test_unknown_validation_and_truth():
    with pytest.raises(TypeError, match="numpyro Distribution"):
        Unknown(1.0)
    with pytest.raises(ValueError, match="scalar"):
        Unknown(dist.Normal(jnp.zeros(2), 1.0))
    pde = Burgers(lambda2=Unknown(dist.LogNormal(-5.0, 1.0), truth=0.003))
    assert set(pde.unknowns()) == {"lambda2"}
    assert pde.true_parameters() == {"lambda1": 1.0, "lambda2": 0.003}
    with pytest.raises(ValueError, match="without truth"):
        Burgers(lambda2=Unknown(dist.LogNormal(-5.0, 1.0))).true_parameters()


def test_bad_derivative_names():
    with pytest.raises(ValueError, match="coordinate"):
        uq.pde.derivative_indices("u_xz", ("x", "t"))
    with pytest.raises(ValueError, match="look like"):
        uq.pde.derivative_indices("v_x", ("x", "t"))


def test_advection_reference_is_the_travelling_wave_at_the_true_speed():
    """``Advection`` without a solution: ``sin(x - beta t)`` at beta's truth, an exact zero of
    the residual with zero forcing for every beta; a given solution manufactures its forcing;
    the case-file name builds it; an Unknown speed without truth cannot make synthetic data."""
    from ucsciml import config
    from ucsciml.pde import Advection
    from ucsciml.pde.manufactured import sin_solution

    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(0, 2 * np.pi, 50), rng.uniform(0, 1, 50)], axis=1)
    pde = Advection(beta=Unknown(dist.LogNormal(0.0, 1.0), truth=1.5))
    np.testing.assert_allclose(pde.solve(pts), np.sin(pts[:, 0] - 1.5 * pts[:, 1]), rtol=1e-15)
    np.testing.assert_allclose(pde.solve(pts, {"beta": 3.0}), np.sin(pts[:, 0] - 3 * pts[:, 1]))
    assert np.all(np.asarray(pde.source(pts)) == 0.0)
    d = derivatives(
        lambda p: jnp.sin(p[:, 0] - 1.5 * p[:, 1]), jnp.asarray(pts), ("u_x", "u_t"), ("x", "t")
    )
    np.testing.assert_allclose(
        pde.residual({**d, "f": pde.source(pts)}, {"beta": 1.5}), 0.0, atol=1e-6
    )
    # A solver that passes no forcing (the B-PINN) gets the same residual.
    np.testing.assert_allclose(pde.residual(d, {"beta": 1.5}), 0.0, atol=1e-6)
    # A manufactured solution keeps the manufactured forcing: L[sin x] = beta cos x.
    other = Advection(beta=2.0, solution=sin_solution(1.0))
    np.testing.assert_allclose(other.source(pts), 2.0 * np.cos(pts[:, 0]), rtol=1e-5, atol=1e-6)
    built = config.build({"name": "advection", "beta": 1.5}, "pde")
    assert isinstance(built, Advection) and built.beta == 1.5
    with pytest.raises(ValueError, match="truth"):
        Advection(beta=Unknown(dist.LogNormal(0.0, 1.0))).solve(pts)
