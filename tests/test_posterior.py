import jax
import numpy as np
import pytest
import xarray as xr

import ucsciml as uq
from ucsciml import inference
from ucsciml.posterior import save_tree


@pytest.fixture(scope="module")
def posterior():
    from conftest import regression_data, regression_model

    X, y = regression_data()
    program = uq.Program.from_numpyro(
        regression_model,
        X,
        y,
        dims={"beta": ("feature",), "y": ("obs",), "inputs": ("obs", "feature")},
    )
    backend = inference.NUTS(num_warmup=100, num_samples=100, num_chains=2, progress_bar=False)
    return backend.run(program, jax.random.key(0))


def test_datatree_groups_and_dims(posterior):
    tree = posterior.to_datatree()
    assert set(tree.children) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "sample_stats",
        "constant_data",
    }
    assert tree["posterior"]["beta"].dims == ("chain", "draw", "feature")
    assert tree["posterior_predictive"]["y"].dims == ("chain", "draw", "obs")
    assert tree["log_likelihood"]["y"].shape == (2, 100, 40)
    assert tree["constant_data"]["inputs"].dims == ("obs", "feature")
    assert uq.posterior.tree_attr(tree, "ucsciml_kind") == "mcmc"
    assert uq.posterior.tree_attr(tree, "ucsciml_attrs")["device_count"] >= 1


def test_log_likelihood_matches_closed_form(posterior):
    from conftest import NOISE_SD

    program = posterior.program
    beta = posterior.samples["beta"]
    mu = np.einsum("cdk,nk->cdn", beta, np.asarray(program.inputs))
    resid = np.asarray(program.targets) - mu
    expected = -0.5 * (resid / NOISE_SD) ** 2 - np.log(NOISE_SD) - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(posterior.log_likelihood()["y"], expected, rtol=1e-4, atol=1e-4)


def test_to_datatree_is_reproducible(posterior):
    a, b = posterior.to_datatree(), posterior.to_datatree()
    xr.testing.assert_equal(
        a["posterior_predictive"].to_dataset(), b["posterior_predictive"].to_dataset()
    )


def test_save_load_exact_round_trip(posterior, tmp_path):
    tree = posterior.to_datatree()
    path = save_tree(tree, tmp_path / "posterior.nc")
    back = uq.load(path)
    xr.testing.assert_identical(tree, back)
    rebuilt = uq.Posterior.from_datatree(back, posterior.program, posterior.key)
    np.testing.assert_array_equal(rebuilt.samples["beta"], posterior.samples["beta"])
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]


def test_failed_save_keeps_previous_file(posterior, tmp_path):
    path = tmp_path / "posterior.nc"
    save_tree(posterior.to_datatree(), path)
    before = path.read_bytes()

    def boom(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        uq._io.atomic_write(path, boom)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]


def test_predict_shapes_and_noise(posterior, key):
    pts = np.eye(3)
    pred = posterior.predict(pts, key)
    assert pred["y"].dims == ("chain", "draw", "point")
    assert pred["y"].shape == (2, 100, 3)
    # Predictive sd = sqrt(posterior var of beta_k + noise var) >= noise sd.
    assert float(pred["y"].std(("chain", "draw")).min()) > 0.4
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        posterior.predict(np.ones(3), key)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no posterior file"):
        uq.load(tmp_path / "nope.nc")


def test_posterior_rejects_inconsistent_shapes(posterior):
    with pytest.raises(ValueError, match="chain, draw"):
        uq.Posterior(
            samples={"a": np.ones((2, 3)), "b": np.ones((2, 4))},
            program=posterior.program,
            key=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="kind"):
        uq.Posterior(
            samples={"a": np.ones((2, 3))},
            program=posterior.program,
            key=jax.random.key(0),
            kind="magic",
        )
