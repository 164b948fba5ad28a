"""RGNP on the parametric Burgers family (Vadeboncoeur et al., ICML 2023, Sec. 5).

``u_t + z_1 u u_x - z_0 u_xx = 0`` on ``[0, 1]^2``, ``u(x, 0) = sin(2 w pi x) sin(pi x)``,
zero Dirichlet data, ``z_0 ~ U(0.01, 0.1)``, ``z_1 ~ U(0.5, 1)``, ``w ~ U(0.5, 2)``; hard
conditions ``u = B + t sin(pi x) N``. A script for the same reason as ``rgnp_poisson.py``:

    .venv/bin/python case_studies/rgnp_burgers.py reduced
    .venv/bin/python case_studies/rgnp_burgers.py full

Configurations:

* ``full`` (the paper's released notebook): forward MLP 9 x 400 (swish), 100 trainable
  Fourier frequencies per dimension in ``[1e-2, 2]``, 225 random points per sample, batch
  25, 80,000 Adam steps (``1e-3``, halved every 16,000), ``eps_r`` learned from 1; GICNet on
  a 10 x 10 latent grid, 20 channels, four 2 x 2 convolutions, branch/trunk 100, head
  4 x 300. Expected run time on one modern GPU: about 30-40 minutes (an estimate from the
  step cost, *not measured*: no GPU was available when this was written).
* ``reduced``: forward MLP 4 x 128, 32 frequencies, 100 points, batch 8, 3,000 steps,
  GICNet on an 8 x 8 grid. Measured (seed 0): 699 s of training on a shared 2-core CPU;
  on 20 test pairs NSE_u 0.116 (a rough fit: too few steps for the sharp fronts at small
  ``z_0``), NSE_z 0.034, +-2 sd coverage of u 0.97 and of z 1.00.

Writes ``metrics.json`` to ``--out`` (NSE_u and coverage on a 65 x 51 method-of-lines grid).
"""

from __future__ import annotations

import _rgnp_cli

from ucsciml.pde import ParametricBurgers

CONFIGS = {
    "full": dict(
        model=dict(
            width=400,
            depth=9,
            num_frequencies=100,
            frequency_range=(1e-2, 2.0),
            trainable_frequencies=True,
            num_points=225,
            residual_sd=1.0,
            learn_residual_sd=True,
            grid_shape=(10, 10),
            channels=20,
            cnn_channels=20,
            cnn_layers=4,
            kernel_size=2,
            branch_size=100,
            trunk_size=100,
            head_width=300,
            head_depth=4,
        ),
        fit=dict(num_steps=80_000, batch_size=25, learning_rate=1e-3, decay_steps=16_000),
    ),
    "reduced": dict(
        model=dict(
            width=128,
            depth=4,
            num_frequencies=32,
            frequency_range=(1e-2, 2.0),
            num_points=100,
            residual_sd=1.0,
            learn_residual_sd=True,
            grid_shape=(8, 8),
            cnn_layers=3,
            kernel_size=2,
        ),
        fit=dict(num_steps=3_000, batch_size=8, learning_rate=1e-3),
    ),
}


def run(config: str, seed: int = 0, out: str | None = None) -> dict:
    """Train and evaluate one configuration; returns (and optionally writes) the metrics."""
    return _rgnp_cli.run(ParametricBurgers(), CONFIGS[config], config, seed, out)


if __name__ == "__main__":
    _rgnp_cli.main(ParametricBurgers(), CONFIGS, __doc__.splitlines()[0])
