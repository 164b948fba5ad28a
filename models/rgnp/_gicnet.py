"""Grid Invariant Convolutional Network (GICNet): an encoder of a field observed on any points.

A field observed at an arbitrary, unordered point set is lifted pointwise to ``C`` channels,
each channel is Nadaraya–Watson interpolated onto a fixed latent grid with its own learnable
length-scale, a small CNN reads the grid, and an MLP head (with a trunk on the known input
``w``) returns the parameters of a Gaussian over ``z``. Sums over points make the output
invariant to the order of the points; the kernel interpolation makes it (nearly) invariant
to where they are, so one encoder serves random training grids and sensor layouts alike.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._types import Array, PRNGKey


def bounded_gaussian(raw: Array, size: int, rank: int, floor: float) -> tuple[Array, Array, Array]:
    r"""Mean, diagonal variance and low-rank factor from an unconstrained vector.

    ``raw = [mean (size), a (size), b (size), c (size * rank)]`` (``b``, ``c`` only when
    ``rank > 0``). The marginal variance is :math:`s^2 = l + (1 - l)\sigma(a) \in [l, 1]`;
    a fraction :math:`\sigma(b)` of the part above the floor goes to the rank-``k`` factor
    (rows of ``c`` normalised), so ``diag + C C^T`` has every marginal in ``[l, 1]`` and the
    diagonal never falls below the floor ``l`` (the covariance stays well conditioned).

    Returns:
        ``(mean (size,), diag (size,), factor (size, rank))``.
    """
    mean, a = raw[:size], raw[size : 2 * size]
    spread = (1.0 - floor) * jax.nn.sigmoid(a)
    if rank == 0:
        return mean, floor + spread, jnp.zeros((size, 0), raw.dtype)
    share = jax.nn.sigmoid(raw[2 * size : 3 * size])
    c = raw[3 * size : 3 * size + size * rank].reshape(size, rank)
    unit = c / jnp.sqrt(jnp.sum(c**2, axis=1, keepdims=True) + 1e-12)
    return mean, floor + spread * (1.0 - share), unit * jnp.sqrt(spread * share)[:, None]


def raw_size(size: int, rank: int) -> int:
    """Length of the ``raw`` vector :func:`bounded_gaussian` reads."""
    return 2 * size + (size + size * rank if rank else 0)


class GICNet(eqx.Module):
    r"""Grid Invariant Convolutional Network: field on any points ``->`` Gaussian over ``z``.

    .. math::
        h_i = \mathrm{MLP}_\text{lift}(u_i),\qquad
        g_c(\xi_j) = \sum_i \operatorname{softmax}_i\Big(-\frac{\|\xi_j - x_i\|^2}
            {2\ell_c^2}\Big) h_{ic},\qquad
        (m, s^2) = \mathrm{MLP}_\text{head}\big[\mathrm{CNN}(\xi, g),\ \mathrm{MLP}_\text{trunk}(w)\big].

    The softmax is exactly the Nadaraya–Watson weight :math:`K_{ji} / \sum_i K_{ji}` of an
    exponentiated-quadratic kernel, computed in log space so that short length-scales give
    nearest-neighbour interpolation instead of ``0/0``. Points are in ``[-1, 1]^d``.

    Args:
        num_dims: spatial dimensions ``d``.
        num_z, num_w: sizes of ``z`` (output) and ``w`` (trunk input).
        grid_shape: latent grid resolution per dimension, e.g. ``(20,)`` or ``(10, 10)``.
        channels: lifted channels ``C`` (one length-scale each).
        lengthscale_range: initial length-scales, log-spaced over the channels.
        cnn_channels, cnn_layers, kernel_size: the CNN (valid padding, swish).
        branch_size, trunk_size: widths of the CNN read-out and of the ``w`` trunk.
        head_width, head_depth: the MLP head.
        rank: low-rank factor of the output covariance (0: diagonal).
        variance_floor: lower bound of each output variance (in standardised ``z``).
        key: PRNG key (keyword-only).

    References:
        Vadeboncoeur et al. (2023), Random Grid Neural Processes for Parametric Partial
        Differential Equations, ICML, Section 4 (GICNets).
    """

    lift: eqx.nn.MLP
    log_lengthscales: Array
    latent_grid: Array
    convs: tuple[eqx.nn.Conv, ...]
    branch: eqx.nn.Linear
    trunk: eqx.nn.MLP
    head: eqx.nn.MLP
    grid_shape: tuple[int, ...] = eqx.field(static=True)
    num_z: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)
    variance_floor: float = eqx.field(static=True)

    def __init__(
        self,
        num_dims: int,
        num_z: int,
        num_w: int,
        grid_shape: tuple[int, ...] = (20,),
        channels: int = 20,
        lengthscale_range: tuple[float, float] = (1e-3, 1.0),
        cnn_channels: int = 20,
        cnn_layers: int = 3,
        kernel_size: int = 3,
        branch_size: int = 64,
        trunk_size: int = 64,
        head_width: int = 128,
        head_depth: int = 3,
        rank: int = 0,
        variance_floor: float = 1e-4,
        *,
        key: PRNGKey,
    ):
        grid_shape = tuple(int(g) for g in grid_shape)
        if len(grid_shape) != num_dims:
            raise ValueError(
                f"GICNet grid_shape {grid_shape} needs one entry per dimension ({num_dims})"
            )
        out_side = [g - cnn_layers * (kernel_size - 1) for g in grid_shape]
        if min(out_side) < 1:
            raise ValueError(
                f"GICNet: {cnn_layers} valid convolutions of size {kernel_size} do not fit a "
                f"latent grid {grid_shape}; use a finer grid or fewer/smaller kernels"
            )
        keys = jax.random.split(key, 5 + cnn_layers)
        self.lift = eqx.nn.MLP(1, channels, channels, 2, activation=jax.nn.swish, key=keys[0])
        low, high = lengthscale_range
        self.log_lengthscales = jnp.linspace(math.log(low), math.log(high), channels)
        axes = [jnp.linspace(-1.0, 1.0, g) for g in grid_shape]
        mesh = jnp.meshgrid(*axes, indexing="ij")
        self.latent_grid = jnp.stack([m.ravel() for m in mesh], axis=-1)
        convs, in_channels = [], channels + num_dims
        for i in range(cnn_layers):
            convs.append(
                eqx.nn.Conv(
                    num_dims, in_channels, cnn_channels, kernel_size, padding=0, key=keys[5 + i]
                )
            )
            in_channels = cnn_channels
        self.convs = tuple(convs)
        self.branch = eqx.nn.Linear(cnn_channels * int(np.prod(out_side)), branch_size, key=keys[1])
        self.trunk = eqx.nn.MLP(
            num_w, trunk_size, trunk_size, 2, activation=jax.nn.swish, key=keys[2]
        )
        self.head = eqx.nn.MLP(
            branch_size + trunk_size,
            raw_size(num_z, rank),
            head_width,
            head_depth,
            activation=jax.nn.swish,
            key=keys[3],
        )
        self.grid_shape = grid_shape
        self.num_z = num_z
        self.rank = rank
        self.variance_floor = variance_floor

    def interpolate(self, points: Array, values: Array, mask: Array | None = None) -> Array:
        """Lift and Nadaraya–Watson interpolate onto the latent grid: ``(C, num_grid)``."""
        lifted = jax.vmap(self.lift)(values[:, None])  # (n, C)
        grid = jax.lax.stop_gradient(self.latent_grid)
        sq_dist = jnp.sum((grid[:, None, :] - points[None, :, :]) ** 2, axis=-1)  # (G, n)
        logits = -sq_dist[None] / (2.0 * jnp.exp(2.0 * self.log_lengthscales))[:, None, None]
        if mask is not None:
            logits = jnp.where(mask[None, None, :], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)  # (C, G, n)
        return jnp.einsum("cgn,nc->cg", weights, lifted)

    def __call__(
        self, points: Array, values: Array, w: Array, mask: Array | None = None
    ) -> tuple[Array, Array, Array]:
        """Gaussian over standardised ``z`` from a field observed at ``points``.

        Args:
            points: ``(n, d)`` in ``[-1, 1]^d``, any order.
            values: ``(n,)`` field values.
            w: ``(num_w,)`` standardised known input.
            mask: optional ``(n,)`` booleans; ``False`` rows are ignored (padding).

        Returns:
            ``(mean (num_z,), variance (num_z,), factor (num_z, rank))``.
        """
        grid_values = self.interpolate(points, values, mask)
        coords = jax.lax.stop_gradient(self.latent_grid).T  # (d, G)
        h = jnp.concatenate([coords, grid_values], axis=0).reshape(-1, *self.grid_shape)
        for conv in self.convs:
            h = jax.nn.swish(conv(h))
        features = jnp.concatenate([self.branch(h.ravel()), self.trunk(w)])
        return bounded_gaussian(self.head(features), self.num_z, self.rank, self.variance_floor)
