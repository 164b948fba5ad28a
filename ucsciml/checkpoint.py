"""Atomic checkpoints of a pytree of arrays and a step counter, as numpy ``.npz``.

Long optimisations save their state every few steps so that a killed run resumes where it
stopped. The file holds the flattened leaves (``leaf_0``, ``leaf_1``, ...), the step and a
fingerprint of whatever produced the state (settings, seed, data shapes); loading checks
the fingerprint and the leaf shapes against a template, so a checkpoint from another run is
ignored instead of silently continued. Nothing is pickled (``allow_pickle=False``) and the
write is a temp file + rename, so a kill mid-write leaves the previous checkpoint intact.
PRNG key leaves are stored as their raw key data and rewrapped from the template's impl.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._io import atomic_write
from ucsciml._types import PyTree

log = logging.getLogger(__name__)


class Checkpoint(NamedTuple):
    """A restored state: the pytree (template's structure) and the step it was saved at."""

    state: PyTree
    step: int


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


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

    return atomic_write(path, write)


def load(path: str | os.PathLike, like: PyTree, fingerprint: str) -> Checkpoint | None:
    """Restore a checkpoint written by :func:`save`, or ``None`` when there is none usable.

    Args:
        path: the ``.npz`` file.
        like: a template pytree with the structure, shapes and dtypes of the saved state.
        fingerprint: must equal the saved one; otherwise the file is ignored (logged).

    Returns:
        :class:`Checkpoint` or ``None`` (no file, other fingerprint, or other structure).
    """
    path = Path(path)
    if not path.exists():
        return None
    leaves, treedef = jax.tree.flatten(like)
    with np.load(path, allow_pickle=False) as data:
        if str(data["fingerprint"]) != str(fingerprint):
            log.warning("checkpoint %s belongs to another run (fingerprint differs); ignored", path)
            return None
        saved = [data[f"leaf_{i}"] for i in range(len(leaves)) if f"leaf_{i}" in data]
        step = int(data["step"])
    restored = []
    for template, value in zip(leaves, saved, strict=False):
        if _is_key(template):
            if value.shape != jax.random.key_data(template).shape:
                break
            restored.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(template)))
        else:
            if value.shape != np.shape(template):
                break
            restored.append(jnp.asarray(value, dtype=jnp.result_type(template)))
    if len(restored) != len(leaves):
        log.warning("checkpoint %s does not match this state's structure; ignored", path)
        return None
    return Checkpoint(jax.tree.unflatten(treedef, restored), step)


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint if present (a fresh, non-resumed run starts from scratch)."""
    Path(path).unlink(missing_ok=True)
