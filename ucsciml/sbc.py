r"""Simulation-based calibration (SBC) of an inference backend on a Program.

For :math:`n` replications: draw parameters :math:`\theta^\star` and data :math:`y` from the
prior predictive, run the backend on :math:`y`, thin the posterior to :math:`L` draws and
record the rank :math:`r = \#\{\ell: \theta_\ell < \theta^\star\}` of the truth. If the
backend samples the exact posterior, :math:`r` is uniform on :math:`\{0, \dots, L\}` for every
scalar parameter. A chi-square test on binned ranks gives a p-value per parameter.

References:
    Talts, Betancourt, Simpson, Vehtari & Gelman (2018), Validating Bayesian inference
    algorithms with simulation-based calibration, arXiv:1804.06788.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np
from numpyro.infer import Predictive
from scipy import stats

from ucsciml._types import PRNGKey
from ucsciml.program import Program

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the truths and their uniformity tests.

    Attributes:
        ranks: ``{parameter[index]: (num_replications,) int ranks in 0..num_draws}``.
        num_draws: ``L``, posterior draws kept per replication after thinning.
        num_bins: bins of the chi-square test.
        pvalues: ``{parameter[index]: p-value}`` of the chi-square uniformity test.
    """

    ranks: Mapping[str, np.ndarray]
    num_draws: int
    num_bins: int
    pvalues: Mapping[str, float]

    @property
    def min_pvalue(self) -> float:
        return min(self.pvalues.values())

    def passed(self, alpha: float = 0.01) -> bool:
        """True when every parameter's rank histogram is uniform at level ``alpha``
        (Bonferroni-corrected over parameters)."""
        return self.min_pvalue > alpha / len(self.pvalues)


def rank_uniformity(ranks: np.ndarray, num_draws: int, num_bins: int) -> float:
    r"""Chi-square p-value that ranks in ``0..num_draws`` are uniform, in ``num_bins`` bins.

    Bins are equal-width on :math:`\{0, \dots, L\}`; expected counts use the number of rank
    values falling in each bin, so bins need not divide :math:`L + 1` exactly.
    """
    ranks = np.asarray(ranks, dtype=int)
    edges = np.linspace(0, num_draws + 1, num_bins + 1)
    observed, _ = np.histogram(ranks, bins=edges)
    per_bin, _ = np.histogram(np.arange(num_draws + 1), bins=edges)
    expected = ranks.size * per_bin / (num_draws + 1)
    return float(stats.chisquare(observed, expected).pvalue)


def sbc(
    program: Program,
    backend,
    key: PRNGKey,
    *,
    num_replications: int = 100,
    parameters: Sequence[str] | None = None,
    num_draws: int = 99,
    num_bins: int = 10,
) -> SBCResult:
    r"""Run simulation-based calibration of ``backend`` on ``program``.

    Args:
        program: a Program whose latent sites have proper priors; its ``fn`` must sample
            the observed sites when called with ``targets=None``.
        backend: anything with ``run(program, key) -> Posterior`` (e.g. ``inference.NUTS``).
            A backend with ``sample_replicates(program, targets, keys)`` (``inference.NUTS``)
            fits all replications through it: with the BlackJAX engine, as one vmapped
            program per chunk of replications, compiled once.
        key: PRNG key; replication ``i`` uses ``fold_in(key, i)``.
        num_replications: synthetic datasets (Talts et al. use ~1000; 100 detects gross
            miscalibration).
        parameters: latent sites to rank; default the program's physical sites.
        num_draws: ``L``, posterior draws kept per replication, evenly thinned from the
            pooled chains so that autocorrelation does not bias the ranks.
        num_bins: chi-square bins (expected count per bin should be >= 5).

    Returns:
        An :class:`SBCResult`.

    Raises:
        ValueError: for unknown parameter names or a backend returning fewer than
            ``num_draws`` draws.

    Example:
        >>> result = sbc(program, NUTS(num_warmup=200, num_samples=200), jax.random.key(0))
        ... # doctest: +SKIP
        >>> result.passed()  # doctest: +SKIP
    """
    parameters = tuple(parameters or program.physical_sites())
    latent = program.latent_sites()
    unknown = [p for p in parameters if p not in latent]
    if unknown or not parameters:
        raise ValueError(
            f"sbc(parameters=...) must name latent sites of the program; got {list(parameters)}, "
            f"latent sites are {list(latent)}"
        )
    if num_replications < num_bins:
        raise ValueError(
            f"sbc needs num_replications >= num_bins ({num_bins}), got {num_replications}"
        )
    prior_key, run_key = jax.random.split(key)
    prior = _prior_predictive(
        prior_key, program.inputs, fn=program.fn, num_samples=num_replications
    )
    prior = {k: np.asarray(v) for k, v in prior.items()}
    keys = jax.vmap(lambda i: jax.random.fold_in(run_key, i))(np.arange(num_replications))
    ranks: dict[str, list[int]] = {}
    for i, samples in enumerate(_replicate_draws(program, backend, prior, keys)):
        for name in parameters:
            draws = _thin(samples[name], num_draws)
            truth = prior[name][i]
            if draws.shape[1:] != np.shape(truth):
                raise ValueError(
                    f"the backend's draws of '{name}' have shape {draws.shape[1:]} per draw, "
                    f"the prior's {np.shape(truth)}; its Posterior.samples must be "
                    "(chain, draw, *site_shape)"
                )
            for label, rank in _ranks(name, draws, truth):
                ranks.setdefault(label, []).append(rank)
        log.debug("sbc replication %d/%d done", i + 1, num_replications)
    arrays = {k: np.asarray(v) for k, v in ranks.items()}
    pvalues = {k: rank_uniformity(v, num_draws, num_bins) for k, v in arrays.items()}
    return SBCResult(arrays, num_draws, num_bins, pvalues)


@functools.partial(jax.jit, static_argnames=("fn", "num_samples"))
def _prior_predictive(key, inputs, *, fn, num_samples):
    """Prior predictive draws of every site, compiled once per model, shapes and count."""
    return Predictive(fn, num_samples=num_samples)(key, inputs, targets=None)


def _replicate_draws(program: Program, backend, prior: dict, keys) -> Iterator[dict]:
    """Each replication's draws ``{site: (chain, draw, ...)}``, replication ``i`` fitted to
    the prior predictive's ``i``-th dataset with ``keys[i]``: all at once through
    ``backend.sample_replicates`` where the backend has it (``inference.NUTS``, vmapped in
    chunks for its BlackJAX engine), else one ``backend.run`` after another."""
    batched = getattr(backend, "sample_replicates", None)
    if batched is not None:
        samples, _ = batched(program, _targets(program, prior, stacked=True), keys)
        for i in range(len(keys)):
            yield {k: v[i] for k, v in samples.items()}
        return
    for i in range(len(keys)):
        targets = _targets(program, {k: v[i] for k, v in prior.items()})
        replica = dataclasses.replace(program, targets=targets)
        yield dict(backend.run(replica, keys[i]).samples)


def _targets(program: Program, draw: Mapping[str, np.ndarray], *, stacked: bool = False):
    """The program's targets with the observed sites replaced by ``draw``'s (with
    ``stacked``, every leaf gets the replication axis that ``draw``'s leaves lead with)."""
    if isinstance(program.targets, Mapping) and stacked:
        num = len(next(iter(draw.values())))
        fixed = {
            k: np.broadcast_to(v, (num, *np.shape(v)))
            for k, v in program.targets.items()
            if k not in program.observed
        }
        return {**fixed, **{k: draw[k] for k in program.observed}}
    if isinstance(program.targets, Mapping):
        return {**program.targets, **{k: draw[k] for k in program.observed}}
    if len(program.observed) != 1:
        raise ValueError(
            "sbc needs a program with one observed site, or targets given as a mapping "
            f"from observed site names; observed sites are {list(program.observed)}"
        )
    return draw[program.observed[0]]


def _thin(samples: np.ndarray, num_draws: int) -> np.ndarray:
    flat = np.asarray(samples).reshape(-1, *np.shape(samples)[2:])
    if flat.shape[0] < num_draws:
        raise ValueError(
            f"sbc(num_draws={num_draws}) exceeds the {flat.shape[0]} posterior draws the "
            "backend returned; lower num_draws or draw more samples"
        )
    index = np.linspace(0, flat.shape[0] - 1, num_draws).round().astype(int)
    return flat[index]


def _ranks(name: str, draws: np.ndarray, truth: np.ndarray):
    truth = np.asarray(truth)
    counts = np.sum(draws < truth[None], axis=0)
    if truth.ndim == 0:
        yield name, int(counts)
        return
    for idx in np.ndindex(truth.shape):
        yield f"{name}[{','.join(map(str, idx))}]", int(counts[idx])
