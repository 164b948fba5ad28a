"""`ucsciml study`: one case under every backend, one comparison table."""

import csv
import json
import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import jax
import numpy as np
import pytest
from conftest import TINY_CASE

from ucsciml import registry
from ucsciml.cli import main
from ucsciml.family_case import FamilyRun
from ucsciml.posterior import draws_tree, load
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


@dataclass(frozen=True)
class TwoWayCase:
    """A normal mean, y_i ~ N(mu, 1), mu ~ N(0, 10^2), posterior N(m, s^2) in closed form:
    backend "exact" draws from it; "point" reports the same mean with a zero-width spread."""

    backends: ClassVar[tuple[str, ...]] = ("exact", "point")
    own_backends: ClassVar[tuple[str, ...]] = ("exact", "point")

    mu: float = 0.7
    num_observations: int = 40

    def run(self, backend, settings, *, key, progress):
        # the data depend on the case only (fixed key): every backend sees the same y
        y = self.mu + np.asarray(jax.random.normal(jax.random.key(7), (self.num_observations,)))
        precision = self.num_observations + 1 / 100
        mean, sd = float(y.sum() / precision), float(precision**-0.5)
        scale = sd if backend == "exact" else 0.0
        draws = mean + scale * np.asarray(jax.random.normal(key, (2, 2000)))
        tree = draws_tree(
            {"mu": draws},
            kind="closed_form",
            program="twoway",
            physical_sites=("mu",),
            attrs={"truth": {"mu": self.mu}},
        )
        lo, hi = np.quantile(draws, [0.05, 0.95])
        numbers = {
            "mu": {"mean": float(draws.mean()), "q05": float(lo), "q95": float(hi), "truth": 0.7},
            "exact_mean": mean,
            "sd_ratio": float(draws.std() / sd),
            "seconds": 0.0,
        }
        return FamilyRun(tree, numbers)


@pytest.fixture
def twoway_family(monkeypatch):
    module = types.ModuleType("ucsciml_twoway_family")
    module.TwoWayCase = TwoWayCase
    monkeypatch.setitem(sys.modules, "ucsciml_twoway_family", module)
    monkeypatch.setitem(registry.CASES, "twoway", "ucsciml_twoway_family:TwoWayCase")


def test_a_family_case_studies_its_own_backends(twoway_family, tmp_path, capsys):
    case = tmp_path / "twoway.toml"
    case.write_text('[case]\nname = "twoway"\n[model]\nname = "twoway"\n')
    out = tmp_path / "study"
    # the default backend list of a family case is the family's own
    assert main(["-q", "study", str(case), "--out", str(out)]) == 0
    with open(out / "study.csv", newline="") as f:
        rows = {r["backend"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["exact", "point"]
    exact_mean = float(rows["exact"]["family_exact_mean"])
    # 4000 draws of N(m, s^2): the mean within 4 standard errors, the spread within 5%
    sd = (40 + 1 / 100) ** -0.5
    assert abs(float(rows["exact"]["mu_mean"]) - exact_mean) < 4 * sd / 4000**0.5
    assert float(rows["exact"]["family_sd_ratio"]) == pytest.approx(1.0, abs=0.05)
    assert float(rows["point"]["mu_mean"]) == pytest.approx(exact_mean, rel=1e-6)
    assert float(rows["point"]["mu_q05"]) == pytest.approx(float(rows["point"]["mu_q95"]))
    # the error and interval check are computed from the truth the family reported
    err = 100 * abs(float(rows["exact"]["mu_mean"]) - 0.7) / 0.7
    assert float(rows["exact"]["mu_error_pct"]) == pytest.approx(err, rel=1e-6)
    assert "family_seconds" not in rows["exact"]
    md = (out / "study.md").read_text()
    header = md.splitlines()[4]
    assert "| mu |" in header and "exact_mean" in header and "sd_ratio" in header
    assert "rel. L2" not in header  # no run scored a field
    # a backend the family cannot run is refused before anything runs
    assert main(["study", str(case), "--backends", "exact,nuts", "--out", str(tmp_path / "x")]) == 2
    assert "choose from ['exact', 'point']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
