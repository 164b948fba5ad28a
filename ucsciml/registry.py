"""Name registry for the CLI and case files: the one place the spine names models and backends.

Entries are ``"module:attribute"`` strings imported on use, so the spine never imports a
model or a backend at import time. Add a line here to make a new model or backend reachable
from case files and ``--backend``.

:data:`FAMILIES` lists every model family (one sub-package or module of ``ucsciml.models``)
with its entry point and a one-line description, for ``ucsciml list``; :data:`MODELS` is the
subset fitted to sensors on a ``[pde]``, :data:`CASES` the families whose case files bring
their own problem (:mod:`ucsciml.family_case`).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Family(NamedTuple):
    """A model family as ``ucsciml list`` shows it.

    Attributes:
        target: ``"module:attribute"`` of the model class one constructs, or ``"module"``
            for a family that is a set of functions (ProbConserv).
        description: one line: what the family is for.
    """

    target: str
    description: str


PDES: dict[str, str] = {
    "advection": "ucsciml.pde.advection:Advection",
    "burgers": "ucsciml.pde.burgers:Burgers",
    "heat": "ucsciml.pde.heat:Heat",
    "navier_stokes": "ucsciml.pde.navier_stokes:NavierStokes2D",
}

MODELS: dict[str, str] = {
    "bpinn": "ucsciml.models.bpinn:BayesianPINN",
    "spectral_gp": "ucsciml.models.spectral_gp:SpectralGP",
}

#: Operations the runner applies to a run's predictions, by case-file table: ``[conservation]``
#: conditions the predicted field on a conservation law (ProbConserv, after any backend).
UPDATES: dict[str, str] = {
    "conservation": "ucsciml.models.probconserv:conserve_prediction",
}

#: Family cases (:mod:`ucsciml.family_case`): a case file's ``[model] name`` for a family that
#: brings its own problem instead of sensors on a ``[pde]``.
CASES: dict[str, str] = {
    "rgnp": "ucsciml.models.rgnp.case:RGNPCase",
    "fbm_sde": "ucsciml.models.fbm_sde.case:HurstCase",
    "probconserv": "ucsciml.models.probconserv.case:ConservationCase",
}

FAMILIES: dict[str, Family] = {
    "bpinn": Family(
        "ucsciml.models.bpinn:BayesianPINN",
        "Bayesian PINN: network prior, data + PDE-residual likelihood, unknown PDE "
        "parameters as latent sites",
    ),
    "spectral_gp": Family(
        "ucsciml.models.spectral_gp:SpectralGP",
        "GP PDE solver: spectral-mixture kernels on a collocation grid, Kronecker algebra, "
        "exact field band for linear PDEs",
    ),
    "rgnp": Family(
        "ucsciml.models.rgnp:RGNP",
        "random-grid neural process: physics-trained forward field and GICNet inverse map "
        "for a parametric PDE family",
    ),
    "fbm_sde": Family(
        "ucsciml.models.fbm_sde:LatentSDE",
        "neural SDE driven by Markov-approximate fractional Brownian motion; VI with a "
        "control term, Hurst index learned",
    ),
    "probconserv": Family(
        "ucsciml.models.probconserv",
        "conservation law as a linear-Gaussian observation of any probabilistic surrogate "
        "(GP and attentive-NP base models)",
    ),
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
