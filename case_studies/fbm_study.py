"""Case studies for the MA-fBM neural SDE (models.fbm_sde): fBM bridge and Hurst recovery.

These do not fit the PDE-oriented TOML pipeline (``ucsciml/config.py``/``runner.py`` build
sensor data on a PDE domain and a PDE model), so they are a script:

    .venv/bin/python case_studies/fbm_study.py             # both studies, all Hurst indices
    .venv/bin/python case_studies/fbm_study.py bridge 0.7  # one study, chosen H values

1. **fBM bridge.** ``θ = 0``; type I MA-fBM on ``[0, 2]`` scaled by
   ``σ = sqrt(Γ(2H+1) sin πH)`` so that it approximates *standard* fBM
   (``Var B(t) = t^{2H}``); ``X(2)`` observed as ``0`` with noise ``N(0, 0.1²)``. The
   variational posterior sd of ``X(1)`` (width-128 control, 1500 Adam steps) is compared with
   the analytic standard-fBM bridge sd ``sqrt(1 - 4^{2H-1} / (4^H + 0.01))``
   (0.790, 0.709, 0.585 for H = 0.3, 0.5, 0.7) and with the exact bridge sd of the MA-fBM
   approximation itself (Gaussian conditioning on its closed-form covariance).
2. **Hurst recovery.** Fractional OU ``dX = -θX dt + σ dB^H`` (type II MA-fBM, ``θ = σ = 1``,
   ``X(0) = 0``) simulated exactly on ``[0, 5]``, observed every 0.1 with noise sd 0.1
   (50 points); NUTS on ``(H, θ, σ)`` with the exact Kalman likelihood (the gold standard)
   against the variational fit of the same priors.

The slow tests in ``tests/test_fbm_sde.py`` call :func:`bridge_study` and
:func:`hurst_study` with the same settings.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml import inference
from ucsciml.models import fbm_sde


def analytic_bridge_sd(hurst: float, noise_std: float = 0.1) -> float:
    """Posterior sd of standard fBM at t = 1 given B(2) observed with noise ``noise_std``."""
    cov12 = 0.5 * (1 + 4**hurst - 1)
    return float(np.sqrt(1 - cov12**2 / (4**hurst + noise_std**2)))


def approximate_bridge_sd(hurst: float, noise_std: float = 0.1) -> float:
    """The same bridge sd for the (scaled, type I) MA-fBM approximation itself."""
    g = fbm_sde.speeds()
    w = fbm_sde.omega_numpy(hurst, 2.0, g, "I")[0] * fbm_sde.standard_fbm_scale(hurst)

    def cov(s, t):
        return fbm_sde.approximate_covariance(s, t, w, g, "I")

    return float(np.sqrt(cov(1, 1) - cov(1, 2) ** 2 / (cov(2, 2) + noise_std**2)))


def bridge_study(hurst: float, seed: int = 0, num_steps: int = 1500) -> dict:
    """Variational fBM bridge at one Hurst index; returns the measured numbers."""
    key_control, key_fit, key_paths = jax.random.split(jax.random.key(seed), 3)
    noise = fbm_sde.MAfBM(kind="I", horizon=2.0)
    control = fbm_sde.Control(1, noise.num_components, 2.0, width=128, depth=2, key=key_control)
    sde = fbm_sde.LatentSDE(fbm_sde.ZeroDrift(), fbm_sde.ConstantDiffusion(), noise, control)
    observations = fbm_sde.Observations(jnp.array([2.0]), jnp.array([[0.0]]), 0.1)
    start = time.perf_counter()
    result = fbm_sde.fit(
        sde,
        observations,
        key=key_fit,
        fixed={"hurst": hurst, "sigma": float(fbm_sde.standard_fbm_scale(hurst))},
        num_steps=num_steps,
        num_paths=32,
        num_grid_steps=100,
        learning_rate=3e-3,
    )
    paths, _ = fbm_sde.posterior_paths(result, key_paths, 4000)
    paths = np.asarray(paths[..., 0], np.float64)
    return {
        "hurst": hurst,
        "vi_sd_t1": float(paths[:, 50].std()),
        "vi_mean_t1": float(paths[:, 50].mean()),
        "vi_sd_t2": float(paths[:, -1].std()),
        "analytic_sd_t1": analytic_bridge_sd(hurst),
        "ma_fbm_sd_t1": approximate_bridge_sd(hurst),
        "final_loss": float(np.mean(np.asarray(result.losses[-100:]))),
        "any_nan": bool(np.isnan(paths).any() or np.isnan(np.asarray(result.losses)).any()),
        "seconds": time.perf_counter() - start,
    }


def hurst_data(hurst: float, seed: int = 0):
    """Simulated fOU observations: ``(times, latent, observed)`` (:func:`fbm_sde.hurst_data`)."""
    return fbm_sde.hurst_data(hurst, seed)


def hurst_study(hurst: float, seed: int = 0, num_steps: int = 1500) -> dict:
    """NUTS (Kalman likelihood) and VI posteriors of H from one simulated fOU path."""
    times, _, y = hurst_data(hurst, seed)
    program = fbm_sde.fou_program(times, y, 0.1, horizon=5.0, attrs={"truth": {"H": hurst}})
    start = time.perf_counter()
    nuts = inference.NUTS(
        num_warmup=300, num_samples=300, num_chains=4, dense_mass=True, progress_bar=False
    ).run(program, jax.random.key(seed + 1))
    nuts_seconds = time.perf_counter() - start
    h = nuts.samples["H"].ravel()
    key_control, key_fit = jax.random.split(jax.random.key(seed + 2))
    noise = fbm_sde.MAfBM(kind="II", horizon=5.0)
    control = fbm_sde.Control(1, noise.num_components, 5.0, width=128, depth=2, key=key_control)
    sde = fbm_sde.LatentSDE(fbm_sde.LinearDrift(), fbm_sde.ConstantDiffusion(), noise, control)
    observations = fbm_sde.Observations(jnp.asarray(times), jnp.asarray(y)[:, None], 0.1)
    start = time.perf_counter()
    result = fbm_sde.fit(
        sde,
        observations,
        key=key_fit,
        learn={"hurst": 0.5, "theta": 1.0, "sigma": 1.0},
        num_steps=num_steps,
        num_paths=16,
        num_grid_steps=250,
        learning_rate=3e-3,
    )
    posterior = fbm_sde.to_posterior(result, jax.random.key(seed + 3), 2000, program=program)
    vi_seconds = time.perf_counter() - start
    h_vi = posterior.samples["H"].ravel()
    return {
        "hurst": hurst,
        "nuts_q05_q50_q95": np.quantile(h, [0.05, 0.5, 0.95]).tolist(),
        "nuts_covers_truth": bool(np.quantile(h, 0.05) <= hurst <= np.quantile(h, 0.95)),
        "nuts_divergences": int(nuts.sample_stats["diverging"].sum()),
        "nuts_theta_q50": float(np.median(nuts.samples["theta"])),
        "nuts_sigma_q50": float(np.median(nuts.samples["sigma"])),
        "vi_q05_q50_q95": np.quantile(h_vi, [0.05, 0.5, 0.95]).tolist(),
        "vi_theta_q50": float(np.median(posterior.samples["theta"])),
        "vi_sigma_q50": float(np.median(posterior.samples["sigma"])),
        "vi_any_nan": bool(np.isnan(np.asarray(result.losses)).any()),
        "nuts_seconds": nuts_seconds,
        "vi_seconds": vi_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """``fbm_study.py [bridge|hurst ...] [H ...]``: run the studies and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "args",
        nargs="*",
        metavar="STUDY_OR_H",
        help="'bridge' and/or 'hurst' (default: both), then Hurst indices in (0, 1) "
        "(default: 0.3 0.5 0.7 for the bridge, 0.3 0.7 for Hurst recovery)",
    )
    args = parser.parse_args(argv).args
    studies = [a for a in args if a in ("bridge", "hurst")] or ["bridge", "hurst"]
    try:
        values = [float(a) for a in args if a not in ("bridge", "hurst")]
    except ValueError:
        parser.error(f"expected 'bridge', 'hurst' or Hurst indices, got {args}")
    if any(not 0 < h < 1 for h in values):
        parser.error(f"Hurst indices must lie in (0, 1), got {values}")
    if "bridge" in studies:
        for h in values or [0.3, 0.5, 0.7]:
            r = bridge_study(h)
            print(
                f"bridge H={h}: VI sd(t=1) {r['vi_sd_t1']:.3f}  analytic fBM {r['analytic_sd_t1']:.3f}"
                f"  (rel. error {r['vi_sd_t1'] / r['analytic_sd_t1'] - 1:+.1%})  exact MA-fBM "
                f"{r['ma_fbm_sd_t1']:.3f}  mean {r['vi_mean_t1']:+.3f}  sd(t=2) {r['vi_sd_t2']:.3f}"
                f"  NaN {r['any_nan']}  {r['seconds']:.0f}s"
            )
    if "hurst" in studies:
        for h in values or [0.3, 0.7]:
            r = hurst_study(h)
            nq, vq = r["nuts_q05_q50_q95"], r["vi_q05_q50_q95"]
            print(
                f"hurst H={h}: NUTS 90% [{nq[0]:.3f}, {nq[2]:.3f}] median {nq[1]:.3f} "
                f"covers={r['nuts_covers_truth']} div={r['nuts_divergences']} "
                f"(theta {r['nuts_theta_q50']:.2f}, sigma {r['nuts_sigma_q50']:.2f}, {r['nuts_seconds']:.0f}s) | "
                f"VI 90% [{vq[0]:.3f}, {vq[2]:.3f}] median {vq[1]:.3f} "
                f"(theta {r['vi_theta_q50']:.2f}, sigma {r['vi_sigma_q50']:.2f}, NaN {r['vi_any_nan']}, "
                f"{r['vi_seconds']:.0f}s)"
            )


if __name__ == "__main__":
    main()
