"""Deterministic minimisation of a smooth objective: Adam, then an L-BFGS polish, judged.

The optimiser cores are ``init(z) -> state`` / ``step(state) -> (state, loss)`` pairs on
pytrees (Optax inside), so a caller can scan, vmap or chunk them. :func:`minimize` drives one
fit in chunks of a jitted ``lax.scan`` (each chunk compiles once) with a progress bar per
phase, and ends with the convergence verdict of :func:`ucsciml.convergence.judge` measured at
the end point: nothing is assumed converged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ucsciml import convergence
from ucsciml._types import PyTree

#: Chunks per phase: the progress bar's resolution.
CHUNKS = 10
#: Adam learning-rate schedules.
SCHEDULES = ("constant", "exponential", "cosine")
#: The last Adam learning rate over the first, for the decaying schedules.
FINAL_LR_FRACTION = 0.01


class Minimum(NamedTuple):
    """Result of :func:`minimize`: the point, the loss per step and the verdict."""

    z: PyTree
    losses: np.ndarray
    verdict: dict[str, Any]


def is_finite_tree(tree: PyTree) -> jax.Array:
    """True when every leaf of ``tree`` is finite."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def adam_schedule(
    learning_rate: float,
    num_steps: int,
    schedule: str,
    final_fraction: float = FINAL_LR_FRACTION,
) -> optax.ScalarOrSchedule:
    """The learning rate of a ``schedule``: constant, or an exponential or cosine decay to
    ``final_fraction`` (default :data:`FINAL_LR_FRACTION`) of it over ``num_steps``."""
    if schedule == "exponential":
        return optax.exponential_decay(learning_rate, num_steps, final_fraction)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, num_steps, alpha=final_fraction)
    if schedule == "constant":
        return learning_rate
    raise ValueError(f"unknown Adam schedule {schedule!r}; choose one of {SCHEDULES}")


def adam(
    learning_rate: float,
    num_steps: int,
    schedule: str = "exponential",
    *,
    final_fraction: float = FINAL_LR_FRACTION,
    clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """The one Adam of ucsciml: Optax Adam on :func:`adam_schedule`, after a global
    gradient-norm clip when ``clip_norm > 0``. Every optimising backend uses it, directly
    (:func:`adam_core`) or through NumPyro's SVI (``inference.VI``)."""
    opt = optax.adam(adam_schedule(learning_rate, num_steps, schedule, final_fraction))
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt


def adam_core(
    loss_fn: Callable[..., jax.Array],
    num_steps: int,
    learning_rate: float,
    schedule: str = "exponential",
) -> tuple[Callable, Callable]:
    """Adam (:func:`adam`) on a learning-rate ``schedule`` over ``num_steps`` (by default an
    exponential decay to 1% of the initial rate), as ``init(z) -> state`` and
    ``step(state, *args) -> (state, loss)`` on ``state = (z, opt_state)`` (the loss is the
    objective ``loss_fn(z, *args)`` before the step; ``args`` vary per step for stochastic
    objectives, e.g. a fresh dropout mask)."""
    opt = adam(learning_rate, num_steps, schedule)

    def init(z):
        return z, opt.init(z)

    def step(state, *args):
        z, opt_state = state
        loss, grad = jax.value_and_grad(loss_fn)(z, *args)
        updates, opt_state = opt.update(grad, opt_state, z)
        return (optax.apply_updates(z, updates), opt_state), loss

    return init, step


def lbfgs_core(loss_fn: Callable[[PyTree], jax.Array]) -> tuple[Callable, Callable]:
    """Optax L-BFGS (zoom line search) as ``init(z) -> state`` and ``step(state) -> (state,
    loss)``. A failed line search can return a non-finite step: the last good point is kept,
    so steps after convergence (or failure) leave the point unchanged."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def init(z):
        return z, opt.init(z)

    def step(state):
        z, opt_state = state
        loss, grad = value_and_grad(z, state=opt_state)
        updates, opt_state = opt.update(grad, opt_state, z, value=loss, grad=grad, value_fn=loss_fn)
        z_new = optax.apply_updates(z, updates)
        z_new = jax.tree.map(lambda a, b: jnp.where(is_finite_tree(z_new), a, b), z_new, z)
        return (z_new, opt_state), loss

    return init, step


def end_point_checks(loss_fn: Callable[[PyTree], jax.Array], z: PyTree) -> jax.Array:
    """``[max |g|, d]`` at ``z``: the largest gradient component, and the loss decrease a
    Newton step along the gradient predicts, ``d = |g|^4 / (2 g^T H g)`` (one Hessian-vector
    product; ``inf`` where the curvature along ``g`` is not positive or anything is not
    finite), the inputs of :func:`ucsciml.convergence.judge`."""
    grad_fn = jax.grad(loss_fn)
    grad = grad_fn(z)
    _, hvp = jax.jvp(grad_fn, (z,), (grad,))
    leaves = jax.tree.leaves(grad)
    worst = jnp.max(jnp.array([jnp.max(jnp.abs(g)) for g in leaves]))
    g2 = sum(jnp.vdot(g, g) for g in leaves)
    curvature = sum(jnp.vdot(g, h) for g, h in zip(leaves, jax.tree.leaves(hvp), strict=True))
    decrease = jnp.where(curvature > 0, g2**2 / (2.0 * curvature), jnp.inf)
    decrease = jnp.where(g2 == 0, 0.0, decrease)
    out = jnp.stack([worst, decrease])
    return jnp.where(jnp.isfinite(out), out, jnp.inf)


def minimize(
    loss_fn: Callable[[PyTree], jax.Array],
    z0: PyTree,
    *,
    adam_steps: int,
    learning_rate: float,
    lbfgs_steps: int,
    phase: str,
    hint: str = "raise the number of Adam or L-BFGS steps",
    progress: bool = True,
) -> Minimum:
    """Minimise ``loss_fn`` from ``z0``: ``adam_steps`` of :func:`adam_core`, then
    ``lbfgs_steps`` of :func:`lbfgs_core`, each phase in :data:`CHUNKS` jitted chunks with a
    progress bar, then :func:`ucsciml.convergence.judge` at the end point.

    Args:
        loss_fn: a scalar objective of a pytree (e.g. a negative log density).
        z0: the starting point.
        adam_steps, learning_rate: the Adam phase (0 steps skips it).
        lbfgs_steps: the L-BFGS phase (0 skips it).
        phase: what is fitted, for the progress bar and the verdict.
        hint: what to change when the fit does not converge.
        progress: show the progress bars.

    Returns:
        :class:`Minimum`; a verdict that failed has also been logged as a warning.

    Raises:
        ValueError: when both phases have no steps or a setting is out of range.
    """
    if adam_steps < 0 or lbfgs_steps < 0 or adam_steps + lbfgs_steps == 0:
        raise ValueError(
            f"minimize needs adam_steps, lbfgs_steps >= 0 and at least one step, got "
            f"{adam_steps}, {lbfgs_steps}"
        )
    if adam_steps and not learning_rate > 0:
        raise ValueError(f"minimize(learning_rate=...) must be > 0, got {learning_rate}")
    z, traces = z0, []
    for name, steps, (init, step) in (
        ("Adam", adam_steps, adam_core(loss_fn, max(adam_steps, 1), learning_rate)),
        ("L-BFGS", lbfgs_steps, lbfgs_core(loss_fn)),
    ):
        if steps:
            z, losses = _run_phase(init, step, z, steps, f"{phase}: {name}", progress)
            traces.append(losses)
    checks = np.asarray(jax.jit(lambda p: end_point_checks(loss_fn, p))(z))
    losses = np.concatenate(traces)
    verdict = convergence.judge(losses, checks, phase=phase, hint=hint)
    return Minimum(z, losses, verdict)


def _run_phase(init, step, z, steps, desc, progress):
    chunk = _chunk_length(steps)
    scan = jax.jit(
        lambda state, n: jax.lax.scan(lambda c, _: step(c), state, None, length=n),
        static_argnums=1,
    )
    state = init(z)
    state = jax.tree.map(
        lambda a, b: jnp.asarray(a, b.dtype), state, jax.eval_shape(step, state)[0]
    )
    out, done = [], 0
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        while done < steps:
            n = min(chunk, steps - done)
            state, losses = scan(state, n)
            out.append(np.asarray(losses))
            done += n
            bar.update(n)
    return state[0], np.concatenate(out)


def _chunk_length(steps: int) -> int:
    """A divisor of ``steps`` near ``steps / CHUNKS`` where one exists, so every chunk has the
    same length and compiles once."""
    target = max(1, -(-steps // CHUNKS))
    for n in range(target, min(steps, 2 * target) + 1):
        if steps % n == 0:
            return n
    return target
