r"""A Kronecker-eigenbasis Jacobi preconditioner for the spectral GP's CG solves.

The whitened precision of the grid values (:mod:`ucsciml.models.spectral_gp._gp_solve`) is

.. math::
    P = I + \tau_2 \sum_{k,l} c_k c_l \bigotimes_j B_j^{(a_{kj})\top} B_j^{(a_{lj})}
        + \sum_s s_s^2 \bigotimes_j (w_{sj} L_j)^\top (w_{sj} L_j),

one Kronecker product per pair of PDE terms plus one per data row. With the Cholesky factor
:math:`L_j = C_j^{1/2} U_j` (:math:`U_j` orthogonal), every per-axis factor is
:math:`U_j^\top f(C_j) U_j` for some function :math:`f` of the stationary covariance, so on a
regular grid they nearly commute and share an eigenbasis. Taking :math:`Q_j` from the per-axis
sum of the residual factors, the preconditioner is the exact diagonal of :math:`P` in the
basis :math:`Q = \otimes_j Q_j`,

.. math:: M^{-1} v = Q\,\mathrm{diag}(Q^\top P Q)^{-1} Q^\top v,

computed term by term from per-axis diagonals, :math:`O(\sum_j n_j^3 + N \sum_j n_j)` to build
and :math:`O(N \sum_j n_j)` to apply: no ``N x N`` matrix. It is symmetric positive definite
(the diagonal of an SPD matrix in an orthogonal basis is positive), as conjugate gradients need.

References:
    Lynch, Rice & Thomas (1964), Direct solution of partial difference equations by tensor
    product methods, Numer. Math. 6 (the fast diagonalisation idea).
"""

from __future__ import annotations

import string
from collections.abc import Callable

import jax.numpy as jnp

from ucsciml._types import Array
from ucsciml.models.spectral_gp import _gp_solve as solve
from ucsciml.models.spectral_gp import _kron


def _diag_in_basis(left: Array, right: Array) -> Array:
    """``diag(Q^T A^T B Q)`` from ``left = A Q`` and ``right = B Q``."""
    return jnp.sum(left * right, axis=0)


def _outer(vectors: list[Array]) -> Array:
    out = jnp.ones(())
    for v in vectors:
        out = jnp.multiply.outer(out, v)
    return out


def _rows_diagonal(rows: list[Array], weights: Array) -> Array:
    r""":math:`\sum_s w_s \otimes_j (r_{sj})^2` as a grid, for per-axis rows ``r_j`` (``(S, n_j)``)."""
    letters = string.ascii_lowercase[: len(rows)]
    spec = "z," + ",".join(f"z{c}" for c in letters) + "->" + letters
    return jnp.einsum(spec, weights, *(r**2 for r in rows))


def axis_bases(whitened: list[dict[int, Array]]) -> list[Array]:
    """Per axis the eigenvectors of the sum of the residual's whitened Gram factors, each
    scaled to unit Frobenius norm (so no one order decides the basis alone)."""
    bases = []
    for ops in whitened:
        gram = sum(b.T @ b / jnp.linalg.norm(b.T @ b) for b in ops.values())
        bases.append(jnp.linalg.eigh(gram)[1])
    return bases


def kron_jacobi(model, theta: dict, inputs: dict) -> Callable[[Array], Array]:
    """The preconditioner ``v -> M^{-1} v`` on grid-shaped whitened vectors (module docstring)
    for the rows of :func:`ucsciml.models.spectral_gp._gp_solve.linear_system` at ``theta``: residual,
    sensors (``inputs["sensor_points"]``) and Dirichlet rows (``inputs["boundary_index"]``)."""
    kparams = model.kernel_params(theta)
    chols, _ = model.factors(kparams)
    whitened = model.whitened_operators(kparams, chols)
    bases = axis_bases(whitened)
    projected = [{m: b @ q for m, b in ops.items()} for ops, q in zip(whitened, bases, strict=True)]
    coeffs = solve.residual_coefficients(model, model.pde_params(theta))
    orders = model.derivative_orders()
    tau2 = jnp.exp(theta["log_tau2"])
    diag = jnp.ones(model.grid)
    for k, ok in enumerate(orders):
        for l, ol in enumerate(orders):  # noqa: E741
            parts = [_diag_in_basis(p[a], p[b]) for p, a, b in zip(projected, ok, ol, strict=True)]
            diag = diag + tau2 * coeffs[k] * coeffs[l] * _outer(parts)
    if "sensor_points" in inputs:
        weights, interp = solve.sensor_weights(model, kparams, chols, inputs["sensor_points"])
        rows = [w @ q for w, q in zip(weights, bases, strict=True)]
        diag = diag + _rows_diagonal(rows, solve.sensor_scale(theta, inputs, interp) ** 2)
    boundary = inputs["boundary_index"]
    if boundary.shape[0]:
        index = jnp.unravel_index(boundary, model.grid)
        rows = [(c @ q)[i] for c, q, i in zip(chols, bases, index, strict=True)]
        scale = jnp.full(boundary.shape, solve.boundary_scale(model, theta) ** 2)
        diag = diag + _rows_diagonal(rows, scale)
    transposed = [q.T for q in bases]

    def apply(v: Array) -> Array:
        return _kron.kron_matvec(bases, _kron.kron_matvec(transposed, v) / diag)

    return apply
