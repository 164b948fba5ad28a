"""Hardening, continued: the wheel ships the cases, property-based tests of every input,
no silent skips, compare on bad runs, run-directory locks.

The wheel is built once per session from a copy of the source tree (setuptools writes
``build/`` next to the sources, and a stale ``build/lib`` would leak removed modules into the
wheel); building takes about 5 s with pip's cache warm (pip fetches setuptools for the
isolated build, so it needs the package index or its cache).

The property-based tests (hypothesis, derandomized: the same inputs everywhere) run 1300
generated inputs in about 20 s; the counts per test and outcome are printed at the end of the
session (``tests/conftest.py``, ``pytest_terminal_summary``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import site
import subprocess
import sys
import time
import tomllib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import xarray as xr
from conftest import HYPOTHESIS_COUNTS, TINY_CASE, require_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ucsciml as uq
from ucsciml import rundir
from ucsciml.cli import CASE_DIR, DEFAULT_CASE, case_path, main

ROOT = Path(__file__).resolve().parents[1]

#: What a wheel is built from: everything pyproject.toml packages, nothing else.
SOURCES = ("pyproject.toml", "README.md", "ucsciml", "models", "inference", "case_studies")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built with ``pip wheel --no-deps`` from a copy of the sources."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), "."],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (root / "dist").glob("ucsciml-*.whl")
    print(
        f"\nwheel: {path.name}, {path.stat().st_size / 1024:.0f} KiB, "
        f"built in {time.perf_counter() - start:.1f} s"
    )
    return path


def test_wheel_ships_every_case_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        Path(n).name for n in names if n.startswith("ucsciml/cases/") and n.endswith(".toml")
    }
    assert shipped == {p.name for p in (ROOT / "case_studies").glob("*.toml")}
    assert f"{DEFAULT_CASE}.toml" in shipped
    assert not [n for n in names if "results/" in n or n.startswith("case_studies/")]
    assert {"ucsciml/cli.py", "ucsciml/models/bpinn.py", "ucsciml/inference/nuts.py"} <= names


def test_cases_are_found_by_name_in_a_source_checkout():
    assert CASE_DIR == ROOT / "case_studies"
    assert case_path(None) == CASE_DIR / f"{DEFAULT_CASE}.toml"
    assert case_path("heat_inverse_gp") == CASE_DIR / "heat_inverse_gp.toml"
    assert case_path("case_studies/heat_inverse_gp.toml") == Path(
        "case_studies/heat_inverse_gp.toml"
    )


WHEEL_CASE = """
[case]
name = "wheel_tiny"
seed = 0
backend = "ensemble"

[pde]
name = "heat"
kappa = { prior = "LogNormal", loc = -2.3, scale = 0.5, truth = 0.1 }

[data]
num_sensors = 20

[model]
name = "bpinn"
width = 4
depth = 1
num_collocation = 20
hard_constraints = true

[backend.ensemble]
num_members = 2

[backend.ensemble.map]
adam_steps = 10
lbfgs_steps = 0

[evaluation]
grid = [6, 4]
"""


def _install_wheel(wheel: Path, tmp_path: Path):
    """``pip install --no-deps`` the wheel into a fresh venv that sees this environment's
    dependencies (a ``.pth`` file, not the editable install). Returns the venv, its
    site-packages folder, a work folder outside the repository and ``run(*args)``, which runs
    a command there and returns its stdout (asserting exit code 0)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A path line in a .pth file adds the folder but not its own .pth files, so the repo's
    # editable-install finder stays out and `import ucsciml` can only find the wheel.
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(UCSCIML_CACHE_DIR="", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")

    def run(*args, timeout=600):
        done = subprocess.run(
            args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return venv, Path(purelib), work, run


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    """From a folder outside the repository, the installed wheel imports itself (not the
    sources), lists every shipped case, resolves the default case to its package data and
    runs a tiny case."""
    venv, purelib, work, run = _install_wheel(wheel, tmp_path)
    where = run(
        venv / "bin" / "python",
        "-c",
        "import ucsciml, ucsciml.cli as c, ucsciml.config as k; "
        "print(ucsciml.__file__); print(c.case_path(None)); "
        "print(k.load_case(c.case_path(None))['case']['name'])",
    ).split()
    installed = purelib / "ucsciml"
    assert where == [
        str(installed / "__init__.py"),
        str(installed / "cases" / f"{DEFAULT_CASE}.toml"),
        DEFAULT_CASE,
    ]
    listing = run(venv / "bin" / "ucsciml", "list")
    assert f"cases ({installed / 'cases'}):" in listing
    for path in (ROOT / "case_studies").glob("*.toml"):
        assert f"  {path.stem}\n" in listing
    (work / "tiny.toml").write_text(WHEEL_CASE)
    start = time.perf_counter()
    out = run(venv / "bin" / "ucsciml", "-q", "run", "tiny.toml")
    print(f"\ninstalled wheel: tiny case ran in {time.perf_counter() - start:.1f} s")
    run_dir = work / "runs" / "wheel_tiny" / "ensemble-seed0"
    assert f"run directory: {Path('runs/wheel_tiny/ensemble-seed0')}" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["warnings"] == [] and np.isfinite(metrics["parameters"]["kappa"]["mean"])
    assert {"config.toml", "posterior.nc", "report.html", "log.txt"} <= {
        p.name for p in run_dir.iterdir()
    }


@pytest.mark.slow
def test_installed_wheel_runs_the_default_case(wheel, tmp_path):
    """``ucsciml run`` with no case, from the installed wheel outside the repository: the
    full default case (about 4 minutes on 2 idle cores, compile cache off) writes a complete
    run directory whose coefficients are finite and whose truth is recorded."""
    venv, _, work, run = _install_wheel(wheel, tmp_path)
    start = time.perf_counter()
    out = run(venv / "bin" / "ucsciml", "-q", "run", timeout=1800)
    print(f"\ninstalled wheel: default case ran in {time.perf_counter() - start:.1f} s")
    (run_dir,) = (work / "runs" / DEFAULT_CASE).iterdir()
    assert f"run directory: {run_dir.relative_to(work)}" in out
    assert {"config.toml", "posterior.nc", "report.html", "log.txt", "metrics.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"], "the default case is an inverse problem: it has coefficients"
    for name, summary in metrics["parameters"].items():
        assert np.isfinite(summary["mean"]) and np.isfinite(summary["sd"]), name
        assert summary["q05"] < summary["q95"] and "truth_in_90" in summary, name


# --- no silent skips ----------------------------------------------------------------------


def test_require_or_skip_fails_under_ci_and_skips_otherwise(monkeypatch):
    require_or_skip(True, "never raised")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Chromium is missing .*CI=true"):
        require_or_skip(False, "Chromium is missing")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="Chromium is missing"):
        require_or_skip(False, "Chromium is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_or_skip(False, "Chromium is missing")


def test_chromium_and_device_tests_use_require_or_skip():
    for name in ("conftest.py", "test_multidevice.py"):
        text = (ROOT / "tests" / name).read_text()
        assert "require_or_skip(" in text and "skipif" not in text, name


# --- compare on bad runs ------------------------------------------------------------------


def _loo_run(root: Path, name: str, seed: int) -> Path:
    """A run directory whose posterior has a ``log_likelihood`` group (a normal mean)."""
    from ucsciml._io import write_datatree, write_json

    rng = np.random.default_rng(seed)
    y = rng.normal(size=20)
    mu = rng.normal(0.0, 0.2, size=(2, 100))
    loglik = -0.5 * (y - mu[..., None]) ** 2 - 0.5 * np.log(2 * np.pi)
    tree = xr.DataTree.from_dict(
        {
            "/posterior": xr.Dataset({"mu": (("chain", "draw"), mu)}),
            "/log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), loglik)}),
            "/observed_data": xr.Dataset({"y": (("obs",), y)}),
        }
    )
    tree.attrs["ucsciml_case"] = name
    run = root / name
    write_datatree(tree, run / "posterior.nc")
    write_json(run / "metrics.json", {"backend": "nuts", "wall_time_s": 1.0})
    return run


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "metrics"])
def test_compare_on_a_corrupt_run_exits_2_naming_the_file(tmp_path, capsys, kind):
    good = _loo_run(tmp_path, "good", 0)
    bad = _loo_run(tmp_path, "bad", 1)
    path = bad / ("metrics.json" if kind == "metrics" else "posterior.nc")
    content = {"garbage": b"\x89HDF\r\n" + b"0" * 100, "empty": b""}.get(kind)
    path.write_bytes(path.read_bytes()[:-10] if content is None else content)
    assert main(["-q", "compare", str(good), str(bad), "--html", str(tmp_path / "c.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ucsciml: error: ") and "\n" not in err and "Traceback" not in err
    expected = "not valid JSON" if kind == "metrics" else "not a readable posterior"
    assert str(path) in err and expected in err


def test_loo_failures_are_visible_warnings_in_compare(tmp_path, capsys, monkeypatch):
    import arviz_stats as azs

    from ucsciml._io import write_datatree

    a, b, c = (_loo_run(tmp_path, n, s) for n, s in (("a", 0), ("b", 1), ("c", 2)))
    real_loo = azs.loo

    def loo(tree, *args, **kwargs):
        if tree.attrs["ucsciml_case"] == "b":
            raise RuntimeError("the PSIS fit exploded\nsecond line")
        return real_loo(tree, *args, **kwargs)

    monkeypatch.setattr(azs, "loo", loo)
    html = tmp_path / "c.html"
    assert main(["-q", "compare", str(a), str(b), str(c), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: b: ELPD-LOO not computed: RuntimeError: the PSIS fit exploded" in out
    assert "second line" not in out
    row_b = next(ln for ln in out.splitlines() if ln.startswith("b "))
    assert "failed (see below)" in row_b
    assert "LOO rank: 0 = best" in out  # a and c are still ranked
    assert "no ELPD-LOO" not in out
    assert "ELPD-LOO not computed: RuntimeError: the PSIS fit exploded" in html.read_text()

    def broken_compare(trees, *args, **kwargs):
        raise ValueError("runs observe different data")

    monkeypatch.setattr(azs, "compare", broken_compare)
    assert main(["compare", str(a), str(c), "--html", str(html)]) == 0
    captured = capsys.readouterr()
    assert "WARNING: LOO rank not computed: ValueError: runs observe different data" in (
        captured.out
    )
    assert "LOO ranking not computed" in captured.err  # also logged
    without = tmp_path / "no-loglik"
    tree = xr.open_datatree(a / "posterior.nc", engine="h5netcdf").load()
    write_datatree(tree.drop_nodes("log_likelihood"), without / "posterior.nc")
    assert main(["-q", "compare", str(a), str(without), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "no-loglik: no ELPD-LOO: posterior.nc has no log_likelihood group" in out


# --- run-directory lock -------------------------------------------------------------------


def _write_lock(run_dir: Path, pid: int) -> Path:
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / rundir.LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "other"}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_on_a_directory_held_by_a_live_run_exits_2(tmp_path, capsys):
    case = tmp_path / "tiny.toml"
    case.write_text(TINY_CASE)
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _write_lock(out, sleeper.pid)
        before = lock.read_text()
        assert main(["-q", "run", str(case), "--out", str(out)]) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err.strip()
    assert err.startswith("ucsciml: error: ") and "\n" not in err
    assert f"{out}: the run directory is in use by pid {sleeper.pid}" in err
    assert str(lock) in err and "give another --out" in err
    assert lock.read_text() == before  # the holder's lock is untouched
    assert [p.name for p in out.iterdir()] == [rundir.LOCK_NAME]  # nothing else written


def test_a_dead_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run_dir = tmp_path / "run"
    dead = _dead_pid()
    lock = _write_lock(run_dir, dead)
    with caplog.at_level("WARNING", logger="ucsciml"), rundir.lock(run_dir) as held:
        assert held == lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(rundir.RunDirectoryBusy, match=f"in use by pid {os.getpid()}"):
            with rundir.lock(run_dir):
                pass
    assert f"took over the lock of run pid {dead}" in caplog.text
    assert not lock.exists() and list(run_dir.iterdir()) == []


def test_unreadable_and_foreign_host_locks(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / rundir.LOCK_NAME
    lock.write_text("")  # a run killed between creating and writing it
    with pytest.raises(rundir.RunDirectoryBusy, match="being written or unreadable"):
        with rundir.lock(run_dir):
            pass
    old = time.time() - 2 * rundir.UNREADABLE_STALE_S
    os.utime(lock, (old, old))
    with rundir.lock(run_dir):
        pass
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "another-host", "token": "x"}))
    with pytest.raises(rundir.RunDirectoryBusy, match="on another-host"):
        with rundir.lock(run_dir):
            pass


def test_lock_is_released_when_the_run_fails(tmp_path, capsys):
    case = tmp_path / "bad.toml"
    case.write_text(
        TINY_CASE.replace("num_sensors = 30\nnoise = 0.01", 'source = "file"\npath = "x.csv"')
    )
    (tmp_path / "x.csv").write_text("x,t,u\n0.1,0.2,abc\n")
    out = tmp_path / "run"
    assert main(["-q", "run", str(case), "--out", str(out)]) == 2
    assert "is not a number" in capsys.readouterr().err
    assert not (out / rundir.LOCK_NAME).exists()


_RACER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])
rundir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rundir)
while time.time() < float(sys.argv[3]):
    pass
try:
    with rundir.lock(sys.argv[2]):
        time.sleep(1.5)
    print("ran")
except rundir.RunDirectoryBusy:
    print("refused")
"""


def test_runs_started_at_once_on_a_stale_lock_admit_exactly_one(tmp_path):
    """Four processes race for a directory whose lock a dead run left behind."""
    run_dir = tmp_path / "run"
    _write_lock(run_dir, _dead_pid())
    start = str(time.time() + 1.0)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, rundir.__file__, str(run_dir), start],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert results == ["ran", "refused", "refused", "refused"]
    assert list(run_dir.iterdir()) == []


# --- property-based: data loaders, case-file validation, the CLI ---------------------------
#
# Each property: an input either passes (and then holds no NaN/inf anywhere) or raises the
# project's own error (DataError/ConfigError; exit code 2 through the CLI) with a message
# naming the file or the field. Any other exception fails the test. Inference is never run:
# the CLI's run stops after validation, data loading and building the objects.

FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same inputs on every machine and every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _count(test: str, outcome: str) -> None:
    HYPOTHESIS_COUNTS[(test, outcome)] += 1


def _finite_everywhere(ds: xr.Dataset) -> bool:
    arrays = [ds[name].values for name in [*ds.data_vars, *ds.coords]]
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)


def _names_field_or_file(message: str, *paths) -> bool:
    """The message names one of ``paths``, a ``[table]``, or a quoted field/column."""
    return (
        any(str(p) in message for p in paths)
        or re.search(r"\[[A-Za-z_.]+\]", message) is not None
        or re.search(r"(field|column|coordinate)\(?s?\)? '", message) is not None
    )


COLUMN_NAMES = st.one_of(
    st.sampled_from(
        ["x", "t", "u", "noise_std", "y", "sensor", "name", "values", "attrs", "", " x ", "x y"]
    ),
    st.text(max_size=6),
)
GOOD_CELLS = st.floats(0.01, 0.99).map(repr)
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", " ", "nan", "-inf", "Infinity", "1e999", "1_0", "0x10", "1.0.0", "."]),
    st.text(max_size=5),
)


@st.composite
def csv_files(draw) -> bytes:
    """CSV-like bytes. Half are well-formed sensor files (a usual header, rows of numbers in
    the unit square), most of them with one defect: a bad cell, a short or long row, a cut,
    another encoding. The other half are a header of random column names over rows of random
    cells."""
    if draw(st.booleans()):
        header = draw(st.sampled_from([["x", "t", "u"], ["t", "x", "u", "noise_std"], ["y", "u"]]))
        row = st.lists(GOOD_CELLS, min_size=len(header), max_size=len(header))
        rows = draw(st.lists(row, min_size=1, max_size=6))
        defect = draw(st.sampled_from(["none", "none", "cell", "row", "cut", "encoding"]))
        if defect == "cell":
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, len(header) - 1))] = draw(
                CELLS
            )
        elif defect == "row":
            rows[draw(st.integers(0, len(rows) - 1))].extend(draw(st.lists(CELLS, max_size=1)))
            rows[-1] = rows[-1][: draw(st.integers(0, len(rows[-1])))]
    else:
        header = draw(st.lists(COLUMN_NAMES, max_size=4))
        if draw(st.booleans()):
            header.append("u")
        rows = draw(
            st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header)), max_size=6)
        )
        defect = draw(st.sampled_from(["none", "cut", "encoding"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    for cells in [header, *rows]:
        writer.writerow(cells)
    text = buffer.getvalue()
    if defect == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    encoding = "utf-8"
    if defect == "encoding":
        encoding = draw(st.sampled_from(["utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    return text.encode(encoding, errors="replace")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _load_property(test: str, path: Path) -> None:
    try:
        ds = uq.data.load(path)
    except uq.data.DataError as err:
        message = str(err)
        ok = message.startswith(str(path)) and "\n" not in message
        _count(test, "DataError" if ok else "FAILED")
        assert ok, message
        return
    except Exception:
        _count(test, "FAILED")
        raise
    finite = _finite_everywhere(ds)
    _count(test, "loaded" if finite else "FAILED")
    assert finite, ds


@settings(FUZZ, max_examples=300)
@given(content=csv_files())
def test_csv_loader_on_random_csv_text(fuzz_dir, content):
    path = fuzz_dir / "random.csv"
    path.write_bytes(content)
    _load_property("csv text", path)


@settings(FUZZ, max_examples=150)
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".nc"]))
def test_loaders_on_random_bytes(fuzz_dir, content, suffix):
    path = fuzz_dir / f"bytes{suffix}"
    path.write_bytes(content)
    _load_property("random bytes", path)


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
#: Few distinct values, so that coordinates repeat (duplicate sensors).
COORDS = st.one_of(FLOATS, st.sampled_from([0.0, 0.5, 1.0]))


@st.composite
def sensor_arrays(draw) -> dict:
    n = draw(st.integers(0, 6))
    names = draw(
        st.lists(st.sampled_from(["x", "t", "y", "z"]), min_size=1, max_size=3, unique=True)
    )

    def column(elements):
        length = n if draw(st.integers(0, 9)) else draw(st.integers(0, 7))  # some mismatched
        if draw(st.integers(0, 9)) == 0:
            return draw(arrays(np.float64, (length, 2), elements=elements))  # 2-D
        return draw(arrays(np.float64, (length,), elements=elements))

    coords = {c: column(COORDS) for c in names}
    noise = draw(st.one_of(st.none(), FLOATS, st.builds(lambda: column(FLOATS))))
    return {"u": column(FLOATS), "noise_std": noise, **coords}


@settings(FUZZ, max_examples=200)
@given(fields=sensor_arrays())
def test_sensor_arrays_are_rejected_or_round_trip_exactly(fuzz_dir, fields):
    test = "sensor arrays"
    try:
        ds = uq.data.sensors(**fields)
    except uq.data.DataError as err:
        ok = _names_field_or_file(str(err)) or "sensors(" in str(err) or "0 sensors" in str(err)
        _count(test, "DataError" if ok else "FAILED")
        assert ok, str(err)
        return
    except Exception:
        _count(test, "FAILED")
        raise
    try:
        assert _finite_everywhere(ds)
        for suffix in (".csv", ".nc"):
            back = uq.data.load(uq.data.save(ds, fuzz_dir / f"roundtrip{suffix}"))
            np.testing.assert_array_equal(uq.data.points(back), uq.data.points(ds))
            np.testing.assert_array_equal(uq.data.observations(back), uq.data.observations(ds))
            assert uq.data.coordinate_names(back) == uq.data.coordinate_names(ds)
    except Exception:
        _count(test, "FAILED")
        raise
    _count(test, "round-tripped")


@st.composite
def netcdf_datasets(draw) -> xr.Dataset:
    """netCDF-writable data sets that are often not valid sensor data: other dtypes, dims,
    missing or misnamed coordinates and attributes."""
    n = draw(st.integers(0, 4))
    dtype = draw(st.sampled_from(["float64", "float32", "int64", "int8", "bool", "str"]))
    dims = draw(st.sampled_from([("sensor",), ("sensor", "k"), ("other",), ()]))
    shape = tuple({"sensor": n, "k": 2, "other": n}[d] for d in dims)
    if dtype == "float32":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=32)
        values = draw(arrays(np.float32, shape, elements=elements))
    else:
        values = draw(arrays(np.float64, shape, elements=FLOATS))
    if dtype == "str":
        u = values.astype(str)
    elif dtype == "bool":
        u = values > 0
    elif dtype.startswith("int"):
        u = np.nan_to_num(values, posinf=0, neginf=0).clip(-100, 100).astype(dtype)
    else:
        u = values.astype(dtype)
    name = draw(st.sampled_from(["u", "u", "v"]))
    coords = {}
    for c in draw(st.lists(st.sampled_from(["x", "t"]), max_size=2, unique=True)):
        coords[c] = ("sensor", draw(arrays(np.float64, (n,), elements=COORDS)))
    attrs = {}
    if draw(st.booleans()):
        attrs["coords"] = draw(st.sampled_from(["x t", "x", "t x", "q", ""]))
    if draw(st.booleans()):
        attrs["observed"] = draw(st.sampled_from(["u", "v", "u v", ""]))
    return xr.Dataset({name: (dims, u)}, coords=coords, attrs=attrs)


@settings(FUZZ, max_examples=100)
@given(ds=netcdf_datasets())
def test_netcdf_loader_on_random_datasets(fuzz_dir, ds):
    path = fuzz_dir / "random.nc"
    path.unlink(missing_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
    _load_property("netCDF data sets", path)


def _write_edge_file(path: Path, kind: str) -> None:
    import h5py

    if kind == "huge-field":
        path.write_bytes(b"x,t,u\n" + b"1" * 200_000 + b",0.1,0.2\n")
    elif kind == "complex":
        ds = xr.Dataset({"u": ("sensor", [1 + 2j, 3j])}, coords={"x": ("sensor", [0.1, 0.2])})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # h5netcdf: complex is not standard netCDF
            ds.to_netcdf(path, engine="h5netcdf", invalid_netcdf=True)
    else:  # plain HDF5 without netCDF dimensions
        with h5py.File(path, "w") as fh:
            fh["u"] = np.arange(3.0)
            fh["x"] = np.arange(3.0)


@pytest.mark.parametrize(
    ("kind", "suffix", "expected"),
    [
        ("huge-field", ".csv", "line 2 is not valid CSV (field larger than field limit"),
        ("complex", ".nc", "field 'u' has dtype complex128; expected real numbers"),
        ("plain-hdf5", ".nc", "data has no 'sensor' dimension (dims: {'phony_dim_0': 3})"),
    ],
)
def test_loader_edge_files_found_beyond_the_generators(tmp_path, kind, suffix, expected):
    path = tmp_path / f"sensors{suffix}"
    _write_edge_file(path, kind)
    with pytest.raises(uq.data.DataError) as err:
        uq.data.load(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


# Case-file validation: a valid tiny case, mutated.

VALUES = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([0, -1, 1, 2, 10**6]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["nuts", "heat", "bpinn", "file", "LogNormal", "map", "normal"]),
        st.booleans(),
        st.dates(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["prior", "loc", "scale", "truth", "name", "k"]), children, max_size=3
        ),
    ),
    max_leaves=6,
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "name",
            "seed",
            "backend",
            "source",
            "path",
            "num_sensors",
            "noise",
            "width",
            "depth",
            "kappa",
            "grid",
            "num_samples",
            "num_chains",
            "map",
            "prior",
            "truth",
        ]
    ),
    st.text(min_size=1, max_size=6),
)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('[case]\nname = "tiny_heat"\nseed = 0\n', "case = 0\n", "[case] must be a table"),
        (
            "[backend.nuts]\n",
            "[backend]\nnuts = 5\n[backend.x]\n",
            "[backend.nuts] must be a table",
        ),
        ('name = "bpinn"', "name = [1]", "[model] needs name = one of"),
        ("truth = 0.1", "truth = nan", "[pde.kappa] truth = nan is not a finite number"),
        ("truth = 0.1", 'truth = "a"', "prior LogNormal: truth must be a finite number, got 'a'"),
        ('prior = "LogNormal"', 'prior = ["LogNormal"]', "unknown prior ['LogNormal']"),
        ("grid = [8, 4]", 'grid = ["a", 4]', "[evaluation] grid must be 2 positive integers"),
        ("grid = [8, 4]", "grid = [8]", "the number of points along x, t"),
        ('name = "tiny_heat"', 'name = "../x"', "[case] name must be a plain folder name"),
        ("seed = 0", "seed = -1", "[case] seed must be an integer >= 0, got -1"),
        ("width = 8", 'width = "8"', "[model] width must be an integer, got '8'"),
        ("width = 8", "width = 8.0", "[model] width must be an integer, got 8.0"),
        ("num_samples = 30", "num_samples = inf", "[backend.nuts] num_samples = inf is not a"),
        ("max_tree_depth = 4", "engine = 1", "[backend.nuts] engine must be one of"),
        ("noise = 0.01", "noise = true", "[data] noise must be float, got True"),
        (
            "width = 8",
            "residual_std = {loc = 1}",
            "[model] residual_std must be a number or a prior",
        ),
    ],
)
def test_case_file_values_found_by_hypothesis_exit_2_naming_the_field(
    tmp_path, capsys, old, new, expected
):
    assert old in TINY_CASE
    case = tmp_path / "case.toml"
    case.write_text(TINY_CASE.replace(old, new, 1))
    assert main(["-q", "run", str(case), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ucsciml: error: {case}: ") and "\n" not in err
    assert expected in err, err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def _tables(cfg, prefix=()):
    yield prefix, cfg
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from _tables(value, (*prefix, key))


@st.composite
def case_dicts(draw) -> dict:
    """The tiny case (synthetic or file data, any backend) with 1-3 random edits: a value
    replaced (any TOML type, NaN/inf, out-of-range numbers), a key added or removed."""
    cfg = tomllib.loads(TINY_CASE)
    cfg["case"]["backend"] = draw(st.sampled_from(["nuts", "vi", "laplace", "ensemble", "dropout"]))
    if draw(st.booleans()):
        cfg["data"] = {"source": "file", "path": "sensors.csv"}
    for _ in range(draw(st.integers(1, 3))):
        tables = list(_tables(cfg))
        where, table = draw(st.sampled_from(tables))
        action = draw(st.sampled_from(["set", "set", "nudge", "nudge", "nudge", "add", "delete"]))
        numbers = sorted(k for k, v in table.items() if type(v) in (int, float))
        if action == "nudge" and numbers:  # a number of the same type, in range or not
            key = draw(st.sampled_from(numbers))
            table[key] = draw(
                st.integers(-3, 300) if type(table[key]) is int else st.floats(-1.0, 10.0)
            )
        elif action == "delete" and table:
            del table[draw(st.sampled_from(sorted(table)))]
        elif action == "set" and table:
            table[draw(st.sampled_from(sorted(table)))] = draw(VALUES)
        else:
            table[draw(KEYS)] = draw(VALUES)
    return cfg


def _nonfinite(obj, where=""):
    if isinstance(obj, float) and not math.isfinite(obj):
        return [where]
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _nonfinite(v, f"{where}.{k}")]
    if isinstance(obj, list | tuple):
        return [w for i, v in enumerate(obj) for w in _nonfinite(v, f"{where}[{i}]")]
    return []


def _validate(cfg) -> str:
    """What the CLI's run does before inference: build the PDE, load file data, build the
    backend and the model. Returns ``"valid"``."""
    from ucsciml import config, runner

    pde = config.build(cfg["pde"], "pde")
    if cfg["data"]["source"] == "file":
        runner._load_data(cfg, pde)
    config.build_backend(cfg, cfg["case"]["backend"])
    config.build(cfg["model"], "model", pde=pde)
    return "valid"


@settings(FUZZ, max_examples=300)
@given(raw=case_dicts())
def test_case_validation_on_random_case_dicts(raw):
    from ucsciml.config import ConfigError, resolve_config

    test = "case dicts"
    try:
        cfg = resolve_config(raw, source="fuzz.toml")
        bad = _nonfinite(cfg)
        assert not bad, f"non-finite values passed validation at {bad}"
        if cfg["data"]["source"] == "file":
            cfg["data"]["path"] = "/nonexistent/sensors.csv"
            cfg["data"] = {**cfg["data"], "source": "synthetic"}  # no file here: see CLI test
        outcome = _validate(cfg)
    except ConfigError as err:
        ok = _names_field_or_file(str(err), "fuzz.toml") and "\n" not in str(err)
        _count(test, "ConfigError" if ok else "FAILED")
        assert ok, str(err)
        return
    except Exception:
        _count(test, "FAILED")
        raise
    _count(test, outcome)


class _Validated(Exception):
    """Raised by the stand-in ``run_case``: the case passed every check before inference."""


@st.composite
def case_files(draw) -> tuple[bytes, bytes]:
    """(case file bytes, sensor CSV bytes): a mutated case dict written as TOML, sometimes
    with its text damaged (truncated, a byte changed, another encoding)."""
    cfg = draw(case_dicts())
    try:
        text = tomli_w.dumps(cfg)
    except (TypeError, ValueError):
        text = TINY_CASE
    damage = draw(st.sampled_from(["none", "none", "truncate", "byte", "latin-1"]))
    data = text.encode()
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "byte" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif damage == "latin-1":
        data = (text + "\n# caf\u00e9\n").encode("latin-1", errors="replace")
    sensors = draw(st.one_of(csv_files(), st.just(GOOD_CSV)))
    return data, sensors


def _good_csv() -> bytes:
    ds = uq.data.synthetic_sensors(uq.pde.Heat(kappa=0.1), 20, 0.01, 0)
    buffer = io.StringIO()
    columns = ["x", "t", "u", "noise_std"]
    table = np.stack([np.asarray(ds[c].values) for c in columns], axis=-1)
    np.savetxt(buffer, table, delimiter=",", header=",".join(columns), comments="")
    return buffer.getvalue().encode()


GOOD_CSV = _good_csv()


@settings(FUZZ, max_examples=250)
@given(files=case_files())
def test_cli_run_on_random_bad_case_files(fuzz_dir, files):
    from ucsciml import runner

    test = "CLI run"
    case, csv_path = fuzz_dir / "case.toml", fuzz_dir / "sensors.csv"
    case.write_bytes(files[0])
    csv_path.write_bytes(files[1])

    def validate_only(cfg, *, backend=None, seed=None, out=None, resume=False):
        _validate(cfg)
        raise _Validated

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_case", validate_only)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(["-q", "run", str(case), "--out", str(fuzz_dir / "run")])
        except _Validated:
            _count(test, "valid")
            return
        except BaseException:
            _count(test, "FAILED")
            raise
    errors = [ln for ln in stderr.getvalue().splitlines() if ln.startswith("ucsciml: error: ")]
    ok = (
        code == 2
        and len(errors) == 1
        and "Traceback" not in stderr.getvalue()
        and _names_field_or_file(errors[0], case, csv_path)
    )
    _count(test, "exit 2" if ok else "FAILED")
    assert ok, (code, stderr.getvalue())
