"""NumPyro's NUTS kernel on a compile-once driver: the ``engine="numpyro"`` sampler.

``numpyro.infer.MCMC`` wraps its sampling loop in a fresh ``jax.jit`` on every ``run``
(``fori_collect`` jits a new closure each call), so every run recompiles the NUTS
trajectory, even on one reused ``MCMC`` object: measured 2 XLA compilations per run, 95% of
a second run's time on a 4-parameter regression. This module drives the same kernel,
NumPyro's functional ``hmc(potential_fn_gen=..., algo="NUTS")`` pair with
``NUTS``'s default settings, through executables cached per model, data shapes and
settings, with the data as traced arguments:

* ``init``: one prior draw per chain (``initialize_model`` with ``init_to_sample`` from the
  second half of ``split(chain_key)``, as ``NUTS.init`` does) or the given starts, then
  NumPyro's ``init_kernel`` (warm-up adaptation state) from the first half, chains one
  after another (``lax.map``);
* ``advance``: steps ``start .. stop`` of ``sample_kernel`` (adaptation during the first
  ``num_warmup``) in one ``fori_loop`` with traced bounds, recording the unconstrained
  position and the sample statistics of the kept steps into a preallocated buffer, so the
  progress bar's chunks and a single uninterrupted call run the same executable;
* ``finish``: the recorded positions to constrained (and deterministic) sites.

With a checkpoint :class:`~ucsciml.checkpoint.Slot` the steps run in :data:`CHUNKS` calls
whether or not the progress bar shows, and the carry (chain states and the draws recorded so
far) is saved atomically after each as ``<prefix>-sample.npz``; a later call with the same
slot continues from the last one saved. Every chunk is the same executable, so a resumed run
draws exactly what an uninterrupted one does.

Chains are vmapped on one device and split over devices (``shard_map``) when there are
several, as :func:`~ucsciml.inference._chains.map_chains` lays them out. The draws are those
of ``MCMC(NUTS(fn, init_strategy=init_to_sample), chain_method="vectorized")`` with the
same chain keys.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.util import initialize_model
from tqdm.auto import tqdm

from ucsciml import checkpoint as checkpoints
from ucsciml import distributed
from ucsciml.inference._chains import num_shards
from ucsciml.inference._map import ProgramSignature, family_of

log = logging.getLogger(__name__)

#: Progress-bar (and checkpoint) chunks per run.
CHUNKS = 20
#: HMCState fields kept per draw, under the names NumPyro's ``extra_fields`` use.
FIELDS = (
    "diverging",
    "num_steps",
    "adapt_state.step_size",
    "energy",
    "potential_energy",
    "accept_prob",
)


class NumPyroSampler(NamedTuple):
    """The compiled pieces of one NumPyro NUTS configuration (see :func:`numpyro_sampler`)."""

    init: Callable  # (keys, starts | None, inputs, targets) -> carry
    advance: Callable  # (carry, start, stop, inputs, targets) -> carry
    finish: Callable  # (carry, inputs, targets) -> (constrained draws, {field: (chain, draw)})
    num_steps: int  # warm-up plus kept steps
    shards: int


def _record(state) -> tuple:
    """What is kept of an ``HMCState`` per draw: the position and the :data:`FIELDS`."""
    return state.z, {
        "diverging": state.diverging,
        "num_steps": state.num_steps,
        "adapt_state.step_size": state.adapt_state.step_size,
        "energy": state.energy,
        "potential_energy": state.potential_energy,
        "accept_prob": state.accept_prob,
    }


@functools.lru_cache(maxsize=8)
def numpyro_sampler(
    signature: ProgramSignature,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    target_accept_prob: float,
    max_tree_depth: int,
    dense_mass: bool,
    shard: bool,
    from_prior: bool,
) -> NumPyroSampler:
    """NumPyro's NUTS for ``num_chains`` chains of ``signature``'s model, compiled once per
    model, data shapes and settings: later runs, new data of the same shapes included, reuse
    every executable. With ``from_prior`` each chain draws its own prior start and ``starts``
    is ``None``; otherwise ``starts`` are unconstrained positions with a leading chain axis."""
    program = signature.program
    family = family_of(signature)

    def potential_fn_gen(inputs, targets=None):
        return family.make(inputs=inputs, targets=targets)

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    names = sorted(jax.eval_shape(family.init, jax.random.key(0)))
    # NumPyro's structural form of a dense mass matrix: one block over the sorted sites.
    structure = [tuple(names)] if dense_mass else []
    total = num_warmup + num_samples

    def init_one(key, start, inputs, targets):
        rng_key, model_key = jax.random.split(key)
        args, kwargs = (inputs,), {"targets": targets}
        if from_prior:
            start = initialize_model(
                model_key,
                program.fn,
                model_args=args,
                model_kwargs=kwargs,
                dynamic_args=True,
                init_strategy=init_to_sample,
            )[0]
        return init_kernel(
            start,
            num_warmup=num_warmup,
            step_size=1.0,
            adapt_step_size=True,
            adapt_mass_matrix=True,
            dense_mass=structure,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            regularize_mass_matrix=True,
            model_args=args,
            model_kwargs=kwargs,
            rng_key=rng_key,
        )

    @jax.jit
    def init_local(keys, starts, inputs, targets):
        # One chain after another: vmapping the initial-point search (a while loop with
        # branches) compiles 3x slower, for a step that costs one gradient per chain.
        states = jax.lax.map(lambda a: init_one(*a, inputs, targets), (keys, starts))
        buffer = jax.tree.map(
            lambda r: jnp.zeros((r.shape[0], num_samples, *r.shape[1:]), r.dtype),
            _record(states),
        )
        return states, buffer

    def init(keys, starts, inputs, targets):
        # MAP starts arrive sharded over the chain mesh; lax.map needs them on one device.
        return init_local(keys, jax.tree.map(np.asarray, starts), inputs, targets)

    shards = num_shards(num_chains) if shard else 1
    if num_chains // shards == 1:
        # One chain per device runs unbatched: a vmapped trajectory turns every branch of the
        # tree building into both branches and compiles ~3x slower (as NumPyro runs one chain).
        def step(states, args, kwargs):
            one = sample_kernel(jax.tree.map(lambda x: x[0], states), args, kwargs)
            return jax.tree.map(lambda x: x[None], one)
    else:
        step = jax.vmap(sample_kernel, in_axes=(0, None, None))

    def advance_local(carry, start, stop, inputs, targets):

        def body(i, carry):
            states, buffer = carry
            states = step(states, (inputs,), {"targets": targets})

            def write(buffer):
                index = i - num_warmup
                return jax.tree.map(
                    lambda b, r: jax.lax.dynamic_update_index_in_dim(b, r, index, axis=1),
                    buffer,
                    _record(states),
                )

            buffer = jax.lax.cond(i >= num_warmup, write, lambda b: b, buffer)
            return states, buffer

        return jax.lax.fori_loop(start, stop, body, carry)

    if shards == 1:
        advance = jax.jit(advance_local)
    else:
        mesh = jax.make_mesh((shards,), ("chain",))
        sharded = jax.jit(
            jax.shard_map(
                advance_local,
                mesh=mesh,
                in_specs=(P("chain"), P(), P(), P(), P()),
                out_specs=P("chain"),
                check_vma=False,
            )
        )

        def advance(carry, start, stop, inputs, targets):
            carry = distributed.put(carry, NamedSharding(mesh, P("chain")))
            return distributed.gather(sharded(carry, start, stop, inputs, targets))

    @jax.jit
    def finish(carry, inputs, targets):
        positions, fields = carry[1]
        postprocess = family.postprocess(inputs=inputs, targets=targets)
        return jax.vmap(jax.vmap(postprocess))(positions), fields

    return NumPyroSampler(init, advance, finish, total, shards)


def sample(
    sampler: NumPyroSampler,
    keys,
    starts,
    inputs,
    targets,
    *,
    progress: bool,
    checkpoint: checkpoints.Slot | None = None,
) -> tuple[dict, dict]:
    """Run ``sampler`` from ``keys`` (and ``starts``) on the data; returns the constrained
    draws ``{site: (chain, draw, ...)}`` and ``{field: (chain, draw)}`` of :data:`FIELDS`.
    With ``progress`` (or a ``checkpoint`` slot) the steps run in :data:`CHUNKS` calls of the
    same executable, with a progress bar (and a checkpoint) between them."""
    carry = sampler.init(keys, starts, inputs, targets)
    total = sampler.num_steps
    done = 0
    if checkpoint is not None:
        restored = checkpoint.load("sample", carry)
        if restored is not None and 0 < restored.step <= total:
            carry, done = restored
            log.info("NUTS resumes from %s at step %d", checkpoint.path("sample"), done)
    chunked = progress or checkpoint is not None
    length = -(-total // CHUNKS) if chunked else total
    with tqdm(
        total=total,
        initial=done,
        desc=f"NUTS ({keys.shape[0]} chain{'s' if keys.shape[0] > 1 else ''})",
        unit="step",
        disable=not progress or None,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        # Chunk boundaries stay at multiples of ``length`` after a resume.
        for start in range(done, total, length):
            stop = min(start + length, total)
            carry = sampler.advance(carry, jnp.int32(start), jnp.int32(stop), inputs, targets)
            jax.block_until_ready(carry)
            if checkpoint is not None:
                checkpoint.save("sample", carry, stop)
            bar.update(stop - start)
    return sampler.finish(carry, inputs, targets)
