"""The RGNP family case: a tiny run's tree and numbers, its metrics against
``RGNP.evaluate``, the case file, and the checks on its ``[model]`` values."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from ucsciml import config, diagnostics
from ucsciml.models.rgnp import RGNPCase
from ucsciml.models.rgnp.case import draw_test_pairs, pair_metrics, pair_moments

#: Small enough to compile, train and score in seconds.
TINY = dict(
    width=16,
    depth=2,
    num_frequencies=4,
    num_points=8,
    num_steps=20,
    batch_size=4,
    chunk_size=10,
    num_test=3,
    num_draws=7,
)
CASE_FILE = Path(__file__).parents[1] / "case_studies" / "rgnp_poisson.toml"


@pytest.fixture(scope="module")
def tiny_run():
    return RGNPCase(**TINY).run("vi", None, key=jax.random.key(0), progress=False)


def test_tiny_run_builds_the_standard_tree(tiny_run):
    tree, metrics = tiny_run
    z = tree["posterior"]["z"]
    assert z.dims == ("chain", "draw", "test", "z_dim") and z.shape == (1, 7, 3, 5)
    u = tree["predictions"]["u"]
    assert u.dims == ("chain", "draw", "test", "x") and u.shape == (1, 7, 3, 201)
    u_true = tree["predictions_constant_data"]["u_true"]
    assert u_true.dims == ("test", "x") and np.isfinite(u_true).all()
    assert np.isfinite(z).all() and np.isfinite(u).all()
    # the hard boundary conditions: every draw is the exact boundary value at x = -1, 1
    np.testing.assert_allclose(u.isel(x=[0, -1]), 0.0, atol=1e-6)
    trace = tree["optimization"]["loss"]
    assert trace.shape == (20,) and tree["optimization"].attrs["objective"] == "negative ELBO"
    checked = diagnostics.check(tree)
    assert len(checked.optimization) == 1 and "converged" in checked.optimization[0]
    for name in ("nse_u", "nse_z", "coverage_u", "coverage_z", "train_seconds"):
        assert np.isfinite(metrics[name]), name
    assert 0 <= metrics["coverage_u"] <= 1 and 0 <= metrics["coverage_z"] <= 1
    # ELBO start and end are the negated ends of the stored trace
    np.testing.assert_allclose(metrics["elbo_first_100"], -float(trace.mean()), rtol=1e-6)
    # RGNP.fit's verdict reaches the numbers and the tree
    assert metrics["converged"] is checked.optimization[0]["converged"]


def test_metrics_are_those_of_evaluate():
    case = RGNPCase(**TINY)
    model = case.model()
    params = model.init(key=jax.random.key(1))
    key = jax.random.key(2)
    tests = draw_test_pairs(model.problem, key, 2)
    ours = pair_metrics(tests, pair_moments(model, params, tests))
    theirs = model.evaluate(params, key, num_tests=2)
    assert ours.keys() == theirs.keys()
    np.testing.assert_allclose([ours[k] for k in theirs], list(theirs.values()), rtol=1e-6)


def test_case_file_builds_the_reduced_case():
    case = config.build_family(config.load_case(CASE_FILE))
    assert isinstance(case, RGNPCase)
    assert (case.width, case.depth, case.num_steps, case.batch_size) == (128, 4, 8000, 32)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pde", "burgers"),
        ("width", 0),
        ("num_steps", 0),
        ("batch_size", 2.5),
        ("learning_rate", 0.0),
        ("num_test", 0),
        ("num_draws", -1),
        ("test_seed", -3),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RGNPCase(**{field: value})


def test_run_refuses_other_backends_and_settings():
    case = RGNPCase(**TINY)
    with pytest.raises(ValueError, match="backend"):
        case.run("nuts", None, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="settings"):
        case.run("vi", {"num_steps": 3}, key=jax.random.key(0), progress=False)
