"""Replicate refits of the default Burgers B-PINN: what the one compiled fit saves.

Prints, measured side by side in one process:

1. members of an L-BFGS fit run vmapped vs one after another (``lax.map``) on one device:
   vmapping the zoom line search turns its branches into selects that run both sides;
2. a first ``DeepEnsemble.fit_replicates`` call (compiles) vs a second on new replicate
   data of the same shapes (reuses the executable: data are traced arguments).

Run: ``python benchmarks/replicate_fits.py [--steps N]`` (default 300 Adam + 300 L-BFGS).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import numpyro.distributions as dist

import ucsciml as uq
from ucsciml import inference, models
from ucsciml.data import synthetic_sensors
from ucsciml.inference._chains import chain_keys
from ucsciml.inference._map import fit_map, potential_family


def _program():
    pde = uq.pde.Burgers(
        lambda1=uq.Unknown(dist.Normal(1.0, 0.5), truth=1.0),
        lambda2=uq.Unknown(dist.LogNormal(-5.0, 2.0), truth=0.01 / np.pi),
    )
    data = synthetic_sensors(pde, 270, 0.01, 0)
    model = models.BayesianPINN(
        pde=pde,
        width=20,
        depth=8,
        residual_at="sensors+collocation",
        num_collocation=1000,
        hard_constraints=True,
    )
    return uq.compile(model, data)


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Adam and L-BFGS steps each")
    steps = parser.parse_args().steps
    program = _program()
    family = potential_family(program, jax.random.key(0), program.fn)
    settings = inference.MAPFit(adam_steps=steps, learning_rate=3e-3, lbfgs_steps=steps)

    def one(key):
        return fit_map(family.make(), family.init(key), settings)

    keys = chain_keys(jax.random.key(0), 2)
    vmapped = _timed(jax.jit(jax.vmap(one)), keys)
    sequential = _timed(jax.jit(lambda k: jax.lax.map(one, k)), keys)
    print(f"2 fits of {steps}+{steps} steps on one device:")
    print(f"  vmapped {vmapped:.2f} s, one after another {sequential:.2f} s")
    print(f"  ratio sequential / vmapped: {sequential / vmapped:.2f}")

    backend = inference.DeepEnsemble(num_members=2, map=settings)
    rng = np.random.default_rng(0)
    y = np.asarray(program.targets)

    def replicates():
        return y[None] + 0.006 * rng.normal(size=(2, y.size))

    start = time.perf_counter()
    backend.fit_replicates(program, replicates(), jax.random.key(1))
    first = time.perf_counter() - start
    start = time.perf_counter()
    backend.fit_replicates(program, replicates(), jax.random.key(2))
    second = time.perf_counter() - start
    print("fit_replicates, 2 replicate datasets:")
    print(f"  first call {first:.1f} s, second call (new data, same shapes) {second:.1f} s")
    print(f"  ratio second / first: {second / first:.2f}")


if __name__ == "__main__":
    main()
