"""ProbConserv study: GP base model vs HardC vs ProbConserv (full / diagonal covariance).

For each problem of the GPME family (heat, porous medium, Stefan; optionally the hyperbolic
appendix problems) and each test parameter, ``num_functions`` GPs are fitted to 100 context
points each (10 stratified times x 10 sorted uniform positions, exact solution values), then
predict ``u(x, t*)`` on a 201-point grid. The conservation constraint ``G u = b(t*)`` (one
trapezoid row, ``b`` from the initial mass and boundary fluxes) is imposed with ``sigma_G = 0``.
The table averages over functions: signed conservation error CE, MSE, Gaussian LL (higher is
better) and CRPS; for problems with a front, the front position from 200 draws per function.

This is a script rather than a ``case_studies/*.toml``: the TOML pipeline (``ucsciml run``)
is built around one PDE + sensor data set + model + inference backend per run, while this
study fits hundreds of independent base models and post-processes their predictions.

Run::

    .venv/bin/python case_studies/probconserv_study.py                 # heat, PME, Stefan
    .venv/bin/python case_studies/probconserv_study.py --functions 10 --problems pme:3,stefan:0.6
    .venv/bin/python case_studies/probconserv_study.py --problems advection:3,burgers:3
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml.models import context_gp
from ucsciml.models import probconserv as pc
from ucsciml.pde import gpme  # noqa: E402

PROBLEMS = {
    "heat": gpme.GPMEHeat,
    "pme": gpme.PorousMedium,
    "stefan": gpme.Stefan,
    "advection": gpme.LinearAdvection,
    "burgers": gpme.BurgersShock,
}
DEFAULT = "heat:1,heat:5,pme:1,pme:3,pme:6,stefan:0.5,stefan:0.6"
METHODS = ("base", "hardc", "probconserv_full", "probconserv_diag")


def make_problem(spec: str) -> gpme.AbstractConservationLaw:
    """``"pme:3"`` -> ``PorousMedium(m=3.0)``."""
    name, _, value = spec.partition(":")
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem '{name}'; choose from {sorted(PROBLEMS)}")
    cls = PROBLEMS[name]
    return cls(**{cls.parameter: float(value)}) if value else cls()


def front_level(problem: gpme.AbstractConservationLaw) -> float | None:
    """Midpoint of the jump across the front, or ``None`` for problems without one."""
    if isinstance(problem, gpme.Stefan):
        return 0.5 * problem.u_star
    if isinstance(problem, gpme.LinearAdvection | gpme.BurgersShock):
        return 0.5
    return None


def predict_base(problem, key, num_functions: int, num_points: int = 201):
    """Fit one GP per function and predict at ``t*``: ``(x, truth, mean, cov)``."""
    (x0, x1), (t0, t1) = problem.domain["x"], problem.domain["t"]
    keys = jax.random.split(key, num_functions)
    contexts = jax.vmap(lambda k: context_gp.stratified_context(k, (x0, x1), (t0, t1)))(keys)
    contexts = np.asarray(contexts)
    values = problem.solve(contexts.reshape(-1, 2)).reshape(num_functions, -1)
    shift, scale = np.array([x0, t0]), np.array([x1 - x0, t1 - t0])
    x = np.linspace(x0, x1, num_points)
    query = np.stack([x, np.full_like(x, problem.t_star)], axis=-1)
    mean, cov = context_gp.fit_predict((contexts - shift) / scale, values, (query - shift) / scale)
    return x, problem.solve(query), jnp.asarray(mean), jnp.asarray(cov)


def apply_methods(mean, cov, G, b) -> dict[str, tuple]:
    """``{method: (mean, var, posterior)}`` for the four methods, batched over functions."""
    var = jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), 0.0)
    full = jax.jit(jax.vmap(pc.condition, in_axes=(0, 0, None, None, None)))(mean, cov, G, b, 0.0)
    diag = jax.jit(jax.vmap(pc.condition_diagonal, in_axes=(0, 0, None, None, None)))(
        mean, var, G, b, 0.0
    )
    hard = jax.jit(jax.vmap(pc.hardc, in_axes=(0, 0, None, None)))(mean, var, G, b)
    return {
        "base": (mean, var, None),
        "hardc": (hard.mean, hard.variance(), None),
        "probconserv_full": (full.mean, full.variance(), full),
        "probconserv_diag": (diag.mean, diag.variance(), diag),
    }


def evaluate(problem, key, num_functions: int = 50, num_points: int = 201):
    """Metrics per method for one problem: ``{method: {metric: value}}`` (function means)."""
    fit_key, draw_key = jax.random.split(key)
    x, truth, mean, cov = predict_base(problem, fit_key, num_functions, num_points)
    G, b = pc.conservation_constraint(problem, x, problem.t_star)
    results, level = {}, front_level(problem)
    for method, (m, v, _) in apply_methods(mean, cov, G, b).items():
        ce = pc.conservation_error(m, x, b[0])
        row = {
            "CE": float(jnp.mean(ce)),
            "max|CE|": float(jnp.max(jnp.abs(ce))),
            "MSE": float(jnp.mean(pc.mean_squared_error(m, truth))),
            "LL": float(jnp.mean(pc.gaussian_log_likelihood(truth, m, v))),
            "CRPS": float(jnp.mean(pc.crps_gaussian(truth, m, v))),
        }
        if level is not None and method in ("base", "probconserv_full"):
            if method == "base":
                draws = jax.vmap(lambda k, m, c: pc.sample_gaussian(k, m, c, 200))(
                    jax.random.split(draw_key, num_functions), mean, cov
                )
            else:
                draws = jax.vmap(lambda k, m, c: pc.sample(k, m, c, G, b, 0.0, 200))(
                    jax.random.split(draw_key, num_functions), mean, cov
                )
            fronts = pc.front_position(draws, x, level)
            row["front"] = float(jnp.mean(fronts))
            row["front_sd"] = float(jnp.mean(jnp.std(fronts, axis=-1)))
            row["front_true"] = float(problem.front(problem.t_star))
        results[method] = row
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default=DEFAULT, help=f"comma list (default {DEFAULT})")
    parser.add_argument("--functions", type=int, default=50, help="GPs (functions) per problem")
    parser.add_argument("--points", type=int, default=201, help="evaluation grid size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    header = f"{'problem':<14}{'method':<18}{'CE':>11}{'MSE':>11}{'LL':>9}{'CRPS':>10}  front"
    print(header)
    print("-" * len(header))
    for index, spec in enumerate(args.problems.split(",")):
        problem = make_problem(spec)
        start = time.perf_counter()
        results = evaluate(problem, jax.random.fold_in(key, index), args.functions, args.points)
        for method in METHODS:
            r = results[method]
            front = ""
            if "front" in r:
                front = f"{r['front']:.3f} ± {r['front_sd']:.3f} (true {r['front_true']:.3f})"
            print(
                f"{spec:<14}{method:<18}{r['CE']:>11.2e}{r['MSE']:>11.2e}{r['LL']:>9.2f}"
                f"{r['CRPS']:>10.2e}  {front}"
            )
        print(f"{'':<14}({args.functions} functions, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    # A script may switch float64 on globally (exact conservation needs it); importing this
    # module (as the tests do) must not.
    jax.config.update("jax_enable_x64", True)
    raise SystemExit(main())
