"""Wall time of ``inference.NUTS`` vs a hand-written NumPyro ``MCMC(NUTS)`` on one model.

Both sample the same conjugate regression with the same sampler configuration (prior-draw
initialisation, the same per-chain keys, the same recorded fields); each is timed end to end
(compile + warm-up + sampling) in alternating repeats, and the median ratio is printed.
Target: ratio <= 1.05. ``inference.NUTS`` drives NumPyro's kernel through executables it
keeps, so its calls after the first compile nothing, whereas ``MCMC.run`` compiles its
sampling loop on every call; the cold rows therefore clear JAX's caches
(``jax.clear_caches()``) before every call, and the warm row times a second call.

Run: ``.venv/bin/python benchmarks/nuts_overhead.py``
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC
from numpyro.infer import NUTS as NumPyroNUTS
from numpyro.infer.initialization import init_to_sample

import ucsciml as uq
from ucsciml import inference

SETTINGS = dict(num_warmup=500, num_samples=1000, num_chains=4)
REPEATS = 5


def model(X, targets=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(X @ beta, 0.5), obs=targets)


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 10))
    y = X @ rng.normal(size=10) + 0.5 * rng.normal(size=500)
    program = uq.Program.from_numpyro(model, X, y)
    backend = inference.NUTS(progress_bar=False, **SETTINGS)

    def ours():
        posterior = backend.run(program, jax.random.key(0))
        return posterior.samples["beta"]

    def plain(jit_model_args=True):
        run_key = jax.random.split(jax.random.key(0))[0]  # as inference.NUTS derives it
        keys = jax.vmap(lambda i: jax.random.fold_in(run_key, i))(np.arange(4))
        kernel = NumPyroNUTS(model, init_strategy=init_to_sample)
        mcmc = MCMC(
            kernel,
            chain_method="vectorized",
            progress_bar=False,
            jit_model_args=jit_model_args,
            **SETTINGS,
        )
        fields = (
            "diverging",
            "num_steps",
            "adapt_state.step_size",
            "energy",
            "potential_energy",
            "accept_prob",
        )
        mcmc.run(keys, X, targets=y, extra_fields=fields)
        return np.asarray(mcmc.get_samples(group_by_chain=True)["beta"])

    times = {"ucsciml": [], "numpyro": [], "numpyro-const": [], "ucsciml-warm": []}
    for _ in range(REPEATS):
        for name, fn in (
            ("ucsciml", ours),
            ("ucsciml-warm", ours),
            ("numpyro", plain),
            ("numpyro-const", lambda: plain(False)),
        ):
            if name != "ucsciml-warm":
                jax.clear_caches()
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    same = np.array_equal(np.asarray(ours()), plain())
    print(f"identical draws: {same}")
    ours_t, plain_t = statistics.median(times["ucsciml"]), statistics.median(times["numpyro"])
    print(f"{'':<26}{'median s':>10}  runs")
    print(f"{'inference.NUTS':<26}{ours_t:>10.2f}  {np.round(times['ucsciml'], 2).tolist()}")
    print(f"{'numpyro MCMC(NUTS)':<26}{plain_t:>10.2f}  {np.round(times['numpyro'], 2).tolist()}")
    const_t = statistics.median(times["numpyro-const"])
    print(
        f"{'numpyro, data as consts':<26}{const_t:>10.2f}  {np.round(times['numpyro-const'], 2).tolist()}"
    )
    warm_t = statistics.median(times["ucsciml-warm"])
    print(
        f"{'inference.NUTS, warm':<26}{warm_t:>10.2f}  {np.round(times['ucsciml-warm'], 2).tolist()}"
    )
    print(
        f"ratio ucsciml / numpyro (same config, jit_model_args=True): {ours_t / plain_t:.3f}"
        "  (target <= 1.05)"
    )
    print(
        f"warm call / numpyro call: {warm_t / plain_t:.3f} (NumPyro's MCMC has no warm call: "
        "it compiles its loop on every run)"
    )
    print(
        f"ratio ucsciml / numpyro with data baked in as constants: {ours_t / const_t:.3f}"
        "  (the price of never recompiling for new data)"
    )


if __name__ == "__main__":
    main()
