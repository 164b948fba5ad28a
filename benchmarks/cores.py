"""Every core vs one: 8 ensemble members and 4 NUTS chains of the default Burgers case with
one XLA CPU device per core (the CLI's default) against one device, side by side.

Three layouts, each in its own subprocess (the device count is fixed before JAX starts); in
each, every backend runs twice with the same key: the first call compiles (no persistent
cache), the second reuses the executables (as a repeated run with the CLI's compilation
cache does):

* ``1 core``: one device, the process pinned to one CPU (``os.sched_setaffinity``): the
  whole run on one core;
* ``1 device``: one device, unpinned (``UCSCIML_CPU_DEVICES=1``, the setting that turns the
  spreading off): XLA:CPU already runs parts of a one-device program on other cores;
* ``N devices``: one device per core (the default).

The script prints first-call and warm wall times, the ratios of every core to one core and
to one device (the issue's target is <= 0.6 on a 2-core machine), and the largest difference
between the two calls of a layout (must be 0: same seed and layout, same draws) and between
layouts (members and chains use ``fold_in(key, i)`` whatever the layout, so only
floating-point rounding may differ). Compilation is mostly serial, so the first-call ratio
is the warm one diluted by it.

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
    runs = []
    for _ in range(2):  # first call (compiles), then a warm call with the same key
        start = time.perf_counter()
        posterior = backend.run(program, jax.random.key(0))
        runs.append(
            {
                "seconds": time.perf_counter() - start,
                "lambda2": np.asarray(posterior.samples["lambda2"]).ravel().tolist(),
            }
        )
    result[name] = runs
json.dump(result, open(out, "w"))
"""


def run(devices: str, steps: int, cpus: set[int] | None = None) -> dict:
    """One layout in a fresh interpreter: ``devices`` XLA CPU devices, on ``cpus`` (all the
    process may use when ``None``)."""
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
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    cores = str(len(available))
    layouts = {
        "core": ("1", {available[0]}),
        "device": ("1", None),
        "all": (cores, None),
    }
    runs = {layout: run(devices, args.steps, cpus) for layout, (devices, cpus) in layouts.items()}
    print(
        f"{'backend':<22}{'call':<7}{'1 core (s)':>11}{'1 device (s)':>13}"
        f"{cores + ' devices (s)':>14}{'vs core':>9}{'vs device':>10}{'repeat diff':>12}"
        f"{'layout diff':>12}"
    )

    def diff(a, b):
        return max(abs(x - y) for x, y in zip(a["lambda2"], b["lambda2"], strict=True))

    for name in ("ensemble (8 members)", "nuts (4 chains)"):
        of = {layout: found[name] for layout, found in runs.items()}
        repeat = max(diff(*calls) for calls in of.values())
        layout_diff = max(diff(of["core"][0], of["all"][0]), diff(of["device"][0], of["all"][0]))
        for index, call in enumerate(("first", "warm")):
            t = {layout: calls[index]["seconds"] for layout, calls in of.items()}
            tail = f"{repeat:>12.2g}{layout_diff:>12.2g}" if index == 0 else ""
            print(
                f"{name if index == 0 else '':<22}{call:<7}{t['core']:>11.1f}{t['device']:>13.1f}"
                f"{t['all']:>14.1f}{t['all'] / t['core']:>9.2f}{t['all'] / t['device']:>10.2f}"
                + tail
            )


if __name__ == "__main__":
    main()
