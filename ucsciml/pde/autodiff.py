"""Derivatives of a batched network by forward-mode autodiff.

For a network ``f: (n, d) -> (n,)`` whose rows are independent points, the directional
derivative along coordinate ``i`` of every point at once is one ``jax.jvp`` with tangent
``e_i`` broadcast over rows. Higher derivatives nest one more ``jvp`` per order. Forward mode carries
the tangent through the layers alongside the values, which for the few low-order derivatives
a PDE needs is much cheaper than nested reverse-mode ``grad`` (see DESIGN.md, "PDEs").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from ucsciml._types import Array
from ucsciml.pde.base import derivative_indices


def derivatives(
    fn: Callable[[Array], Array],
    points: Array,
    names: Iterable[str],
    coords: tuple[str, ...],
) -> dict[str, Array]:
    """Evaluate named derivatives of ``fn`` at ``points``.

    Args:
        fn: batched scalar field, ``(n, d) -> (n,)``, rows independent.
        points: ``(n, d)`` evaluation points.
        names: derivative names such as ``"u"``, ``"u_x"``, ``"u_xx"``, ``"u_xt"``, ``"u_xxyy"``
            (any order: one nested ``jvp`` per letter, so cost grows as ``2^order``).
        coords: coordinate names, one per column of ``points``.

    Returns:
        ``{name: (n,) array}``.

    Example:
        >>> import jax.numpy as jnp
        >>> d = derivatives(lambda p: p[:, 0] ** 2, jnp.ones((3, 1)), ["u_x", "u_xx"], ("x",))
        >>> [float(d["u_x"][0]), float(d["u_xx"][0])]
        [2.0, 2.0]
    """
    out: dict[str, Array] = {}
    for name in names:
        idx = derivative_indices(name, coords)
        if name in out:
            continue
        if len(idx) == 0:
            out[name] = fn(points)
            continue
        # Nest one jvp per differentiated coordinate, innermost first: "u_xt" is
        # d/dt (d/dx fn); "u_xxyy" nests four.
        nested = fn
        for axis in idx[:-1]:
            nested = functools.partial(_directional, nested, axis=axis)
        out[name] = _directional(nested, points, idx[-1])
    return out


def _directional(fn: Callable[[Array], Array], points: Array, axis: int) -> Array:
    tangent = jnp.zeros_like(points).at[:, axis].set(1.0)
    return jax.jvp(fn, (points,), (tangent,))[1]
