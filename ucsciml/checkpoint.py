"""Atomic checkpoints of a pytree of arrays and a step counter, as numpy ``.npz``.

Long optimisations save their state every few steps so that a killed run resumes where it
stopped. The file holds the flattened leaves (``leaf_0``, ``leaf_1``, ...), the step and a
fingerprint of whatever produced the state (settings, seed, data shapes); loading checks
the fingerprint and the leaf shapes against a template, so a checkpoint from another run is
ignored instead of silently continued. Nothing is pickled (``allow_pickle=False``) and the
write is a temp file + rename, so a kill mid-write leaves the previous checkpoint intact.
PRNG key leaves are stored as their raw key data and rewrapped from the template's impl.

A backend names each long phase's file after the phase (``nuts-sample.npz``,
``ensemble-Adam.npz``, ...) and fingerprints it with :func:`fingerprint` (its settings, key,
data bytes and starting point), so a checkpoint of other settings or data is never resumed.

**Test hook.** With the environment variable ``UCSCIML_TEST_KILL_AFTER_CHUNK=phase:n`` the
process sends itself ``SIGKILL`` right after writing the ``n``-th checkpoint of ``phase``
(the file's stem) in this process: the kill-and-resume tests crash a run at a chosen point
exactly as ``kill -9`` would, with no cleanup. ``phase:n@p`` kills only process ``p`` of a
distributed run (``jax.process_index()``), the others then lose it mid-collective.

In a distributed run every process checkpoints into its own run directory (process 0 into
the real one, the others into scratch folders), so no two processes write one file; a
resumed run starts every process from process 0's files (``ucsciml.runner``).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import signal
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._io import atomic_write
from ucsciml._types import PyTree
from ucsciml.provenance import config_hash

log = logging.getLogger(__name__)

#: The environment variable of the test hook (see the module docstring).
KILL_AFTER = "UCSCIML_TEST_KILL_AFTER_CHUNK"
_writes: collections.Counter[str] = collections.Counter()  # checkpoints written, by phase


class Slot(NamedTuple):
    """Where a backend's phases checkpoint: ``folder/<prefix>-<phase>.npz``, all under one
    ``fingerprint`` (:func:`fingerprint` of what the phases compute from)."""

    folder: str | os.PathLike
    prefix: str
    fingerprint: str

    def path(self, phase: str) -> Path:
        return Path(self.folder) / f"{self.prefix}-{phase}.npz"

    def save(self, phase: str, state: PyTree, step: int) -> Path:
        """:func:`save` of ``phase``'s state under this slot's fingerprint."""
        return save(self.path(phase), state, step, self.fingerprint)

    def load(self, phase: str, like: PyTree) -> Checkpoint | None:
        """:func:`load` of ``phase``'s state under this slot's fingerprint."""
        return load(self.path(phase), like, self.fingerprint)


class Checkpoint(NamedTuple):
    """A restored state: the pytree (template's structure) and the step it was saved at."""

    state: PyTree
    step: int


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def fingerprint(settings: dict, key, arrays: PyTree = None, *extra) -> str:
    """A hash of what a checkpointed computation depends on: JSON-able ``settings``, the PRNG
    ``key``'s data, the bytes of every leaf of ``arrays`` (data, starting points) and any
    JSON-able ``extra`` (a program name, a phase)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(arrays):
        value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        value = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    key_data = np.asarray(jax.random.key_data(key)).tolist()
    return config_hash([settings, key_data, digest.hexdigest(), *extra])


def save(path: str | os.PathLike, state: PyTree, step: int, fingerprint: str) -> Path:
    """Write ``state`` (any pytree of arrays) and ``step`` to ``path`` atomically.

    Args:
        path: destination ``.npz`` file.
        state: pytree of arrays (PRNG key arrays allowed).
        step: number of finished steps the state reflects.
        fingerprint: identifies the computation (e.g. a hash of settings and seed).

    Returns:
        The destination path.
    """
    if isinstance(step, bool) or int(step) < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
    leaves = jax.tree.leaves(state)
    arrays = {
        f"leaf_{i}": np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        for i, x in enumerate(leaves)
    }
    arrays["step"] = np.asarray(int(step), dtype=np.int64)
    arrays["fingerprint"] = np.asarray(str(fingerprint))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    path = atomic_write(path, write)
    _kill_hook(Path(path).stem)
    return path


def _kill_hook(phase: str) -> None:
    """``SIGKILL`` this process after the ``n``-th checkpoint of ``phase`` when
    :data:`KILL_AFTER` is ``phase:n`` (tests only)."""
    spec = os.environ.get(KILL_AFTER)
    if not spec:
        return
    spec, _, process = spec.partition("@")
    if process and process != str(jax.process_index()):
        return
    name, _, count = spec.rpartition(":")
    _writes[phase] += 1
    if name == phase and count.isdigit() and _writes[phase] == int(count):
        log.warning("%s=%s: killing this process after checkpoint %s", KILL_AFTER, spec, phase)
        os.kill(os.getpid(), signal.SIGKILL)


def load(path: str | os.PathLike, like: PyTree, fingerprint: str) -> Checkpoint | None:
    """Restore a checkpoint written by :func:`save`, or ``None`` when there is none usable.

    Args:
        path: the ``.npz`` file.
        like: a template pytree with the structure, shapes and dtypes of the saved state
            (arrays, or ``jax.ShapeDtypeStruct`` leaves as :func:`jax.eval_shape` returns).
        fingerprint: must equal the saved one; otherwise the file is ignored (logged).

    Returns:
        :class:`Checkpoint` or ``None`` (no file, other fingerprint, or other structure).
    """
    path = Path(path)
    if not path.exists():
        return None
    leaves, treedef = jax.tree.flatten(like)
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != str(fingerprint):
                log.warning(
                    "checkpoint %s belongs to another run (fingerprint differs); ignored", path
                )
                return None
            saved = [data[f"leaf_{i}"] for i in range(len(leaves)) if f"leaf_{i}" in data]
            step = int(data["step"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("checkpoint %s is unreadable (%s: %s); ignored", path, type(err).__name__, err)
        return None
    restored = []
    for template, value in zip(leaves, saved, strict=False):
        if _is_key(template):
            if value.shape != jax.eval_shape(jax.random.key_data, template).shape:
                break
            restored.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(template)))
        else:
            if value.shape != np.shape(template):
                break
            restored.append(jnp.asarray(value, dtype=template.dtype))
    if len(restored) != len(leaves):
        log.warning("checkpoint %s does not match this state's structure; ignored", path)
        return None
    return Checkpoint(jax.tree.unflatten(treedef, restored), step)


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint if present (a fresh, non-resumed run starts from scratch)."""
    Path(path).unlink(missing_ok=True)
