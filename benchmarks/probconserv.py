"""ProbConserv update, 50 functions x 201 points, full covariance: one jitted JAX call vs NumPy.

Prints the time of ``jax.jit(jax.vmap(models.probconserv.condition))`` (after compilation,
best of several runs) next to a plain NumPy implementation of the same equations, both as a
per-function loop and with NumPy's stacked linear algebra, and the largest difference between
the answers. Run: ``.venv/bin/python benchmarks/probconserv.py [--functions 50 --points 201]``.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from ucsciml.models import probconserv as pc  # noqa: E402


def numpy_update_one(mean, cov, G, b, noise_std):
    """The closed form in NumPy for one function (the reference implementation)."""
    cross = cov @ G.T
    innovation = G @ cross + noise_std**2 * np.eye(G.shape[0])
    gain = np.linalg.solve(innovation, cross.T).T
    return mean - gain @ (G @ mean - b), cov - gain @ cross.T


def numpy_update_stacked(mean, cov, G, b, noise_std):
    """The same with NumPy's stacked (batched) linear algebra."""
    cross = cov @ G.T  # (f, n, k)
    innovation = G @ cross + noise_std**2 * np.eye(G.shape[0])
    gain = np.swapaxes(np.linalg.solve(innovation, np.swapaxes(cross, -1, -2)), -1, -2)
    residual = np.einsum("kn,fn->fk", G, mean) - b
    new_mean = mean - np.einsum("fnk,fk->fn", gain, residual)
    return new_mean, cov - gain @ np.swapaxes(cross, -1, -2)


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--functions", type=int, default=50)
    parser.add_argument("--points", type=int, default=201)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    f, n = args.functions, args.points
    x = np.linspace(0.0, 1.0, n)
    kernel = np.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 0.05**2) + 1e-6 * np.eye(n)
    cov = kernel[None] * rng.uniform(0.5, 2.0, (f, 1, 1))
    mean = rng.normal(size=(f, n))
    G = np.asarray(pc.conservation_matrix(x))
    b = rng.normal(size=(f, 1))

    batched = jax.jit(jax.vmap(pc.condition, in_axes=(0, 0, None, 0, None)))
    start = time.perf_counter()
    jax.block_until_ready(batched(mean, cov, G, b, 0.0))
    compile_s = time.perf_counter() - start
    jax_s = best_time(lambda: batched(mean, cov, G, b, 0.0), args.repeats)
    loop_s = best_time(
        lambda: [numpy_update_one(mean[i], cov[i], G, b[i], 0.0) for i in range(f)], args.repeats
    )
    stacked_s = best_time(lambda: numpy_update_stacked(mean, cov, G, b, 0.0), args.repeats)

    out = batched(mean, cov, G, b, 0.0)
    ref_mean, ref_cov = numpy_update_stacked(mean, cov, G, b, 0.0)
    ce = np.abs(np.einsum("kn,fn->fk", G, np.asarray(out.mean)) - b).max()
    ce_numpy = np.abs(np.einsum("kn,fn->fk", G, ref_mean) - b).max()
    print(f"ProbConserv update, {f} functions x {n} points, full covariance, float64")
    print(f"{'implementation':<34}{'time (ms)':>12}{'vs jax':>10}")
    print(f"{'jax.jit(vmap(condition))':<34}{1e3 * jax_s:>12.2f}{1.0:>10.2f}")
    print(f"{'numpy, loop over functions':<34}{1e3 * loop_s:>12.2f}{loop_s / jax_s:>10.2f}")
    print(f"{'numpy, stacked linalg':<34}{1e3 * stacked_s:>12.2f}{stacked_s / jax_s:>10.2f}")
    print(f"(jax compile once: {compile_s:.2f} s)")
    print(
        f"max |mean diff| {np.abs(np.asarray(out.mean) - ref_mean).max():.1e}, "
        f"max |cov diff| {np.abs(np.asarray(out.cov) - ref_cov).max():.1e}, "
        f"max |CE| jax {ce:.1e} vs numpy {ce_numpy:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
