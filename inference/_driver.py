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


def scan_in_chunks(
    step_fn: Callable[[PyTree], tuple[PyTree, PyTree]],
    state: PyTree,
    num_steps: int,
    *,
    start: int = 0,
    chunk_size: int,
    on_chunk: Callable[[PyTree, int, PyTree], None] | None = None,
) -> tuple[PyTree, list[PyTree]]:
    """Run steps ``start .. num_steps`` of a key-free ``step_fn(state) -> (state, info)`` as
    jitted ``lax.scan`` chunks of ``chunk_size`` steps, calling ``on_chunk(state, step, infos)``
    after each (e.g. to checkpoint). Chunking never changes the result: every step is the same
    compiled body, whatever chunk it falls in.

    Returns:
        The final state and the list of per-chunk stacked infos.
    """

    @partial(jax.jit, static_argnums=1)
    def run(carry, length):
        return jax.lax.scan(lambda c, _: step_fn(c), carry, None, length=length)

    infos = []
    step = start
    while step < num_steps:
        length = min(chunk_size, num_steps - step)
        state, info = run(state, length)
        step += length
        infos.append(info)
        if on_chunk is not None:
            on_chunk(state, step, info)
    return state, infos
