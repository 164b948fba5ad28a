"""Wall time of ``inference.NUTS`` vs a hand-written NumPyro ``MCMC(NUTS)`` on one model.

Both sample the same conjugate regression with the same settings; each is timed end to end
(compile + warm-up + sampling) in alternating repeats, and the median ratio is printed.
Target: ratio <= 1.05 (the wrapper adds only key folding, provenance and array conversion).

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

import ucsciml as uq
from ucsciml import inference

SETTINGS = dict(num_warmup=500, num_samples=1000, num_chains=4)
REPEATS = 3


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

    def plain():
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(np.arange(4))
        mcmc = MCMC(NumPyroNUTS(model), chain_method="vectorized", progress_bar=False, **SETTINGS)
        mcmc.run(keys, X, targets=y, extra_fields=("diverging", "num_steps", "energy"))
        return np.asarray(mcmc.get_samples(group_by_chain=True)["beta"])

    times = {"ucsciml": [], "numpyro": []}
    for _ in range(REPEATS):
        for name, fn in (("ucsciml", ours), ("numpyro", plain)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    ours_t, plain_t = statistics.median(times["ucsciml"]), statistics.median(times["numpyro"])
    print(f"{'':<26}{'median s':>10}  runs")
    print(f"{'inference.NUTS':<26}{ours_t:>10.2f}  {np.round(times['ucsciml'], 2).tolist()}")
    print(f"{'numpyro MCMC(NUTS)':<26}{plain_t:>10.2f}  {np.round(times['numpyro'], 2).tolist()}")
    print(f"ratio ucsciml / numpyro: {ours_t / plain_t:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
