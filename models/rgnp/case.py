"""The random-grid neural process as a family case (:mod:`ucsciml.family_case`).

``[model] name = "rgnp"`` trains an :class:`RGNP` on a parametric PDE family from the physics
alone, then scores it on test pairs ``(z, w)`` drawn from the prior: the forward field at the
true ``(z, w)`` against the reference solver (``predictions`` with ``u_true``) and the
amortised inverse ``q_beta(z | u, w)`` given the exact field on the solver grid
(``posterior`` draws of ``z`` per test pair, the truths in the program attributes). The
headline numbers are those of ``case_studies/rgnp_poisson.py``: NSE_u, NSE_z and the
``+-2 sd`` coverage of u and z, the training time and the ELBO at the start and the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np
import xarray as xr

from ucsciml._types import PRNGKey
from ucsciml.family_case import FamilyRun
from ucsciml.models.rgnp.rgnp import RGNP, _field, _gaussian, _inverse
from ucsciml.pde import NonlinearPoisson1D
from ucsciml.posterior import draws_tree

#: The PDE families a case file can name in ``[model] pde``.
PDES = ("nonlinear_poisson",)
#: ELBO steps averaged for the start and end values (fewer when the run is shorter).
ELBO_WINDOW = 100


class PairSet(NamedTuple):
    """The scored test pairs: ``z (test, num_z)``, ``w (test, num_w)``, the reference grid
    ``points (x, d)`` (shared by every pair) and fields ``u (test, x)``."""

    z: np.ndarray
    w: np.ndarray
    points: np.ndarray
    u: np.ndarray


class Moments(NamedTuple):
    """Gaussian moments per test pair: forward ``u_mean, u_var (test, x)``,
    ``u_factor (test, x, rank)``; inverse ``z_mean, z_var (test, num_z)``,
    ``z_factor (test, num_z, rank)``."""

    u_mean: np.ndarray
    u_var: np.ndarray
    u_factor: np.ndarray
    z_mean: np.ndarray
    z_var: np.ndarray
    z_factor: np.ndarray


def make_problem(pde: str) -> Any:
    """The parametric PDE family named ``pde`` (one of :data:`PDES`)."""
    if pde == "nonlinear_poisson":
        return NonlinearPoisson1D()
    raise ValueError(f"[model] pde must be one of {list(PDES)}, got {pde!r}")


def draw_test_pairs(problem: Any, key: PRNGKey, num_test: int) -> PairSet:
    """``num_test`` pairs from the training prior and their reference fields, drawn as
    :meth:`RGNP.evaluate` draws them (so the same key gives the same pairs)."""
    k_z, k_w = jax.random.split(key)
    z_low, z_high = problem.z_bounds
    w_low, w_high = problem.w_bounds
    z = np.asarray(jax.random.uniform(k_z, (num_test, problem.num_z), minval=z_low, maxval=z_high))
    w = np.asarray(jax.random.uniform(k_w, (num_test, problem.num_w), minval=w_low, maxval=w_high))
    solved = [problem.reference(zi, wi) for zi, wi in zip(z, w, strict=True)]
    points = np.asarray(solved[0][0])
    for grid, _ in solved[1:]:
        if grid.shape != points.shape or not np.allclose(grid, points):
            raise ValueError("the reference solver's grid differs between test pairs")
    return PairSet(z, w, points, np.stack([np.asarray(u) for _, u in solved]))


def pair_moments(model: RGNP, params: Any, tests: PairSet) -> Moments:
    """The forward field at each true ``(z, w)`` and ``q_beta`` given its exact field."""
    rows = []
    for z, w, u in zip(tests.z, tests.w, tests.u, strict=True):
        forward = _field(model, params, z, w, tests.points)
        inverse = _inverse(model, params, tests.points, u, w)
        rows.append([np.asarray(a) for a in (*forward, *inverse)])
    return Moments(*(np.stack(column) for column in zip(*rows, strict=True)))


def _sd(var: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Marginal sd of ``N(mean, diag(var) + factor factor^T)``."""
    return np.sqrt(var + (factor**2).sum(axis=-1))


def pair_metrics(tests: PairSet, moments: Moments) -> dict[str, float]:
    """NSE and ``+-2 sd`` coverage of u and z, means over the test pairs, with the formulas
    of :meth:`RGNP.evaluate` (the hard-constrained points, sd zero, are left out of the
    coverage of u)."""
    u_sd = _sd(moments.u_var, moments.u_factor)
    z_sd = _sd(moments.z_var, moments.z_factor)
    rows = []
    for i in range(tests.z.shape[0]):
        u, z = tests.u[i], tests.z[i]
        inside = u_sd[i] > 1e-6 * u_sd[i].max()
        u_err, z_err = np.abs(moments.u_mean[i] - u), np.abs(moments.z_mean[i] - z)
        rows.append(
            (
                np.sum(u_err**2) / np.sum(u**2),
                np.mean(u_err[inside] <= 2 * u_sd[i][inside]),
                np.sum(z_err**2) / np.sum(z**2),
                np.mean(z_err <= 2 * z_sd[i]),
            )
        )
    rows = np.array(rows)
    names = ("nse_u", "coverage_u", "nse_z", "coverage_z")
    return {name: float(rows[:, j].mean()) for j, name in enumerate(names)}


def gaussian_draws(moments: Moments, key: PRNGKey, num_draws: int) -> tuple[np.ndarray, ...]:
    """``(u, z)`` draws on ``(chain=1, draw, test, x)`` and ``(chain=1, draw, test, num_z)``,
    test pair ``i`` from ``fold_in(key, i)``."""
    u_draws, z_draws = [], []
    for i in range(moments.u_mean.shape[0]):
        k_u, k_z = jax.random.split(jax.random.fold_in(key, i))
        for out, k, (m, v, f) in (
            (u_draws, k_u, (moments.u_mean[i], moments.u_var[i], moments.u_factor[i])),
            (z_draws, k_z, (moments.z_mean[i], moments.z_var[i], moments.z_factor[i])),
        ):
            out.append(np.asarray(_gaussian(m, v, f).sample(k, (1, num_draws))))
    return np.stack(u_draws, axis=2), np.stack(z_draws, axis=2)


def elbo_ends(elbo: np.ndarray, window: int = ELBO_WINDOW) -> tuple[float, float]:
    """Mean ELBO over the first and last ``window`` steps."""
    n = max(1, min(window, elbo.shape[0]))
    return float(np.mean(elbo[:n])), float(np.mean(elbo[-n:]))


@dataclass(frozen=True)
class RGNPCase:
    """An RGNP trained from the physics of ``pde`` and scored on ``num_test`` prior pairs.

    The defaults are the CPU ("reduced") configuration of ``case_studies/rgnp_poisson.py``;
    the other :class:`RGNP` settings keep their defaults. Backend ``vi``: the amortised
    variational ``q_beta`` trained with the forward model (no ``[backend.vi]`` table).

    Args:
        pde: the PDE family, one of :data:`PDES`.
        width, depth, num_frequencies: the forward MLP and its Fourier features.
        num_points: random collocation points per ELBO sample.
        num_steps, batch_size, learning_rate, chunk_size: Adam on the ELBO (rate halved
            every ``num_steps // 5`` steps), ``chunk_size`` steps per jitted scan.
        num_test: test pairs drawn from the prior.
        test_seed: the test pairs' seed; ``None`` draws them from the run's key (as the
            script does).
        num_draws: draws of u and z per test pair in the tree.
    """

    backends: ClassVar[tuple[str, ...]] = ("vi",)
    own_backends: ClassVar[tuple[str, ...]] = ("vi",)

    pde: str = "nonlinear_poisson"
    width: int = 128
    depth: int = 4
    num_frequencies: int = 32
    num_points: int = 30
    num_steps: int = 8000
    batch_size: int = 32
    learning_rate: float = 1e-3
    chunk_size: int = 100
    num_test: int = 20
    test_seed: int | None = None
    num_draws: int = 200

    def __post_init__(self):
        if self.pde not in PDES:
            raise ValueError(f"[model] pde must be one of {list(PDES)}, got {self.pde!r}")
        for name in (
            "width",
            "depth",
            "num_frequencies",
            "num_points",
            "num_steps",
            "batch_size",
            "chunk_size",
            "num_test",
            "num_draws",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"[model] {name} must be a positive integer, got {value!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
            raise ValueError(f"[model] learning_rate must be in (0, 1), got {rate!r}")
        seed = self.test_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"[model] test_seed must be an integer >= 0, got {seed!r}")

    def model(self) -> RGNP:
        """The :class:`RGNP` this case trains."""
        return RGNP(
            make_problem(self.pde),
            width=self.width,
            depth=self.depth,
            num_frequencies=self.num_frequencies,
            num_points=self.num_points,
        )

    def run(self, backend: str, settings: Any, *, key: PRNGKey, progress: bool) -> FamilyRun:
        """Train, draw the test pairs, score them and build the tree (see the module).

        ``key`` splits as the script's seed key does: ``(fit, test pairs)``; the draws use
        ``fold_in(key, 2)``.
        """
        if backend not in self.backends:
            raise ValueError(f"RGNPCase runs backends {list(self.backends)}, got {backend!r}")
        if settings is not None:
            raise ValueError("RGNPCase's 'vi' is its own fit: it takes no backend settings")
        model = self.model()
        k_fit, k_test = jax.random.split(key)
        if self.test_seed is not None:
            k_test = jax.random.key(self.test_seed)
        start = time.perf_counter()
        fit = model.fit(
            k_fit,
            num_steps=self.num_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            chunk_size=self.chunk_size,
            progress_bar=progress,
        )
        train_seconds = time.perf_counter() - start
        tests = draw_test_pairs(model.problem, k_test, self.num_test)
        moments = pair_moments(model, fit.params, tests)
        metrics = pair_metrics(tests, moments)
        first, last = elbo_ends(fit.elbo)
        metrics.update(
            train_seconds=train_seconds,
            elbo_first_100=first,
            elbo_last_100=last,
            converged=bool(fit.verdict.get("converged")),
        )
        u_draws, z_draws = gaussian_draws(moments, jax.random.fold_in(key, 2), self.num_draws)
        tree = build_tree(tests, u_draws, z_draws, fit.record(train_seconds=train_seconds))
        return FamilyRun(tree, metrics)


def build_tree(
    tests: PairSet, u_draws: np.ndarray, z_draws: np.ndarray, record: dict[str, Any]
) -> xr.DataTree:
    """The standard-layout tree: ``posterior`` z draws ``(chain, draw, test, z_dim)``,
    ``predictions`` u draws ``(chain, draw, test, x)``, ``predictions_constant_data`` with
    ``u_true`` and ``w``, the training's ``optimization`` group, the truths of z.

    The prediction groups are built here with their named dimensions (``draws_tree`` passes
    ``dims`` to ``arviz_base.from_dict``, which names the dimensions of a ``predictions``
    group only through its ``pred_dims``)."""
    coords = {
        "test": np.arange(tests.z.shape[0]),
        "z_dim": np.arange(tests.z.shape[1]),
    }
    tree = draws_tree(
        {"z": z_draws},
        kind="vi",
        program="rgnp",
        physical_sites=("z",),
        optimization=record,
        dims={"z": ["test", "z_dim"]},
        coords=coords,
        attrs={"truth": {"z": tests.z.tolist()}},
    )
    grid = {"test": coords["test"], "x": tests.points[:, 0]}
    sample = {"chain": np.arange(u_draws.shape[0]), "draw": np.arange(u_draws.shape[1])}
    tree["predictions"] = xr.DataTree(
        xr.Dataset({"u": (("chain", "draw", "test", "x"), u_draws)}, coords={**sample, **grid})
    )
    tree["predictions_constant_data"] = xr.DataTree(
        xr.Dataset(
            {"u_true": (("test", "x"), tests.u), "w": (("test", "w_dim"), tests.w)},
            coords={**grid, "w_dim": np.arange(tests.w.shape[1])},
        )
    )
    return tree
