"""Case files for model families whose data are not sensors on one PDE's domain.

The B-PINN and the spectral GP are fitted to sensors of a PDE (``[pde]``, ``[data]``,
``[evaluation]``) by a backend; the other families bring their own problem: the random-grid
neural process learns a parametric PDE family, the fractional-noise SDE a time series,
ProbConserv conditions a base model on a conservation law. Each such family registers a
**family case** in :data:`ucsciml.registry.CASES`: a frozen dataclass whose fields are the
``[model]`` table (strictly checked like every table: unknown keys fail, values are checked
against the annotations, sub-tables through ``metadata["table"]``), which generates its data
with the project's reference solvers and runs one of its ``backends``.

A family case file has ``[case]``, ``[model]`` (with ``name`` the family), optional
``[backend.<name>]`` tables for the backends the family hands to the shared inference layer
(NUTS over the fOU Kalman likelihood, for instance) and ``[output]``; the PDE-sensor tables
``[pde]``, ``[data]``, ``[evaluation]`` and ``[calibration]`` do not apply and are refused.

:meth:`FamilyCase.run` returns a :class:`FamilyRun`: a DataTree in the layout of
``Posterior.to_datatree`` (:func:`ucsciml.posterior.draws_tree` builds one; an
``optimization`` group and verdict for every training, ``predictions`` with a
``<name>_true`` in ``predictions_constant_data`` for a field the report scores) and the
family's headline numbers, which the runner writes to ``metrics.json`` under ``"family"``
and the report shows under "Results".
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, NamedTuple, Protocol

import xarray as xr

from ucsciml._types import PRNGKey


class FamilyRun(NamedTuple):
    """What a family case produced: the posterior tree and its headline numbers."""

    tree: xr.DataTree
    metrics: dict[str, Any]


class FamilyCase(Protocol):
    """The contract of a registered family case (a frozen dataclass of its settings)."""

    #: Backend names this family can run (``[case] backend`` must be one of them).
    backends: ClassVar[tuple[str, ...]]

    def run(self, backend: str, settings: Any, *, key: PRNGKey, progress: bool) -> FamilyRun:
        """Generate the data, fit with ``backend`` and return the tree and numbers.

        Args:
            backend: one of :attr:`backends`.
            settings: the built ``ucsciml.inference`` backend of that name with the case's
                ``[backend.<name>]`` settings, or ``None`` for a backend the family runs
                itself (its amortised or variational fit).
            key: the run's PRNG key.
            progress: show progress bars.
        """
        ...


def family_metrics(tree: xr.DataTree) -> dict[str, Any]:
    """The headline numbers a family run stored in its tree (``ucsciml_metrics``)."""
    raw = tree.attrs.get("ucsciml_metrics")
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
