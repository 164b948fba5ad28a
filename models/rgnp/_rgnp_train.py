"""Training loop for :class:`ucsciml.models.RGNP`: Optax Adam, jitted, ``lax.scan`` in chunks."""

from __future__ import annotations

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ucsciml._types import PRNGKey

log = logging.getLogger(__name__)


def fit(
    model,
    params,
    key: PRNGKey,
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    decay_steps: int | None,
    decay_rate: float,
    chunk_size: int,
    progress_bar: bool,
):
    r"""Maximise ``model.elbo`` by Adam with a staircase exponential learning-rate decay.

    .. math:: \eta_k = \eta_0\, r^{\lfloor k / K \rfloor}

    Steps run ``chunk_size`` at a time inside one jitted ``lax.scan`` (one compile; the
    progress bar advances per chunk); step ``k`` uses ``fold_in(key, k)``. Non-finite losses
    are kept in the history (data, not exceptions) and logged.

    Args:
        model: the :class:`RGNP` (its ``elbo(params, key, batch_size)``).
        params: initial :class:`RGNPParams`.
        key: PRNG key for the Monte Carlo draws.
        num_steps: optimiser steps (rounded up to whole chunks).
        batch_size: ``(z, w, grid)`` draws per step.
        learning_rate: ``eta_0``.
        decay_steps: ``K`` (``None``: ``num_steps // 5``, so the rate halves four times).
        decay_rate: ``r``.
        chunk_size: steps per jitted scan.
        progress_bar: show a tqdm bar.

    Returns:
        ``(params, elbo)`` with ``elbo`` of shape ``(num_steps,)``.
    """
    for name, value in (
        ("num_steps", num_steps),
        ("batch_size", batch_size),
        ("chunk_size", chunk_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    if not learning_rate > 0:
        raise ValueError(f"fit: learning_rate must be > 0, got {learning_rate}")
    chunk_size = min(chunk_size, num_steps)
    num_chunks = -(-num_steps // chunk_size)
    schedule = optax.exponential_decay(
        learning_rate, decay_steps or max(num_steps // 5, 1), decay_rate, staircase=True
    )
    optimizer = optax.adam(schedule)
    trainable, static = eqx.partition(params, eqx.is_inexact_array)
    opt_state = optimizer.init(trainable)

    def loss_fn(trainable, step_key):
        return -model.elbo(eqx.combine(trainable, static), step_key, batch_size)

    def step(carry, index):
        trainable, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(trainable, jax.random.fold_in(key, index))
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return (optax.apply_updates(trainable, updates), opt_state), -loss

    @jax.jit
    def run_chunk(trainable, opt_state, start):
        indices = start + jnp.arange(chunk_size)
        return jax.lax.scan(step, (trainable, opt_state), indices)

    history = []
    bar = tqdm(total=num_chunks * chunk_size, disable=not progress_bar, desc="RGNP ELBO")
    for chunk in range(num_chunks):
        (trainable, opt_state), elbo = run_chunk(trainable, opt_state, chunk * chunk_size)
        elbo = np.asarray(elbo)
        history.append(elbo)
        bar.update(chunk_size)
        bar.set_postfix(elbo=f"{np.mean(elbo):.4g}")
        if not np.isfinite(elbo).all():
            log.warning(
                "non-finite ELBO in steps %d-%d", chunk * chunk_size, (chunk + 1) * chunk_size
            )
    bar.close()
    return eqx.combine(trainable, static), np.concatenate(history)[:num_steps]
