"""Model definitions: frozen configs that compile to NumPyro programs, one sub-package a family.

Families: :mod:`~ucsciml.models.bpinn` (Bayesian PINN, :class:`BayesianPINN`),
:mod:`~ucsciml.models.spectral_gp` (spectral-mixture GP PDE solver, :class:`SpectralGP`),
:mod:`~ucsciml.models.rgnp` (random-grid neural process, :class:`RGNP`),
:mod:`~ucsciml.models.fbm_sde` (neural SDE driven by fractional noise) and
:mod:`~ucsciml.models.probconserv` (conservation update with its GP and attentive-NP base
models). Each family's ``__init__`` re-exports its public names; its ``_``-prefixed modules
are private to it (``tests/test_layout.py`` checks that no other module imports them).
"""

from ucsciml.models import fbm_sde, probconserv
from ucsciml.models.bpinn import BayesianPINN
from ucsciml.models.rgnp import RGNP
from ucsciml.models.spectral_gp import SpectralGP

__all__ = ["BayesianPINN", "RGNP", "SpectralGP", "fbm_sde", "probconserv"]
