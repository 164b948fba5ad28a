"""The Program: a model definition compiled against data into a NumPyro program.

A :class:`Program` is what every backend consumes. It carries the NumPyro model function
``fn(inputs, targets=None)``, the arrays it was compiled with, ArviZ ``dims``/``coords`` for
every site, and ``query(points)`` to build inputs for prediction at new points. It is a
frozen shell: nothing in it changes after construction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import jax
import numpy as np
from numpyro import handlers

from ucsciml._types import PyTree

#: What an abstract trace raises when the model's Python code needs concrete values.
NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


class ModelDefinition(Protocol):
    """What :func:`compile` needs of a model definition: a ``compile(data)`` method."""

    def compile(self, data: Any) -> Program: ...


@dataclass(frozen=True, eq=False)
class Program:
    """A NumPyro model with its data, site dims and a prediction query.

    Attributes:
        fn: NumPyro model ``fn(inputs, targets=None)``.
        inputs: pytree of arrays the model was compiled with.
        targets: observed values (pytree or ``None``).
        dims: ``{site: dim names}`` for the non-sample axes of every site.
        coords: ``{dim: coordinate values}``.
        query_fn: maps an ``(n, d)`` array of points to ``inputs`` for prediction.
        observed: data-likelihood sites (for ``log_likelihood``, posterior predictive,
            observed data); pseudo-observations such as PDE residuals are not listed.
        predict_sites: sites returned by ``Posterior.predict``.
        network_sites: latent sites that are network weights: excluded from convergence
            diagnostics because permutation symmetry makes their R-hat meaningless.
        name: a short label for reports.
        attrs: extra facts for reports (e.g. ``{"truth": {"lambda1": 1.0}}``), JSON-able.
        field_site: the site that is the solution field: ``ucsciml run`` predicts it on the
            evaluation grid and scores it against the PDE's observable of the same name
            (default ``"u"`` when the model has a ``u`` site, else none).
        field_fn: optional ``(sample, points) -> (n,)`` field of one posterior draw
            (``sample``: latent site values) at ``(n, d)`` points, differentiable in the points;
            used by :mod:`ucsciml.physics` for PDE residuals at new points.
    """

    fn: Callable[..., None]
    inputs: PyTree
    targets: PyTree = None
    dims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    query_fn: Callable[[np.ndarray], PyTree] | None = None
    observed: tuple[str, ...] = ()
    predict_sites: tuple[str, ...] = ()
    network_sites: tuple[str, ...] = ()
    name: str = "program"
    attrs: Mapping[str, Any] = field(default_factory=dict)
    field_fn: Callable[[Mapping[str, Any], Any], Any] | None = None
    field_site: str | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Program.fn must be a NumPyro model function, got {type(self.fn)}")
        object.__setattr__(
            self, "dims", MappingProxyType({k: tuple(v) for k, v in self.dims.items()})
        )
        object.__setattr__(self, "coords", MappingProxyType(dict(self.coords)))
        trace = self.sites()
        # A numpyro.factor is an observed sample site of a Unit distribution, not data.
        observed_sites = [
            k
            for k, s in trace.items()
            if s["type"] == "sample" and s["is_observed"] and type(s["fn"]).__name__ != "Unit"
        ]
        if not self.observed:
            object.__setattr__(self, "observed", tuple(observed_sites))
        unknown = [s for s in self.observed if s not in observed_sites]
        if unknown:
            raise ValueError(
                f"Program.observed names {unknown}, which are not observed sites of "
                f"the model (observed sites: {observed_sites})"
            )
        if not self.predict_sites:
            object.__setattr__(self, "predict_sites", self.observed)
        if self.field_site is None and "u" in trace:
            object.__setattr__(self, "field_site", "u")
        field_sites = (self.field_site,) if self.field_site else ()
        named = (*self.network_sites, *self.predict_sites, *field_sites)
        missing = [s for s in named if s not in trace]
        if missing:
            raise ValueError(
                f"Program names sites {missing} that the model never creates; "
                f"its sites are {sorted(trace)}"
            )

    @classmethod
    def from_numpyro(
        cls,
        fn: Callable[..., None],
        inputs: PyTree,
        targets: PyTree = None,
        *,
        dims: Mapping[str, tuple[str, ...]] | None = None,
        coords: Mapping[str, np.ndarray] | None = None,
        query: Callable[[np.ndarray], PyTree] | None = None,
        observed: tuple[str, ...] = (),
        predict_sites: tuple[str, ...] = (),
        network_sites: tuple[str, ...] = (),
        name: str = "numpyro",
        attrs: Mapping[str, Any] | None = None,
        field_fn: Callable[[Mapping[str, Any], Any], Any] | None = None,
        field_site: str | None = None,
    ) -> Program:
        """Wrap a user-written NumPyro model ``fn(inputs, targets=None)`` as a Program.

        Args:
            fn: the NumPyro model; observed sites use ``obs=targets`` (or parts of it).
            inputs: the arrays (pytree) passed as ``fn``'s first argument.
            targets: observations passed as ``targets=``.
            dims: ArviZ dims per site, e.g. ``{"beta": ("feature",), "y": ("obs",)}``.
            coords: coordinate values per dim.
            query: ``points -> inputs`` for prediction; when ``inputs`` is a single array,
                the default uses the points themselves as inputs.
            observed, predict_sites, network_sites, name, attrs, field_fn, field_site: see
                the class attributes.

        Example:
            >>> import numpyro, numpyro.distributions as dist, jax.numpy as jnp
            >>> def model(X, targets=None):
            ...     beta = numpyro.sample("beta", dist.Normal(0, 1))
            ...     with numpyro.plate("obs", X.shape[0]):
            ...         numpyro.sample("y", dist.Normal(beta * X, 1.0), obs=targets)
            >>> program = Program.from_numpyro(model, jnp.ones(3), jnp.zeros(3))
            >>> program.observed
            ('y',)
        """
        return cls(
            fn=fn,
            inputs=inputs,
            targets=targets,
            dims=dims or {},
            coords=coords or {},
            query_fn=query,
            observed=tuple(observed),
            predict_sites=tuple(predict_sites),
            network_sites=tuple(network_sites),
            name=name,
            attrs=dict(attrs or {}),
            field_fn=field_fn,
            field_site=field_site,
        )

    def query(self, points: np.ndarray) -> PyTree:
        """Inputs for prediction at ``points``.

        Raises:
            ValueError: when the program has no query and its inputs are not one array.
        """
        if self.query_fn is not None:
            return self.query_fn(points)
        if isinstance(self.inputs, jax.Array | np.ndarray):
            return np.asarray(points)
        raise ValueError(
            f"program '{self.name}' has no query function; pass query=... to "
            "Program.from_numpyro to say how prediction points become inputs"
        )

    def trace(self, key: jax.Array, inputs: PyTree = None, targets: PyTree = None) -> dict:
        """One seeded execution trace of the model (for site discovery)."""
        args = self.inputs if inputs is None else inputs
        obs = self.targets if inputs is None else targets
        return handlers.trace(handlers.seed(self.fn, key)).get_trace(args, targets=obs)

    def sites(self) -> Mapping[str, dict]:
        """The model's sites (names, types, distributions, whether observed), from one
        abstract trace at the program's data: values are :class:`jax.ShapeDtypeStruct` and
        nothing is computed or compiled (an eager trace dispatches every operation on its
        own, seconds for a large model). Kept per program. A model whose Python code needs
        concrete values is traced eagerly instead. For the structure only: a site's
        distribution may hold tracers, so draw from :meth:`trace` instead.
        """
        return self._sites

    @functools.cached_property
    def _sites(self) -> Mapping[str, dict]:
        found = {}

        def run(key):
            trace = self.trace(key)
            found.update(trace)
            return {k: s["value"] for k, s in trace.items() if "value" in s}

        try:
            shapes = jax.eval_shape(run, jax.random.key(0))
        except NEEDS_VALUES:
            return MappingProxyType(self.trace(jax.random.key(0)))
        return MappingProxyType(
            {k: {**s, "value": shapes[k]} if k in shapes else s for k, s in found.items()}
        )

    def latent_sites(self) -> tuple[str, ...]:
        """Names of the unobserved sample sites (the model runs once per program for this,
        then the table is kept)."""
        return self._latent_sites

    @functools.cached_property
    def _latent_sites(self) -> tuple[str, ...]:
        return tuple(
            k for k, s in self.sites().items() if s["type"] == "sample" and not s["is_observed"]
        )

    def physical_sites(self) -> tuple[str, ...]:
        """Latent sites that are not network weights: where convergence is judged."""
        return tuple(s for s in self.latent_sites() if s not in self.network_sites)


def compile(model: ModelDefinition, data: Any) -> Program:  # noqa: A001 - public API name
    """Compile a model definition against data into a :class:`Program`.

    Args:
        model: a model definition (e.g. ``models.BayesianPINN(...)``).
        data: sensor data (``xarray.Dataset``) or whatever the model documents.

    Raises:
        TypeError: when ``model`` is not a model definition.
    """
    compile_fn = getattr(model, "compile", None)
    if not callable(compile_fn):
        raise TypeError(
            f"{type(model).__name__} is not a model definition (it has no "
            "compile(data) method); for a plain NumPyro function use "
            "Program.from_numpyro(fn, inputs, targets)"
        )
    program = compile_fn(data)
    if not isinstance(program, Program):
        raise TypeError(
            f"{type(model).__name__}.compile returned {type(program).__name__}, "
            "expected a ucsciml Program"
        )
    return program
