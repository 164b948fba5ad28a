r"""Exact GP regression on a small context set: a base model for ProbConserv.

One GP per function: a constant-mean, squared-exponential ARD kernel

.. math:: k(z, z') = s^2 \exp\big(-\tfrac12 \textstyle\sum_j (z_j - z'_j)^2 / \ell_j^2\big),

fitted by type-II maximum likelihood (L-BFGS-B on the log marginal likelihood with its
analytic gradient :math:`\tfrac12\mathrm{tr}((K^{-1} - \alpha\alpha^\top)\partial K)`,
log-parametrised hyperparameters, a noise floor), predicting the latent field's mean and
full covariance at query points.

Why neither gpjax nor JAX: a ProbConserv table fits hundreds of independent 100-point GPs on
a CPU. Every gradient step of the marginal likelihood needs :math:`K^{-1}` (or the Cholesky
VJP), i.e. triangular solves with a matrix right-hand side, which XLA:CPU ran at ~40 ms for a
100 x 100 Gram matrix on the project machine (measured: Cholesky 0.9 ms, its VJP 36-50 ms),
against well under a millisecond in LAPACK through NumPy/SciPy. gpjax (0.13) differentiates
the same Cholesky through JAX and fits one ``nnx`` model per Python call. The fitted GP is
small and its prediction is then handed to JAX as arrays.

References:
    Rasmussen & Williams (2006), Gaussian Processes for Machine Learning, MIT Press, ch. 2, 5.
    Hansen et al. (2023), Learning Physical Models that Can Respect Conservation Laws, ICML
    (the GP base model and the 10 x 10 stratified context design).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize

from ucsciml._types import Array, Float
from ucsciml.models.probconserv._contexts import stratified_context

__all__ = ["GPFit", "fit", "fit_predict", "predict", "stratified_context"]

# Bounds in standardised units (inputs scaled to [0, 1], targets to unit variance). Noise sd
# >= 1e-2 (variance >= 1e-4, gpytorch's default floor) and amplitude >= 0.1: with noise-free
# context data, smaller floors let the fit interpolate, or (all Stefan contexts ahead of the
# front, all zero) shrink the prior to nothing, and the predictive variance collapses
# (measured mean LL ~ -1e10 on Stefan). Lengthscales <= 2 domain widths.
_BOUNDS = {"lengthscale": (0.01, 2.0), "amplitude": (0.1, 10.0), "noise": (1e-2, 1.0)}


class GPFit(NamedTuple):
    """Fitted hyperparameters with the standardised context data (NumPy float64)."""

    lengthscale: np.ndarray
    amplitude: float
    noise: float
    inputs: np.ndarray
    targets: np.ndarray
    offset: float
    scale: float


def _scaled_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[:, None, :] - b[None, :, :]) ** 2


def _kernel(a, b, lengthscale, amplitude):
    return amplitude**2 * np.exp(-0.5 * np.sum(_scaled_sq_dist(a, b) / lengthscale**2, -1))


def _nll_and_grad(theta, sq_dist, y, min_noise):
    d = sq_dist.shape[-1]
    lengthscale, amplitude, noise = np.exp(theta[:d]), np.exp(theta[d]), np.exp(theta[d + 1])
    corr = np.exp(-0.5 * np.sum(sq_dist / lengthscale**2, -1))
    gram = amplitude**2 * corr + (noise**2 + min_noise) * np.eye(y.shape[0])
    try:
        factor = sla.cho_factor(gram, lower=True)
    except np.linalg.LinAlgError:
        return np.inf, np.zeros_like(theta)
    alpha = sla.cho_solve(factor, y)
    nll = 0.5 * y @ alpha + np.sum(np.log(np.diagonal(factor[0])))
    weight = sla.cho_solve(factor, np.eye(y.shape[0])) - np.outer(alpha, alpha)
    grads = [
        0.5 * np.sum(weight * amplitude**2 * corr * sq_dist[..., j] / lengthscale[j] ** 2)
        for j in range(d)
    ]
    grads.append(np.sum(weight * amplitude**2 * corr))
    grads.append(np.trace(weight) * noise**2)
    return nll, np.asarray(grads)


def fit(
    inputs: Float[Array, "m d"],
    targets: Float[Array, " m"],
    *,
    init_lengthscale: float = 0.3,
    min_noise: float = 1e-6,
    max_iter: int = 200,
) -> GPFit:
    """Type-II ML fit of one GP (targets standardised; inputs should be scaled to ~[0, 1]).

    Args:
        inputs: ``(m, d)`` context inputs.
        targets: ``(m,)`` context values.
        init_lengthscale: starting lengthscale (all dimensions); amplitude starts at 1 and
            noise at 0.1 (standardised units).
        min_noise: floor on the standardised noise variance (keeps the Gram matrix
            well conditioned for noise-free data).
        max_iter: L-BFGS-B iterations.

    Returns:
        :class:`GPFit`.
    """
    inputs = np.asarray(inputs, dtype=float)
    targets = np.asarray(targets, dtype=float)
    if inputs.ndim != 2 or targets.shape != inputs.shape[:1]:
        raise ValueError(
            f"fit needs inputs (m, d) and targets (m,); got {inputs.shape} and {targets.shape}"
        )
    # Constant context values (e.g. every Stefan context point ahead of the front) carry no
    # scale: fall back to unit scale rather than collapse the prior variance to ~0.
    spread = float(targets.std())
    offset, scale = float(targets.mean()), spread if spread > 1e-8 else 1.0
    y = (targets - offset) / scale
    d = inputs.shape[1]
    theta0 = np.log([init_lengthscale] * d + [1.0, 0.1])
    bounds = [np.log(_BOUNDS["lengthscale"])] * d
    bounds += [np.log(_BOUNDS["amplitude"]), np.log(_BOUNDS["noise"])]
    result = minimize(
        _nll_and_grad,
        theta0,
        args=(_scaled_sq_dist(inputs, inputs), y, min_noise),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
    )
    theta = result.x
    noise = float(np.sqrt(np.exp(2 * theta[d + 1]) + min_noise))
    return GPFit(np.exp(theta[:d]), float(np.exp(theta[d])), noise, inputs, y, offset, scale)


def predict(
    gp: GPFit, query: Float[Array, "n d"], *, include_noise: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    r"""Posterior mean and full covariance at ``query``.

    .. math:: \mu_* = m + K_{*c}(K_{cc} + \sigma^2 I)^{-1} y,\quad
        \Sigma_* = K_{**} - K_{*c}(K_{cc} + \sigma^2 I)^{-1}K_{c*}
        \;[+\, \sigma^2 I].

    Args:
        gp: a :func:`fit` result.
        query: ``(n, d)`` points, scaled like the context inputs.
        include_noise: add the fitted noise variance :math:`\sigma^2 I`, i.e. predict a new
            *observation* rather than the latent field. For noise-free context data (exact
            solutions) the fitted :math:`\sigma` is the GP's account of its own misfit (a
            stationary smooth kernel against a front); the field it is scored against at the
            query points carries the same misfit, so the predictive for the truth includes it.
    """
    query = np.asarray(query, dtype=float)
    gram = _kernel(gp.inputs, gp.inputs, gp.lengthscale, gp.amplitude)
    factor = sla.cho_factor(gram + gp.noise**2 * np.eye(gp.inputs.shape[0]), lower=True)
    cross = _kernel(query, gp.inputs, gp.lengthscale, gp.amplitude)
    mean = cross @ sla.cho_solve(factor, gp.targets)
    half = sla.solve_triangular(factor[0], cross.T, lower=True)
    cov = _kernel(query, query, gp.lengthscale, gp.amplitude) - half.T @ half
    cov = 0.5 * (cov + cov.T)
    if include_noise:
        cov = cov + gp.noise**2 * np.eye(query.shape[0])
    return gp.offset + gp.scale * mean, gp.scale**2 * cov


def fit_predict(
    contexts: Float[Array, "f m d"],
    values: Float[Array, "f m"],
    query: Float[Array, "n d"],
    *,
    include_noise: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One GP per function: ``(f, n)`` means and ``(f, n, n)`` covariances at ``query``
    (``include_noise`` as in :func:`predict`)."""
    out = [
        predict(fit(c, v), query, include_noise=include_noise)
        for c, v in zip(np.asarray(contexts), np.asarray(values), strict=True)
    ]
    return np.stack([m for m, _ in out]), np.stack([c for _, c in out])
