"""The one ``lax.scan`` driver every kernel-based backend runs its steps through."""

from __future__ import annotations

from collections.abc import Callable

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
