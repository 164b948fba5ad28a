"""Provenance recorded with every posterior: versions, devices, config hash."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import jax

_PACKAGES = (
    "ucsciml",
    "jax",
    "jaxlib",
    "numpyro",
    "blackjax",
    "arviz-base",
    "arviz-stats",
    "optax",
    "equinox",
    "xarray",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    # Read once per process: the metadata lookups cost ~10 ms, more than a warm small run.
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def config_hash(config: Any) -> str:
    """A stable SHA-256 of a JSON-able config (keys sorted), first 16 hex digits."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions, platform, device layout and a timestamp, plus ``extra``."""
    return {
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": jax.default_backend(),
        "device_count": jax.device_count(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
