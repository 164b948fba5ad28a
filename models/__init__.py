"""Model definitions: frozen configs that compile to NumPyro programs."""

from ucsciml.models.bpinn import BayesianPINN

__all__ = ["BayesianPINN"]
