"""Shared type aliases for public signatures (jaxtyping shapes)."""

from typing import Any, TypeAlias

import jax
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

ArrayLike: TypeAlias = jax.Array | np.ndarray
PRNGKey: TypeAlias = PRNGKeyArray
Points: TypeAlias = Float[Array, "n d"]
Field: TypeAlias = Float[Array, " n"]
Draws: TypeAlias = dict[str, Array]
PyTree: TypeAlias = Any

__all__ = ["Array", "ArrayLike", "Draws", "Field", "Float", "PRNGKey", "Points", "PyTree"]
