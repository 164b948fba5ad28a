"""`ucsciml study`: one case under every backend, one comparison table."""

import csv
import json

import numpy as np
import pytest
from conftest import TINY_CASE

from ucsciml.cli import main
from ucsciml.posterior import load
from ucsciml.study import parse_backends, readable_table, study_row

TINY_STUDY = (
    TINY_CASE
    + """
[backend.vi]
num_steps = 60
num_samples = 20
init = "map"

[backend.vi.map]
adam_steps = 60

[backend.dropout]
rate = 0.1
num_steps = 60
num_passes = 20
"""
)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    case = root / "tiny.toml"
    case.write_text(TINY_STUDY)
    out = root / "study"
    backends = "nuts,vi,dropout"
    assert main(["-q", "study", str(case), "--backends", backends, "--out", str(out)]) == 0
    return out


def test_study_writes_one_run_per_backend_and_the_tables(study_dir):
    backends = ["nuts", "vi", "dropout"]
    for name in backends:
        metrics = json.loads((study_dir / name / "metrics.json").read_text())
        assert metrics["backend"] == name and metrics["seed"] == 0
    with open(study_dir / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["backend"] for r in rows] == backends
    assert all(r["status"] == "ok" for r in rows)
    # Every backend saw the same sensors: the data seed belongs to the case, not the backend.
    observed = [load(study_dir / n / "posterior.nc")["observed_data"]["u_obs"] for n in backends]
    for other in observed[1:]:
        np.testing.assert_array_equal(other.values, observed[0].values)
    # MCMC rows carry R-hat; the others say n/a instead of a number.
    assert rows[0]["r_hat_max"] != "" and rows[1]["r_hat_max"] == ""
    # Dropout keeps kappa a point estimate: a zero-width interval.
    assert float(rows[2]["kappa_q05"]) == pytest.approx(float(rows[2]["kappa_q95"]))
    md = (study_dir / "study.md").read_text()
    assert "Made by: `ucsciml -q study" in md and "| nuts |" in md and "n/a" in md
    assert "<table>" in (study_dir / "study.html").read_text()


def test_study_row_and_table_from_metrics():
    metrics = {
        "wall_time_s": 12.0,
        "field": {"rel_l2": 0.1, "coverage_50": 0.5, "coverage_90": 0.8, "coverage_95": 0.9},
        "parameters": {
            "lam": {
                "mean": 1.1,
                "sd": 0.1,
                "q05": 0.9,
                "q95": 1.05,
                "truth": 1.0,
                "rel_error": 0.1,
                "truth_in_90": False,
            }
        },
        "diagnostics": {
            "kind": "mcmc",
            "verdict": "warn",
            "divergences": 3,
            "rows": [{"rhat": 1.2, "ess_bulk": 40.0}, {"rhat": 1.01, "ess_bulk": 300.0}],
        },
    }
    row = study_row("nuts", metrics)
    assert row["lam_error_pct"] == pytest.approx(10.0)
    assert (row["r_hat_max"], row["ess_bulk_min"], row["divergences"]) == (1.2, 40.0, 3)
    header, body = readable_table([row, {"backend": "vi", "status": "failed: boom"}])
    cell = body[0][header.index("lam")]
    assert cell == "1.1 (10.0%) [0.9, 1.05] ✗"
    assert body[0][header.index("cov. 50/90/95%")] == "50/80/90"
    assert body[1][1] == "failed"


def test_bad_backend_lists_exit_2(capsys):
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backends("nuts,hmc")
    with pytest.raises(ValueError, match="twice"):
        parse_backends("vi,vi")
    with pytest.raises(ValueError, match="at least one"):
        parse_backends(" , ")
    assert main(["study", "--backends", "nuts,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
