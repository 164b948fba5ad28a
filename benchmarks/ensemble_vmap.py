"""Deep ensemble: M members as one vmapped program vs M sequential fits, side by side.

Each variant runs in its own subprocess (so peak resident memory, ``ru_maxrss``, is its
own) on the default Burgers B-PINN program. Compilation is excluded from the timed runs: a
persistent compilation cache is filled by a warm-up fit first, so the sequential variant
is not charged for recompiling the identical member program M times.

Usage::

    .venv/bin/python benchmarks/ensemble_vmap.py [--members 8] [--steps 1000]

Prints wall time and peak memory of both variants and their ratio (target on 2 CPU cores:
vmapped <= 0.4x the sequential time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _program():
    from ucsciml.cli import case_path
    from ucsciml.config import build, load_case
    from ucsciml.data import synthetic_sensors
    from ucsciml.program import compile as compile_program

    cfg = load_case(case_path(None))
    pde = build(cfg["pde"], "pde")
    data = synthetic_sensors(pde, cfg["data"]["num_sensors"], cfg["data"]["noise"], 0)
    return compile_program(build(cfg["model"], "model", pde=pde), data)


def _child(mode: str, members: int, steps: int, cache: str) -> dict:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from ucsciml.inference import DeepEnsemble, MAPFit

    program = _program()
    key = jax.random.key(0)
    if mode == "vmap":
        backend = DeepEnsemble(num_members=members, map=MAPFit(adam_steps=steps))
        backend.run(program, jax.random.key(99))  # warm-up: compile and cache
        start = time.perf_counter()
        posterior = backend.run(program, key)
        wall = time.perf_counter() - start
        final = posterior.attrs["optimization"]["final_loss_per_member"]
    else:
        backend = DeepEnsemble(num_members=1, map=MAPFit(adam_steps=steps))
        backend.run(program, jax.random.key(99))
        start = time.perf_counter()
        final = []
        for m in range(members):
            posterior = backend.run(program, jax.random.fold_in(key, m))
            final += posterior.attrs["optimization"]["final_loss_per_member"]
        wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": wall, "peak_mib": peak_mib, "final_losses": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--child", choices=("vmap", "sequential"))
    parser.add_argument("--cache")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.members, args.steps, args.cache)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for mode in ("vmap", "sequential"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--members",
                    str(args.members),
                    "--steps",
                    str(args.steps),
                    "--cache",
                    cache,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    v, s = results["vmap"], results["sequential"]
    print(f"Deep ensemble, Burgers B-PINN, M = {args.members}, {args.steps} Adam steps/member")
    print(f"{'':<22}{'vmapped':>12}{'sequential':>14}{'ratio':>10}")
    print(
        f"{'wall time (s)':<22}{v['wall_s']:>12.2f}{s['wall_s']:>14.2f}{v['wall_s'] / s['wall_s']:>10.2f}"
    )
    print(
        f"{'peak memory (MiB)':<22}{v['peak_mib']:>12.0f}{s['peak_mib']:>14.0f}"
        f"{v['peak_mib'] / s['peak_mib']:>10.2f}"
    )
    print("target: vmapped wall time <= 0.4x sequential on 2 CPU cores")


if __name__ == "__main__":
    main()
