r"""Kronecker algebra on tensor grids: mode products, log density, grid derivatives.

A field on a tensor grid is an array ``U`` of shape ``(n_1, ..., n_d)`` with
:math:`\mathrm{vec}\,U \sim \mathcal N(0, C_1 \otimes \dots \otimes C_d)`. Every operation
here acts one axis at a time (a mode product :math:`U \times_j M`), so memory stays
:math:`O(\prod_j n_j + \sum_j n_j^2)` and the full covariance is never formed.

References:
    Saatçi (2012), Scalable Inference for Structured Gaussian Process Models, PhD thesis.
    Fang et al. (2024), Solving High Frequency and Multi-Scale PDEs with Gaussian Processes,
    ICLR 2024.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ucsciml._types import Array


def mode_product(u: Array, matrix: Array, axis: int) -> Array:
    r""":math:`U \times_j M`: apply ``matrix`` (``(m, n_j)``) along ``axis`` of ``u``."""
    return jnp.moveaxis(jnp.tensordot(matrix, u, axes=(1, axis)), 0, axis)


def kron_matvec(matrices: Sequence[Array | None], u: Array) -> Array:
    r""":math:`(M_1 \otimes \dots \otimes M_d)\,\mathrm{vec}\,U` as a grid; ``None`` is identity."""
    for axis, m in enumerate(matrices):
        if m is not None:
            u = mode_product(u, m, axis)
    return u


def kron_whiten(chols: Sequence[Array], u: Array) -> Array:
    r""":math:`(L_1^{-1} \otimes \dots \otimes L_d^{-1})\,\mathrm{vec}\,U` by triangular solves."""
    for axis, chol in enumerate(chols):
        moved = jnp.moveaxis(u, axis, 0)
        solved = solve_triangular(chol, moved.reshape(chol.shape[0], -1), lower=True)
        u = jnp.moveaxis(solved.reshape(moved.shape), 0, axis)
    return u


def kron_logpdf(chols: Sequence[Array], u: Array) -> Array:
    r"""Log density of :math:`\mathcal N(\mathrm{vec}\,U;\,0,\,\otimes_j C_j)`, :math:`C_j = L_jL_j^\top`.

    .. math::
        \log p = -\tfrac12 \|(\otimes_j L_j^{-1})\mathrm{vec}\,U\|^2
                 - \sum_j \tfrac{N}{n_j} \sum_i \log (L_j)_{ii} - \tfrac N2 \log 2\pi,
        \quad N = \textstyle\prod_j n_j.

    Args:
        chols: lower Cholesky factors ``L_j`` (``(n_j, n_j)``), one per axis of ``u``.
        u: grid values, shape ``(n_1, ..., n_d)``.

    Returns:
        Scalar log density.
    """
    size = u.size
    z = kron_whiten(chols, u)
    logdet = sum(size / c.shape[0] * jnp.sum(jnp.log(jnp.diag(c))) for c in chols)
    return -0.5 * jnp.sum(z**2) - logdet - 0.5 * size * jnp.log(2.0 * jnp.pi)


def kron_dense(matrices: Sequence[Array]) -> Array:
    """The dense Kronecker product (tests and tiny grids only)."""
    out = matrices[0]
    for m in matrices[1:]:
        out = jnp.kron(out, m)
    return out


def derivative_operator(cross: Array, chol: Array) -> Array:
    r"""Grid derivative operator :math:`D^{(m)} C^{-1}` from ``cross`` :math:`=D^{(m)}` and
    :math:`C = LL^\top`, via two triangular solves (no explicit inverse).

    For grid values ``U`` the GP interpolant is :math:`u(x) = k(x, X) C^{-1} U`, so its
    ``m``-th derivative at the grid is :math:`D^{(m)} C^{-1} U` with
    :math:`D^{(m)}_{ik} = \partial_x^m k(x_i, x_k)`.
    """
    # (D C^{-1})^T = C^{-1} D^T, C symmetric.
    tmp = solve_triangular(chol, cross.T, lower=True)
    return solve_triangular(chol.T, tmp, lower=False).T


def orders_from_name(name: str, coords: Sequence[str]) -> tuple[int, ...]:
    """Per-axis derivative orders of a derivative name: ``"u_xy"`` -> ``(1, 1)``."""
    if name == "u":
        return (0,) * len(coords)
    letters = name.partition("_")[2]
    return tuple(letters.count(c) for c in coords)


def grid_derivative(
    operators: Sequence[dict[int, Array]], orders: Sequence[int], u: Array
) -> Array:
    r"""Mixed grid derivative :math:`U \times_j (D_j^{(m_j)} C_j^{-1})` for orders ``m_j``
    (order 0 is the identity unless ``operators`` holds an interpolation operator for it)."""
    return kron_matvec(
        [ops[m] if m or m in ops else None for ops, m in zip(operators, orders, strict=True)], u
    )
