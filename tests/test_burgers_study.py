"""The neural-PDE UQ study's accuracy checks on Burgers (slow: minutes each on 2 cores).

Each test runs a shipped case file under one backend exactly as `ucsciml study` would and
checks the acceptance numbers of the study issue.
"""

import pytest

from ucsciml.cli import CASE_DIR
from ucsciml.config import load_case
from ucsciml.runner import run_case


def _run(case, backend, tmp_path):
    return run_case(load_case(CASE_DIR / f"{case}.toml"), backend=backend, out=tmp_path / backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ensemble", "nuts"])
def test_burgers_forward_field_error(backend, tmp_path):
    result = _run("burgers_forward", backend, tmp_path)
    # Study acceptance: rel. L2 of the posterior mean below 1e-2 on the 256 x 100 grid.
    assert result.metrics["field"]["rel_l2"] < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nuts", "vi", "laplace", "ensemble"])
def test_burgers_inverse_lambda2_within_25_percent(backend, tmp_path):
    params = _run("burgers_inverse", backend, tmp_path).metrics["parameters"]
    # Backends issue acceptance: lambda2's posterior mean within 25% of truth.
    assert params["lambda2"]["rel_error"] < 0.25
    assert params["lambda1"]["rel_error"] < 0.05


@pytest.mark.slow
def test_burgers_inverse_map_ensemble_accuracy(tmp_path):
    params = _run("burgers_inverse_2000", "ensemble", tmp_path).metrics["parameters"]
    # Study acceptance: the MAP/ensemble recovers lambda1 within 1% and lambda2 within 5%
    # (measured: 0.3% and 3.0%, seed 0).
    assert params["lambda1"]["rel_error"] < 0.01
    assert params["lambda2"]["rel_error"] < 0.05


@pytest.mark.slow
def test_default_recipe_covers_on_an_independent_reference_solution(tmp_path, shared_data):
    """The default case's own settings on 300 noisy sensors drawn from Raissi's spectral
    solution (not the project's solver), brought as a CSV: calibrated 90% intervals hold
    both lambdas and the field band covers 80-97% of the true field."""
    import numpy as np
    from scipy.io import loadmat

    from ucsciml.config import resolve_config

    mat = loadmat(shared_data / "raissi_pinns" / "burgers_shock.mat")
    x, t, usol = mat["x"].ravel(), mat["t"].ravel(), np.real(mat["usol"])
    rng = np.random.default_rng(7)
    i, j = rng.integers(0, x.size, 300), rng.integers(0, t.size, 300)
    u = usol[i, j]
    sd = 0.01 * u.std()
    rows = np.column_stack([x[i], t[j], u + sd * rng.normal(size=300), np.full(300, sd)])
    csv = tmp_path / "sensors.csv"
    np.savetxt(csv, rows, delimiter=",", header="x,t,u,noise_std", comments="")
    raw = load_case(CASE_DIR / "burgers_inverse.toml")
    cfg = resolve_config(
        {
            **{k: v for k, v in raw.items() if k != "data"},
            "data": {"source": "file", "path": str(csv)},
        }
    )
    cal = run_case(cfg, out=tmp_path / "run").metrics["calibrated"]
    for name in ("lambda1", "lambda2"):
        assert cal["parameters"][name]["truth_in_90"], cal["parameters"][name]
    assert 0.80 <= cal["field"]["coverage_90"] <= 0.97
