"""Inference backends: each is a frozen config with ``run(program, key) -> Posterior``."""

from ucsciml.inference._mapfit_settings import MAPFit
from ucsciml.inference.dropout import MCDropout
from ucsciml.inference.ensemble import DeepEnsemble
from ucsciml.inference.laplace import Laplace
from ucsciml.inference.nuts import NUTS
from ucsciml.inference.vi import VI

__all__ = ["NUTS", "VI", "DeepEnsemble", "Laplace", "MAPFit", "MCDropout"]
