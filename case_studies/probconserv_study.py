"""ProbConserv study: base model vs HardC vs ProbConserv (full / diagonal covariance).

For each problem of the GPME family (heat, porous medium, Stefan; optionally the hyperbolic
appendix problems) and each test parameter, ``num_functions`` context sets of 100 points
(10 stratified times x 10 sorted uniform positions, exact solution values) go to two base
models, which predict ``u(x, t*)`` on a 201-point grid:

* ``gp``: one GP per function (``models.probconserv.context_gp``); its predictive covariance includes the
  fitted noise variance (the GP's misfit term; ``--gp-latent`` drops it);
* ``anp``: one attentive neural process per family (``models.probconserv.attentive_np``), trained on
  functions drawn from the family's parameter range (heat c ~ U[1,5], PME m ~ U[1,6],
  Stefan u* ~ U[0.55,0.7]) and moment-matched over 64 latent draws (diagonal + rank-64).

Both see the same context sets. The conservation constraint ``G u = b(t*)`` (one
trapezoid row, ``b`` from the initial mass and boundary fluxes) is imposed with ``sigma_G = 0``.
The table averages over functions: signed conservation error CE, MSE, Gaussian LL (higher is
better) and CRPS; for problems with a front, the front position from 200 draws per function.
LL and CRPS are pointwise, from the mean and the *diagonal* of the (updated) covariance,
averaged over the grid, as the reference code scores ProbConserv (``analyze.py``:
``-0.5 (y - mu)^2 / s^2 - log s - 0.5 log 2 pi`` with ``s^2 = diag(Sigma~)``).

This is a script rather than a ``case_studies/*.toml``: the TOML pipeline (``ucsciml run``)
is built around one PDE + sensor data set + model + inference backend per run, while this
study fits hundreds of independent base models and post-processes their predictions.

Run::

    .venv/bin/python case_studies/probconserv_study.py                 # heat, PME, Stefan
    .venv/bin/python case_studies/probconserv_study.py --functions 10 --problems pme:3,stefan:0.6
    .venv/bin/python case_studies/probconserv_study.py --problems advection:3,burgers:3 --base gp
    .venv/bin/python case_studies/probconserv_study.py --base anp --anp-steps 4000 --anp-dir /tmp/anp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ucsciml.models import probconserv as pc
from ucsciml.models.probconserv import attentive_np as anp
from ucsciml.models.probconserv import context_gp
from ucsciml.pde import gpme

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


def contexts_and_grid(problem, key, num_functions: int, num_points: int = 201):
    """Context sets ``(f, 100, 2)``, their values, the grid ``x`` and query points at ``t*``."""
    (x0, x1), (t0, t1) = problem.domain["x"], problem.domain["t"]
    keys = jax.random.split(key, num_functions)
    contexts = jax.vmap(lambda k: pc.stratified_context(k, (x0, x1), (t0, t1)))(keys)
    contexts = np.asarray(contexts)
    values = problem.solve(contexts.reshape(-1, 2)).reshape(num_functions, -1)
    x = np.linspace(x0, x1, num_points)
    query = np.stack([x, np.full_like(x, problem.t_star)], axis=-1)
    return contexts, values, x, query


def predict_base(problem, key, num_functions: int, num_points: int = 201, include_noise=True):
    """Fit one GP per function and predict at ``t*``: ``(x, truth, mean, cov)``."""
    contexts, values, x, query = contexts_and_grid(problem, key, num_functions, num_points)
    mean, cov = context_gp.fit_predict(
        pc.scale_inputs(problem, contexts),
        values,
        pc.scale_inputs(problem, query),
        include_noise=include_noise,
    )
    return x, problem.solve(query), jnp.asarray(mean), jnp.asarray(cov)


def predict_anp(problem, key, model, num_functions: int, num_points: int = 201, num_draws=64):
    """The family's ANP at ``t*``: ``(x, truth, ANPPrediction)`` batched over functions
    (same context sets as :func:`predict_base` for the same key)."""
    contexts, values, x, query = contexts_and_grid(problem, key, num_functions, num_points)
    xc, xq = pc.scale_inputs(problem, contexts), pc.scale_inputs(problem, query)
    keys = jax.random.split(jax.random.fold_in(key, 1), num_functions)
    prediction = jax.vmap(lambda k, c, v: anp.predict(model, k, c, v, xq, num_draws))(
        keys, jnp.asarray(xc), jnp.asarray(values)
    )
    return x, problem.solve(query), prediction


def train_anp(family, key, num_functions: int, num_steps: int, cache_dir: str | None = None):
    """Train (or load from ``cache_dir``) the ANP of one family, in float32."""
    path = None if cache_dir is None else Path(cache_dir) / f"anp_{family.__name__}.eqx"
    with jax.enable_x64(False):
        model = anp.AttentiveNP(key=jax.random.fold_in(key, 0))
        if path is not None and path.exists():
            return eqx.tree_deserialise_leaves(path, model), 0.0
        data = anp.family_data(jax.random.fold_in(key, 1), family, num_functions)
        start = time.perf_counter()
        model = anp.train(jax.random.fold_in(key, 2), model, data, num_steps=num_steps).model
        seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        eqx.tree_serialise_leaves(path, model)
    return model, seconds


def _batched(fn, num_batched):
    return jax.jit(jax.vmap(fn, in_axes=(0,) * num_batched + (None,) * 3))


def apply_methods(mean, cov, G, b) -> dict[str, tuple]:
    """``{method: (mean, var, posterior)}`` for the four methods, batched over functions."""
    var = jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), 0.0)
    full = _batched(pc.condition, 2)(mean, cov, G, b, 0.0)
    return _with_diagonal_and_hardc(mean, var, full, G, b)


def apply_methods_lowrank(prediction, G, b) -> dict[str, tuple]:
    """As :func:`apply_methods` for a diagonal + low-rank prediction (the ANP's)."""
    mean, var = prediction.mean, prediction.variance()
    full = _batched(pc.condition_lowrank, 3)(mean, prediction.diag, prediction.factor, G, b, 0.0)
    return _with_diagonal_and_hardc(mean, var, full, G, b)


def _with_diagonal_and_hardc(mean, var, full, G, b) -> dict[str, tuple]:
    diag = _batched(pc.condition_diagonal, 2)(mean, var, G, b, 0.0)
    hard = jax.jit(jax.vmap(pc.hardc, in_axes=(0, 0, None, None)))(mean, var, G, b)
    return {
        "base": (mean, var, None),
        "hardc": (hard.mean, hard.variance(), None),
        "probconserv_full": (full.mean, full.variance(), full),
        "probconserv_diag": (diag.mean, diag.variance(), diag),
    }


def _front_draws(key, mean, diag, factor, G, b, conditioned: bool, num_draws=200):
    """Draws of the (conditioned) diagonal + low-rank Gaussian, per-draw update (Matheron)."""
    prior_key, noise_key = jax.random.split(key)
    n, r = factor.shape
    e1, e2 = jax.random.normal(prior_key, (2, num_draws, max(n, r)), mean.dtype)
    draws = mean + jnp.sqrt(diag) * e1[:, :n] + e2[:, :r] @ factor.T
    if not conditioned:
        return draws
    cross = diag[:, None] * G.T + factor @ (factor.T @ G.T)
    return pc.update_draws(draws, cross, G, b, 0.0, noise_key)


def evaluate(
    problem,
    key,
    num_functions: int = 50,
    num_points: int = 201,
    *,
    base: str = "gp",
    model=None,
    include_noise: bool = True,
):
    """Metrics per method for one problem: ``{method: {metric: value}}`` (function means).

    ``base="gp"`` fits GPs; ``base="anp"`` uses the trained ANP ``model`` of the family.
    """
    fit_key, draw_key = jax.random.split(key)
    if base == "gp":
        x, truth, mean, cov = predict_base(
            problem, fit_key, num_functions, num_points, include_noise
        )
        G, b = pc.conservation_constraint(problem, x, problem.t_star)
        methods = apply_methods(mean, cov, G, b)
    elif base == "anp":
        x, truth, prediction = predict_anp(problem, fit_key, model, num_functions, num_points)
        G, b = pc.conservation_constraint(problem, x, problem.t_star)
        methods = apply_methods_lowrank(prediction, G, b)
    else:
        raise ValueError(f"base must be 'gp' or 'anp', got {base!r}")
    results, level = {}, front_level(problem)
    for method, (m, v, _) in methods.items():
        ce = pc.conservation_error(m, x, b[0])
        row = {
            "CE": float(jnp.mean(ce)),
            "max|CE|": float(jnp.max(jnp.abs(ce))),
            "MSE": float(jnp.mean(pc.mean_squared_error(m, truth))),
            "LL": float(jnp.mean(pc.gaussian_log_likelihood(truth, m, v))),
            "CRPS": float(jnp.mean(pc.crps_gaussian(truth, m, v))),
        }
        if level is not None and method in ("base", "probconserv_full"):
            keys = jax.random.split(draw_key, num_functions)
            if base == "anp":
                conditioned = method != "base"
                draws = jax.vmap(
                    lambda k, m, d, f: _front_draws(k, m, d, f, G, b, conditioned)  # noqa: B023
                )(keys, prediction.mean, prediction.diag, prediction.factor)
            elif method == "base":
                draws = jax.vmap(lambda k, m, c: pc.sample_gaussian(k, m, c, 200))(keys, mean, cov)
            else:
                draws = jax.vmap(lambda k, m, c: pc.sample(k, m, c, G, b, 0.0, 200))(
                    keys, mean, cov
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
    parser.add_argument("--base", default="gp,anp", help="base models: gp, anp or gp,anp")
    parser.add_argument("--gp-latent", action="store_true", help="GP: latent covariance only")
    parser.add_argument("--anp-steps", type=int, default=4000, help="ANP Adam steps per family")
    parser.add_argument("--anp-functions", type=int, default=1000, help="ANP training functions")
    parser.add_argument("--anp-dir", default=None, help="cache trained ANPs here (eqx files)")
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    bases = args.base.split(",")
    if not set(bases) <= {"gp", "anp"}:
        raise SystemExit(f"--base takes gp and/or anp, got {args.base!r}")
    header = (
        f"{'base':<5}{'problem':<12}{'method':<18}{'CE':>11}{'MSE':>11}{'LL':>9}{'CRPS':>10}  front"
    )
    models = {}
    for base in bases:
        print(header)
        print("-" * len(header))
        for index, spec in enumerate(args.problems.split(",")):
            problem = make_problem(spec)
            model = None
            if base == "anp":
                family = type(problem)
                if family not in models:
                    models[family] = train_anp(
                        family,
                        jax.random.fold_in(jax.random.key(args.seed + 1), len(models)),
                        args.anp_functions,
                        args.anp_steps,
                        args.anp_dir,
                    )
                    print(f"(ANP {family.__name__}: trained in {models[family][1]:.0f} s)")
                model = models[family][0]
            start = time.perf_counter()
            results = evaluate(
                problem,
                jax.random.fold_in(key, index),
                args.functions,
                args.points,
                base=base,
                model=model,
                include_noise=not args.gp_latent,
            )
            for method in METHODS:
                r = results[method]
                front = ""
                if "front" in r:
                    front = f"{r['front']:.3f} ± {r['front_sd']:.3f} (true {r['front_true']:.3f})"
                print(
                    f"{base:<5}{spec:<12}{method:<18}{r['CE']:>11.2e}{r['MSE']:>11.2e}"
                    f"{r['LL']:>9.2f}{r['CRPS']:>10.2e}  {front}"
                )
            print(f"{'':<17}({args.functions} functions, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    # A script may switch float64 on globally (exact conservation needs it); importing this
    # module (as the tests do) must not.
    jax.config.update("jax_enable_x64", True)
    raise SystemExit(main())
