"""Name registry for the CLI and case files: the one place the spine names models and backends.

Entries are ``"module:attribute"`` strings imported on use, so the spine never imports a
model or a backend at import time. Add a line here to make a new model or backend reachable
from case files and ``--backend``.
"""

from __future__ import annotations

import importlib
from typing import Any

PDES: dict[str, str] = {
    "burgers": "ucsciml.pde.burgers:Burgers",
    "heat": "ucsciml.pde.heat:Heat",
    "navier_stokes": "ucsciml.pde.navier_stokes:NavierStokes2D",
}

MODELS: dict[str, str] = {
    "bpinn": "ucsciml.models.bpinn:BayesianPINN",
    "spectral_gp": "ucsciml.models.spectral_gp:SpectralGP",
}

BACKENDS: dict[str, str] = {
    "nuts": "ucsciml.inference.nuts:NUTS",
    "vi": "ucsciml.inference.vi:VI",
    "laplace": "ucsciml.inference.laplace:Laplace",
    "ensemble": "ucsciml.inference.ensemble:DeepEnsemble",
    "dropout": "ucsciml.inference.dropout:MCDropout",
}


def resolve(table: dict[str, str], name: str, kind: str) -> Any:
    """Import the object registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in table:
        raise ValueError(f"unknown {kind} '{name}'; choose one of {sorted(table)}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
