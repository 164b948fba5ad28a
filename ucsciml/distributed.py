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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

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
