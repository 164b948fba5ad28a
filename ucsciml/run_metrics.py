"""Scoring a run's posterior against the truth: parameter tables and field scores.

:func:`parameter_table` sets each unknown PDE parameter's posterior against its truth;
:func:`field_prediction` draws the program's field on the evaluation grid
(:func:`evaluation_grid`) with the true field where it is known, :func:`with_predictions`
stores it in the tree and :func:`field_metrics` scores it (:func:`ucsciml.calibration.summary`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ucsciml import calibration
from ucsciml.pde.base import AbstractPDE
from ucsciml.posterior import Posterior


def evaluation_grid(pde: AbstractPDE, sizes: list[int]) -> np.ndarray:
    """A tensor grid over the PDE's domain with ``sizes[i]`` points along coordinate ``i``."""
    axes = [np.linspace(*pde.domain[c], n) for c, n in zip(pde.coords, sizes, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def parameter_table(tree: xr.DataTree, pde: AbstractPDE) -> dict[str, dict[str, float]]:
    """Posterior mean, sd and 90% central interval of each unknown PDE parameter vs truth."""
    post = tree["posterior"].to_dataset()
    out = {}
    for name, unknown in pde.unknowns().items():
        if name not in post:
            continue
        draws = np.asarray(post[name].values, dtype=float).ravel()
        lo, hi = np.quantile(draws, [0.05, 0.95])
        row = {
            "mean": float(draws.mean()),
            "sd": float(draws.std()),
            "q05": float(lo),
            "q95": float(hi),
        }
        if unknown.truth is not None:
            truth = float(unknown.truth)
            row.update(
                truth=truth,
                rel_error=abs(row["mean"] - truth) / abs(truth),
                truth_in_90=bool(lo <= truth <= hi),
            )
        out[name] = row
    return out


def field_prediction(
    posterior: Posterior, pde: AbstractPDE, grid: list[int], key, *, truth: bool = True
) -> xr.Dataset | None:
    """Predictive draws of the program's field site (``Program.field_site``, e.g. ``u``) on the
    evaluation grid, with the true field when it is known.

    Args:
        truth: score against the PDE's reference solution (``False`` for file data, whose
            field the reference solution does not describe).

    Returns:
        ``Dataset`` with the field ``(chain, draw, *coords)`` and, where the PDE has a
        reference solution and ``truth``, ``<field>_true`` ``(*coords)``, the grid's
        coordinate values attached; ``None`` when the program has no field site, or the PDE
        has neither a reference solution nor a way to predict the field off the data.
    """
    field = posterior.program.field_site
    if field is None:
        return None
    points = evaluation_grid(pde, grid)
    reference = None
    if truth:
        try:
            # The scored field is the PDE's observable named as the program's field site: u
            # itself, or the x-velocity of a stream-function PDE (observable "u").
            reference = pde.solve_observables(points)[field]
        except (NotImplementedError, ValueError, KeyError):
            return None
    pred = posterior.predict(points, key, sites=(field,))[field].values
    sizes = [int(n) for n in grid]
    coords = {c: np.linspace(*pde.domain[c], n) for c, n in zip(pde.coords, sizes, strict=True)}
    dims = tuple(pde.coords)
    data = {field: (("chain", "draw", *dims), pred.reshape(*pred.shape[:2], *sizes))}
    if reference is not None:
        data[f"{field}_true"] = (dims, np.asarray(reference).reshape(sizes))
    return xr.Dataset(data, coords=coords)


def field_name(prediction: xr.Dataset) -> str:
    """The field's name in a :func:`field_prediction` dataset (its one variable that is not
    a ``<name>_true`` truth)."""
    (name,) = [str(v) for v in prediction.data_vars if not str(v).endswith("_true")]
    return name


def with_predictions(tree: xr.DataTree, prediction: xr.Dataset) -> xr.DataTree:
    """The tree with ``predictions`` (field draws) and, when known, the true field in
    ``predictions_constant_data``."""
    tree = tree.copy()
    field = field_name(prediction)
    tree["predictions"] = xr.DataTree(prediction[[field]])
    if f"{field}_true" in prediction:
        tree["predictions_constant_data"] = xr.DataTree(prediction[[f"{field}_true"]])
    return tree


def field_metrics(
    posterior: Posterior,
    pde: AbstractPDE,
    grid: list[int],
    key,
    *,
    prediction: xr.Dataset | None = None,
) -> dict[str, float]:
    """Scores of the predictive field against the true field on the evaluation grid.

    Relative L2 error of the mean, coverage at 50/90/95%, mean 90% width, CRPS, NLL (KDE)
    and miscalibration area from :func:`ucsciml.calibration.summary`.
    """
    if prediction is None:
        prediction = field_prediction(posterior, pde, grid, key)
    if prediction is None:
        return {}
    field = field_name(prediction)
    truth = prediction[f"{field}_true"]
    scores = calibration.summary(prediction[field], truth)
    return {**scores, "mean_width_90": scores["sharpness_90"], "grid_points": int(truth.size)}
