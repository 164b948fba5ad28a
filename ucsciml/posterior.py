"""The Posterior: draws with leading ``(chain, draw)`` axes, their program, and the exits.

Every backend returns a :class:`Posterior`. Draws of latent (and deterministic) sites have
shape ``(chain, draw, *site_shape)``; ensembles and variational draws fit the same layout
(see each backend's docstring for how its members map onto ``chain``/``draw``). From here,
prediction, the ArviZ DataTree and saving are the same for every backend.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz_base as azb
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers

from ucsciml._io import write_datatree
from ucsciml._types import PRNGKey
from ucsciml.program import Program

SAMPLE_DIMS = ("chain", "draw")
#: ``Posterior.attrs`` flag of a posterior loaded from a file saved without network weights.
WEIGHTS_LEFT_OUT = "network_weights_left_out"
#: Backend kinds; diagnostics use this to decide which checks apply.
KINDS = ("mcmc", "variational", "laplace", "ensemble", "dropout")


@dataclass(frozen=True, eq=False)
class Posterior:
    """Posterior draws of a :class:`Program`.

    Attributes:
        samples: ``{site: (chain, draw, ...) array}`` for latent and deterministic sites.
        program: the program the draws belong to.
        key: PRNG key for the posterior-predictive draws stored by :meth:`to_datatree`
            (split from the backend's run key, so the tree is reproducible).
        sample_stats: ``{name: (chain, draw) array}``: divergences, tree depth, energy...
        kind: one of ``KINDS``; decides which diagnostics apply.
        attrs: provenance (backend settings, seed, versions, device count), JSON-able.
    """

    samples: Mapping[str, np.ndarray]
    program: Program
    key: PRNGKey
    sample_stats: Mapping[str, np.ndarray] = field(default_factory=dict)
    kind: str = "mcmc"
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Posterior.kind must be one of {KINDS}, got {self.kind!r}")
        samples = {k: np.asarray(v) for k, v in self.samples.items()}
        shapes = {k: v.shape[:2] for k, v in samples.items()}
        if (
            not samples
            or any(len(s) < 2 for s in shapes.values())
            or len(set(shapes.values())) != 1
        ):
            raise ValueError(
                f"Posterior.samples need one shared leading (chain, draw) shape; got {shapes}"
            )
        object.__setattr__(self, "samples", samples)
        object.__setattr__(
            self, "sample_stats", {k: np.asarray(v) for k, v in self.sample_stats.items()}
        )

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    def latent_samples(self) -> dict[str, np.ndarray]:
        """Draws of the latent sites only (what substitution into the model needs).

        Raises:
            ValueError: for a posterior saved without its network weights (the model would
                silently draw them from the prior).
        """
        latent = self.program.latent_sites()
        missing = [k for k in latent if k not in self.samples]
        if missing and self.attrs.get(WEIGHTS_LEFT_OUT):
            raise ValueError(
                f"this posterior was saved without its network weights {missing} "
                "([output] save_network_weights = false), so it cannot be evaluated at new "
                "points; use its stored predictions, or rerun with save_network_weights = true"
            )
        return {k: v for k, v in self.samples.items() if k in latent}

    def predict(
        self,
        points: np.ndarray,
        key: PRNGKey,
        *,
        sites: tuple[str, ...] | None = None,
        batch_size: int = 64,
    ) -> xr.Dataset:
        """Posterior predictive draws at new points.

        Args:
            points: ``(n, d)`` query points (columns in the data's coordinate order).
            key: PRNG key for observation noise and any other randomness.
            sites: sites to return; defaults to ``program.predict_sites``.
            batch_size: draws evaluated at once (bounds memory for large networks).

        Returns:
            ``xarray.Dataset`` with variables ``(chain, draw, point, ...)``.
        """
        points = np.asarray(points, dtype=float)
        if points.ndim != 2:
            raise ValueError(f"predict(points=...) needs an (n, d) array, got shape {points.shape}")
        sites = tuple(sites or self.program.predict_sites)
        inputs = self.program.query(points)
        draws = _map_draws(
            _site_values(self.program.fn, sites),
            self.latent_samples(),
            key,
            batch_size,
            data=(inputs, None),
        )
        data_vars = {s: (SAMPLE_DIMS + _point_dims(v.ndim - 2), v) for s, v in draws.items()}
        return xr.Dataset(data_vars)

    def posterior_predictive(self, key: PRNGKey, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Replicated data at the observed inputs, ``{observed site: (chain, draw, ...)}``."""
        fn = _site_values(self.program.fn, self.program.observed)
        data = (self.program.inputs, None)
        return _map_draws(fn, self.latent_samples(), key, batch_size, data=data)

    def log_likelihood(self, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Pointwise log-likelihood of the observed data, ``{site: (chain, draw, ...)}``."""
        fn = _site_log_probs(self.program.fn, self.program.observed)
        data = (self.program.inputs, self.program.targets)
        return _map_draws(fn, self.latent_samples(), jax.random.key(0), batch_size, data=data)

    def to_datatree(self) -> xr.DataTree:
        """The ArviZ DataTree: posterior, posterior_predictive, log_likelihood, sample_stats,
        observed_data and constant_data groups (those that apply)."""
        program = self.program
        groups: dict[str, dict[str, np.ndarray]] = {"posterior": dict(self.samples)}
        if program.observed:
            groups["posterior_predictive"] = self.posterior_predictive(self.key)
            groups["log_likelihood"] = self.log_likelihood()
            groups["observed_data"] = _observed_data(program)
        if self.sample_stats:
            groups["sample_stats"] = dict(self.sample_stats)
        constant = _flatten_inputs(program.inputs)
        if constant:
            groups["constant_data"] = constant
        dims = {k: list(v) for k, v in program.dims.items()}
        tree = azb.from_dict(groups, dims=dims, coords=dict(program.coords) or None)
        for node in tree.children.values():
            # netCDF cannot store an empty list attribute faithfully; drop it so that
            # save -> load round-trips exactly.
            if len(node.attrs.get("sample_dims", [None])) == 0:
                del node.attrs["sample_dims"]
        optimization = _optimization_group(self.attrs.get("optimization"))
        if optimization is not None:
            tree["optimization"] = xr.DataTree(optimization)
        tree.attrs.update(_netcdf_attrs(self._provenance()))
        return tree

    def save(self, path: str | os.PathLike, *, network_weights: bool = True) -> Path:
        """Write :meth:`to_datatree` as zlib-compressed netCDF, atomically. Read back with
        ``ucsciml.load``.

        Args:
            path: destination ``.nc`` file.
            network_weights: keep the draws of the network sites (``Program.network_sites``);
                ``False`` leaves them out (:func:`without_network_weights`): physical
                parameters, derived sites and every other group stay, but the saved tree can
                no longer predict at new points.
        """
        tree = self.to_datatree()
        return save_tree(tree if network_weights else without_network_weights(tree), path)

    @classmethod
    def from_datatree(cls, tree: xr.DataTree, program: Program, key: PRNGKey) -> Posterior:
        """Rebuild a Posterior from a saved tree and the program it was computed for."""
        post = tree["posterior"].to_dataset()
        stats = tree["sample_stats"].to_dataset() if "sample_stats" in tree.children else {}
        attrs = json.loads(tree.attrs.get("ucsciml_attrs", "{}"))
        if str(tree.attrs.get("ucsciml_network_weights_saved", 1)) == "0":
            attrs[WEIGHTS_LEFT_OUT] = True
        return cls(
            samples={k: post[k].values for k in post.data_vars},
            program=program,
            key=key,
            sample_stats={k: stats[k].values for k in getattr(stats, "data_vars", {})},
            kind=str(tree.attrs.get("ucsciml_kind", "mcmc")),
            attrs=attrs,
        )

    def _provenance(self) -> dict[str, Any]:
        return {
            "ucsciml_kind": self.kind,
            "ucsciml_program": self.program.name,
            "ucsciml_network_sites": list(self.program.network_sites),
            "ucsciml_physical_sites": list(self.program.physical_sites()),
            "ucsciml_attrs": dict(self.attrs),
            "ucsciml_program_attrs": dict(self.program.attrs),
        }


def draws_tree(
    posterior: Mapping[str, np.ndarray],
    *,
    kind: str,
    program: str,
    physical_sites: tuple[str, ...] | list[str] = (),
    optimization: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
    groups: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """A DataTree in the layout of :meth:`Posterior.to_datatree`, for a model family whose
    posterior is not the draws of a NumPyro program (an amortised encoder, a variational SDE,
    a closed-form Gaussian update): ``summary``, ``report``, ``compare`` and
    ``diagnostics.check`` read it as they read any run.

    Args:
        posterior: ``{site: (chain, draw, ...)}`` draws.
        kind: how the draws were made (``"mcmc"`` for chains R-hat applies to, ``"vi"``,
            ``"closed_form"``, ...).
        program: the model's name.
        physical_sites: the sites the report tabulates against their truths.
        optimization: the training record(s) (:meth:`ucsciml.optimize.Trained.record`); the
            first trace becomes the ``optimization`` group, every verdict is judged by
            ``diagnostics.check``.
        groups: further groups (``observed_data``, ``sample_stats``, ``posterior_predictive``).
        dims, coords: named dimensions of the sites, as ``arviz_base.from_dict`` takes them.
        attrs: the model's facts (e.g. ``{"truth": {...}}``), kept as program attributes.
    """
    records = (
        []
        if optimization is None
        else (
            [dict(optimization)]
            if isinstance(optimization, Mapping)
            else [dict(r) for r in optimization]
        )
    )
    data = {"posterior": dict(posterior), **{k: dict(v) for k, v in (groups or {}).items()}}
    tree = azb.from_dict(data, dims={k: list(v) for k, v in (dims or {}).items()}, coords=coords)
    for node in tree.children.values():
        if len(node.attrs.get("sample_dims", [None])) == 0:
            del node.attrs["sample_dims"]
    if records:
        group = _optimization_group(records[0])
        if group is not None:
            tree["optimization"] = xr.DataTree(group)
    verdicts = [r["convergence"] for r in records if isinstance(r.get("convergence"), dict)]
    record = {k: v for k, v in (records[0] if records else {}).items() if k != "trace"}
    if verdicts:
        record["convergence"] = verdicts if len(verdicts) > 1 else verdicts[0]
    tree.attrs.update(
        _netcdf_attrs(
            {
                "ucsciml_kind": kind,
                "ucsciml_program": program,
                "ucsciml_network_sites": [],
                "ucsciml_physical_sites": list(physical_sites),
                "ucsciml_attrs": {"optimization": record} if record else {},
                "ucsciml_program_attrs": dict(attrs or {}),
            }
        )
    )
    return tree


def _optimization_group(record: Any) -> xr.Dataset | None:
    """The optimiser's loss trace (VI's negative ELBO, a MAP or dropout fit's loss) as an
    ``optimization`` group: ``loss`` over ``step``, scalar facts (objective, convergence
    verdict, final loss) as attributes. ``None`` when the backend kept no trace."""
    if not isinstance(record, dict) or not record.get("trace"):
        return None
    loss = np.asarray(record["trace"], dtype=float)
    step = np.arange(loss.shape[0]) * int(record.get("trace_every", 1))
    attrs = {
        k: (int(v) if isinstance(v, bool) else v)
        for k, v in record.items()
        if isinstance(v, str | int | float | bool) and k != "trace_every"
    }
    return xr.Dataset({"loss": ("step", loss)}, coords={"step": step}, attrs=attrs)


def load(path: str | os.PathLike) -> xr.DataTree:
    """Load a DataTree written by :meth:`Posterior.save` (netCDF; no code is executed).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no posterior file at {path}; run `ucsciml run` first")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def save_tree(tree: xr.DataTree, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a DataTree as netCDF atomically, zlib-compressed unless ``compress=False``
    (:func:`ucsciml._io.write_datatree`)."""
    return write_datatree(tree, path, compress=compress)


def without_network_weights(tree: xr.DataTree) -> xr.DataTree:
    """The tree without the draws of its network sites (the ``ucsciml_network_sites``
    attribute :meth:`Posterior.to_datatree` writes) in the ``posterior`` group; the
    attribute ``ucsciml_network_weights_saved`` (0) says they were left out. Network weights
    are most of a neural surrogate's posterior file and no diagnostic judges them
    (permutation symmetry), while predictions and physical parameters are what a report
    shows."""
    network = [str(v) for v in tree_attr(tree, "ucsciml_network_sites", []) or []]
    tree = tree.copy()
    if "posterior" in tree.children:
        post = tree["posterior"].to_dataset()
        post = post.drop_vars([v for v in network if v in post])
        used = {d for v in post.data_vars.values() for d in v.dims}
        post = post.drop_vars([c for c in post.coords if not set(post[c].dims) <= used])
        tree["posterior"] = xr.DataTree(post)
    tree.attrs["ucsciml_network_weights_saved"] = 0
    return tree


def tree_attr(tree: xr.DataTree, name: str, default: Any = None) -> Any:
    """A provenance attribute of a tree written by ucsciml, JSON-decoded."""
    raw = tree.attrs.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return raw


@functools.lru_cache(maxsize=64)
def _site_values(fn: Callable, sites: tuple[str, ...]) -> Callable:
    """``one(sample, key, inputs, targets)``: the values of ``sites`` in one seeded run of
    ``fn`` with the latent ``sample`` substituted (one function per model and sites, so the
    compiled :func:`_map_draws` of a program is reused by every later call)."""

    def one(sample, key, inputs, targets):
        model = handlers.substitute(handlers.seed(fn, key), data=sample)
        trace = handlers.trace(model).get_trace(inputs, targets=targets)
        return {s: trace[s]["value"] for s in sites}

    return one


@functools.lru_cache(maxsize=64)
def _site_log_probs(fn: Callable, sites: tuple[str, ...]) -> Callable:
    """Like :func:`_site_values`, the pointwise log densities of ``sites``."""

    def one(sample, key, inputs, targets):
        model = handlers.substitute(handlers.seed(fn, key), data=sample)
        trace = handlers.trace(model).get_trace(inputs, targets=targets)
        return {s: trace[s]["fn"].log_prob(trace[s]["value"]) for s in sites}

    return one


def _map_draws(
    one: Callable,
    samples: Mapping[str, np.ndarray],
    key,
    batch_size: int,
    data: tuple = (),
):
    """Apply ``one(sample, key, *data)`` to every (chain, draw) in batches: one jitted
    ``lax.map``, no Python loop. ``data`` are traced, so a long-lived ``one`` (a model's
    :func:`_site_values`) compiles once per shapes, whatever the data and draws."""
    leading = next(iter(samples.values())).shape[:2]
    total = leading[0] * leading[1]
    flat = {k: jnp.reshape(jnp.asarray(v), (total, *v.shape[2:])) for k, v in samples.items()}
    keys = jax.random.split(key, total)
    mapped = _mapped(flat, keys, data, one=one, batch_size=min(batch_size, total))
    return {k: np.asarray(v).reshape(*leading, *v.shape[1:]) for k, v in mapped.items()}


@functools.partial(jax.jit, static_argnames=("one", "batch_size"))
def _mapped(flat, keys, data, *, one, batch_size):
    return jax.lax.map(lambda a: one(a[0], a[1], *data), (flat, keys), batch_size=batch_size)


def _observed_data(program: Program) -> dict[str, np.ndarray]:
    targets = program.targets
    if targets is None:
        return {}
    if isinstance(targets, Mapping):
        return {k: np.asarray(v) for k, v in targets.items() if k in program.observed}
    if len(program.observed) == 1:
        return {program.observed[0]: np.asarray(targets)}
    return {}


def _flatten_inputs(inputs) -> dict[str, np.ndarray]:
    if inputs is None:
        return {}
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items() if v is not None}
    leaves = jax.tree.leaves(inputs)
    if len(leaves) == 1:
        return {"inputs": np.asarray(leaves[0])}
    return {f"inputs_{i}": np.asarray(v) for i, v in enumerate(leaves)}


def _point_dims(ndim: int) -> tuple[str, ...]:
    return ("point", *(f"point_dim_{i}" for i in range(ndim - 1))) if ndim else ()


def _netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """netCDF attributes hold strings and numbers only: encode the rest as JSON."""
    out = {}
    for k, v in attrs.items():
        out[k] = (
            v
            if isinstance(v, str | int | float) and not isinstance(v, bool)
            else json.dumps(v, default=str)
        )
    return out
