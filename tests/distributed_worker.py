"""Worker of tests/test_distributed.py: NUTS (4 chains), an 8-member ensemble or a
20-replicate SBC on a conjugate regression, as one process of a distributed run when the
launcher's variables are set.

Usage: ``python distributed_worker.py OUT.npz [numpyro|blackjax|ensemble|sbc]``; process 0
writes the draws (SBC: the ranks) and the layout to ``OUT.npz``.
"""

import sys

import numpy as np

from ucsciml import distributed

settings = distributed.settings_from_env()
if settings is not None:
    distributed.initialize(settings)

import jax  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import ucsciml as uq  # noqa: E402
from ucsciml import inference  # noqa: E402


def model(X, targets=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(X @ beta, 0.5), obs=targets)


rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3))
y = X @ np.array([0.5, -1.0, 2.0]) + 0.5 * rng.normal(size=40)
program = uq.Program.from_numpyro(model, X, y)
kind = sys.argv[2] if len(sys.argv) > 2 else "numpyro"
if kind == "sbc":
    from ucsciml.sbc import sbc

    nuts = inference.NUTS(engine="blackjax", num_warmup=100, num_samples=100, num_chains=2)
    result = sbc(program, nuts, jax.random.key(4), num_replications=20)
    if distributed.is_main():
        np.savez(
            sys.argv[1],
            beta=np.stack([result.ranks[k] for k in sorted(result.ranks)]),
            devices=jax.device_count(),
            processes=jax.process_count(),
        )
    sys.exit(0)
if kind == "ensemble":
    backend = inference.DeepEnsemble(num_members=8, map=inference.MAPFit(adam_steps=200))
else:
    backend = inference.NUTS(
        engine=kind, num_warmup=100, num_samples=100, num_chains=4, progress_bar=False
    )
post = backend.run(program, jax.random.key(3))
if distributed.is_main():
    np.savez(
        sys.argv[1],
        beta=np.asarray(post.samples["beta"]),
        devices=jax.device_count(),
        processes=jax.process_count(),
    )
