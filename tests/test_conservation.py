"""The [conservation] table: ProbConserv on a run's predicted field after any backend."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import xarray as xr
from conftest import TINY_CASE

from ucsciml import config, runner
from ucsciml.conservation import ConservationSettings
from ucsciml.models.probconserv import conserve_prediction
from ucsciml.posterior import load


def _prediction(num_draws=400, nx=6, nt=3, seed=0):
    """Correlated Gaussian draws of a field on an (x, t) grid, with a truth variable."""
    rng = np.random.default_rng(seed)
    x, t = np.linspace(-1, 1, nx), np.linspace(0, 1, nt)
    n = nx * nt
    factor = rng.normal(size=(n, n)) / np.sqrt(n)
    draws = 0.3 + rng.normal(size=(num_draws, n)) @ factor.T
    field = xr.DataArray(
        draws.reshape(2, num_draws // 2, nx, nt),
        dims=("chain", "draw", "x", "t"),
        coords={"x": x, "t": t},
    )
    truth = xr.DataArray(np.zeros((nx, nt)), dims=("x", "t"), coords={"x": x, "t": t})
    return xr.Dataset({"u": field, "u_true": truth})


def _trapezoid(x):
    dx = np.diff(x)
    return np.concatenate([dx, [0]]) / 2 + np.concatenate([[0], dx]) / 2


def test_every_draw_conserves_and_the_mean_is_the_closed_form_update():
    prediction = _prediction()
    law = ConservationSettings(total=0.25, over="x")
    out, numbers = conserve_prediction(prediction, "u", law, key=jax.random.key(0))
    assert out["u"].dims == ("chain", "draw", "x", "t")
    xr.testing.assert_identical(out["u_true"], prediction["u_true"])
    w = _trapezoid(prediction["x"].values)
    integrals = np.einsum("cdxt,x->cdt", out["u"].values, w)
    np.testing.assert_allclose(integrals, 0.25, atol=1e-10)  # sigma_G = 0: exact per draw
    # The moved draws' mean is the conditioned moment-matched Gaussian's, an exact identity
    # of the sample mean m and covariance S: m - S G'(G S G')^-1 (G m - b).
    flat = prediction["u"].transpose("chain", "draw", "t", "x").values.reshape(400, -1)
    G = np.kron(np.eye(3), w[None])
    m, S = flat.mean(0), np.cov(flat, rowvar=False)
    expected = m - S @ G.T @ np.linalg.solve(G @ S @ G.T, G @ m - 0.25)
    got = out["u"].transpose("chain", "draw", "t", "x").values.reshape(400, -1).mean(0)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert numbers["constraints"] == 3 and numbers["draws"] == 400
    assert numbers["error_before"] == pytest.approx(np.abs(G @ m - 0.25).max())
    assert numbers["error_after"] < 1e-10 and numbers["draw_error_after"] < 1e-10


def test_a_tolerant_law_moves_the_mean_part_way():
    prediction = _prediction()
    exact, _ = conserve_prediction(
        prediction, "u", ConservationSettings(total=0.0), key=jax.random.key(0)
    )
    loose, numbers = conserve_prediction(
        prediction, "u", ConservationSettings(total=0.0, noise_std=0.05), key=jax.random.key(0)
    )
    assert 0 < numbers["error_after"] < numbers["error_before"]
    assert np.abs(loose["u"].values - exact["u"].values).max() > 1e-3


def test_bad_laws_are_refused_with_the_fix():
    prediction = _prediction(num_draws=4, nx=5, nt=6)  # 4 draws, 6 constraints
    with pytest.raises(ValueError, match="jitter > 0"):
        conserve_prediction(prediction, "u", ConservationSettings(total=0.0), key=None)
    out, numbers = conserve_prediction(
        prediction, "u", ConservationSettings(total=0.0, jitter=1e-8), key=None
    )
    assert numbers["error_after"] < 1e-6
    with pytest.raises(ValueError, match="not a dimension"):
        conserve_prediction(prediction, "u", ConservationSettings(total=0.0, over="y"), key=None)
    with pytest.raises(ValueError, match="noise_std and jitter must be >= 0"):
        ConservationSettings(total=0.0, noise_std=-1.0)
    with pytest.raises(ValueError, match="total must be a number"):
        ConservationSettings(total="zero")


def _case(tmp_path, extra):
    path = tmp_path / "case.toml"
    path.write_text(TINY_CASE + extra)
    return path


def test_the_conservation_table_is_strict(tmp_path):
    cfg = config.load_case(_case(tmp_path, "[conservation]\ntotal = 0\n"))
    assert cfg["conservation"] == {"total": 0, "over": "x", "noise_std": 0.0, "jitter": 0.0}
    for extra, match in (
        ("[conservation]\ntotal = 0\nbogus = 1\n", r"unknown key\(s\) \['bogus'\]"),
        ("[conservation]\nover = 'x'\n", "needs total"),
        ("[conservation]\ntotal = 0\nover = 'y'\n", r"choose one of \['x', 't'\]"),
        ("[conservation]\ntotal = 0\nnoise_std = -1.0\n", "must be >= 0"),
        (
            "[conservation]\ntotal = 0\n[calibration]\nreplicates = 8\n",
            "cannot be combined yet",
        ),
    ):
        with pytest.raises(config.ConfigError, match=match):
            config.load_case(_case(tmp_path, extra))


def test_a_run_with_a_conservation_law(tmp_path):
    # heat on [-1, 1] from -sin(pi x) with zero ends stays odd in x: its integral is 0
    cfg = config.load_case(_case(tmp_path, "[conservation]\ntotal = 0.0\n"))
    result = runner.run_case(cfg, out=tmp_path / "run")
    numbers = result.metrics["conservation"]
    assert numbers["constraints"] == 4 and numbers["draws"] == 60
    assert numbers["error_after"] < 1e-5 < numbers["error_before"]  # float32 field draws
    assert {"rel_l2", "coverage_90"} <= numbers["field_before"].keys()
    tree = load(tmp_path / "run" / "posterior.nc")
    u = tree["predictions"]["u"]
    w = _trapezoid(u["x"].values)
    integral = np.einsum("cdxt,x->cdt", u.transpose("chain", "draw", "x", "t").values, w)
    assert np.abs(integral).max() < 1e-5
    assert json.loads(tree.attrs["ucsciml_conservation"])["error_after"] == numbers["error_after"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["field"]["coverage_90"] == pytest.approx(result.metrics["field"]["coverage_90"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Conservation law" in html and "max |integral - total|" in html
    # resuming reuses the conserved run and reports the same numbers
    again = runner.run_case(cfg, out=tmp_path / "run", resume=True)
    assert again.metrics["resumed"]
    assert again.metrics["conservation"]["error_after"] == pytest.approx(numbers["error_after"])
