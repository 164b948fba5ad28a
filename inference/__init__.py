"""Inference backends: each is a frozen config with ``run(program, key) -> Posterior``."""

from ucsciml.inference.nuts import NUTS

__all__ = ["NUTS"]
