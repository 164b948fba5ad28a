"""The fractional-noise SDE as a family case (:mod:`ucsciml.family_case`): fOU Hurst recovery.

A fractional Ornstein--Uhlenbeck path ``dX = -θX dt + σ dB^H`` (type II MA-fBM, ``X(0) = 0``)
is simulated exactly (:func:`hurst_data`) on ``[0, horizon]`` and observed at
``num_observations`` equally spaced times with Gaussian noise. Two backends fit ``(H, θ, σ)``
under the same priors (``H`` logit-normal, ``θ`` and ``σ`` log-normal):

* ``"nuts"``: the NUTS backend of the case file's ``[backend.nuts]`` table on the exact Kalman
  likelihood (:func:`~ucsciml.models.fbm_sde.fou_program`), the gold standard;
* ``"vi"``: the family's own latent-SDE variational fit (:func:`~ucsciml.models.fbm_sde.fit`,
  a control network and a mean-field Gaussian over the unconstrained parameters), set in
  ``[model]``.

Both trees carry the sites ``H``, ``theta``, ``sigma`` (and ``hurst_logit``) as physical
parameters with their truths, so the report and ``ucsciml compare`` set them side by side.
This is the Hurst study of ``case_studies/fbm_study.py`` as a case file
(``case_studies/fbm_hurst.toml``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ucsciml._types import PRNGKey
from ucsciml.family_case import FamilyRun
from ucsciml.models.fbm_sde._fbm_vi import TRANSFORMS, VIResult, fit
from ucsciml.models.fbm_sde._fou_kalman import fou_program
from ucsciml.models.fbm_sde._fou_kalman import simulate as simulate_fou
from ucsciml.models.fbm_sde._latent_sde import (
    ConstantDiffusion,
    Control,
    LatentSDE,
    LinearDrift,
    MAfBM,
    Observations,
)
from ucsciml.models.fbm_sde._mafbm import speeds
from ucsciml.posterior import draws_tree

#: The sites both backends report, in the NUTS program's names.
SITES = ("H", "theta", "sigma")
#: The central interval of the headline numbers.
INTERVAL = (0.05, 0.95)
#: Program name of the variational tree.
PROGRAM = "fbm_sde"


def observation_times(horizon: float, num_observations: int) -> np.ndarray:
    """``num_observations`` equally spaced times ending at ``horizon`` (``t_i = i T / M``)."""
    return np.round(np.arange(1, num_observations + 1) * (horizon / num_observations), 10)


def hurst_data(
    hurst: float,
    seed: int = 0,
    *,
    theta: float = 1.0,
    sigma: float = 1.0,
    noise_std: float = 0.1,
    horizon: float = 5.0,
    num_observations: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exact fOU draw (type II MA-fBM) and its noisy observations: ``(times, x, y)``.

    The defaults are the Hurst study of ``case_studies/fbm_study.py`` (50 points every 0.1 on
    ``[0, 5]``, noise sd 0.1, ``θ = σ = 1``); the path depends on ``seed`` only.
    """
    times = observation_times(horizon, num_observations)
    x, y = simulate_fou(
        jax.random.key(seed),
        times,
        theta=theta,
        sigma=sigma,
        hurst=hurst,
        noise_std=noise_std,
        gammas=tuple(speeds()),
        horizon=horizon,
        kind="II",
    )
    return times, x, y


def interval_summary(draws: np.ndarray, truth: float) -> dict[str, Any]:
    """Mean, sd, the central 90% interval of ``draws`` and whether it holds ``truth``."""
    flat = np.asarray(draws, np.float64).ravel()
    lo, hi = np.quantile(flat, INTERVAL)
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std()),
        "q05": float(lo),
        "q95": float(hi),
        "truth": float(truth),
        "truth_in_90": bool(lo <= truth <= hi),
    }


def site_metrics(posterior: dict[str, np.ndarray], truth: dict[str, float]) -> dict[str, Any]:
    """:func:`interval_summary` of every site in :data:`SITES`."""
    return {name: interval_summary(posterior[name], truth[name]) for name in SITES}


def vi_draws(result: VIResult, key: PRNGKey, num_draws: int) -> dict[str, np.ndarray]:
    """``num_draws`` draws of ``q(g)`` as constrained sites ``(1 chain, draws)``: ``H`` (and
    its ``hurst_logit``), ``theta``, ``sigma``."""
    draws = jax.vmap(result.globals.sample)(jax.random.split(key, num_draws))
    out = {}
    for name, value in draws.items():
        if name == "hurst":
            out["hurst_logit"] = np.asarray(value)[None]
            out["H"] = np.asarray(jax.nn.sigmoid(value))[None]
        else:
            out[name] = np.asarray(TRANSFORMS[name](value))[None]
    return out


def _check_range(name: str, value: float, lo: float, hi: float | None = None) -> None:
    """``ValueError`` naming ``name`` unless ``lo < value`` (and ``value < hi``)."""
    inside = math.isfinite(value) and value > lo and (hi is None or value < hi)
    if not inside:
        allowed = f"({lo}, {hi})" if hi is not None else f"> {lo}"
        raise ValueError(f"HurstCase: {name} must be {allowed}, got {value!r}")


def _check_count(name: str, value: int, least: int) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer ``>= least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"HurstCase: {name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class HurstCase:
    """fOU Hurst recovery: NUTS on the exact Kalman likelihood, or the family's VI.

    Attributes:
        hurst, theta, sigma: the truth the data are simulated from (``0 < H < 1``).
        noise_std: observation noise sd (known to both backends).
        horizon: the observation window ``[0, horizon]``.
        num_observations: equally spaced observations, the last at ``horizon``.
        data_seed: seed of the simulated path and its noise.
        num_steps, num_paths, learning_rate: the VI fit (Adam steps, Monte-Carlo paths per
            step, the cosine schedule's first rate).
        grid_steps_per_observation: Euler steps between observations (the VI grid).
        width, depth: the control network.
        init_hurst: the VI's initial ``H`` (``θ`` and ``σ`` start at 1).
        num_draws: draws of the VI posterior ``q(g)``.
    """

    backends: ClassVar[tuple[str, ...]] = ("nuts", "vi")
    own_backends: ClassVar[tuple[str, ...]] = ("vi",)

    hurst: float = 0.7
    theta: float = 1.0
    sigma: float = 1.0
    noise_std: float = 0.1
    horizon: float = 5.0
    num_observations: int = 50
    data_seed: int = 0
    num_steps: int = 1500
    num_paths: int = 16
    learning_rate: float = 3e-3
    grid_steps_per_observation: int = 5
    width: int = 128
    depth: int = 2
    init_hurst: float = 0.5
    num_draws: int = 2000

    def __post_init__(self) -> None:
        for name in ("hurst", "theta", "sigma", "noise_std", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"HurstCase: {name} must be a number, got {value!r}")
        _check_range("hurst", self.hurst, 0.0, 1.0)
        _check_range("init_hurst", self.init_hurst, 0.0, 1.0)
        for name in ("theta", "sigma", "noise_std", "horizon", "learning_rate"):
            _check_range(name, float(getattr(self, name)), 0.0)
        for name, least in (
            ("num_observations", 2),
            ("num_steps", 1),
            ("num_paths", 1),
            ("grid_steps_per_observation", 1),
            ("width", 1),
            ("depth", 1),
            ("num_draws", 2),
            ("data_seed", 0),
        ):
            _check_count(name, getattr(self, name), least)

    @property
    def truth(self) -> dict[str, float]:
        """The simulated truth in site names (``hurst_logit`` too)."""
        return {
            "H": float(self.hurst),
            "hurst_logit": float(np.log(self.hurst / (1.0 - self.hurst))),
            "theta": float(self.theta),
            "sigma": float(self.sigma),
        }

    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times, x, y)`` of :func:`hurst_data` for this case."""
        return hurst_data(
            self.hurst,
            self.data_seed,
            theta=self.theta,
            sigma=self.sigma,
            noise_std=self.noise_std,
            horizon=self.horizon,
            num_observations=self.num_observations,
        )

    def settings(self) -> dict[str, Any]:
        """The case's fields as a plain dict (the ``[model]`` table without ``name``)."""
        return dataclasses.asdict(self)

    def run(self, backend: str, settings: Any, *, key: PRNGKey, progress: bool) -> FamilyRun:
        """Simulate the data and fit ``(H, θ, σ)`` with ``backend`` (``"nuts"``: ``settings``
        is the built NUTS backend; ``"vi"``: ``settings`` is ``None``, the family's fit).

        Returns:
            :class:`~ucsciml.family_case.FamilyRun`: the tree, and per site its mean, sd, 90%
            interval, truth and whether the truth lies inside, plus the seconds taken.

        Raises:
            ValueError: for an unknown backend or NUTS without its settings.
        """
        if backend not in self.backends:
            raise ValueError(f"HurstCase: backend must be one of {self.backends}, got {backend!r}")
        times, _, y = self.data()
        if backend == "nuts":
            if settings is None or not callable(getattr(settings, "run", None)):
                raise ValueError("HurstCase: backend 'nuts' needs the built NUTS as settings")
            return self._run_nuts(settings, times, y, key)
        return self._run_vi(times, y, key, progress)

    def _run_nuts(self, nuts: Any, times: np.ndarray, y: np.ndarray, key: PRNGKey) -> FamilyRun:
        """NUTS on :func:`fou_program` (exact Kalman likelihood)."""
        program = fou_program(
            times, y, self.noise_std, horizon=self.horizon, attrs={"truth": self.truth}
        )
        start = time.perf_counter()
        posterior = nuts.run(program, key)
        seconds = time.perf_counter() - start
        tree = posterior.to_datatree()
        tree.attrs["ucsciml_physical_sites"] = _json_list(SITES)
        metrics = site_metrics(posterior.samples, self.truth)
        diverging = posterior.sample_stats.get("diverging")
        if diverging is not None:
            metrics["divergences"] = int(np.asarray(diverging).sum())
        metrics["seconds"] = seconds
        return FamilyRun(tree, metrics)

    def _run_vi(self, times: np.ndarray, y: np.ndarray, key: PRNGKey, progress: bool) -> FamilyRun:
        """The family's latent-SDE VI: a linear-drift SDE with a control network."""
        key_control, key_fit = jax.random.split(key)
        key_draws = jax.random.fold_in(key, 1)
        noise = MAfBM(kind="II", horizon=self.horizon)
        control = Control(
            1,
            noise.num_components,
            self.horizon,
            width=self.width,
            depth=self.depth,
            key=key_control,
        )
        sde = LatentSDE(LinearDrift(), ConstantDiffusion(), noise, control)
        observations = Observations(
            jnp.asarray(times, jnp.float32), jnp.asarray(y, jnp.float32)[:, None], self.noise_std
        )
        start = time.perf_counter()
        result = fit(
            sde,
            observations,
            key=key_fit,
            learn={"hurst": self.init_hurst, "theta": 1.0, "sigma": 1.0},
            num_steps=self.num_steps,
            num_paths=self.num_paths,
            num_grid_steps=self.grid_steps_per_observation * self.num_observations,
            learning_rate=self.learning_rate,
            progress=progress,
        )
        posterior = vi_draws(result, key_draws, self.num_draws)
        seconds = time.perf_counter() - start
        tree = draws_tree(
            posterior,
            kind="vi",
            program=PROGRAM,
            physical_sites=SITES,
            optimization=result.trained().record(
                "negative ELBO", num_paths=self.num_paths, num_steps=self.num_steps
            ),
            groups={"observed_data": {"y": np.asarray(y, np.float32)}},
            attrs={"truth": self.truth, "noise_std": self.noise_std, "kind": "II"},
        )
        metrics = site_metrics(posterior, self.truth)
        metrics["converged"] = bool(result.verdict["converged"])
        metrics["seconds"] = seconds
        return FamilyRun(tree, metrics)


def _json_list(values: tuple[str, ...]) -> str:
    """A list attribute as the tree stores it (JSON, :func:`ucsciml.posterior.tree_attr`)."""
    return json.dumps(list(values))
