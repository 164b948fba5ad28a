"""The spectral-mixture GP PDE solver (GP-HM) on a collocation grid, with Kronecker algebra.

Public names: the model definition :class:`SpectralGP`; the alternating exact-solve fit for
linear PDEs (:func:`fit`, :class:`SpectralGPFit`) and its band (:func:`predict`,
:func:`posterior_draws`); the conjugate-gradient fit for grids too large to factorise
(:func:`fit_sensors`); the grid-resolution check (:func:`points_per_period`).

Modules: ``spectral_gp`` (the model definition and its NumPyro program); private helpers
``_spectral_kernels`` (per-dimension spectral-mixture kernels), ``_kron`` (Kronecker
algebra), ``_gp_data`` (sensor data -> solver inputs), ``_gp_solve`` (normal equations,
exact solve, Matheron draws), ``_gp_observe`` (grid -> scattered points), ``_gp_evidence``
and ``_gp_program`` (the marginalised program on sensor data), ``_gp_iterative`` and
``_gp_precond`` (the CG fit and its preconditioner). Only this family imports them.

References:
    Fang, Wang, Li, Li, Zhe & Kirby (2024), Solving High Frequency and Multi-Scale PDEs with
    Gaussian Processes, ICLR 2024.
"""

from ucsciml.models.spectral_gp._gp_iterative import fit_sensors
from ucsciml.models.spectral_gp.spectral_gp import (
    SpectralGP,
    SpectralGPFit,
    fit,
    points_per_period,
    posterior_draws,
    predict,
)

__all__ = [
    "SpectralGP",
    "SpectralGPFit",
    "fit",
    "fit_sensors",
    "points_per_period",
    "posterior_draws",
    "predict",
]
