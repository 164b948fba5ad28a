"""The spectral GP on a large space-time grid from scattered sensors: conjugate gradients with
Kronecker matvecs, with and without the Kronecker-eigenbasis Jacobi preconditioner.

Heat equation ``u_t = 0.1 u_xx`` on an ``n x n`` grid (default 100: 10^4 grid values), 400
sensors with 1% noise, kappa known; ``fit_sensors`` alternates CG solves of the grid values
with Adam steps on the kernel. Prints per variant the final solve's relative residual, the
field's relative L2 error against the exact solution, the wall time and the peak resident
memory of this process (no ``N x N`` matrix is formed: one float64 ``N x N`` matrix alone
would be ``8 N^2`` bytes), and the ratio of the two wall times.

Run: ``.venv/bin/python benchmarks/gp_sensors_large.py [n] [num_steps]``
"""

from __future__ import annotations

import resource
import sys
import time
import warnings

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from ucsciml.data import synthetic_sensors  # noqa: E402
from ucsciml.models.spectral_gp import SpectralGP, fit_sensors  # noqa: E402
from ucsciml.pde.heat import Heat  # noqa: E402


def run(n: int, steps: int, precondition: bool) -> float:
    pde = Heat(kappa=0.1)
    model = SpectralGP(pde=pde, grid=(n, n), num_components=2, max_frequency=0.5)
    data = synthetic_sensors(pde, 400, 0.01, 0)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_sensors(
            model,
            data,
            num_steps=steps,
            cg_maxiter=50,
            cg_final_maxiter=3000,
            precondition=precondition,
            progress=False,
        )
    wall = time.perf_counter() - start
    truth = pde.solve(model.points()).reshape(model.grid)
    u = np.asarray(result.u_grid)
    rel = np.linalg.norm(u - truth) / np.linalg.norm(truth)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"{n}x{n}, {steps} steps, preconditioned={precondition}: final CG relative residual "
        f"{float(result.cg_relres):.1e}, field rel. L2 {rel:.2e}, {wall:.0f} s, peak RSS so far "
        f"{peak:.2f} GB (one N x N float64 matrix: {8 * (n * n) ** 2 / 1e9:.2f} GB), "
        f"{len(caught)} warning(s)",
        flush=True,
    )
    return wall


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with_pre = run(n, steps, True)
    without = run(n, steps, False)
    print(f"wall time preconditioned / plain: {with_pre / without:.2f}")


if __name__ == "__main__":
    main()
