import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ucsciml as uq
from ucsciml import models


def test_from_numpyro_discovers_sites(regression):
    program, *_ = regression
    assert program.observed == ("y",)
    assert program.predict_sites == ("y",)
    assert program.latent_sites() == ("beta",)
    assert program.physical_sites() == ("beta",)
    np.testing.assert_array_equal(program.query(np.ones((2, 3))), np.ones((2, 3)))


def test_from_numpyro_rejects_unknown_site_names(regression):
    program, *_ = regression
    with pytest.raises(ValueError, match="not observed sites"):
        uq.Program.from_numpyro(program.fn, program.inputs, program.targets, observed=("z",))
    with pytest.raises(ValueError, match="never creates"):
        uq.Program.from_numpyro(program.fn, program.inputs, program.targets, network_sites=("w",))


def test_query_needs_a_function_for_structured_inputs():
    def model(inputs, targets=None):
        a = numpyro.sample("a", dist.Normal())
        numpyro.sample("y", dist.Normal(a * inputs["x"], 1.0), obs=targets)

    program = uq.Program.from_numpyro(model, {"x": jnp.ones(2)}, jnp.zeros(2))
    with pytest.raises(ValueError, match="no query function"):
        program.query(np.ones((2, 1)))


def test_compile_rejects_non_models():
    with pytest.raises(TypeError, match="not a model definition"):
        uq.compile(object(), None)


def _burgers_data(n=30):
    pde = uq.pde.Burgers()
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-1, 1, n), rng.uniform(0, 1, n)], axis=-1)
    return uq.data.sensors(x=pts[:, 0], t=pts[:, 1], u=pde.solve(pts), noise_std=0.01)


def test_bpinn_compiles_with_dims_for_every_site():
    pde = uq.pde.Burgers(lambda1=uq.Unknown(dist.Normal(1.0, 0.5)))
    program = uq.compile(
        models.BayesianPINN(pde=pde, width=8, depth=2, num_collocation=50), _burgers_data()
    )
    trace = program.trace(jax.random.key(0))
    sites = [k for k, s in trace.items() if s["type"] in ("sample", "deterministic")]
    missing = [s for s in sites if s not in program.dims and trace[s]["value"].ndim > 0]
    assert not missing, f"sites without dims: {missing}"
    assert program.physical_sites() == ("lambda1",)
    assert set(program.network_sites) == {"w0", "b0", "w1", "b1", "w2", "b2"}
    assert program.inputs["collocation"].shape == (50, 2)
    assert program.query(np.zeros((4, 2)))["collocation"] is None


def test_bpinn_bad_input():
    pde = uq.pde.Burgers()
    with pytest.raises(ValueError, match="width"):
        models.BayesianPINN(pde=pde, width=0)
    with pytest.raises(ValueError, match="activation"):
        models.BayesianPINN(pde=pde, activation="relu6")
    with pytest.raises(ValueError, match="residual_std"):
        models.BayesianPINN(pde=pde, residual_std=-1.0)
    with pytest.raises(TypeError, match="PDE"):
        models.BayesianPINN(pde="burgers")
    data = _burgers_data().rename({"t": "time"})
    data.attrs["coords"] = "x time"
    with pytest.raises(ValueError, match="do not match"):
        uq.compile(models.BayesianPINN(pde=pde), data)
    no_noise = _burgers_data().drop_vars("noise_std")
    with pytest.raises(ValueError, match="noise_std"):
        uq.compile(models.BayesianPINN(pde=pde), no_noise)
