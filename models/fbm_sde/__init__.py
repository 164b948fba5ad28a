r"""Neural SDEs driven by Markov-approximate fractional Brownian motion (MA-fBM).

The latent process and its augmented Markov state (one dimension of ``X`` shown)

.. math::
    dY_k = (-γ_k Y_k + u_φ)\,dt + dW,\qquad
    dX = b_θ(t, X)\,dt + s_θ(t, X) \sum_k ω_k(H)\,dY_k,\qquad
    y_i \sim \mathcal N(X(t_i), σ_\text{obs}^2),

is the prior for ``u = 0`` (``X`` is then driven by the MA-fBM of :mod:`._mafbm`) and a
variational posterior over paths for a control ``u_φ(t, X, Y, \text{next observation})``.
Girsanov's theorem gives the path KL ``½∫|u|²dt``, carried as a third solver state, so the
evidence lower bound is

.. math::
    \mathcal L = E_{q}\Big[\sum_i \log \mathcal N(y_i \mid X(t_i), σ_\text{obs}^2)
    - ½\int_0^T |u_φ|^2 dt\Big] - \mathrm{KL}\big(q(g)\,\|\,p(g)\big),

with ``g`` the physical parameters in unconstrained space — ``hurst`` (``H = sigmoid(g)``),
``theta`` and ``sigma`` (``exp``) — under a mean-field Gaussian ``q(g)``; network weights
(neural drift, diffusion, control) are point estimates, as in the paper. ``H = 1/2`` recovers
plain Brownian motion (for type II, ``Σω = 1`` to 1e-5). The solvers are Euler--Maruyama on
the augmented state (:func:`euler`) and a diffrax variant (:func:`solve_diffrax`); both feed
one Brownian increment to ``Y`` and ``X``, and agree step for step on the same increments.

Inference (:func:`fit`) maximises ``\mathcal L`` as an Optax objective rather than through
a NumPyro guide and a VI backend: the latent is a whole path whose posterior is a change of
drift on the Brownian motion, which a site-wise guide cannot express. Its draws of ``H`` and
the drift parameters leave as a :class:`ucsciml.Posterior` and an ArviZ DataTree
(:func:`to_posterior`, :func:`to_datatree`), with posterior-predictive paths
(:func:`posterior_paths`). For linear drift (fractional OU) the augmented model is
linear-Gaussian: :func:`kalman_log_likelihood` is its exact likelihood and
:func:`fou_program` a NumPyro program (``numpyro.factor``) for ``ucsciml.inference.NUTS`` —
the gold standard the variational posterior of ``H`` is compared with
(``case_studies/fbm_study.py``). :class:`HurstCase` (``case``, a family case of
:mod:`ucsciml.family_case`) runs that comparison from a case file,
``case_studies/fbm_hurst.toml``: backend ``nuts`` or the family's own ``vi``.

Modules, all private and imported only by this family: ``_mafbm`` (the MA-fBM weights and
covariances), ``_latent_sde`` (drift, diffusion, control and the solvers), ``_fbm_vi`` (the
ELBO, its fit and the posterior exit) and ``_fou_kalman`` (the exact fOU likelihood and its
NumPyro program).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ucsciml.models import fbm_sde
    >>> noise = fbm_sde.MAfBM(kind="I", horizon=2.0)
    >>> control = fbm_sde.Control(1, 5, 2.0, width=128, key=jax.random.key(0))
    >>> sde = fbm_sde.LatentSDE(fbm_sde.ZeroDrift(), fbm_sde.ConstantDiffusion(), noise, control)
    >>> obs = fbm_sde.Observations(jnp.array([2.0]), jnp.array([[0.0]]), 0.1)
    >>> result = fbm_sde.fit(sde, obs, key=jax.random.key(1), fixed={"hurst": 0.7, "sigma": 1.0})
    ... # doctest: +SKIP
    >>> paths, params = fbm_sde.posterior_paths(result, jax.random.key(2))  # doctest: +SKIP

References:
    Daems, Opper, Crevecoeur & Birdal (2024), Variational Inference for SDEs Driven by
    Fractional Noise, ICLR 2024.
"""

from ucsciml.models.fbm_sde._fbm_vi import (
    GaussianGlobals,
    VIResult,
    default_priors,
    fit,
    negative_elbo,
    posterior_paths,
    to_datatree,
    to_posterior,
)
from ucsciml.models.fbm_sde._fou_kalman import fou_program, kalman_log_likelihood
from ucsciml.models.fbm_sde._fou_kalman import simulate as simulate_fou
from ucsciml.models.fbm_sde._latent_sde import (
    ConstantDiffusion,
    Control,
    LatentSDE,
    LinearDrift,
    MAfBM,
    NeuralDiffusion,
    NeuralDrift,
    Observations,
    Path,
    ZeroDrift,
    brownian_increments,
    euler,
    sample_prior,
    solve_diffrax,
)
from ucsciml.models.fbm_sde._mafbm import (
    approximate_covariance,
    fbm_variance,
    omega,
    omega_numpy,
    relative_error,
    speeds,
    standard_fbm_scale,
)
from ucsciml.models.fbm_sde.case import HurstCase, hurst_data

__all__ = [
    "ConstantDiffusion",
    "Control",
    "GaussianGlobals",
    "HurstCase",
    "LatentSDE",
    "LinearDrift",
    "MAfBM",
    "NeuralDiffusion",
    "NeuralDrift",
    "Observations",
    "Path",
    "VIResult",
    "ZeroDrift",
    "approximate_covariance",
    "brownian_increments",
    "default_priors",
    "euler",
    "fbm_variance",
    "fit",
    "fou_program",
    "hurst_data",
    "kalman_log_likelihood",
    "negative_elbo",
    "omega",
    "omega_numpy",
    "posterior_paths",
    "relative_error",
    "sample_prior",
    "simulate_fou",
    "solve_diffrax",
    "speeds",
    "standard_fbm_scale",
    "to_datatree",
    "to_posterior",
]
