"""Deterministic minimisation of a smooth objective: Adam, then an L-BFGS polish, judged.

The optimiser cores are ``init(z) -> state`` / ``step(state) -> (state, loss)`` pairs on
pytrees (Optax inside), so a caller can scan, vmap or chunk them. :func:`minimize` drives one
fit in chunks of a jitted ``lax.scan`` (each chunk compiles once) with a progress bar per
phase, and ends with the convergence verdict of :func:`ucsciml.convergence.judge` measured at
the end point: nothing is assumed converged. :func:`train` is the same loop for stochastic
objectives (a model family's ELBO or minibatch loss with a fresh key per step), judged from
its loss trace; every model family trains on it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ucsciml import convergence
from ucsciml._types import PyTree

log = logging.getLogger(__name__)

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


class Trained(NamedTuple):
    """Result of :func:`train`: the trained pytree, the loss per step and the verdict."""

    params: PyTree
    losses: np.ndarray
    verdict: dict[str, Any]
    #: the carried state after the last step (``train(state=...)``), else ``None``.
    state: PyTree = None
    #: ``trace_fn``'s value per step, shape ``(num_steps,)``, else ``None``.
    trace: np.ndarray | None = None

    def record(self, objective: str, **facts: Any) -> dict[str, Any]:
        """The ``optimization`` record a Posterior or family tree stores: the loss trace,
        the verdict and scalar ``facts`` (``Posterior.attrs["optimization"]``)."""
        return {
            "objective": objective,
            "trace": [float(v) for v in self.losses],
            "final_loss": float(np.mean(self.losses[-max(1, len(self.losses) // 10) :])),
            "convergence": dict(self.verdict),
            **facts,
        }


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
    return _checks(worst, g2, curvature)


def hessian_checks(grad: jax.Array, hessian: jax.Array) -> jax.Array:
    """:func:`end_point_checks` from a flat gradient and the dense Hessian already formed
    there (a Laplace fit's): no Hessian-vector product to compile a second time."""
    return _checks(jnp.max(jnp.abs(grad)), jnp.vdot(grad, grad), grad @ hessian @ grad)


def _checks(worst: jax.Array, g2: jax.Array, curvature: jax.Array) -> jax.Array:
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


#: How :func:`train` derives step ``k``'s key from its key: ``fold_in(key, k)`` or the
#: ``k``-th of ``split(key, num_steps)``.
STEP_KEYS = ("fold_in", "split")


def train(
    loss_fn: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    key: jax.Array,
    phase: str,
    chunk_size: int | None = None,
    step_keys: str = "fold_in",
    progress: bool = True,
    hint: str = "raise the number of steps or lower the learning rate",
    rtol: float = 1e-3,
    state: PyTree = None,
    trace_fn: Callable[[PyTree, PyTree], jax.Array] | None = None,
) -> Trained:
    """Minimise a stochastic objective ``loss_fn(params, step_key)`` with ``optimizer``.

    The one training loop of the model families: the inexact arrays of ``params`` (an
    Equinox module or any pytree) are trained, everything else is held static; steps run in
    chunks of one jitted ``lax.scan`` (equal chunks, so one compile) with a progress bar;
    step ``k`` gets its own key (``step_keys``, see :data:`STEP_KEYS`). The loss trace is
    judged by :func:`ucsciml.convergence.judge` as a stochastic objective (its noise allowed,
    relative tolerance ``rtol`` on the projected change per window), and a failed verdict is
    logged as a warning: nothing is assumed converged. The trend is fitted over the last half
    of the steps (``trend_fraction=0.5``), so a slow descent that the noise of the last two
    windows would hide still fails the fit.

    An objective with an inner solve warm-started from the previous step (an alternating
    scheme: the spectral GP's conjugate-gradient solution for the grid values) passes
    ``state``: ``loss_fn(params, step_key, state)`` then returns ``(loss, new_state)``, the
    new state is carried to the next step with its gradient stopped, and :attr:`Trained.state`
    holds the last one. ``trace_fn(params, new_state)`` (optional) is recorded per step,
    before the update (e.g. a benchmark's error against a known solution).

    Returns:
        :class:`Trained` with ``losses`` of shape ``(num_steps,)`` (non-finite values kept).

    Raises:
        ValueError: for a non-positive step count or chunk size, or unknown ``step_keys``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"train: num_steps must be a positive integer, got {num_steps!r}")
    if step_keys not in STEP_KEYS:
        raise ValueError(f"train: step_keys must be one of {STEP_KEYS}, got {step_keys!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"train: chunk_size must be >= 1, got {chunk_size}")
    trainable, static = eqx.partition(params, eqx.is_inexact_array)
    keys = jax.random.split(key, num_steps) if step_keys == "split" else None

    stateful = state is not None

    def objective(p, k, st):
        if stateful:
            loss, new = loss_fn(eqx.combine(p, static), k, st)
            return loss, jax.lax.stop_gradient(new)
        return loss_fn(eqx.combine(p, static), k), st

    def step(carry, index):
        p, opt_state, st = carry
        k = jax.random.fold_in(key, index) if keys is None else keys[index]
        (loss, st), grads = jax.value_and_grad(objective, has_aux=True)(p, k, st)
        traced = jnp.nan if trace_fn is None else trace_fn(eqx.combine(p, static), st)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state, st), (loss, traced)

    chunk = min(chunk_size, num_steps) if chunk_size else _chunk_length(num_steps)

    @functools.partial(jax.jit, static_argnums=2)
    def run_chunk(carry, start, n):
        return jax.lax.scan(step, carry, start + jnp.arange(n))

    carry, out, traces, done = (trainable, optimizer.init(trainable), state), [], [], 0
    with tqdm(total=num_steps, desc=phase, unit="step", disable=not progress, leave=False) as bar:
        while done < num_steps:
            n = min(chunk, num_steps - done)
            carry, (losses, traced) = run_chunk(carry, jnp.asarray(done), n)
            losses = np.asarray(losses)
            out.append(losses)
            traces.append(np.asarray(traced))
            done += n
            bar.update(n)
            bar.set_postfix(loss=f"{float(np.mean(losses)):.4g}")
    losses = np.concatenate(out)
    bad = int((~np.isfinite(losses)).sum())
    if bad:
        log.warning("%s: %d of %d training losses are not finite", phase, bad, num_steps)
    verdict = convergence.judge(
        losses, None, phase=phase, rtol=rtol, stochastic=True, hint=hint, trend_fraction=0.5
    )
    return Trained(
        eqx.combine(carry[0], static),
        losses,
        verdict,
        carry[2],
        np.concatenate(traces) if trace_fn is not None else None,
    )
