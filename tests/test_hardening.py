"""Hardening: the lock, bad files at every entry, relative paths, resume inputs, run files.

Every bad input goes through the CLI and must end in exit code 2 with one line naming the
file or field. The run-based checks share one tiny file-data run, made from a case file in another folder
than the working directory, whose backend is a stand-in that returns prior draws: what is
under test is the runner's file handling, and a real fit would cost 20-40 s of compiling.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import stat
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import ucsciml as uq
from ucsciml import runner
from ucsciml._io import (
    MIN_COMPRESSED_BYTES,
    file_digest,
    netcdf_encoding,
    write_datatree,
    write_text,
)
from ucsciml.cli import main
from ucsciml.config import load_case
from ucsciml.posterior import Posterior
from ucsciml.provenance import config_hash

ROOT = Path(__file__).resolve().parents[1]

FILE_CASE = """
[case]
name = "tiny_file"
seed = 0
backend = "ensemble"

[pde]
name = "heat"
kappa = {{ prior = "LogNormal", loc = -2.3, scale = 0.5, truth = 0.1 }}

[data]
source = "file"
path = "{path}"

[model]
name = "bpinn"
width = 8
depth = 1
num_collocation = 40
hard_constraints = true

[backend.ensemble]
num_members = 2

[backend.ensemble.map]
adam_steps = 20
lbfgs_steps = 0

[evaluation]
grid = [64, 32]  # the field's predictions then exceed MIN_COMPRESSED_BYTES
"""


def _heat_csv(path: Path, seed: int = 0, n: int = 30) -> Path:
    pde = uq.pde.Heat(kappa=0.1)
    ds = uq.data.synthetic_sensors(pde, n, 0.01, seed)
    return uq.data.save(ds, path)


def _case(folder: Path, data_path: str, name: str = "case.toml") -> Path:
    case = folder / name
    case.write_text(FILE_CASE.format(path=data_path), encoding="utf-8")
    return case


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ucsciml: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _quick_report(tree, path):
    write_text(path, "<html>stub</html>\n")
    return Path(path)


@dataclasses.dataclass(frozen=True)
class _PriorDraws:
    """A stand-in backend: four prior draws, no fit (the runner's file handling is under
    test, not inference); ``calls`` counts the fits."""

    calls: list = dataclasses.field(default_factory=list)

    def run(self, program, key):
        self.calls.append(program.name)
        traces = [program.trace(k) for k in jax.random.split(key, 4)]
        samples = {
            site: np.stack([np.asarray(t[site]["value"]) for t in traces])[None]
            for site in program.latent_sites()
        }
        return Posterior(samples, program, key, kind="ensemble")


# --- the lock -----------------------------------------------------------------------------


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "tools" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_is_consistent_with_pyproject():
    check_lock = _check_lock()
    assert check_lock.check(ROOT / "requirements.lock", ROOT / "pyproject.toml") == []
    pins, problems = check_lock.read_lock(ROOT / "requirements.lock")
    assert not problems and "ucsciml" not in pins
    assert {"jax", "numpyro", "gpjax", "pytest", "hypothesis", "ruff"} <= set(pins)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c $(LOCK) -e '.[dev]'" in makefile  # every install is locked
    assert "tools/check_lock.py --installed" in makefile


def test_lock_check_finds_unpinned_and_out_of_range(tmp_path):
    check_lock = _check_lock()
    lock = tmp_path / "requirements.lock"
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if not ln.startswith(("jax==", "gpjax==", "ruff=="))]
    lock.write_text("\n".join([*kept, "jax==0.10.2", "gpjax==1.0.0", "not a pin"]) + "\n")
    problems = check_lock.check(lock, ROOT / "pyproject.toml")
    text = "\n".join(problems)
    assert "jax==0.10.2, outside" in text and "gpjax==1.0.0, outside" in text
    assert "ruff" in text and "not pinned" in text
    assert "'not a pin' is not a name==version pin" in text
    assert check_lock.main(["--lock", str(lock)]) == 1


# --- bad input through the CLI ------------------------------------------------------------


@pytest.fixture
def case_dir(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    return folder


def _run_exit(case: Path, out: Path) -> int:
    return main(["-q", "run", str(case), "--out", str(out)])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a readable netCDF file"),
        (b"garbage" * 40, "not a readable netCDF file"),
        ("truncated", "not a readable netCDF file"),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_netcdf_sensor_file_exits_2(case_dir, tmp_path, capsys, content, expected):
    good = _heat_csv(tmp_path / "good.csv")
    nc = case_dir / "sensors.nc"
    if content == "truncated":
        uq.data.save(uq.data.load(good), nc)
        content = nc.read_bytes()[:-300]
    nc.write_bytes(content)
    assert _run_exit(_case(case_dir, "sensors.nc"), tmp_path / "run") == 2
    err = _error(capsys)
    assert str(nc) in err and expected in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the CSV file is empty"),
        ("x,t,u\n", "has a header but no rows"),
        ("x,t,u\n0.1,0.2,1.0\n0.3,0.4,1.1\n0.5,0.", "line 4 has 2 value(s)"),
        ("x,t,u\n0.1,abc,1.0\n", "line 2, column 't': 'abc' is not a number"),
        ("x,t,u\n0.1,,1.0\n", "line 2, column 't': '' is not a number"),
        ("x,t,u\n0.1,0.2,nan\n0.1,0.3,1\n", "field 'u' has 1 NaN/inf value(s) at sensors [0]"),
        ("x,t,x,u\n0.1,0.2,0.3,1\n", "names column(s) ['x'] twice"),
        ("0.1,0.2,1.0\n0.3,0.4,1.1\n", "has no 'u' column"),
    ],
    ids=["empty", "header-only", "truncated", "text", "blank", "nan", "dup-column", "no-header"],
)
def test_bad_csv_exits_2_naming_file_and_field(case_dir, tmp_path, capsys, text, expected):
    csv = case_dir / "sensors.csv"
    csv.write_text(text, encoding="utf-8")
    assert _run_exit(_case(case_dir, "sensors.csv"), tmp_path / "run") == 2
    err = _error(capsys)
    assert str(csv) in err and expected in err, err


def test_non_utf8_files_exit_2(case_dir, tmp_path, capsys):
    csv = case_dir / "sensors.csv"
    csv.write_bytes(b"x,t,u\n0.1,0.2,\xff\n")
    assert _run_exit(_case(case_dir, "sensors.csv"), tmp_path / "run") == 2
    err = _error(capsys)
    assert str(csv) in err and "not UTF-8" in err
    case = case_dir / "latin1.toml"
    case.write_bytes(
        FILE_CASE.format(path="s.csv").replace("tiny_file", "caf\xe9").encode("latin-1")
    )
    assert _run_exit(case, tmp_path / "run") == 2
    err = _error(capsys)
    assert str(case) in err and "not UTF-8" in err and "0xe9" in err


def test_sensors_outside_the_domain_exit_2_naming_sensor_coordinate_and_domain(
    case_dir, tmp_path, capsys
):
    csv = _heat_csv(case_dir / "sensors.csv")
    lines = csv.read_text().splitlines()
    lines[3] = "5.0,9.0," + lines[3].split(",", 2)[2]  # sensor 2: x = 5, t = 9
    csv.write_text("\n".join(lines) + "\n")
    burgers = FILE_CASE.format(path="sensors.csv").replace(
        'name = "heat"\nkappa = { prior = "LogNormal", loc = -2.3, scale = 0.5, truth = 0.1 }',
        'name = "burgers"\nlambda1 = 1.0\nlambda2 = 0.003',
    )
    case = case_dir / "burgers.toml"
    case.write_text(burgers)
    assert _run_exit(case, tmp_path / "run") == 2
    err = _error(capsys)
    assert str(csv) in err and "sensor 2 lies outside the PDE's domain" in err
    assert "x = 5 is not in [-1, 1]" in err and "x in [-1, 1] x t in [0, 1]" in err
    assert "1 of 30 sensors outside" in err


def test_relative_tolerance_admits_sensors_on_the_boundary():
    ds = uq.data.sensors(x=np.array([-1.0, 1.0 + 1e-12]), t=np.array([0.0, 1.0]), u=np.ones(2))
    assert uq.data.check_domain(ds, {"x": (-1.0, 1.0), "t": (0.0, 1.0)}) is ds


def test_repeated_coordinates_are_documented_repeats(tmp_path, caplog):
    csv = tmp_path / "repeats.csv"
    csv.write_text("x,t,u\n0.1,0.2,1.0\n0.3,0.4,2.0\n0.1,0.2,1.1\n")
    with caplog.at_level(logging.WARNING, logger="ucsciml"):
        ds = uq.data.load(csv)
    assert ds.sizes["sensor"] == 3  # kept: repeated measurements at one point
    assert "sensor 2 = sensor 0 at x = 0.1, t = 0.2" in caplog.text
    assert "repeated independent measurements" in caplog.text


def test_noise_for_file_data_is_ignored_with_a_warning(case_dir, caplog):
    _heat_csv(case_dir / "sensors.csv")
    case = case_dir / "noisy.toml"
    case.write_text(
        FILE_CASE.format(path="sensors.csv").replace('path = "', 'noise = 0.05\npath = "')
    )
    with caplog.at_level(logging.WARNING, logger="ucsciml"):
        cfg = load_case(case)
    assert cfg["data"]["source"] == "file"
    assert "[data] noise only shape synthetic data and are ignored" in caplog.text
    assert "noise_std column" in caplog.text


@pytest.mark.parametrize("command", ["summary", "report"])
@pytest.mark.parametrize("kind", ["garbage", "truncated", "not-a-posterior"])
def test_corrupt_posterior_exits_2(tmp_path, capsys, command, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "posterior.nc"
    tree = xr.DataTree.from_dict(
        {"/posterior": xr.Dataset({"a": (("chain", "draw"), np.zeros((2, 500)))})}
    )
    if kind == "garbage":
        path.write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    elif kind == "truncated":
        write_datatree(tree, path)
        path.write_bytes(path.read_bytes()[:-500])
    else:
        uq.data.save(uq.data.sensors(x=np.zeros(2), u=np.ones(2)), path)
    assert main([command, str(run_dir)]) == 2
    err = _error(capsys)
    assert str(path) in err
    assert ("has no 'posterior' group" if kind == "not-a-posterior" else "truncated") in err


# --- file modes and compression -----------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_text(tmp_path / "f.txt", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_netcdf_compression_round_trips_exactly(tmp_path):
    # A smooth field repeated over draws, as a posterior's predictions often are.
    big = np.tile(np.sin(np.linspace(0, 3, 64)), (2, 100, 1)).astype(np.float32)
    tree = xr.DataTree.from_dict(
        {
            "/posterior": xr.Dataset(
                {"w": (("chain", "draw", "k"), big), "s": ((), 1.0), "n": (("chain",), [0, 1])}
            )
        }
    )
    enc = netcdf_encoding(tree)["/posterior"]
    assert enc["w"]["zlib"] and not enc["n"]["zlib"] and "s" not in enc
    small, plain = write_datatree(tree, tmp_path / "c.nc"), tmp_path / "u.nc"
    write_datatree(tree, plain, compress=False)
    assert small.stat().st_size < 0.5 * plain.stat().st_size
    with xr.open_datatree(small, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["posterior"]["w"].values, big)
        assert back["posterior"]["w"].encoding["zlib"]


# --- one tiny file-data run: relative path, resume inputs, run files, report warnings ------


@pytest.fixture(scope="module")
def backend():
    """The stand-in backend every run of this module fits with."""
    fake = _PriorDraws()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner.case_config, "build_backend", lambda cfg, name: fake)
        yield fake


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, backend):
    """A run of a case in ``cases/`` with ``[data] path = "sensors.csv"``, started from
    another working directory, under umask 022."""
    root = tmp_path_factory.mktemp("hardening")
    cases, elsewhere = root / "cases", root / "elsewhere"
    cases.mkdir()
    elsewhere.mkdir()
    _heat_csv(cases / "sensors.csv")
    case = _case(cases, "sensors.csv")
    out = root / "run"
    cwd, old_umask = os.getcwd(), os.umask(0o022)
    try:
        os.chdir(elsewhere)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "report", _quick_report)
            assert main(["-q", "run", str(case), "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
        os.umask(old_umask)
    return case, out


def test_relative_data_path_is_taken_from_the_case_folder(file_run):
    case, out = file_run
    config = (out / "config.toml").read_text()
    assert f'path = "{case.parent / "sensors.csv"}"' in config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_sha256"] == file_digest(case.parent / "sensors.csv")
    assert metrics["warnings"] == []


def test_run_files_are_group_readable_and_posterior_compressed(file_run):
    _, out = file_run
    for name in ("config.toml", "posterior.nc", "metrics.json", "log.txt", "report.html"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    with xr.open_datatree(out / "posterior.nc", engine="h5netcdf") as tree:
        encodings = [
            tree[node.path][name].encoding.get("zlib")
            for node in tree.subtree
            for name in node.dataset.data_vars
            if node.dataset[name].nbytes >= MIN_COMPRESSED_BYTES
        ]
        assert tree.attrs["ucsciml_inputs_hash"]
        versions = json.loads(tree.attrs["ucsciml_inputs"])["versions"]
    assert encodings and all(encodings)
    assert set(versions) == set(runner.NUMERIC_PACKAGES)


def test_resume_inputs_cover_package_versions(file_run, monkeypatch):
    case, out = file_run
    cfg = load_case(case)
    inputs = runner.run_inputs(cfg)
    chash = config_hash(cfg)
    ihash = config_hash({"config_hash": chash, **inputs})
    assert runner._reusable_tree(out / "posterior.nc", ihash, inputs) is not None
    real = runner.package_versions()
    monkeypatch.setattr(runner, "package_versions", lambda: {**real, "jax": "0.0.1"})
    moved = runner.run_inputs(cfg)
    assert moved["versions"]["jax"] == "0.0.1"
    assert config_hash({"config_hash": chash, **moved}) != ihash


def test_broken_report_is_a_warning_in_log_and_summary(file_run, monkeypatch, capsys):
    case, out = file_run

    def broken(tree, path):
        raise RuntimeError("the plot exploded")

    monkeypatch.setattr(runner, "report", broken)
    assert main(["-q", "run", str(case), "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: report.html not written: RuntimeError: the plot exploded" in printed
    assert "WARNING ucsciml: report.html not written" in (out / "log.txt").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed"] is True and len(metrics["warnings"]) == 1
    assert main(["summary", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "WARNING: report.html not written: RuntimeError: the plot exploded" in summary


def test_editing_the_sensor_file_makes_resume_refit(file_run, backend, monkeypatch):
    case, out = file_run  # runs last: it refits on other data
    monkeypatch.setattr(runner, "report", _quick_report)
    fits = len(backend.calls)
    assert main(["-q", "run", str(case), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed"] is True
    assert len(backend.calls) == fits
    before = json.loads((out / "metrics.json").read_text())["data_sha256"]
    _heat_csv(case.parent / "sensors.csv", seed=1)
    assert main(["-q", "run", str(case), "--out", str(out), "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed"] is False and metrics["data_sha256"] != before
    assert "the sensor data file changed" in (out / "log.txt").read_text()
    assert len(backend.calls) == fits + 1
