"""The default Burgers inverse case end to end (slow: about 5 minutes on 2 cores)."""

import pytest

from ucsciml.cli import CASE_DIR
from ucsciml.config import load_case
from ucsciml.runner import run_case


@pytest.mark.slow
def test_default_case_calibrated_intervals_cover(tmp_path):
    result = run_case(load_case(CASE_DIR / "burgers_inverse.toml"), out=tmp_path / "run")
    raw = result.metrics["parameters"]
    cal = result.metrics["calibrated"]
    # Foundation acceptance on the raw posterior: means within 5% (lambda1), 25% (lambda2).
    assert raw["lambda1"]["rel_error"] < 0.05
    assert raw["lambda2"]["rel_error"] < 0.25
    # Calibrated-inverse-problems acceptance (measured, seed 0: lambda1 0.99887
    # [0.99204, 1.00584], lambda2 0.003334 [0.003077, 0.003595], field 90% coverage 95.0%).
    for name in ("lambda1", "lambda2"):
        assert cal["parameters"][name]["truth_in_90"], cal["parameters"][name]
    lam2 = cal["parameters"]["lambda2"]
    assert (lam2["q95"] - lam2["q05"]) / 2 <= 0.25 * lam2["truth"]
    assert 0.80 <= cal["field"]["coverage_90"] <= 0.97
    # Whatever the backend, the diagnostics must not call a non-mixing run converged.
    if any(r.rhat is not None and r.rhat >= 1.01 for r in result.diagnostics.rows):
        assert not result.diagnostics.converged
