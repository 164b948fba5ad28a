"""The default Burgers inverse case end to end (slow: about 4 minutes on 2 cores)."""

import pytest

from ucsciml.cli import CASE_DIR
from ucsciml.config import load_case
from ucsciml.runner import run_case


@pytest.mark.slow
def test_default_case_recovers_lambdas(tmp_path):
    result = run_case(load_case(CASE_DIR / "burgers_inverse.toml"), out=tmp_path / "run")
    params = result.metrics["parameters"]
    # Foundation acceptance: posterior means within 5% (lambda1) and 25% (lambda2) of truth.
    assert params["lambda1"]["rel_error"] < 0.05
    assert params["lambda2"]["rel_error"] < 0.25
    # Whatever the mixing, the diagnostics must not call a non-mixing run converged.
    if any(r.rhat is not None and r.rhat >= 1.01 for r in result.diagnostics.rows):
        assert not result.diagnostics.converged
        assert any("did NOT mix" in m for m in result.diagnostics.messages)
