"""Model definitions: frozen configs that compile to NumPyro programs."""

from ucsciml.models import fbm_sde
from ucsciml.models.bpinn import BayesianPINN

__all__ = ["BayesianPINN", "fbm_sde"]
