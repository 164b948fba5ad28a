r"""Observation operator from GP grid values to scattered points, one axis at a time.

With the grid values :math:`U` of a GP whose covariance is :math:`\otimes_j C_j`, the GP
conditional mean at a point :math:`x_s` is :math:`k(x_s, X) (\otimes_j C_j)^{-1}\mathrm{vec}\,U`.
For a product kernel the cross-covariance row is a Kronecker product of per-axis rows, so the
operator for ``S`` points is a row-wise Kronecker (Khatri–Rao) product

.. math::
    A = \big(a_1(s) \otimes \dots \otimes a_d(s)\big)_{s=1}^{S},\qquad
    a_j(s) = k_j(x_{sj}, X_j)\, C_j^{-1},

applied by contracting one axis at a time; in whitened coordinates :math:`U = (\otimes_j L_j)z`
the per-axis rows are :math:`w_j(s) = k_j(x_{sj}, X_j) L_j^{-\top}`. Neither the grid
covariance nor :math:`A` is formed: memory is :math:`O(S\, n_2\cdots n_d + \sum_j S n_j)`.
The GP's variance left between grid points, :math:`k(x_s, x_s) - k_s C^{-1} k_s^\top =
\prod_j k_j(0) - \prod_j \|w_j(s)\|^2`, is what the grid cannot represent at ``x_s``.

References:
    Saatçi (2012), Scalable Inference for Structured Gaussian Process Models, PhD thesis.
    Wilson & Nickisch (2015), Kernel Interpolation for Scalable Structured Gaussian Processes
    (KISS-GP), ICML 2015 (interpolating a grid GP to scattered points).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ucsciml._types import Array
from ucsciml.models.spectral_gp import _spectral_kernels as sk


def axis_weights(kind: str, params: sk.KernelParams, chol: Array, grid: Array, x: Array) -> Array:
    r"""Whitened cross-covariance rows :math:`k_j(x, X_j) L_j^{-\top}`, shape ``(S, n_j)``."""
    cross = sk.gram(kind, params, jnp.asarray(x), jnp.asarray(grid))
    return solve_triangular(chol, cross.T, lower=True).T


def observe(weights: Sequence[Array], z: Array) -> Array:
    r"""``A z`` at ``S`` points: per-axis rows ``weights[j]`` (``(S, n_j)``), grid ``z``.

    The first axis is contracted by a matrix product, every later one row by row
    (``einsum('sj,sj...->s...')``), so the operator is linear in ``z`` and transposable.
    """
    out = jnp.tensordot(weights[0], z, axes=(1, 0))
    for w in weights[1:]:
        out = jnp.einsum("sj,sj...->s...", w, out)
    return out


def interpolation_variance(weights: Sequence[Array], k0: Sequence[Array]) -> Array:
    """Prior variance at each point left unexplained by the grid values, ``(S,)``, >= 0."""
    explained = jnp.prod(jnp.stack([jnp.sum(w**2, axis=1) for w in weights]), axis=0)
    return jnp.maximum(jnp.prod(jnp.stack(list(k0))) - explained, 0.0)
