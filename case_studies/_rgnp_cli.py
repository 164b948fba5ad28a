"""The shared train-evaluate-report loop of the RGNP case-study scripts."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from ucsciml._io import write_json
from ucsciml.models import RGNP


def run(problem, settings: dict, config: str, seed: int = 0, out: str | None = None) -> dict:
    """Train one configuration on ``problem`` and evaluate it on 20 test pairs; the metrics
    (with the training's convergence verdict, ``converged``) are returned and, with ``out``,
    written atomically to ``out/metrics.json``."""
    model = RGNP(problem, **settings["model"])
    k_fit, k_eval = jax.random.split(jax.random.key(seed))
    start = time.perf_counter()
    fit = model.fit(k_fit, **settings["fit"])
    params, elbo = fit
    metrics = model.evaluate(params, k_eval, num_tests=20)
    metrics.update(
        config=config,
        train_seconds=time.perf_counter() - start,
        elbo_first_100=float(np.mean(elbo[:100])),
        elbo_last_100=float(np.mean(elbo[-100:])),
        converged=bool(fit.verdict.get("converged")),
    )
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "metrics.json", metrics)
    return metrics


def main(problem, configs: dict, description: str) -> None:
    """``script.py CONFIG [--seed N] [--out DIR]``: run and print the metrics as JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", choices=sorted(configs))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for metrics.json")
    args = parser.parse_args()
    metrics = run(problem, configs[args.config], args.config, args.seed, args.out)
    print(json.dumps(metrics, indent=2))
