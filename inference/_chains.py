"""Chain layout: chains are a leading axis, vmapped on one device, sharded across several.

Each chain's key is ``fold_in(root, chain_index)``, so a chain's draws depend only on the
root key and its global index, never on how chains are laid out over devices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ucsciml import distributed
from ucsciml._types import PRNGKey

log = logging.getLogger(__name__)


def chain_keys(key: PRNGKey, num_chains: int) -> jax.Array:
    """Per-chain keys ``fold_in(key, i)`` for ``i < num_chains``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_chains))


def num_shards(num_chains: int) -> int:
    """Devices the chains are split over: all of them when they divide the chains, else 1."""
    n = jax.device_count()
    if n > 1 and num_chains % n:
        log.warning(
            "%d chains do not split evenly over %d devices; running them all on one "
            "device (choose a multiple of %d to shard)",
            num_chains,
            n,
            n,
        )
        return 1
    return n


def map_chains(
    fn: Callable, num_chains: int, shard: bool = True, sequential: bool = False
) -> Callable:
    """Lift a one-chain ``fn(args)`` to all chains: ``vmap``, or ``shard_map(vmap)``.

    With ``shard=False`` every chain runs vmapped on the default device. With
    ``sequential=True`` the chains of a device run one after another (``lax.map``) instead of
    vmapped: for optimisers whose line searches branch (L-BFGS), ``vmap`` turns every
    ``cond`` into a ``select`` that runs both branches, about 3x the work on a CPU.

    The returned callable is compiled on first use and takes ``args`` whose leaves have a
    leading chain axis.
    """
    shards = num_shards(num_chains) if shard else 1
    batched = (lambda args: jax.lax.map(fn, args)) if sequential else jax.vmap(fn)
    if shards == 1:
        return jax.jit(batched)
    mesh = jax.make_mesh((shards,), ("chain",))
    sharded = jax.jit(
        jax.shard_map(
            batched, mesh=mesh, in_specs=P("chain"), out_specs=P("chain"), check_vma=False
        )
    )

    def run(args):
        return distributed.gather(sharded(distributed.put(args, NamedSharding(mesh, P("chain")))))

    return run


def tile(tree, num: int):
    """``num`` copies of every leaf of ``tree`` along a new leading (chain) axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (num, *jnp.shape(x))), tree)
