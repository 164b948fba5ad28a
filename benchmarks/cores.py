"""Every core vs one: 8 ensemble members and 4 NUTS chains of the default Burgers case with
one XLA CPU device per core (the CLI's default) against one device, side by side.

Each layout runs in its own subprocess (the device count is fixed before JAX starts), twice,
with the same seed: the script prints wall times, their ratio (target <= 0.6 on a 2-core
machine), and the largest difference between the two repeats of a layout (must be 0: same
seed and layout, same draws) and between layouts (members and chains use ``fold_in(key, i)``
whatever the layout, so only floating-point reassociation may differ).

The fits are shortened (``--steps``, default 300 Adam + 300 L-BFGS steps per member, NUTS 50 +
50 draws from the prior) so the whole comparison takes a few minutes; the ratio is what is
measured. Run on an otherwise idle machine:
``.venv/bin/python benchmarks/cores.py [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from ucsciml.cli import use_every_core
use_every_core()
import jax, numpy as np
import ucsciml as uq
from ucsciml import config as case_config, inference
from ucsciml.cli import case_path
from ucsciml.runner import _load_data
steps, out = int(sys.argv[1]), sys.argv[2]
cfg = case_config.load_case(case_path("burgers_inverse"))
pde = case_config.build(cfg["pde"], "pde")
program = uq.compile(case_config.build(cfg["model"], "model", pde=pde), _load_data(cfg, pde))
backends = {
    "ensemble (8 members)": inference.DeepEnsemble(
        num_members=8,
        map=inference.MAPFit(adam_steps=steps, learning_rate=3e-3, lbfgs_steps=steps),
    ),
    "nuts (4 chains)": inference.NUTS(
        num_warmup=50, num_samples=50, num_chains=4, max_tree_depth=4, progress_bar=False
    ),
}
result = {"devices": jax.device_count()}
for name, backend in backends.items():
    start = time.perf_counter()
    posterior = backend.run(program, jax.random.key(0))
    result[name] = {
        "seconds": time.perf_counter() - start,
        "lambda2": np.asarray(posterior.samples["lambda2"]).ravel().tolist(),
    }
json.dump(result, open(out, "w"))
"""


def run(devices: str, steps: int) -> dict:
    env = {**os.environ, "UCSCIML_CPU_DEVICES": devices}
    env.pop("XLA_FLAGS", None)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        subprocess.run(
            [sys.executable, "-c", CHILD, str(steps), str(out)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    runs = {n: [run(n, args.steps), run(n, args.steps)] for n in ("1", cores)}
    print(
        f"{'backend':<24}{'1 device (s)':>14}{cores + ' devices (s)':>15}{'ratio':>8}"
        f"{'repeat diff':>13}{'layout diff':>13}"
    )
    for name in ("ensemble (8 members)", "nuts (4 chains)"):
        one = [r[name] for r in runs["1"]]
        many = [r[name] for r in runs[cores]]
        t_one = min(r["seconds"] for r in one)
        t_many = min(r["seconds"] for r in many)

        def diff(a, b):
            return max(abs(x - y) for x, y in zip(a["lambda2"], b["lambda2"], strict=True))

        repeat = max(diff(*one), diff(*many))
        print(
            f"{name:<24}{t_one:>14.1f}{t_many:>15.1f}{t_many / t_one:>8.2f}"
            f"{repeat:>13.2g}{diff(one[0], many[0]):>13.2g}"
        )


if __name__ == "__main__":
    main()
