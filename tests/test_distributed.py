"""Distributed runs: local processes on loopback against one process with as many devices.

Each test starts real processes (JAX's multi-controller runtime over gloo on CPU): chains and
members are split over every process's devices with the same keys as on one host, so the
draws equal a one-process run over the same number of devices.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_CASE

from ucsciml import distributed
from ucsciml.launch import free_port, launch, process_env

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
    """A one-process environment with ``devices`` XLA CPU devices and no launcher variables."""
    env = process_env(0, 1, 0, devices, dict(os.environ, UCSCIML_CACHE_DIR=""))
    return {k: v for k, v in env.items() if k not in distributed.ENV}


def _single(out: Path, kind: str, devices: int) -> dict:
    env = _env(devices)
    subprocess.run([sys.executable, str(WORKER), str(out), kind], env=env, check=True, cwd=ROOT)
    return dict(np.load(out))


def _multi(out: Path, kind: str, processes: int, devices: int) -> dict:
    port, base = free_port(), dict(os.environ, UCSCIML_CACHE_DIR="")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), kind],
            env=process_env(i, processes, port, devices, base),
            cwd=ROOT,
        )
        for i in range(processes)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0] * processes
    return dict(np.load(out))


@pytest.mark.parametrize(
    "kind",
    [
        "numpyro",
        pytest.param("ensemble", marks=pytest.mark.slow),
        pytest.param("sbc", marks=pytest.mark.slow),
    ],
)
def test_two_processes_equal_one_process_with_as_many_devices(tmp_path, kind):
    """4 NUTS chains, 8 ensemble members or a 20-replicate SBC (BlackJAX NUTS) over 2
    processes x 2 devices: the same draws (ranks), bit for bit, as 1 process x 4 devices."""
    one = _single(tmp_path / "one.npz", kind, 4)
    two = _multi(tmp_path / "two.npz", kind, 2, 2)
    assert (int(one["processes"]), int(one["devices"])) == (1, 4)
    assert (int(two["processes"]), int(two["devices"])) == (2, 4)
    np.testing.assert_array_equal(two["beta"], one["beta"])


@pytest.mark.slow
def test_launch_writes_the_run_directory_of_a_one_process_run(tmp_path, monkeypatch):
    """`ucsciml launch --processes 2 -- run CASE`: process 0 writes a run directory with the
    same files and groups as a one-process run over the same devices, and the same draws."""
    case = tmp_path / "tiny.toml"
    case.write_text(TINY_CASE)
    monkeypatch.setenv("UCSCIML_CACHE_DIR", "")
    monkeypatch.chdir(tmp_path)
    assert launch(2, ["-q", "run", str(case), "--out", str(tmp_path / "two")], devices=1) == 0
    env = _env(2)
    cmd = [sys.executable, "-m", "ucsciml.cli", "-q", "run", str(case), "--out", "one"]
    subprocess.run(cmd, env=env, check=True, cwd=tmp_path)
    files = {p.name for p in (tmp_path / "one").iterdir()}
    assert files == {p.name for p in (tmp_path / "two").iterdir()}
    one = xr.open_datatree(tmp_path / "one" / "posterior.nc")
    two = xr.open_datatree(tmp_path / "two" / "posterior.nc")
    assert set(one.children) == set(two.children)
    # Latent draws agree exactly; deterministic sites computed from them (the field "u") by
    # ~1 float32 ulp (measured 2.2e-7), as the same values are reduced in another fusion.
    for name, value in one["posterior"].ds.data_vars.items():
        np.testing.assert_allclose(
            two["posterior"].ds[name].values, value.values, rtol=1e-6, atol=1e-6
        )


def test_launch_stops_every_process_when_one_fails(tmp_path, capsys):
    """A failing process fails the launch with its exit code and a message naming it."""
    code = launch(2, ["run", str(tmp_path / "missing.toml")], devices=1)
    assert code == 2
    assert "exited with code 2" in capsys.readouterr().err


def test_launcher_settings_are_checked():
    assert distributed.settings_from_env({}) is None
    with pytest.raises(ValueError, match="UCSCIML_PROCESS_ID not set"):
        distributed.settings_from_env({"UCSCIML_COORDINATOR": "h:1", "UCSCIML_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="not in"):
        distributed.settings_from_env(dict(zip(distributed.ENV, ("h:1", "2", "2"), strict=True)))
    with pytest.raises(ValueError, match="positive integer"):
        launch(0, ["list"])
