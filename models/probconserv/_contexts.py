"""The context design shared by ProbConserv's base models (GP and attentive NP).

Both base models see the paper's 10 x 10 stratified context points and work on inputs
rescaled to the unit square of the problem's ``(x, t)`` domain.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array, Float, PRNGKey
from ucsciml.pde.gpme import AbstractConservationLaw


def stratified_context(
    key: PRNGKey,
    x_range: tuple[float, float],
    t_range: tuple[float, float],
    num_t: int = 10,
    num_x: int = 10,
) -> Float[Array, "m 2"]:
    """The paper's context design: one uniform ``t`` per stratum x sorted uniform ``x``.

    Shared by every base model of the ProbConserv study (GP and neural process).

    Returns the ``num_t * num_x`` points of the product grid as ``(x, t)`` rows.
    """
    t_key, x_key = jax.random.split(key)
    t0, t1 = t_range
    x0, x1 = x_range
    strata = (jnp.arange(num_t) + jax.random.uniform(t_key, (num_t,))) / num_t
    t = t0 + strata * (t1 - t0)
    x = x0 + jnp.sort(jax.random.uniform(x_key, (num_x,))) * (x1 - x0)
    tt, xx = jnp.meshgrid(t, x, indexing="ij")
    return jnp.stack([xx.ravel(), tt.ravel()], axis=-1)


def scale_inputs(problem: AbstractConservationLaw, points) -> np.ndarray:
    """``(x, t)`` in the problem's domain -> the unit square the base models work on."""
    (x0, x1), (t0, t1) = problem.domain["x"], problem.domain["t"]
    return (np.asarray(points, dtype=float) - [x0, t0]) / [x1 - x0, t1 - t0]
