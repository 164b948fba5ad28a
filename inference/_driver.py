"""The one ``lax.scan`` driver every kernel-based backend runs its steps through."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax

from ucsciml._types import PRNGKey, PyTree


def sample_scan(
    step_fn: Callable[[PRNGKey, PyTree], tuple[PyTree, PyTree]],
    state: PyTree,
    key: PRNGKey,
    num_steps: int,
) -> tuple[PyTree, tuple[PyTree, PyTree]]:
    """Run ``num_steps`` of ``step_fn(key, state) -> (state, info)`` in one ``lax.scan``.

    Keys are ``jax.random.split(key, num_steps)``, one per step.

    Returns:
        The final state and the stacked ``(state, info)`` of every step.
    """

    def body(carry, step_key):
        new_state, info = step_fn(step_key, carry)
        return new_state, (new_state, info)

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def chunk_scan(step_fn: Callable[..., tuple[PyTree, PyTree]]) -> Callable:
    """``run(state, length, *args) -> (state, infos)``: ``length`` steps of a key-free
    ``step_fn(state, *args) -> (state, info)`` as one jitted ``lax.scan``. ``args`` (data) are
    traced, ``length`` is static: build it once per step function and every chunk of that
    length, in this or a later run on new data of the same shapes, reuses the executable."""

    @partial(jax.jit, static_argnums=1)
    def run(carry, length, *args):
        return jax.lax.scan(lambda c, _: step_fn(c, *args), carry, None, length=length)

    return run


def scan_in_chunks(
    run_chunk: Callable[[PyTree, int], tuple[PyTree, PyTree]],
    state: PyTree,
    num_steps: int,
    *,
    start: int = 0,
    chunk_size: int,
    on_chunk: Callable[[PyTree, int, PyTree], None] | None = None,
) -> tuple[PyTree, list[PyTree]]:
    """Run steps ``start .. num_steps`` as chunks of ``chunk_size`` steps of
    ``run_chunk(state, length) -> (state, infos)`` (a :func:`chunk_scan` with its data
    bound), calling ``on_chunk(state, step, infos)`` after each (e.g. to checkpoint).
    Chunking never changes the result: every step is the same compiled body, whatever chunk
    it falls in.

    Returns:
        The final state and the list of per-chunk stacked infos.
    """
    infos = []
    step = start
    while step < num_steps:
        length = min(chunk_size, num_steps - step)
        state, info = run_chunk(state, length)
        step += length
        infos.append(info)
        if on_chunk is not None:
            on_chunk(state, step, info)
    return state, infos
