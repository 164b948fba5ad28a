"""MAP fits in unconstrained space: the shared optimiser core of several backends.

The negative log joint comes from NumPyro's ``initialize_model`` (so constrained sites are
optimised in their unconstrained space, with the Jacobian the potential includes); the loop
is one ``lax.scan`` over Optax Adam steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.util import initialize_model

from ucsciml._types import PRNGKey, PyTree
from ucsciml.program import Program


class Potential(NamedTuple):
    """A program's potential (negative log joint) in unconstrained space."""

    init: Callable[[PRNGKey], PyTree]
    potential_fn: Callable[[PyTree], jax.Array]
    postprocess_fn: Callable[[PyTree], dict]


def potential(program: Program, key: PRNGKey) -> Potential:
    """Build init, potential and postprocess functions for a program."""
    args, kwargs = (program.inputs,), {"targets": program.targets}
    _, potential_gen, postprocess_gen, _ = initialize_model(
        key,
        program.fn,
        model_args=args,
        model_kwargs=kwargs,
        dynamic_args=True,
        init_strategy=init_to_sample,
    )

    def init(k):
        info, *_ = initialize_model(
            k, program.fn, model_args=args, model_kwargs=kwargs, init_strategy=init_to_sample
        )
        return info.z

    return Potential(init, potential_gen(*args, **kwargs), postprocess_gen(*args, **kwargs))


def adam_map(
    potential_fn: Callable[[PyTree], jax.Array],
    z0: PyTree,
    num_steps: int,
    learning_rate: float,
) -> tuple[PyTree, jax.Array]:
    """Minimise ``potential_fn`` from ``z0`` with Adam and an exponential decay to 1% of the
    initial rate; returns the final point and the loss trace."""
    schedule = optax.exponential_decay(learning_rate, num_steps, 0.01)
    opt = optax.adam(schedule)

    def step(carry, _):
        z, state = carry
        loss, grad = jax.value_and_grad(potential_fn)(z)
        updates, state = opt.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), loss

    (z, _), losses = jax.lax.scan(step, (z0, opt.init(z0)), None, length=num_steps)
    return z, losses


def is_finite_tree(tree: PyTree) -> jax.Array:
    """True when every leaf of ``tree`` is finite."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
