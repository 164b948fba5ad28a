"""Compile reuse: a second ``NUTS.run`` (same program, then new data of the same shapes) vs
the first, and the same for ``DeepEnsemble.run``, measured side by side in one process.

The first call pays tracing and XLA compilation; later calls with the same program and
settings, or a new program of the same model and shapes, should reuse the compiled code.
Target (issue "Inference core"): second / first <= 0.2. Prints one line per backend.

Then simulation-based calibration (``ucsciml.sbc``, 100 replications) with the BlackJAX
engine, whose replications reuse one compiled sampler, against the NumPyro engine, which
re-traces per replication (its per-replication cost measured on 10 replications, or on all
100 with ``--full``); printed as seconds per replication and their ratio (target >= 10),
with SBC's verdict.

Run: ``.venv/bin/python benchmarks/compile_reuse.py [--full]``
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import ucsciml as uq
from ucsciml import inference
from ucsciml.sbc import sbc


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
        "DeepEnsemble (8 members)": inference.DeepEnsemble(
            num_members=8, map=inference.MAPFit(adam_steps=500)
        ),
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
    settings = dict(num_warmup=200, num_samples=200, num_chains=2, progress_bar=False)
    reps = {"blackjax": 100, "numpyro": 100 if "--full" in sys.argv else 10}
    per_rep, results = {}, {}
    for engine, count in reps.items():
        backend = inference.NUTS(engine=engine, **settings)
        start = time.perf_counter()
        # The SBC test needs >= 10 bins' worth of replications; fewer only time the loop.
        results[engine] = sbc(
            first_program, backend, jax.random.key(5), num_replications=count, num_bins=10
        )
        per_rep[engine] = (time.perf_counter() - start) / count
    print(
        f"\nSBC, NUTS 200+200 x 2 chains: blackjax {per_rep['blackjax']:.3f} s/replication "
        f"(100 replications, passed={results['blackjax'].passed()}, min p "
        f"{results['blackjax'].min_pvalue:.3f}); numpyro {per_rep['numpyro']:.3f} s/replication "
        f"({reps['numpyro']} replications); speed-up x{per_rep['numpyro'] / per_rep['blackjax']:.1f}"
    )


if __name__ == "__main__":
    main()
