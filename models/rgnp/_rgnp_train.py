"""Training of :class:`ucsciml.models.RGNP` on the shared loop :func:`ucsciml.optimize.train`:
Adam with a staircase exponential learning-rate decay, the negative ELBO minimised."""

from __future__ import annotations

import numpy as np
import optax

from ucsciml import optimize
from ucsciml._types import PRNGKey

#: The phase name of an RGNP training (its progress bar and convergence verdict).
PHASE = "RGNP ELBO"
#: The objective :func:`fit` minimises, as the ``optimization`` record names it.
OBJECTIVE = "negative ELBO"


class RGNPFit(tuple):
    """``(params, elbo)``, as :meth:`RGNP.fit` has always returned, carrying the training's
    :class:`ucsciml.optimize.Trained` (``trained``: loss trace ``-elbo`` and verdict)."""

    def __new__(cls, trained: optimize.Trained):
        out = super().__new__(cls, (trained.params, -np.asarray(trained.losses)))
        out.trained = trained
        return out

    @property
    def params(self):
        """The trained :class:`RGNPParams`."""
        return self[0]

    @property
    def elbo(self) -> np.ndarray:
        """The ELBO per step, ``(num_steps,)``."""
        return self[1]

    @property
    def verdict(self) -> dict:
        """The convergence verdict of :func:`ucsciml.convergence.judge` on the loss trace."""
        return self.trained.verdict

    def record(self, **facts) -> dict:
        """The ``optimization`` record of this training (:meth:`Trained.record`)."""
        return self.trained.record(OBJECTIVE, **facts)


def staircase_schedule(
    learning_rate: float, num_steps: int, decay_steps: int | None, decay_rate: float
) -> optax.Schedule:
    r"""``eta_k = eta_0 r^{floor(k / K)}`` with ``K = decay_steps`` (``None``:
    ``num_steps // 5``, so the rate halves four times at ``r = 1/2``)."""
    return optax.exponential_decay(
        learning_rate, decay_steps or max(num_steps // 5, 1), decay_rate, staircase=True
    )


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
) -> RGNPFit:
    r"""Maximise ``model.elbo`` (minimise its negative) by Adam with a staircase exponential
    learning-rate decay, :func:`staircase_schedule`.

    Runs on :func:`ucsciml.optimize.train`: ``chunk_size`` steps per jitted ``lax.scan``, step
    ``k`` drawing its Monte Carlo samples from ``fold_in(key, k)``, non-finite losses kept in
    the trace and logged, the trace judged as a stochastic objective.

    Args:
        model: the :class:`RGNP` (its ``elbo(params, key, batch_size)``).
        params: initial :class:`RGNPParams`.
        key: PRNG key for the Monte Carlo draws.
        num_steps: optimiser steps.
        batch_size: ``(z, w, grid)`` draws per step.
        learning_rate: ``eta_0``.
        decay_steps: ``K`` (``None``: ``num_steps // 5``).
        decay_rate: ``r``.
        chunk_size: steps per jitted scan.
        progress_bar: show a tqdm bar.

    Returns:
        :class:`RGNPFit`: unpacks as ``(params, elbo)`` with ``elbo`` of shape
        ``(num_steps,)``; ``.trained`` holds the loss trace and the verdict.
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
    optimizer = optax.adam(staircase_schedule(learning_rate, num_steps, decay_steps, decay_rate))

    def loss_fn(p, step_key):
        return -model.elbo(p, step_key, batch_size)

    trained = optimize.train(
        loss_fn,
        params,
        optimizer,
        num_steps=num_steps,
        key=key,
        phase=PHASE,
        chunk_size=chunk_size,
        step_keys="fold_in",
        progress=progress_bar,
        hint="raise num_steps (or lower learning_rate)",
    )
    return RGNPFit(trained)
