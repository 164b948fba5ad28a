"""RGNP on the parametric nonlinear Poisson family (Vadeboncoeur et al., ICML 2023, Sec. 5).

``-(kappa(u, x; z) u')' = w`` on ``[-1, 1]``, ``kappa = softplus(u sum_n z_n T_n(x)) + 0.1``,
``z ~ U(-1, 1)^5``, ``w ~ U(1, 2)``, trained from the physics alone on random grids. This
family does not fit the sensor-data TOML pipeline (there is no single dataset: every step
draws new ``(z, w)``), so it is a script:

    .venv/bin/python case_studies/rgnp_poisson.py reduced   # CPU configuration
    .venv/bin/python case_studies/rgnp_poisson.py full      # the paper's configuration

Configurations:

* ``full`` (the paper's released notebook): forward MLP 7 x 300 (swish), 100 Fourier
  frequencies in ``[1e-3, 2]``, 30 random points per sample, batch 50, 20,000 Adam steps
  (``1e-3``, halved every 4,000 steps), ``eps_r = 1e-2`` fixed, variance floor ``1e-4``;
  GICNet with a 20-point latent grid, 20 channels (length-scales ``1e-3 .. 1``), six
  convolutions of width 3, branch/trunk 100, head 4 x 300. Expected run time on one
  modern GPU: about 5 minutes (an estimate from the step cost, *not measured*: no GPU was
  available when this was written).
* ``reduced``: forward MLP 4 x 128, 32 frequencies, batch 32, 8,000 steps, default GICNet.
  Measured (``benchmarks/rgnp_poisson.py``, seed 0): 2,824 s of training on a 2-core CPU
  shared with other jobs (about 8 minutes expected on an idle machine); on 20 test pairs
  NSE_u 9.9e-4, NSE_z 0.053, +-2 sd coverage of u 0.67 and of z 0.98.

Writes ``metrics.json`` (NSE_u, NSE_z, +-2 sd coverage of u and z on 20 test pairs drawn
from the prior, training time, ELBO at the start and end) to ``--out``.
"""

from __future__ import annotations

import _rgnp_cli

from ucsciml.pde import NonlinearPoisson1D

CONFIGS = {
    "full": dict(
        model=dict(
            width=300,
            depth=7,
            num_frequencies=100,
            frequency_range=(1e-3, 2.0),
            num_points=30,
            residual_sd=1e-2,
            grid_shape=(20,),
            channels=20,
            cnn_channels=20,
            cnn_layers=6,
            kernel_size=3,
            branch_size=100,
            trunk_size=100,
            head_width=300,
            head_depth=4,
        ),
        fit=dict(num_steps=20_000, batch_size=50, learning_rate=1e-3, decay_steps=4_000),
    ),
    "reduced": dict(
        model=dict(width=128, depth=4, num_points=30),
        fit=dict(num_steps=8_000, batch_size=32, learning_rate=1e-3),
    ),
}


def run(config: str, seed: int = 0, out: str | None = None) -> dict:
    """Train and evaluate one configuration; returns (and optionally writes) the metrics."""
    return _rgnp_cli.run(NonlinearPoisson1D(), CONFIGS[config], config, seed, out)


if __name__ == "__main__":
    _rgnp_cli.main(NonlinearPoisson1D(), CONFIGS, __doc__.splitlines()[0])
