"""Compile reuse: a second ``NUTS.run`` (same program, then new data of the same shapes) vs
the first, and the same for ``DeepEnsemble.run``, measured side by side in one process.

The first call pays tracing and XLA compilation; later calls with the same program and
settings, or a new program of the same model and shapes, should reuse the compiled code.
Target (issue "Inference core"): second / first <= 0.2. Prints one line per backend.

Run: ``.venv/bin/python benchmarks/compile_reuse.py``
"""

from __future__ import annotations

import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import ucsciml as uq
from ucsciml import inference


def model(X, targets=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(X @ beta, 0.5), obs=targets)


def program(seed: int) -> uq.Program:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y = X @ rng.normal(size=4) + 0.5 * rng.normal(size=60)
    return uq.Program.from_numpyro(model, X, y)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    backends = {
        "NUTS numpyro (200+200, 2)": inference.NUTS(
            num_warmup=200, num_samples=200, num_chains=2, progress_bar=False
        ),
        "NUTS blackjax (200+200, 2)": inference.NUTS(
            engine="blackjax", num_warmup=200, num_samples=200, num_chains=2
        ),
        "DeepEnsemble (8 members)": inference.DeepEnsemble(num_members=8, num_steps=500),
    }
    first_program, other_program = program(0), program(1)
    print(f"{'backend':<28}{'first (s)':>11}{'same (s)':>10}{'new data (s)':>14}{'ratios':>16}")
    for name, backend in backends.items():
        first = timed(lambda b=backend: b.run(first_program, jax.random.key(0)))
        same = timed(lambda b=backend: b.run(first_program, jax.random.key(1)))
        new = timed(lambda b=backend: b.run(other_program, jax.random.key(2)))
        print(
            f"{name:<28}{first:>11.2f}{same:>10.2f}{new:>14.2f}"
            f"{same / first:>8.2f}{new / first:>8.2f}"
        )


if __name__ == "__main__":
    main()
