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


def _temperature_model(x, targets=None):
    k = numpyro.sample("k", dist.Normal(0.0, 1.0))
    T = numpyro.deterministic("T", k * x)
    numpyro.sample("y", dist.Normal(T, 0.1), obs=targets)


def test_the_field_site_is_declared_or_defaults_to_u(regression):
    program, *_ = regression
    assert program.field_site is None  # no site "u": no field to predict on a grid
    x = jnp.linspace(0.0, 1.0, 4)
    named = uq.Program.from_numpyro(_temperature_model, x, x, field_site="T")
    assert named.field_site == "T"
    with pytest.raises(ValueError, match=r"never creates.*\['T', 'k', 'y'\]"):
        uq.Program.from_numpyro(_temperature_model, x, x, field_site="u")


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
    assert program.field_site == "u"  # its solution field, by default
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


def _branching_model(inputs, targets=None):
    a = numpyro.sample("a", dist.Normal())
    if float(a) > 10.0:  # Python control flow on a value: no abstract trace
        numpyro.sample("b", dist.Normal())
    numpyro.sample("y", dist.Normal(a * inputs, 1.0), obs=targets)


def test_sites_is_abstract_and_matches_an_eager_trace(regression):
    program, *_ = regression
    sites = program.sites()
    eager = program.trace(jax.random.key(0))
    assert list(sites) == list(eager)
    for name, site in sites.items():
        assert site["type"] == eager[name]["type"]
        assert site.get("is_observed") == eager[name].get("is_observed")
        assert isinstance(site["value"], jax.ShapeDtypeStruct)
        assert site["value"].shape == jnp.shape(eager[name]["value"])


def test_sites_falls_back_to_an_eager_trace_for_value_dependent_models():
    program = uq.Program.from_numpyro(_branching_model, jnp.ones(3), jnp.zeros(3))
    sites = program.sites()
    assert set(sites) == {"a", "y"}
    assert not isinstance(sites["a"]["value"], jax.ShapeDtypeStruct)
    assert program.latent_sites() == ("a",)


def _param_model(inputs, targets=None):
    scale = numpyro.param("scale", 2.0)
    a = numpyro.sample("a", dist.Normal(0.0, scale))
    numpyro.sample("y", dist.Normal(a * inputs, 1.0), obs=targets)


def _plain_model(inputs, targets=None):
    a = numpyro.sample("a", dist.Normal())
    numpyro.sample("y", dist.Normal(a * inputs, 1.0), obs=targets)


@pytest.mark.parametrize("model", [_plain_model, _param_model])
def test_potentials_agree_whichever_way_sites_are_discovered(model):
    # Discovery by an abstract trace must give, also for a model whose potential captures a
    # param site's value (which must be the concrete 2.0, not a tracer of the trace), NumPyro's potential: here the exact
    # a^2 / 2s^2 + sum (y - a x)^2 / 2 up to a constant, compared as differences from a = 0.
    from ucsciml.inference._map import potential_family

    x, y = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, -0.2, 1.1])
    program = uq.Program.from_numpyro(model, x, y)
    potential = potential_family(program, jax.random.key(0), model).make()
    scale = 2.0 if model is _param_model else 1.0
    base = 0.5 * float(jnp.sum(y**2))
    for a in (-0.7, 1.3):
        exact = 0.5 * a**2 / scale**2 + 0.5 * float(jnp.sum((y - a * x) ** 2)) - base
        got = float(potential({"a": jnp.asarray(a)}) - potential({"a": jnp.asarray(0.0)}))
        assert got == pytest.approx(exact, rel=1e-5, abs=1e-5)
