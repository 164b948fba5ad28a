"""Atomic file writes: a crash never leaves a half-written file in a run directory.

Files are created with the process's umask (typically 0644), like any file the user writes,
so a group-readable run directory stays readable to colleagues; netCDF trees are written
zlib-compressed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: zlib level of netCDF variables: on a 48 MB Laplace posterior level 4 writes 33.0 MB in
#: 2.6 s, level 9 32.9 MB in 4.8 s (the shuffle filter does most of the work on floats).
NETCDF_COMPLEVEL = 4


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Write a file through ``write_fn(tmp_path)`` and rename it into place.

    The temporary file lives in the destination folder, so the final ``os.replace`` is an
    atomic rename on POSIX file systems: readers see the old file or the new one, never a
    partial one.

    Args:
        path: destination.
        write_fn: callable that writes the complete file at the path it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(path)
    try:
        write_fn(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _create_temp(path: Path) -> Path:
    """An empty new file next to ``path``, created with mode ``0o666`` less the umask.

    ``tempfile.mkstemp`` would create it 0600 (and the rename would keep that), making every
    run file private to its owner whatever the user's umask says.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def write_datatree(tree, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Atomically write an ``xarray.DataTree`` as netCDF (h5netcdf), zlib-compressed.

    Args:
        tree: the DataTree.
        path: destination ``.nc`` file.
        compress: zlib (level :data:`NETCDF_COMPLEVEL`, with the shuffle filter) on every
            numeric variable of at least :data:`MIN_COMPRESSED_BYTES`; ``False`` writes every
            variable uncompressed (also one read from a compressed file).

    Returns:
        The destination path.
    """
    encoding = netcdf_encoding(tree, compress=compress)
    return atomic_write(path, lambda p: tree.to_netcdf(p, engine="h5netcdf", encoding=encoding))


#: Smaller variables are stored as they are: their chunk index costs about what zlib saves
#: (measured on run directories: a 16 KiB floor gives the smallest files).
MIN_COMPRESSED_BYTES = 16 * 1024


def netcdf_encoding(tree, *, compress: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-group, per-variable encoding for ``DataTree.to_netcdf(encoding=...)``.

    Scalars cannot be chunked (so not compressed) and strings are left as they are. With
    ``compress=False`` every numeric variable is set uncompressed, overriding the encoding
    a tree read from a compressed file carries.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for node in tree.subtree:
        group = {}
        for name, var in node.dataset.variables.items():
            if not var.ndim or var.dtype.kind not in "biuf":
                continue
            if compress and var.nbytes >= MIN_COMPRESSED_BYTES:
                group[str(name)] = {"zlib": True, "complevel": NETCDF_COMPLEVEL, "shuffle": True}
            else:
                group[str(name)] = {"zlib": False, "shuffle": False}
        if group:
            out[node.path] = group
    return out


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (non-finite floats become ``null``)."""
    return write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
