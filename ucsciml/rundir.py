"""A run directory's shared files: reading them with errors that name the file, and a lock
so that two runs never write the same directory at once.

The lock is a file ``RUN_DIR/.lock`` created with ``O_CREAT | O_EXCL`` (atomic on POSIX file
systems, NFS included since v3) holding the owner's pid and host. A second run finds it and
refuses with :class:`RunDirectoryBusy`; a lock left by a process that died (killed, crashed)
is recognised by its pid no longer existing on this host and taken over, with a warning. A
lock from another host cannot be checked and is never taken over.

Example:
    >>> import tempfile
    >>> from ucsciml.rundir import lock
    >>> with lock(tempfile.mkdtemp()) as path:
    ...     path.name
    '.lock'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another live run holds the run directory's lock."""


@contextlib.contextmanager
def lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block; yields the lock file's path.

    Raises:
        RunDirectoryBusy: when a live process (or one on another host) holds the lock,
            naming it, the lock file and the fix.
    """
    path = Path(run_dir) / LOCK_NAME
    _acquire(path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _read(path).get("token") == _TOKEN:
                path.unlink()


#: Tells this process's locks from a later process that reused its pid.
_TOKEN = secrets.token_hex(8)


def _acquire(path: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "token": _TOKEN}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _read(path)
            if not _is_stale(path, holder):
                raise RunDirectoryBusy(_busy_message(path, holder)) from None
            _break(path, holder)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(owner, fh)
        return
    raise RunDirectoryBusy(
        f"{path.parent}: could not take the run directory's lock {path} (other runs keep "
        "taking it); wait for them to finish or use another --out"
    )


def _read(path: Path) -> dict[str, Any]:
    """The lock's owner, ``{}`` when the file is unreadable or half written."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


#: An unreadable lock this old was left by a run killed while writing it.
UNREADABLE_STALE_S = 10.0


def _is_stale(path: Path, holder: dict[str, Any]) -> bool:
    """A lock whose pid no longer exists on this host, or that has been unreadable for
    :data:`UNREADABLE_STALE_S` (its owner was killed while writing it); another host's lock
    is never stale."""
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_STALE_S
        except FileNotFoundError:
            return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _break(path: Path, holder: dict[str, Any]) -> None:
    """Remove a stale lock. It is renamed aside first and checked: if another run took the
    dead owner's lock over between our read and the rename, its lock is put back."""
    aside = path.with_name(f"{path.name}.{secrets.token_hex(6)}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run broke it first
    if _read(aside) != holder:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return
    aside.unlink()
    log.warning(
        "%s: took over the lock of run pid %s on %s, which is no longer running",
        path.parent,
        holder.get("pid"),
        holder.get("host"),
    )


def _busy_message(path: Path, holder: dict[str, Any]) -> str:
    who = (
        f"pid {holder['pid']} on {holder.get('host', '?')}"
        if "pid" in holder
        else "another run (its lock file is being written or unreadable)"
    )
    return (
        f"{path.parent}: the run directory is in use by {who} (lock file {path}); wait for "
        f"that run to finish or give another --out; if no run is using it, delete {path}"
    )


def load_tree(run_dir: str | os.PathLike):
    """The DataTree in ``run_dir/posterior.nc``.

    Raises:
        FileNotFoundError: when the folder or its ``posterior.nc`` is missing.
        DataError: when ``posterior.nc`` is not a readable posterior (truncated, corrupt,
            another kind of netCDF file), naming the file and the fix.
    """
    from ucsciml.data import DataError
    from ucsciml.posterior import load

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / "posterior.nc"
    try:
        tree = load(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{path}: not a readable posterior ({type(err).__name__}: {first}); the file is "
            f"truncated or corrupt: rerun the case with `ucsciml run ... --out {run_dir}`"
        ) from None
    if "posterior" not in tree.children:
        raise DataError(
            f"{path}: has no 'posterior' group (groups: {sorted(tree.children)}); it is not a "
            "posterior written by `ucsciml run`"
        )
    return tree


def load_metrics(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run_dir/metrics.json``, or ``None`` when absent.

    Raises:
        DataError: when the file is not a JSON object (truncated, corrupt), naming it.
    """
    from ucsciml.data import DataError

    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path}: not valid JSON ({err}); the file is truncated or corrupt: rerun the "
            f"case with `ucsciml run ... --out {run_dir}`"
        ) from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    return metrics
