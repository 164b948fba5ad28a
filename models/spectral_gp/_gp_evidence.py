r"""The exact evidence and conditional of a linear PDE's grid values (dense grids).

In whitened coordinates (:mod:`ucsciml.models.spectral_gp._gp_solve`) the grid values given the
hyper-parameters :math:`\theta` are :math:`z \sim \mathcal N(0, I)` observed through
:math:`y = Gz + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`, with every row scaled to
unit noise by :math:`s_i`. With :math:`P = I + G^\top G = L_P L_P^\top` and
:math:`v = L_P^{-1} G^\top y`, Woodbury and the determinant lemma give the log evidence of the
unscaled observations

.. math::
    \log p(y \mid \theta) = -\tfrac12\big(y^\top y - v^\top v\big) - \sum_i \log (L_P)_{ii}
        - \tfrac M2 \log 2\pi + \sum_i \log s_i,

and the conditional :math:`z \mid y, \theta \sim \mathcal N(L_P^{-\top} v,\; P^{-1})`.

The residual rows are pseudo-observations of zero, not data: imposed at more collocation
points than there are grid values, their covariance :math:`R C R^\top` is rank deficient and
their own density grows without bound as :math:`\tau_2 \to \infty` (zero is exactly predicted
in the directions the field cannot move). So the physics is made part of the prior, the GP
conditioned on the residual, and the data (sensors, boundary values) are scored under it:

.. math::
    \log p(y_{\mathrm{data}} \mid \theta) = \log p(y_{\mathrm{data}}, r = 0 \mid \theta)
        - \log p(r = 0 \mid \theta),

scored as an :math:`S \times S` Gaussian under the physics-conditioned prior
(:func:`data_evidence`), finite in the limit of exact physics. With the field
marginalised exactly, the hyper-parameters (kernel, residual precision, noise, unknown PDE
coefficients) are fitted by type-II MAP and sampled without the grid values.

References:
    Rasmussen & Williams (2006), Gaussian Processes for Machine Learning, ch. 2 and 5.
    Fang et al. (2024), Solving High Frequency and Multi-Scale PDEs with Gaussian Processes,
    ICLR 2024.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cholesky, solve_triangular

from ucsciml._types import Array, PRNGKey
from ucsciml.models.spectral_gp._gp_solve import DataRows, NormalEquations


class Conditional(NamedTuple):
    """The grid values' conditional given the hyper-parameters, and the log evidence."""

    z_mean: Array
    chol_p: Array
    log_evidence: Array


def conditional(normal: NormalEquations) -> Conditional:
    """Factorise :math:`P = I + G^\top G` once: the conditional mean, its Cholesky factor and
    the log evidence of the system's rows."""
    size = normal.gty.shape[0]
    chol_p = cholesky(jnp.eye(size, dtype=normal.gtg.dtype) + normal.gtg, lower=True)
    v = solve_triangular(chol_p, normal.gty, lower=True)
    z_mean = solve_triangular(chol_p.T, v, lower=False)
    log_ev = (
        -0.5 * (normal.yty - v @ v)
        - jnp.sum(jnp.log(jnp.diag(chol_p)))
        - 0.5 * normal.rows * jnp.log(2.0 * jnp.pi)
        + normal.log_scale
    )
    return Conditional(z_mean, chol_p, log_ev)


class DataEvidence(NamedTuple):
    """The grid values' conditional mean given every row, and the data rows' log evidence
    under the physics-conditioned prior."""

    z_mean: Array
    log_evidence: Array


def data_evidence(physics: NormalEquations, data: DataRows) -> DataEvidence:
    r"""The log evidence of the data rows under the physics-conditioned prior, scored directly.

    With :math:`P = I + G_r^\top G_r = L_P L_P^\top` the residual rows give the prior
    :math:`z \sim \mathcal N(m, P^{-1})`, :math:`m = P^{-1} G_r^\top y_r`; the data rows then
    have :math:`y_d \sim \mathcal N(G_d m, I + A^\top A)` with :math:`A = L_P^{-1} G_d^\top`,
    an :math:`S \times S` Gaussian for :math:`S` data rows. Equal to the evidence of every row
    less that of the residual rows, but without their difference: both grow like
    :math:`\tau_2 \lVert r_0 \rVert^2` and cancel to round-off once the physics is nearly
    exact, where this form stays accurate. The conditional mean given every row follows by
    Woodbury: :math:`m + L_P^{-\top} A (I + A^\top A)^{-1} (y_d - G_d m)`."""
    size = physics.gty.shape[0]
    chol_p = cholesky(jnp.eye(size, dtype=physics.gtg.dtype) + physics.gtg, lower=True)
    v = solve_triangular(chol_p, physics.gty, lower=True)
    prior_mean = solve_triangular(chol_p.T, v, lower=False)
    a = solve_triangular(chol_p, data.g.T, lower=True)
    count = data.y.shape[0]
    chol_s = cholesky(jnp.eye(count, dtype=a.dtype) + a.T @ a, lower=True)
    w = solve_triangular(chol_s, data.y - data.g @ prior_mean, lower=True)
    log_ev = (
        -0.5 * w @ w
        - jnp.sum(jnp.log(jnp.diag(chol_s)))
        - 0.5 * count * jnp.log(2.0 * jnp.pi)
        + data.log_scale
    )
    gain = solve_triangular(chol_s.T, w, lower=False)
    z_mean = prior_mean + solve_triangular(chol_p.T, a @ gain, lower=False)
    return DataEvidence(z_mean, log_ev)


def draw(cond: Conditional, key: PRNGKey, shape: tuple[int, ...]) -> Array:
    r"""One draw of the whitened grid values, :math:`\bar z + L_P^{-\top}\epsilon`, as a grid."""
    eps = jax.random.normal(key, cond.z_mean.shape, cond.chol_p.dtype)
    return (cond.z_mean + solve_triangular(cond.chol_p.T, eps, lower=False)).reshape(shape)


def variance_at(cond: Conditional, weights_dense: Array) -> Array:
    r""":math:`\mathrm{diag}(W P^{-1} W^\top)` for dense rows ``weights_dense`` (``(S, N)``)."""
    return jnp.sum(solve_triangular(cond.chol_p, weights_dense.T, lower=True) ** 2, axis=0)
