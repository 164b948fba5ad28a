"""``ucsciml launch --processes N -- run CASE``: one distributed run as N local processes.

For testing the multi-host path on one machine, and for splitting one large machine into
several JAX processes. Each process gets the coordinator's address (a free loopback port),
the process count and its index (:data:`ucsciml.distributed.ENV`) and its share of the CPU
cores as XLA host devices, then runs the same ``ucsciml`` command; process 0 writes the run
directory. When one process fails (or is killed) the others are stopped and the launch fails
with the failing process's code (1 for a signal) and a one-line message naming it; a rerun
with ``--resume`` reuses a finished ``posterior.nc`` or continues from process 0's
checkpoints (see :func:`ucsciml.distributed.share_files`).

On a cluster, skip the launcher: ``srun ucsciml run CASE --distributed`` (SLURM) or
``mpirun -n N ucsciml run CASE --distributed`` (Open MPI), where JAX reads the process layout
from the scheduler.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from ucsciml.distributed import ENV

#: Seconds between polls of the processes.
POLL_S = 0.2


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(
    index: int, processes: int, port: int, devices: int, base: dict | None = None
) -> dict:
    """Environment of process ``index``: the coordinator, its index and its XLA devices."""
    env = dict(os.environ if base is None else base)
    flags = " ".join(
        f
        for f in env.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    )
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env.update(dict(zip(ENV, (f"127.0.0.1:{port}", str(processes), str(index)), strict=True)))
    return env


def launch(processes: int, argv: Sequence[str], devices: int | None = None) -> int:
    """Run ``ucsciml ARGV`` as ``processes`` cooperating processes; returns the exit code.

    Args:
        processes: number of processes (>= 1).
        argv: the ``ucsciml`` command line for every process, e.g. ``["run", "case.toml"]``.
        devices: XLA CPU devices per process (default: the cores divided among them).

    Raises:
        ValueError: for a non-positive count or an empty command.
    """
    if not (isinstance(processes, int) and processes >= 1):
        raise ValueError(f"launch --processes must be a positive integer, got {processes!r}")
    if not argv:
        raise ValueError("launch needs a command after `--`, e.g. `-- run CASE`")
    if devices is None:
        devices = max(1, len(os.sched_getaffinity(0)) // processes)
    port = free_port()
    command = [sys.executable, "-m", "ucsciml.cli", *argv]
    procs = [
        subprocess.Popen(command, env=process_env(i, processes, port, devices))
        for i in range(processes)
    ]
    try:
        return _wait(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _first_failure(codes: Sequence[int | None]) -> tuple[int, int] | None:
    """``(index, code)`` of the process that failed first among those seen failed in one
    poll: one killed by a signal (``kill -9``, the OOM killer) before one that exited with
    an error, which is usually a peer losing its collective with the killed one; then the
    lowest index."""
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if not failed:
        return None
    return min(failed, key=lambda ic: (ic[1] > 0, ic[0]))


def _reason(code: int) -> str:
    if code > 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def _wait(procs: list[subprocess.Popen]) -> int:
    while True:
        codes = [proc.poll() for proc in procs]
        first = _first_failure(codes)
        if first is not None:
            index, code = first
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            print(
                f"ucsciml launch: process {index} of {len(procs)} {_reason(code)}; the others "
                "were stopped. Rerun the same command with `--resume` to continue from its "
                "checkpoints and finished work",
                file=sys.stderr,
            )
            return code if code > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(POLL_S)
