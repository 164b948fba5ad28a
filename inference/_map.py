"""MAP fits in unconstrained space: the shared optimiser core of several backends.

The negative log joint comes from NumPyro's ``initialize_model`` (so constrained sites are
optimised in their unconstrained space, with the Jacobian the potential includes); the loop
is one ``lax.scan`` over Optax Adam steps, optionally polished by Optax L-BFGS.
:func:`potential_family` builds potentials of a wrapped model whose extra keyword arguments
(anchors, dropout masks) are traced, so one compiled program serves every ensemble member or
optimisation step; :func:`family_of` keeps one family per model and data shapes, and the
cached helpers below (:func:`init_fn`, :func:`constrain_fn`, :func:`with_deterministics`)
take the data as traced arguments, so no run recompiles them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.util import initialize_model

from ucsciml._types import PRNGKey, PyTree
from ucsciml.inference._mapfit_settings import MAPFit
from ucsciml.optimize import adam_core, end_point_checks, lbfgs_core
from ucsciml.program import NEEDS_VALUES, Program


class PotentialFamily(NamedTuple):
    """Potentials of a wrapped model, indexed by the values of its extra keyword arguments."""

    make: Callable[..., Callable[[PyTree], jax.Array]]
    init: Callable[[PRNGKey], PyTree]
    postprocess: Callable[..., Callable[[PyTree], dict]]


def potential_family(
    program: Program, key: PRNGKey, fn: Callable[..., None], **example_kwargs: PyTree
) -> PotentialFamily:
    """Potentials of ``fn(inputs, targets=None, **kwargs)``, one per value of ``kwargs``.

    Args:
        program: supplies ``inputs`` and ``targets``.
        key: key for NumPyro's site discovery (no draw depends on it).
        fn: a wrapper of ``program.fn`` taking extra keyword arguments.
        example_kwargs: values of the extra arguments with the shapes used later.

    Returns:
        ``make(**kwargs) -> potential_fn`` and ``postprocess(**kwargs) -> postprocess_fn``
        (``kwargs`` may be traced, inside ``vmap``/``scan``; ``inputs`` and ``targets``
        keywords replace the program's, so data can be traced arguments of one compiled
        program, e.g. replicate datasets), and ``init(key, inputs=None, targets=...)``: an
        unconstrained prior draw of the latent sites (at the given data, else the program's).
    """
    args = (program.inputs,)
    kwargs = {"targets": program.targets, **example_kwargs}
    potential_gen, postprocess_gen = _discover(key, fn, args, kwargs)

    def init(k, inputs=None, **extra):
        call_kwargs = {**kwargs, **extra}
        info, *_ = initialize_model(
            k,
            fn,
            model_args=args if inputs is None else (inputs,),
            model_kwargs=call_kwargs,
            init_strategy=init_to_sample,
        )
        return info.z

    def make(inputs=None, **extra):
        extra.setdefault("targets", program.targets)
        return potential_gen(program.inputs if inputs is None else inputs, **extra)

    def postprocess(inputs=None, **extra):
        extra.setdefault("targets", program.targets)
        return postprocess_gen(program.inputs if inputs is None else inputs, **extra)

    return PotentialFamily(make, init, postprocess)


def _discover(key: PRNGKey, fn: Callable[..., None], args: tuple, kwargs: dict):
    """NumPyro's ``(potential_gen, postprocess_gen)`` of ``fn`` (``initialize_model`` with
    dynamic arguments), found by an abstract trace where the model allows it.

    ``initialize_model`` runs the model, its potential and gradient to discover the sites;
    run eagerly that is one small compilation per operation (25 s for the spectral GP's
    evidence, against one second traced). Under :func:`jax.eval_shape` nothing is compiled.
    The generators keep what they captured only when it holds no tracer: a model with
    ``param``/``mutable`` sites, or transforms built from traced values, or Python control
    flow on values, is discovered eagerly as before.
    """
    found = {}

    def discover(k):
        info, potential_gen, postprocess_gen, trace = initialize_model(
            k,
            fn,
            model_args=args,
            model_kwargs=kwargs,
            dynamic_args=True,
            init_strategy=init_to_sample,
        )
        found["gens"] = potential_gen, postprocess_gen
        found["captures"] = [
            site["value"] for site in trace.values() if site["type"] in ("param", "mutable")
        ] + [getattr(postprocess_gen.args[0], "args", ())]
        return info.z

    try:
        jax.eval_shape(discover, key)
    except NEEDS_VALUES:
        found.clear()
    if found and not any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(found["captures"])
    ):
        return found["gens"]
    _, potential_gen, postprocess_gen, _ = initialize_model(
        key,
        fn,
        model_args=args,
        model_kwargs=kwargs,
        dynamic_args=True,
        init_strategy=init_to_sample,
    )
    return potential_gen, postprocess_gen


class ProgramSignature:
    """A program as a cache key: its model function and the shapes and dtypes of its data,
    so a new program of the same model on new data of the same shapes reuses the compiled
    sampler (the data are traced arguments). ``program`` is the first program seen."""

    def __init__(self, program: Program):
        self.program = program
        leaves, tree = jax.tree.flatten((program.inputs, program.targets))
        shapes = tuple(
            (np.shape(x), str(getattr(x, "dtype", None) or np.asarray(x).dtype)) for x in leaves
        )
        self.key = (program.fn, tree, shapes)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, ProgramSignature) and self.key == other.key


def _scan(init, step, z0, num_steps):
    (z, _), losses = jax.lax.scan(lambda c, _: step(c), init(z0), None, length=num_steps)
    return z, losses


def fit_map(
    potential_fn: Callable[[PyTree], jax.Array], z0: PyTree, fit: MAPFit
) -> tuple[PyTree, jax.Array, jax.Array]:
    """Adam (:func:`adam_core`) then L-BFGS (:func:`lbfgs_core`) with the settings ``fit``,
    as one traced function (for use inside ``jit``/``vmap``;
    :class:`ucsciml.inference._mapfit.MapFitter` runs the same steps in chunks with a
    progress bar); returns the point, the concatenated loss trace and
    :func:`end_point_checks` at the point."""
    adam = adam_core(potential_fn, fit.adam_steps, fit.learning_rate, fit.schedule)
    z, losses = _scan(*adam, z0, fit.adam_steps)
    if fit.lbfgs_steps:
        z, polish = _scan(*lbfgs_core(potential_fn), z, fit.lbfgs_steps)
        losses = jnp.concatenate([losses, polish])
    return z, losses, end_point_checks(potential_fn, z)


def check_continuous(program: Program, backend: str) -> None:
    """Raise ``ValueError`` before any compute when ``program`` has discrete latent sites."""
    trace = program.sites()
    discrete = [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
    ]
    if discrete:
        raise ValueError(
            f"{backend} needs continuous latent sites; program '{program.name}' has discrete "
            f"ones {discrete}. Marginalise them out, build the model without them (e.g. "
            "dropout=0 for a B-PINN), or use a backend that handles them (MCDropout for masks)"
        )


def with_deterministics(program: Program, latent: dict, key: PRNGKey) -> dict:
    """Add the model's deterministic sites to flat draws ``{site: (n, ...)}`` of its latents
    (one compiled program per model, data shapes and draw count: the data are traced)."""
    n = next(iter(latent.values())).shape[0]
    keys = jax.random.split(key, n)
    return _deterministics(
        latent, keys, program.inputs, program.targets, fn=program.fn, batch_size=min(n, 64)
    )


@functools.partial(jax.jit, static_argnames=("fn", "batch_size"))
def _deterministics(latent, keys, inputs, targets, *, fn, batch_size):
    def one(args):
        sample, k = args
        model = handlers.substitute(handlers.seed(fn, k), data=sample)
        trace = handlers.trace(model).get_trace(inputs, targets=targets)
        return {
            name: site["value"]
            for name, site in trace.items()
            if site["type"] == "deterministic" or name in sample
        }

    return jax.lax.map(one, (latent, keys), batch_size=batch_size)


@functools.lru_cache(maxsize=16)
def family_of(signature: ProgramSignature) -> PotentialFamily:
    """The :func:`potential_family` of a program's own model, built once per model and data
    shapes (NumPyro's site discovery runs the model eagerly): pass ``inputs=``/``targets=``
    to its functions, since its defaults are the first program's data."""
    program = signature.program
    return potential_family(program, jax.random.key(0), program.fn)


@functools.lru_cache(maxsize=16)
def init_fn(signature: ProgramSignature) -> Callable:
    """``init(keys, inputs, targets)``: one unconstrained prior draw of the latent sites per
    key (leading axis), compiled once per model and data shapes."""
    family = family_of(signature)

    def one(k, inputs, targets):
        return family.init(k, inputs=inputs, targets=targets)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


@functools.lru_cache(maxsize=16)
def constrain_fn(signature: ProgramSignature) -> Callable:
    """``constrain(z, inputs, targets)``: unconstrained points with a leading axis to the
    constrained latent (and deterministic) sites, one executable per model and data shapes."""
    family = family_of(signature)

    def one(z, inputs, targets):
        return family.postprocess(inputs=inputs, targets=targets)(z)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))
