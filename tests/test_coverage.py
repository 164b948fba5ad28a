"""`ucsciml coverage`: binomial intervals, tallies over replicates, and the CLI."""

import json

import pytest
from scipy import stats

from ucsciml.cli import main
from ucsciml.coverage import (
    clopper_pearson,
    field_summary,
    markdown,
    page,
    replicate_configs,
    replicate_row,
    summarize,
    tally,
    text_table,
)

TINY_BURGERS = """
[case]
name = "tiny_burgers"
seed = 0
backend = "ensemble"

[pde]
name = "burgers"
lambda1 = { prior = "Normal", loc = 1.0, scale = 0.5, truth = 1.0 }
lambda2 = { prior = "LogNormal", loc = -4.6, scale = 1.0, truth = 0.003183098861837907 }

[data]
num_sensors = 30
noise = 0.01
seed = 0

[model]
name = "bpinn"
width = 8
depth = 2
num_collocation = 50
residual_std = 0.05
hard_constraints = true

[backend.ensemble]
num_members = 2

[backend.ensemble.map]
adam_steps = 30
learning_rate = 0.003
lbfgs_steps = 0

[evaluation]
grid = [16, 8]
"""


def _param(q05, q95, truth=1.0):
    mean = 0.5 * (q05 + q95)
    return {
        "mean": mean,
        "sd": 0.1,
        "q05": q05,
        "q95": q95,
        "truth": truth,
        "rel_error": abs(mean - truth) / truth,
        "truth_in_90": q05 <= truth <= q95,
    }


def _metrics(a_hit, b_hit, field_cov, calibrated=None):
    m = {
        "parameters": {
            "a": _param(0.9, 1.1) if a_hit else _param(1.1, 1.3),
            "b": _param(1.9, 2.1, truth=2.0) if b_hit else _param(2.2, 2.4, truth=2.0),
        },
        "field": {"coverage_90": field_cov, "rel_l2": 0.1},
    }
    if calibrated is not None:
        m["calibrated"] = {
            "method": "inflate",
            "parameters": {
                "a": {**_param(0.8, 1.2), "inflation": 2.0, "bias": 0.0}
                if calibrated
                else {**_param(1.05, 1.4), "inflation": 2.0, "bias": 0.0}
            },
            "field": {"coverage_90": 0.9},
        }
    return m


def test_clopper_pearson_exact_values():
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-12)
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(0.025 ** (1 / 10), rel=1e-12) and high == 1.0
    low, high = clopper_pearson(17, 20)
    assert low == pytest.approx(stats.beta.ppf(0.025, 17, 4), rel=1e-12)
    assert high == pytest.approx(stats.beta.ppf(0.975, 18, 3), rel=1e-12)
    assert low < 17 / 20 < high
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="hits must lie"):
        clopper_pearson(11, 10)


def test_tally_raw_without_calibration():
    runs = [_metrics(True, True, 0.9), _metrics(True, False, 0.5), _metrics(False, True, 0.85)]
    raw = tally(runs, "raw")
    assert (raw["a"]["hits"], raw["a"]["n"]) == (2, 3)
    assert (raw["b"]["hits"], raw["b"]["n"]) == (2, 3)
    assert raw["a"]["coverage"] == pytest.approx(2 / 3)
    assert (raw["a"]["ci_low"], raw["a"]["ci_high"]) == clopper_pearson(2, 3)
    assert tally(runs, "calibrated") == {}
    summary = summarize(
        [replicate_row(i, 1000 + i, i, m) for i, m in enumerate(runs)],
        case="c",
        backend="ensemble",
        replicates=3,
    )
    assert summary["parameters"]["a"]["calibrated"] is None
    assert summary["field"]["calibrated"] is None
    field = summary["field"]["raw"]
    assert field["coverage_90"]["mean"] == pytest.approx((0.9 + 0.5 + 0.85) / 3)
    assert (field["coverage_90"]["min"], field["coverage_90"]["max"]) == (0.5, 0.9)
    assert (field["in_band"]["hits"], field["in_band"]["n"]) == (2, 3)
    assert "calibrated" not in text_table(summary)


def test_tally_with_calibration_and_failures():
    runs = [
        _metrics(False, True, 0.9, calibrated=True),
        _metrics(False, True, 0.99, calibrated=True),
        _metrics(True, True, 0.9, calibrated=False),
        _metrics(True, False, 0.9),  # no calibrated table: does not count towards its n
    ]
    cal = tally(runs, "calibrated")
    assert set(cal) == {"a"} and (cal["a"]["hits"], cal["a"]["n"]) == (2, 3)
    rows = [replicate_row(i, 1000 + i, i, m) for i, m in enumerate(runs)]
    rows.append({"replicate": 4, "data_seed": 1004, "seed": 4, "status": "failed: boom"})
    summary = summarize(rows, case="c", backend="vi", replicates=5)
    # Rows have the layout of metrics: tallies over them agree with tallies over metrics.
    assert summary["parameters"]["a"]["raw"] == tally(runs, "raw")["a"]
    assert summary["parameters"]["a"]["calibrated"] == cal["a"]
    assert summary["parameters"]["b"]["calibrated"] is None
    assert summary["failed"] == [{"replicate": 4, "error": "boom"}]
    assert summary["field"]["calibrated"]["in_band"]["hits"] == 3
    assert field_summary(runs)["raw"]["in_band"]["hits"] == 3  # 0.99 is outside [0.8, 0.97]
    text = text_table(summary)
    assert "calibrated hits/n" in text and "2/3" in text and "replicate 4 failed: boom" in text
    md = markdown(summary, command="ucsciml coverage c")
    assert "| a | 2/4 |" in md and "Made by: `ucsciml coverage c`" in md
    html = page(summary)
    assert "data:image/png;base64," in html and "<script" not in html


def test_replicate_configs_seeds():
    cfg = {
        "case": {"name": "c", "seed": 5, "backend": "vi"},
        "data": {"source": "synthetic", "seed": 3},
    }
    reps = replicate_configs(cfg, 3)
    assert [r["data"]["seed"] for r in reps] == [1003, 1004, 1005]
    assert [r["case"]["seed"] for r in reps] == [5, 6, 7]
    assert cfg["data"]["seed"] == 3  # the input is not mutated
    reps = replicate_configs(cfg, 2, backend="ensemble", seed=0, first_seed=7)
    assert [(r["data"]["seed"], r["case"]["seed"]) for r in reps] == [(7, 0), (8, 1)]
    assert {r["case"]["backend"] for r in reps} == {"ensemble"}


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["coverage", "--replicates", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--replicates must be >= 2" in err and "try --replicates 20" in err
    case = tmp_path / "file_case.toml"
    case.write_text(
        TINY_BURGERS.replace("num_sensors = 30", 'source = "file"\npath = "sensors.nc"')
    )
    assert main(["coverage", str(case), "--replicates", "2", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "cannot be replicated" in err and "source = 'synthetic'" in err
    assert not (tmp_path / "y").exists()


@pytest.mark.slow  # two real Burgers fits: ~90-120 s on 2 busy cores, nearly all XLA compiles
def test_cli_end_to_end(tmp_path, capsys):
    case = tmp_path / "tiny_burgers.toml"
    case.write_text(TINY_BURGERS)
    out = tmp_path / "cov"
    args = ["-q", "coverage", str(case), "--replicates", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "lambda1" in printed and "raw hits/n" in printed
    for name in ("coverage.json", "coverage.md", "coverage.html"):
        assert (out / name).exists()
    summary = json.loads((out / "coverage.json").read_text())
    assert summary["replicates"] == 2 and len(summary["rows"]) == 2 and summary["failed"] == []
    assert [r["data_seed"] for r in summary["rows"]] == [1000, 1001]
    for entry in summary["parameters"].values():
        assert 0 <= entry["raw"]["hits"] <= entry["raw"]["n"] == 2
    for r in (0, 1):
        metrics = json.loads((out / f"replicate-{r}" / "metrics.json").read_text())
        assert metrics["seed"] == r
    assert "data:image/png;base64," in (out / "coverage.html").read_text()
    # --resume skips both finished replicates.
    assert main([*args, "--resume"]) == 0
    summary = json.loads((out / "coverage.json").read_text())
    assert all(r["resumed"] for r in summary["rows"])


def test_failed_replicate_is_recorded_and_exits_1(tmp_path, monkeypatch, capsys):
    """With a stand-in for run_case: seeds and folders per replicate, failures kept, exit 1."""
    import types

    import ucsciml.coverage as coverage

    calls = []

    def fake_run_case(cfg, *, backend, out, resume):
        calls.append((cfg["data"]["seed"], cfg["case"]["seed"], backend, out.name, resume))
        if cfg["case"]["seed"] == 1:
            raise RuntimeError("diverged")
        metrics = _metrics(cfg["case"]["seed"] == 0, True, 0.9)
        return types.SimpleNamespace(metrics=metrics)

    monkeypatch.setattr(coverage, "run_case", fake_run_case)
    case = tmp_path / "tiny_burgers.toml"
    case.write_text(TINY_BURGERS)
    out = tmp_path / "cov"
    args = ["coverage", str(case), "--replicates", "3", "--first-seed", "50", "--out", str(out)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "replicates that failed: 1" in captured.err and "diverged" in captured.err
    assert calls == [
        (50, 0, "ensemble", "replicate-0", False),
        (51, 1, "ensemble", "replicate-1", False),
        (52, 2, "ensemble", "replicate-2", False),
    ]
    summary = json.loads((out / "coverage.json").read_text())
    assert summary["failed"] == [{"replicate": 1, "error": "RuntimeError: diverged"}]
    assert summary["parameters"]["a"]["raw"]["hits"] == 1
    assert summary["parameters"]["a"]["raw"]["n"] == 2
    assert "replicate 1 failed" in (out / "coverage.md").read_text()
