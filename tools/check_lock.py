"""Check that ``requirements.lock`` agrees with ``pyproject.toml``.

The lock pins the tested dependency set (``make lock`` writes it; ``make test``, ``make demo``
and CI install through ``pip install -c requirements.lock``). This check fails when:

- a line of the lock is not ``name==version`` (a comment or blank line is fine);
- a package is pinned twice;
- a requirement of ``[project] dependencies`` or of an optional extra (``dev``, ``cuda``) is
  not pinned (for ``jax[cuda12]`` that is ``jax``: the CUDA plugin packages it pulls in are
  not in a lock made on a CPU machine);
- a pinned version does not satisfy the requirement's range in ``pyproject.toml``.

With ``--installed`` it also checks the running environment: every pinned package must be
installed at its pinned version (a venv that drifted from the lock fails ``make test``).

Usage: ``python tools/check_lock.py [--installed] [--lock FILE] [--pyproject FILE]``.
Exit code 0 when consistent, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]


def read_lock(path: Path) -> tuple[dict[str, Version], list[str]]:
    """The lock's pins ``{canonical name: version}`` and the problems found reading it."""
    pins: dict[str, Version] = {}
    problems = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            problems.append(f"{path.name}:{number}: {raw.strip()!r} is not a name==version pin")
            continue
        try:
            parsed = Version(version.strip())
        except InvalidVersion:
            problems.append(f"{path.name}:{number}: {version.strip()!r} is not a version")
            continue
        key = canonicalize_name(name.strip())
        if key in pins:
            problems.append(f"{path.name}:{number}: {name.strip()} is pinned twice")
        pins[key] = parsed
    return pins, problems


def requirements(pyproject: Path) -> list[tuple[str, Requirement]]:
    """``(where, requirement)`` for every dependency and every optional extra's entry."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    out = [("dependencies", spec) for spec in project.get("dependencies", [])]
    for extra, specs in project.get("optional-dependencies", {}).items():
        out += [(f"[{extra}]", spec) for spec in specs]
    parsed = []
    for where, spec in out:
        try:
            parsed.append((where, Requirement(spec)))
        except InvalidRequirement as err:
            raise SystemExit(
                f"pyproject.toml {where}: {spec!r} is not a requirement: {err}"
            ) from None
    return parsed


def check(lock: Path, pyproject: Path) -> list[str]:
    """Every problem found, one line each; empty when the lock is consistent."""
    pins, problems = read_lock(lock)
    for where, req in requirements(pyproject):
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(
                f"{req.name} ({where} {req}) is not pinned in {lock.name}; run `make lock`"
            )
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"{lock.name} pins {req.name}=={version}, outside pyproject.toml's {where} "
                f"range '{req.specifier}'; widen the range or run `make lock`"
            )
    return problems


def check_installed(lock: Path) -> list[str]:
    """Pinned packages missing from, or at another version in, the running environment."""
    pins, problems = read_lock(lock)
    for name, pinned in sorted(pins.items()):
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={pinned} is pinned but not installed; run `make clean test`")
            continue
        if installed != pinned:
            problems.append(
                f"{name} {installed} is installed but {lock.name} pins {pinned}; reinstall with "
                f"`pip install -c {lock.name} -e '.[dev]'` or run `make lock`"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument(
        "--installed", action="store_true", help="also check the installed versions"
    )
    args = parser.parse_args(argv)
    problems = check(args.lock, args.pyproject)
    if args.installed:
        problems += check_installed(args.lock)
    for line in problems:
        print(f"check_lock: {line}", file=sys.stderr)
    if problems:
        return 1
    where = " and the installed packages" if args.installed else ""
    print(f"check_lock: {args.lock.name} is consistent with {args.pyproject.name}{where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
