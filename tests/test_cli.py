import json

import pytest
from conftest import TINY_CASE

from ucsciml import registry
from ucsciml.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    case = root / "tiny.toml"
    case.write_text(TINY_CASE)
    out = root / "run"
    assert main(["-q", "run", str(case), "--seed", "3", "--out", str(out)]) == 0
    return out


def test_run_writes_a_complete_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "posterior.nc", "metrics.json", "log.txt"} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["backend"] == "nuts"
    assert set(metrics["parameters"]) == {"kappa"}
    assert 0 <= metrics["field"]["coverage_90"] <= 1
    assert "nuts finished" in (run_dir / "log.txt").read_text()


def test_summary_prints_diagnostics(run_dir, capsys):
    assert main(["summary", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "r_hat" in out and "kappa" in out and "overall:" in out


def test_resume_reuses_the_posterior(run_dir, capsys):
    before = (run_dir / "posterior.nc").stat().st_mtime_ns
    case = run_dir.parent / "tiny.toml"
    assert main(["-q", "run", str(case), "--seed", "3", "--out", str(run_dir), "--resume"]) == 0
    assert (run_dir / "posterior.nc").stat().st_mtime_ns == before
    assert json.loads((run_dir / "metrics.json").read_text())["resumed"] is True


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "burgers_inverse" in out and "bpinn" in out and "nuts" in out
    lines = out.splitlines()
    for name, family in registry.FAMILIES.items():
        (line,) = [x for x in lines if x.split()[:1] == [name] and family.description in x]
        assert "[case files]" in line and family.target in line
    # every family is reachable from a case file: sensors on a PDE, or a family case
    assert set(registry.FAMILIES) == set(registry.MODELS) | set(registry.CASES)


def test_sensor_tables_in_a_family_case_file_say_so(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_CASE.replace('name = "bpinn"', 'name = "rgnp"', 1))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "do not apply to model 'rgnp'" in err and "'pde'" in err


def test_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "case file not found" in capsys.readouterr().err
    assert main(["summary", str(tmp_path)]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_CASE.replace("width = 8", "widht = 8"))
    assert main(["run", str(bad)]) == 2
    assert "widht" in capsys.readouterr().err


def test_help_exits_zero():
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
