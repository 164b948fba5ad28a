"""Several processes, one run: JAX's multi-controller runtime over every process's devices.

Every process runs the same program (``ucsciml run`` with the same case and seed); after
:func:`initialize`, ``jax.devices()`` lists the devices of all processes, the chain mesh of
:mod:`ucsciml.inference._chains` spans them, and chain ``i`` still has key
``fold_in(root, i)``, so the draws do not depend on how chains are laid over hosts. Only
process 0 writes the run directory (:func:`is_main`).

The coordinator comes from explicit arguments, from the variables the local launcher sets
(:data:`ENV`, see ``ucsciml launch``), or from SLURM / Open MPI, which
``jax.distributed.initialize()`` detects by itself.

What is gathered: chain states are brought to every host between sampling chunks
(:func:`gather`), so each host holds all chains' draws (``chains x draws x parameters``
floats, the size of ``posterior.nc``'s posterior group). Per-process draw shards are not
written yet.

``--resume``: every process must take the same decisions (reuse ``posterior.nc``, continue
from ``checkpoints/``, or refit) from the same bytes. Process 0 holds the lock of the run
directory and reads it; :func:`share_files` sends its ``posterior.nc`` and checkpoint files
to every other process, which writes them into its own scratch run directory (no shared
file system is needed, and only process 0 ever writes the run directory). The processes then
compare digests of what they hold and of the run's inputs (config, data file, package
versions): copies that differ anywhere make every process refit from scratch, inputs that
differ stop the run with an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)

#: Environment variables the local launcher sets for each process.
ENV = ("UCSCIML_COORDINATOR", "UCSCIML_NUM_PROCESSES", "UCSCIML_PROCESS_ID")


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """The launcher's coordinator settings, ``None`` when the variables are absent.

    Raises:
        ValueError: when only some of :data:`ENV` are set, or they are not integers.
    """
    environ = os.environ if environ is None else environ
    present = [name for name in ENV if name in environ]
    if not present:
        return None
    if len(present) != len(ENV):
        missing = sorted(set(ENV) - set(present))
        raise ValueError(f"distributed run: {', '.join(missing)} not set (set all of {ENV})")
    try:
        count, index = int(environ[ENV[1]]), int(environ[ENV[2]])
    except ValueError as err:
        raise ValueError(f"distributed run: {ENV[1]} and {ENV[2]} must be integers") from err
    if not 0 <= index < count:
        raise ValueError(f"distributed run: process id {index} is not in [0, {count})")
    return {"coordinator_address": environ[ENV[0]], "num_processes": count, "process_id": index}


def initialize(settings: Mapping | None = None) -> None:
    """Start JAX's distributed runtime (before any computation), from ``settings``, the
    launcher's variables, or the cluster's (SLURM, Open MPI) when neither is given."""
    settings = settings if settings is not None else settings_from_env()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**(settings or {}))
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main() -> bool:
    """Whether this process writes the run's files (process 0, or the only one)."""
    return jax.process_index() == 0


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def put(tree, sharding):
    """``tree`` (the same values on every process) laid out by a possibly global sharding."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf):
        if _is_key(leaf):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(np.asarray(leaf), sharding)

    return jax.tree.map(one, tree)


def gather(tree):
    """Every leaf whole on every process (a no-op in one process)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def one(leaf):
        if _is_key(leaf):
            data = multihost_utils.process_allgather(jax.random.key_data(leaf), tiled=True)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return multihost_utils.process_allgather(leaf, tiled=True)

    return jax.tree.map(one, tree)


def _broadcast_bytes(blob: bytes) -> bytes:
    """Process 0's ``blob`` on every process (the others' ``blob`` is ignored)."""
    from jax.experimental import multihost_utils

    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(blob), np.int32)))
    if size == 0:
        return b""
    data = np.frombuffer(blob, np.uint8) if is_main() else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8).tobytes()


def _digest(folder: Path, names: Iterable[str]) -> np.ndarray:
    digest = hashlib.sha256()
    for name in sorted(names):
        path = folder / name
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes() if path.is_file() else b"\0missing")
    return np.frombuffer(digest.digest(), np.uint8)


def share_files(folder: str | os.PathLike, names: Iterable[str], *, agree_on: str = "") -> bool:
    """Give every process process 0's copy of ``folder``'s files ``names`` (relative paths).

    Process 0's ``names`` count (the others' are ignored): every other process removes
    those files from its own ``folder`` and writes process 0's copies of the ones that
    exist there. Then all processes compare a digest of the copies and of ``agree_on`` (a
    hash of the run's inputs). A no-op in one process.

    Returns:
        Whether every process now holds the same bytes (the same answer on every process).

    Raises:
        ValueError: on every process, when ``agree_on`` differs between processes.
    """
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    folder = Path(folder)
    blob = b""
    if is_main():
        listed = sorted(set(names))
        parts = [(folder / n).read_bytes() if (folder / n).is_file() else None for n in listed]
        sizes = [-1 if p is None else len(p) for p in parts]
        header = json.dumps([list(row) for row in zip(listed, sizes, strict=True)]).encode()
        blob = len(header).to_bytes(8, "little") + header + b"".join(p or b"" for p in parts)
    blob = _broadcast_bytes(blob)
    length = int.from_bytes(blob[:8], "little")
    rows = json.loads(blob[8 : 8 + length])
    if not is_main():
        from ucsciml._io import atomic_write

        offset = 8 + length
        for name, size in rows:
            target = folder / name
            target.unlink(missing_ok=True)
            if size < 0:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            part = blob[offset : offset + size]
            atomic_write(target, lambda tmp, part=part: tmp.write_bytes(part))
            offset += size
    inputs = np.frombuffer(hashlib.sha256(agree_on.encode()).digest(), np.uint8)
    mine = np.concatenate([inputs, _digest(folder, [name for name, _ in rows])])
    every = np.asarray(multihost_utils.process_allgather(mine))
    if not (every[:, :32] == every[0, :32]).all():
        raise ValueError(
            "distributed run: the processes disagree on the run's inputs (the config, the "
            "sensor data file or the package versions); give every process the same ones"
        )
    same = bool((every == every[0]).all())
    if not same:
        log.warning(
            "distributed run: the processes' copies of %s differ; every process refits", folder
        )
    return same
