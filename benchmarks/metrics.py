"""CRPS and interval coverage for 10^6 predictive points x 200 draws, jitted vs NumPy.

Three variants score the same draws (float32, N(mu_i, 1) per point, truth from the same law):

* ``jit``: ``ucsciml.calibration``'s row kernel in one jitted call, ``lax.map`` over chunks
  of points (memory stays at chunk x draws beyond the input);
* ``xarray``: the public ``calibration.scores(DataArray, truth)`` (adds the host-side
  transpose/copy of the named-dim input);
* ``numpy``: a plain NumPy reference (sort per point, same estimators), chunked.

Compilation is timed separately from the run. Prints wall times and ratios (no pass/fail).

Usage::

    .venv/bin/python benchmarks/metrics.py [--points 1000000] [--draws 200] [--chunk 8192]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ucsciml import calibration as cal

LEVELS = (0.5, 0.9, 0.95)


def numpy_scores(draws: np.ndarray, y: np.ndarray, levels, chunk: int):
    """Reference: fair-CRPS from sorted draws and PIT-interval coverage, chunked."""
    n, s = draws.shape
    crps = np.empty(n)
    covered = np.empty((n, len(levels)), bool)
    i = np.arange(1, s + 1)
    for start in range(0, n, chunk):
        x, yy = draws[start : start + chunk], y[start : start + chunk, None]
        xs = np.sort(x, axis=1)
        spread = 2.0 * ((2 * i - s - 1) * xs).sum(axis=1) / (s * (s - 1))
        crps[start : start + chunk] = np.abs(x - yy).mean(axis=1) - 0.5 * spread
        pit = ((x < yy).sum(axis=1) + 0.5 * (x == yy).sum(axis=1)) / s
        covered[start : start + chunk] = np.abs(2 * pit - 1)[:, None] <= np.asarray(levels)
    return crps, covered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--skip-numpy", action="store_true")
    args = parser.parse_args()
    n, s = args.points, args.draws
    print(f"{n:,} points x {s} draws (float32, {n * s * 4 / 2**30:.2f} GiB), chunk {args.chunk}")

    key_mu, key_x, key_y = jax.random.split(jax.random.key(0), 3)
    mu = jax.random.normal(key_mu, (n,))
    draws = jax.block_until_ready(mu[:, None] + jax.random.normal(key_x, (n, s)))
    y = jax.block_until_ready(mu + jax.random.normal(key_y, (n,)))
    levels = jnp.asarray(LEVELS)

    def run():
        out = cal._map_rows(cal._scores_row, draws, y, levels, args.chunk)
        return jax.block_until_ready(out)

    start = time.perf_counter()
    compiled = cal._map_rows.lower(cal._scores_row, draws, y, levels, args.chunk).compile()
    compile_s = time.perf_counter() - start
    del compiled
    run()
    start = time.perf_counter()
    out = run()
    jit_s = time.perf_counter() - start
    coverage = np.asarray(out["covered"]).mean(axis=0)
    print(
        f"jit    : {jit_s:8.2f} s  (compile {compile_s:.2f} s)  mean CRPS "
        f"{float(out['crps'].mean()):.4f} (exact 1/sqrt(pi) = 0.5642 for this law), coverage "
        + ", ".join(
            f"{100 * lv:.0f}%: {100 * c:.2f}" for lv, c in zip(LEVELS, coverage, strict=True)
        )
    )

    host = np.asarray(draws)
    da = xr.DataArray(host.T.reshape(1, s, n), dims=("chain", "draw", "point"))
    truth = np.asarray(y)
    cal.scores(da.isel(point=slice(0, 10)), truth[:10], LEVELS)  # warm the small-shape path
    start = time.perf_counter()
    ds = cal.scores(da, truth, LEVELS)
    xr_s = time.perf_counter() - start
    print(
        f"xarray : {xr_s:8.2f} s  (incl. compile for this shape)  mean CRPS {float(ds.crps.mean()):.4f}"
    )

    if not args.skip_numpy:
        start = time.perf_counter()
        crps, covered = numpy_scores(host, truth, LEVELS, args.chunk)
        np_s = time.perf_counter() - start
        print(
            f"numpy  : {np_s:8.2f} s  mean CRPS {crps.mean():.4f}, max |diff| vs jit "
            f"{np.max(np.abs(crps - np.asarray(out['crps']))):.2e}, coverage agrees "
            f"{np.mean(covered == np.asarray(out['covered'])) * 100:.3f}%"
        )
        print(f"ratio  : numpy / jit = {np_s / jit_s:.2f}x, xarray / jit = {xr_s / jit_s:.2f}x")
    else:
        print(f"ratio  : xarray / jit = {xr_s / jit_s:.2f}x")


if __name__ == "__main__":
    main()
