"""GP-HM: exact-solve alternation vs plain joint Adam (Fang et al.'s scheme) on one model.

Both minimise the same negative log joint of the same :class:`ucsciml.models.SpectralGP`
program from the same start with the same Adam step size; "alternating" replaces the grid
values' Adam updates by their exact conditional mean at every step. The grid error against
the manufactured solution is recorded per step for this table only (it never chooses a
result). Wall time to a threshold is ``compile + k * per-step``, both measured here.

Usage::

    python benchmarks/spectral_gp.py                 # 1-D Poisson sin(100x), N = 400
    python benchmarks/spectral_gp.py --freq 20 --grid 100 --steps 300 --joint-steps 3000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml.models.spectral_gp import SpectralGP, fit
from ucsciml.pde.manufactured import sin_solution
from ucsciml.pde.poisson import Poisson1D

THRESHOLDS = (1e-2, 1e-3)


def run(model, truth, method, steps, lr):
    def monitor(u):
        return jnp.linalg.norm(u - truth) / jnp.linalg.norm(truth)

    start = time.perf_counter()
    fit(model, num_steps=1, learning_rate=lr, method=method, monitor_fn=monitor)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = fit(model, num_steps=steps, learning_rate=lr, method=method, monitor_fn=monitor)
    total = time.perf_counter() - start
    per_step = max(total - compile_s, 0.0) / steps
    errors = np.asarray(result.monitor)
    out = {"final": float(errors[-1]), "steps": steps, "total_s": total}
    for thr in THRESHOLDS:
        hit = np.flatnonzero(errors < thr)
        out[thr] = (int(hit[0]) + 1, compile_s + (hit[0] + 1) * per_step) if hit.size else None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freq", type=float, default=100.0, help="u = sin(freq x) on [0, 2 pi]")
    parser.add_argument("--grid", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1000, help="alternating steps")
    parser.add_argument("--joint-steps", type=int, default=5000, help="joint Adam steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    with jax.enable_x64(True):
        pde = Poisson1D(solution=sin_solution(args.freq))
        model = SpectralGP(pde=pde, grid=(args.grid,))
        truth = jnp.asarray(pde.solve(model.points()))
        rows = {
            "alternating (exact solve)": run(model, truth, "alternating", args.steps, args.lr),
            "joint Adam (paper)": run(model, truth, "joint", args.joint_steps, args.lr),
        }
    print(f"1-D Poisson u = sin({args.freq:g} x), N = {args.grid}, Adam lr {args.lr:g}")
    print(f"{'scheme':28s} {'steps run':>9s} {'total s':>8s} {'final err':>10s}", end="")
    for thr in THRESHOLDS:
        print(f" {'steps<' + format(thr, 'g'):>12s} {'secs<' + format(thr, 'g'):>11s}", end="")
    print()
    for name, row in rows.items():
        print(f"{name:28s} {row['steps']:9d} {row['total_s']:8.1f} {row['final']:10.2e}", end="")
        for thr in THRESHOLDS:
            hit = row[thr]
            print(f" {hit[0] if hit else '-':>12} {f'{hit[1]:.1f}' if hit else '-':>11}", end="")
        print()
    alt, joint = rows.values()
    for thr in THRESHOLDS:
        if alt[thr] and joint[thr]:
            print(
                f"speed-up to {thr:g}: {joint[thr][0] / alt[thr][0]:.1f}x steps, "
                f"{joint[thr][1] / alt[thr][1]:.1f}x wall time"
            )
        elif alt[thr]:
            print(
                f"to {thr:g}: joint Adam not there after {joint['steps']} steps "
                f"({joint['total_s']:.0f} s); alternating took {alt[thr][0]} steps"
            )


if __name__ == "__main__":
    main()
