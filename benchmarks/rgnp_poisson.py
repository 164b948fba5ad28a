"""RGNP accuracy run on the nonlinear Poisson family (the issue's reduced CPU configuration).

Trains ``RGNP(NonlinearPoisson1D(), width=128, depth=4)`` for ``--steps`` Adam steps with
batch 32 and 30 random collocation points, then reports on 20 test pairs drawn from the
prior: NSE_u, NSE_z, +-2 sd coverage of u and z; GICNet permutation invariance and the
change of q_beta when the same field is observed on a different grid; and NUTS refinement
of z for a few fields (trained forward model as likelihood, chains started from q_beta),
with the coverage of z before and after. Prints one table; nothing here is pass/fail.

    .venv/bin/python benchmarks/rgnp_poisson.py --steps 8000
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ucsciml.inference.nuts import NUTS
from ucsciml.models import RGNP
from ucsciml.pde import NonlinearPoisson1D


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine-fields", type=int, default=5)
    parser.add_argument("--save", default="", help="write trained parameters here (.eqx)")
    args = parser.parse_args()

    model = RGNP(NonlinearPoisson1D(), width=128, depth=4, num_points=30)
    key = jax.random.key(args.seed)
    k_fit, k_eval, k_perm, k_nuts = jax.random.split(key, 4)
    start = time.perf_counter()
    params, elbo = model.fit(k_fit, num_steps=args.steps, batch_size=32, chunk_size=100)
    train_s = time.perf_counter() - start
    if args.save:
        eqx.tree_serialise_leaves(args.save, params)
    head, tail = elbo[:100].mean(), elbo[-100:].mean()
    print(f"training: {args.steps} steps in {train_s:.0f} s (shared CPU: inflated 2-4x)")
    print(f"ELBO mean of first 100 steps {head:.4g}, last 100 steps {tail:.4g}")

    metrics = model.evaluate(params, k_eval, num_tests=20)
    print("test set (20 pairs from the prior):", {k: round(v, 4) for k, v in metrics.items()})

    problem = model.problem
    z = np.asarray(jax.random.uniform(k_perm, (5,), minval=-1.0, maxval=1.0))
    w = np.array([1.5])
    points, u = problem.reference(z, w)
    mean, var, _ = model.inverse(params, points, u, w)
    order = np.random.default_rng(0).permutation(len(u))
    mean_p, var_p, _ = model.inverse(params, points[order], u[order], w)
    print(
        "permutation: max |dm| =",
        float(jnp.abs(mean - mean_p).max()),
        "max |d sd| =",
        float(jnp.abs(jnp.sqrt(var) - jnp.sqrt(var_p)).max()),
    )
    rng = np.random.default_rng(1)
    other = np.sort(rng.uniform(-1.0, 1.0, 60))[:, None]
    from scipy.interpolate import CubicSpline

    u_other = CubicSpline(points[:, 0], u)(other[:, 0])
    mean_o, var_o, _ = model.inverse(params, other, u_other, w)
    sd = np.sqrt(np.asarray(var))
    print(
        "different grid (201 uniform -> 60 random points): |dm|/sd max =",
        float(np.max(np.abs(np.asarray(mean_o - mean)) / sd)),
        "|dm| max =",
        float(jnp.abs(mean_o - mean).max()),
        "sd ratio range",
        np.round(np.sqrt(np.asarray(var_o)) / sd, 3).tolist(),
    )

    noise_sd = 0.01
    cover_beta, cover_nuts, nse_beta, nse_nuts = [], [], [], []
    for i in range(args.refine_fields):
        k_i = jax.random.fold_in(k_nuts, i)
        k_z, k_w, k_noise, k_run = jax.random.split(k_i, 4)
        z = np.asarray(jax.random.uniform(k_z, (5,), minval=-1.0, maxval=1.0))
        w = np.asarray(jax.random.uniform(k_w, (1,), minval=1.0, maxval=2.0))
        points, u = problem.reference(z, w)
        obs_points = points[10:-1:10]
        y = u[10:-1:10] + noise_sd * np.asarray(jax.random.normal(k_noise, (len(obs_points),)))
        q_mean, q_var, _ = model.inverse(params, obs_points, y, w)
        q_sd = np.sqrt(np.asarray(q_var))
        program = model.refinement_program(params, obs_points, y, w, noise_sd=noise_sd)
        posterior = NUTS(num_warmup=300, num_samples=300, num_chains=2, progress_bar=False).run(
            program, k_run
        )
        draws = posterior.samples["z"].reshape(-1, 5)
        n_mean, n_sd = draws.mean(0), draws.std(0)
        q_mean = np.asarray(q_mean)
        cover_beta.append(np.mean(np.abs(q_mean - z) <= 2 * q_sd))
        cover_nuts.append(np.mean(np.abs(n_mean - z) <= 2 * n_sd))
        nse_beta.append(np.sum((q_mean - z) ** 2) / np.sum(z**2))
        nse_nuts.append(np.sum((n_mean - z) ** 2) / np.sum(z**2))
        print(
            f"field {i}: z={np.round(z, 2).tolist()}\n  q_beta mean {np.round(q_mean, 2).tolist()}"
            f" sd {np.round(q_sd, 3).tolist()}\n  NUTS   mean {np.round(n_mean, 2).tolist()}"
            f" sd {np.round(n_sd, 3).tolist()} divergences {int(posterior.sample_stats['diverging'].sum())}"
        )
    print(
        f"refinement over {args.refine_fields} fields (19 noisy points, sd {noise_sd}): "
        f"z coverage +-2sd q_beta {np.mean(cover_beta):.2f} -> NUTS {np.mean(cover_nuts):.2f}; "
        f"NSE_z q_beta {np.mean(nse_beta):.3f} -> NUTS {np.mean(nse_nuts):.3f}"
    )


if __name__ == "__main__":
    main()
