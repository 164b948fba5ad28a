"""Compile reuse: a second ``run`` of every backend (same program, then a new program of the
same model on new data of the same shapes) vs the first, measured side by side in one process.

The first call pays tracing and XLA compilation; later calls with the same program and
settings, or a new program of the same model and shapes, reuse the compiled code (the data
are traced arguments of executables cached per model, data shapes and settings). Target
(issue "Inference core"): second / first <= 0.2. Prints one line per backend, with the
XLA compilations counted in the later calls (0 when everything was reused).

Then simulation-based calibration (``ucsciml.sbc``, 100 replications, BlackJAX NUTS): the
replications as one vmapped program per chunk (``NUTS.sample_replicates``) against the
replication loop it replaces (one ``backend.run`` per replication, each reusing its compiled
sampler), with SBC's verdict. Target: >= 10x.

Run: ``.venv/bin/python benchmarks/compile_reuse.py``
"""

from __future__ import annotations

import collections
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import ucsciml as uq
from ucsciml import inference
from ucsciml.inference import MAPFit
from ucsciml.sbc import sbc

COMPILE = "/jax/core/compile/backend_compile_duration"


def model(X, targets=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(X @ beta, 0.5), obs=targets)


def network(X, targets=None):
    """A 16-unit tanh network with a dropout keep-mask (MC dropout's contract)."""
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([X.shape[1], 16]).to_event(2))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([16]).to_event(1))
    mask = numpyro.sample("mask", dist.Bernoulli(0.9).expand([16]).to_event(1))
    f = numpyro.deterministic("f", (jnp.tanh(X @ w1) * mask / 0.9) @ w2)
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(f, 0.5), obs=targets)


def program(seed: int) -> uq.Program:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y = X @ rng.normal(size=4) + 0.5 * rng.normal(size=60)
    return uq.Program.from_numpyro(model, X, y)


def network_program(seed: int) -> uq.Program:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y = np.sin(X[:, 0]) + 0.5 * rng.normal(size=60)
    return uq.Program.from_numpyro(
        network, X, y, network_sites=("w1", "w2"), attrs={"dropout_sites": ["mask"]}
    )


class Compilations:
    """Counts XLA compilations while active."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == COMPILE:
            self.count += 1


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Loop:
    """A backend without ``sample_replicates``: SBC falls back to one run per replication."""

    def __init__(self, backend):
        self.backend = backend

    def run(self, program, key):
        return self.backend.run(program, key)


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    nuts = dict(num_warmup=200, num_samples=200, num_chains=2, progress_bar=False)
    backends = {
        "NUTS numpyro (200+200, 2)": (inference.NUTS(**nuts), program),
        "NUTS blackjax (200+200, 2)": (inference.NUTS(engine="blackjax", **nuts), program),
        "DeepEnsemble (8, 500 Adam)": (
            inference.DeepEnsemble(num_members=8, map=MAPFit(adam_steps=500)),
            program,
        ),
        "DeepEnsemble anchored (8)": (
            inference.DeepEnsemble(num_members=8, anchored=True, map=MAPFit(adam_steps=500)),
            program,
        ),
        "Laplace (500 Adam)": (inference.Laplace(map=MAPFit(adam_steps=500)), program),
        "VI fullrank (1000 steps)": (
            inference.VI(guide="fullrank", num_steps=1000, num_samples=500),
            program,
        ),
        "MC dropout (1000 steps)": (
            inference.MCDropout(num_steps=1000, num_passes=200),
            network_program,
        ),
    }
    counter = Compilations()
    jax.monitoring.register_event_duration_secs_listener(counter)
    header = f"{'backend':<28}{'first (s)':>10}{'same (s)':>10}{'new data (s)':>13}"
    print(f"{header}{'same/first':>12}{'new/first':>11}{'compiles':>10}")
    for name, (backend, make) in backends.items():
        first_program, other_program = make(0), make(1)
        first = timed(lambda b=backend, p=first_program: b.run(p, jax.random.key(0)))
        counter.count = 0
        same = timed(lambda b=backend, p=first_program: b.run(p, jax.random.key(1)))
        new = timed(lambda b=backend, p=other_program: b.run(p, jax.random.key(2)))
        print(
            f"{name:<28}{first:>10.2f}{same:>10.3f}{new:>13.3f}"
            f"{same / first:>12.3f}{new / first:>11.3f}{counter.count:>10d}"
        )
    jax.monitoring.unregister_event_duration_listener(counter)

    backend = inference.NUTS(engine="blackjax", **nuts)
    subject = program(0)
    times, results = collections.defaultdict(list), {}
    cold = timed(lambda: sbc(subject, backend, jax.random.key(4), num_replications=100))
    for repeat in range(2):
        for label, fitter in (("vmapped", backend), ("loop", Loop(backend))):
            start = time.perf_counter()
            results[label] = sbc(subject, fitter, jax.random.key(5 + repeat), num_replications=100)
            times[label].append(time.perf_counter() - start)
    vmapped, loop = min(times["vmapped"]), min(times["loop"])
    print(
        f"\nSBC, 100 replications of BlackJAX NUTS 200+200 x 2 chains on the regression:\n"
        f"  vmapped, chunks of 25 (NUTS.sample_replicates): first call {cold:.2f} s "
        f"(with its compile), then {vmapped:.2f} s; passed={results['vmapped'].passed()} "
        f"(min p {results['vmapped'].min_pvalue:.3f})\n"
        f"  replication loop (one warm NUTS.run each): {loop:.2f} s "
        f"({loop / 100 * 1e3:.0f} ms/replication); passed={results['loop'].passed()} "
        f"(min p {results['loop'].min_pvalue:.3f})\n"
        f"  speed-up over the loop: x{loop / vmapped:.1f} warm, x{loop / cold:.1f} counting "
        "the vmapped program's compile"
    )
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
