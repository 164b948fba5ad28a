"""Model definitions: frozen configs that compile to NumPyro programs."""

from ucsciml.models import fbm_sde
from ucsciml.models.bpinn import BayesianPINN
from ucsciml.models.rgnp import RGNP
from ucsciml.models.spectral_gp import SpectralGP

__all__ = ["BayesianPINN", "RGNP", "SpectralGP", "fbm_sde"]
