"""Convergence diagnostics with verdicts in words, judged where they mean something.

R-hat (rank-normalised, split), bulk/tail ESS and MCSE come from ``arviz_stats``; the
thresholds follow Vehtari et al. (2021): R-hat < 1.01 and ESS > 400. They are computed on the
physical parameters and on predictions (deterministic fields), never on raw network weights,
whose permutation symmetry makes cross-chain R-hat meaningless. Divergences, BFMI and
tree-depth saturation come from ``sample_stats``. Backends whose draws are independent
(variational, Laplace, dropout) or whose chains are ensemble members get the checks that
apply to them and a sentence saying which do not. A mixture of Laplace approximations
(``Laplace(num_modes > 1)``, one chain per mode) instead gets its pooled variance split into
within-mode and between-mode parts (:func:`variance_decomposition`).

References:
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat, Bayesian Analysis 16(2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import arviz_stats as azs
import numpy as np
import xarray as xr

from ucsciml.convergence import verdicts_of

#: Pareto shape above which importance-corrected draws are not trusted (Vehtari et al. 2024).
KHAT_LIMIT = 0.7

RHAT_MAX = 1.01
ESS_MIN = 400
BFMI_MIN = 0.3
_MAX_ELEMENTS = 8


@dataclass(frozen=True)
class Row:
    """One diagnosed quantity (a scalar, a vector element, or the worst of a field)."""

    name: str
    mean: float
    sd: float
    rhat: float | None
    ess_bulk: float | None
    ess_tail: float | None
    mcse_mean: float | None
    verdict: str


@dataclass(frozen=True)
class ModeSplit:
    """Within-mode and between-mode sd of one quantity of a mixture over modes (chains).

    Computed from the draws, so ``between_sd`` includes the Monte Carlo error of each mode's
    mean, about ``within_sd / sqrt(num_draws)``, even when every mode is the same point.
    """

    name: str
    within_sd: float
    between_sd: float


@dataclass(frozen=True)
class Diagnostics:
    """The outcome of :func:`check`: rows, sampler checks, an overall verdict and messages."""

    kind: str
    rows: tuple[Row, ...]
    num_chains: int
    num_draws: int
    divergences: int | None = None
    bfmi: tuple[float, ...] | None = None
    max_treedepth_fraction: float | None = None
    verdict: str = "pass"
    messages: tuple[str, ...] = field(default_factory=tuple)
    mode_splits: tuple[ModeSplit, ...] | None = None
    optimization: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def converged(self) -> bool | None:
        """MCMC: every mixing and sampler check passed (and every optimisation that decides
        the draws converged). Other kinds, where no mixing check applies: every optimisation
        that made the draws converged; ``None`` when such a posterior records no optimisation,
        so nothing could be judged."""
        if self.kind == "mcmc":
            return self.verdict == "pass"
        if not self.optimization:
            return None
        return self.verdict == "n/a"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "verdict": self.verdict,
            "converged": self.converged,
            "num_chains": self.num_chains,
            "num_draws": self.num_draws,
            "divergences": self.divergences,
            "bfmi": list(self.bfmi) if self.bfmi is not None else None,
            "max_treedepth_fraction": self.max_treedepth_fraction,
            "messages": list(self.messages),
            "rows": [row.__dict__ for row in self.rows],
            "mode_splits": (
                [split.__dict__ for split in self.mode_splits]
                if self.mode_splits is not None
                else None
            ),
            "optimization": [dict(v) for v in self.optimization],
        }

    def to_text(self) -> str:
        """A fixed-width table with the verdicts and messages."""
        head = f"{'quantity':<28}{'mean':>11}{'sd':>10}{'r_hat':>8}{'ess_bulk':>10}{'ess_tail':>10}  verdict"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name[:27]:<28}{_fmt(r.mean, 11)}{_fmt(r.sd, 10)}{_fmt(r.rhat, 8, '.3f')}"
                f"{_fmt(r.ess_bulk, 10, '.0f')}{_fmt(r.ess_tail, 10, '.0f')}  {r.verdict}"
            )
        lines.append("")
        lines.append(f"{self.kind}: {self.num_chains} chain(s) x {self.num_draws} draw(s)")
        if self.mode_splits:
            lines.append(f"{'quantity':<28}{'within-mode sd':>16}{'between-mode sd':>17}")
            lines.extend(
                f"{m.name[:27]:<28}{_fmt(m.within_sd, 16)}{_fmt(m.between_sd, 17)}"
                for m in self.mode_splits
            )
        if self.divergences is not None:
            lines.append(f"divergences: {self.divergences}")
        if self.bfmi is not None:
            lines.append("BFMI per chain: " + ", ".join(f"{b:.2f}" for b in self.bfmi))
        if self.max_treedepth_fraction is not None:
            lines.append(f"draws at max tree depth: {100 * self.max_treedepth_fraction:.1f}%")
        for v in self.optimization:
            lines.append(
                f"optimisation: {'converged' if v['converged'] else 'NOT CONVERGED'}: {v['message']}"
            )
        lines.append(f"overall: {self.verdict.upper()}")
        lines.extend(f"  - {m}" for m in self.messages)
        return "\n".join(lines)


def check(tree: xr.DataTree) -> Diagnostics:
    """Diagnose a posterior DataTree written by ucsciml (or any ArviZ tree).

    Args:
        tree: a DataTree with a ``posterior`` group (and ``sample_stats`` for MCMC).

    Returns:
        A :class:`Diagnostics` with per-quantity rows, verdicts and plain-language messages.

    Raises:
        ValueError: when the tree has no posterior group.
    """
    if "posterior" not in tree.children:
        raise ValueError(
            "this DataTree has no 'posterior' group; pass a tree from "
            "Posterior.to_datatree() or ucsciml.load(run_dir/'posterior.nc')"
        )
    kind = str(tree.attrs.get("ucsciml_kind", "mcmc"))
    post = tree["posterior"].to_dataset()
    num_chains, num_draws = post.sizes["chain"], post.sizes["draw"]
    physical, fields = _split_variables(tree, post)
    messages: list[str] = []
    mixing_applies = kind == "mcmc" and num_chains >= 2 and num_draws >= 4
    rows = _rows(tree, post, physical, fields, mixing_applies)
    mode_splits = None
    if kind == "laplace" and num_chains > 1:
        # The chain axis of a Laplace posterior is its mode (see inference.Laplace).
        messages.append(_not_applicable("laplace-mixture", num_chains))
        mode_splits = _mode_splits(post, physical)
        messages.extend(_mode_messages(mode_splits, num_chains))
    elif kind != "mcmc":
        messages.append(_not_applicable(kind))
    elif num_chains < 2:
        messages.append("R-hat needs at least 2 chains; run more chains to judge mixing.")
    bad_rhat = [r for r in rows if r.rhat is not None and not r.rhat < RHAT_MAX]
    low_ess = [r for r in rows if r.ess_bulk is not None and r.ess_bulk < ESS_MIN]
    if bad_rhat:
        worst = max(bad_rhat, key=lambda r: r.rhat)
        messages.append(
            f"chains did NOT mix: R-hat of {worst.name} is {worst.rhat:.3g} (needs < {RHAT_MAX}); "
            f"{len(bad_rhat)} quantit{'y' if len(bad_rhat) == 1 else 'ies'} fail. The chains "
            "explore different regions (often separate modes), so the pooled draws and their "
            "intervals are not a trustworthy posterior. This run has not converged."
        )
    if low_ess:
        worst = min(low_ess, key=lambda r: r.ess_bulk)
        messages.append(
            f"effective sample size is low: ESS of {worst.name} is "
            f"{worst.ess_bulk:.0f} (needs > {ESS_MIN}); draw more samples."
        )
    divergences = bfmi = depth_fraction = None
    stats = tree["sample_stats"].to_dataset() if "sample_stats" in tree.children else None
    if kind == "mcmc" and stats is not None:
        divergences, bfmi, depth_fraction = _sampler_checks(tree, stats, messages)
    verdict = (
        "warn"
        if messages
        and (bad_rhat or low_ess or divergences or _low(bfmi) or (depth_fraction or 0) > 0)
        else "pass"
    )
    optimization = _optimization_verdicts(tree)
    unconverged = [v for v in optimization if not v["converged"]]
    decisive = [v for v in unconverged if v.get("decisive", True)]
    untrusted = _importance_message(tree)
    if untrusted:
        messages.append(untrusted)
    if kind != "mcmc":
        # No mixing checks apply; the optimisations that made the draws, and an importance
        # check of the approximation where one ran, are what is judged.
        verdict = "warn" if decisive or untrusted else "n/a"
    elif decisive:
        verdict = "warn"
    for v in unconverged:
        start = v.get("decisive", True)
        messages.append(
            v["message"]
            + ("" if start else " (a starting point only; later steps move on from it)")
        )
    return Diagnostics(
        kind,
        tuple(rows),
        num_chains,
        num_draws,
        divergences,
        bfmi,
        depth_fraction,
        verdict,
        tuple(messages),
        tuple(mode_splits) if mode_splits is not None else None,
        tuple(optimization),
    )


def _optimization_verdicts(tree: xr.DataTree) -> list[dict[str, Any]]:
    """The convergence verdicts the model stored at compile time (a fit inside ``compile``,
    e.g. a GP's kernel) and those the backend stored (``ucsciml.convergence``); empty for
    trees written before verdicts existed or by other tools."""
    out = []
    for name in ("ucsciml_program_attrs", "ucsciml_attrs"):
        out += verdicts_of(_stored_optimization(tree, name))
    return out


def _stored_optimization(tree: xr.DataTree, name: str) -> dict[str, Any] | None:
    """The ``optimization`` record in the tree's JSON attribute ``name``, or ``None`` when the
    attribute is missing, unreadable or holds none."""
    raw = tree.attrs.get(name)
    try:
        attrs = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except json.JSONDecodeError:
        return None
    record = attrs.get("optimization") if isinstance(attrs, dict) else None
    return record if isinstance(record, dict) else None


def untrusted_message(khats: list[float | None], ess: float, num: int) -> str:
    """The warning for an importance check of an approximation that failed: a Pareto k-hat
    above :data:`KHAT_LIMIT`, or one that could not be estimated (``None``: too few draws)."""
    if any(k is None for k in khats):
        return (
            f"Laplace importance check: {num} draws are too few to estimate the Pareto k-hat "
            "(PSIS needs at least 25), so the Gaussian draws were kept unchecked; raise "
            "num_samples"
        )
    return (
        f"Laplace importance check: Pareto k-hat {max(khats):.2f} > {KHAT_LIMIT} (effective "
        f"draws {ess:.1f} of {num}): the Gaussian misses where the posterior's mass is, so its "
        "draws were kept uncorrected and are not a trustworthy posterior; use NUTS, or give "
        "the weakly identified sites proper priors"
    )


def _importance_message(tree: xr.DataTree) -> str | None:
    """The warning of a failed importance check of an approximation (Laplace's
    ``importance="psis"``: a Pareto k-hat above its limit), else ``None``."""
    record = (_stored_optimization(tree, "ucsciml_attrs") or {}).get("importance")
    if not isinstance(record, dict) or all(record.get("resampled", [True])):
        return None
    num = int(tree["posterior"].sizes["draw"])
    return untrusted_message(list(record["pareto_k"]), min(record["ess"]), num)


def variance_decomposition(
    data: xr.DataTree | xr.Dataset, var: str, sel: dict[str, Any] | None = None
) -> dict[str, float]:
    r"""Split the pooled variance of a scalar quantity into within- and between-chain parts.

    For draws :math:`x_{mn}` of chain :math:`m \le M`, draw :math:`n \le N` (equal weights),
    the law of total variance with population (``ddof=0``) variances is exact:

    .. math::
        \underbrace{\frac{1}{MN}\sum_{m,n}(x_{mn}-\bar x)^2}_{\text{pooled}}
        = \underbrace{\frac1M\sum_m \frac1N\sum_n (x_{mn}-\bar x_m)^2}_{W:\ \text{within}}
        + \underbrace{\frac1M\sum_m (\bar x_m-\bar x)^2}_{B:\ \text{between}}.

    For a mixture over modes (``inference.Laplace(num_modes=M)``, chain = mode) ``W`` is the
    mixture components' own uncertainty and ``B`` the disagreement of the modes. (R-hat's
    ``B`` is ``N`` times this one, with ``ddof=1``.)

    Args:
        data: a posterior DataTree (its ``posterior`` group is used) or a Dataset with
            ``chain`` and ``draw`` dims.
        var: name of the variable.
        sel: element of a vector variable, e.g. ``{"feature": 0}`` (``isel`` indices).

    Returns:
        ``within``, ``between``, ``pooled`` (computed directly, so ``within + between ==
        pooled`` up to rounding), their square roots ``within_sd``, ``between_sd``,
        ``pooled_sd``, and ``num_chains``, ``num_draws``.

    Raises:
        ValueError: when the variable is missing or is not scalar per draw.

    Example:
        >>> variance_decomposition(tree, "theta")["between_sd"]  # doctest: +SKIP

    References:
        Gelman & Rubin (1992), Inference from iterative simulation using multiple sequences,
        Statistical Science 7(4) (the within/between split behind R-hat).
    """
    if isinstance(data, xr.DataTree):
        if "posterior" not in data.children:
            raise ValueError(
                "this DataTree has no 'posterior' group; pass a tree from "
                "Posterior.to_datatree() or a Dataset with chain and draw dims"
            )
        data = data["posterior"].to_dataset()
    if var not in data:
        raise ValueError(f"no variable {var!r}; available: {sorted(map(str, data.data_vars))}")
    da = data[var] if sel is None else data[var].isel(sel)
    if set(da.dims) != {"chain", "draw"}:
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        raise ValueError(
            f"variance_decomposition needs a scalar per (chain, draw); {var!r} has dims "
            f"{tuple(da.dims)}. Pick one element with sel, e.g. sel={{{extra[0]!r}: 0}}"
            if extra
            else f"variance_decomposition needs dims (chain, draw); {var!r} has {tuple(da.dims)}"
        )
    within, between = _within_between(da)
    values = np.asarray(da.values, dtype=float)
    pooled, within, between = float(values.var()), float(within), float(between)
    return {
        "within": within,
        "between": between,
        "pooled": pooled,
        "within_sd": float(np.sqrt(within)),
        "between_sd": float(np.sqrt(between)),
        "pooled_sd": float(np.sqrt(pooled)),
        "num_chains": int(da.sizes["chain"]),
        "num_draws": int(da.sizes["draw"]),
    }


def _within_between(da: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Elementwise within-chain and between-chain variances (``ddof=0``, float64)."""
    da = da.astype(float)
    return da.var("draw").mean("chain"), da.mean("draw").var("chain")


def _mode_splits(post: xr.Dataset, physical: list[str]) -> list[ModeSplit]:
    """Within/between-mode sd of each physical parameter (element by element when small,
    else the element whose modes disagree most)."""
    splits = []
    for name in physical:
        within, between = _within_between(post[name])
        if within.size <= _MAX_ELEMENTS:
            for label, sel in _elements(post[name]):
                w, b = (within, between) if sel is None else (within.isel(sel), between.isel(sel))
                splits.append(ModeSplit(label, float(np.sqrt(w)), float(np.sqrt(b))))
            continue
        flat_b = np.asarray(between.values, dtype=float).ravel()
        i = int(np.nanargmax(flat_b)) if not np.isnan(flat_b).all() else 0
        w = float(np.asarray(within.values, dtype=float).ravel()[i])
        label = f"{name} (most split of {within.size})"
        splits.append(ModeSplit(label, float(np.sqrt(w)), float(np.sqrt(flat_b[i]))))
    return splits


def _mode_messages(splits: list[ModeSplit], num_modes: int) -> list[str]:
    if not splits:
        return []

    def ratio(m: ModeSplit) -> float:
        if m.within_sd > 0:
            return m.between_sd / m.within_sd
        return float("inf") if m.between_sd > 0 else 0.0

    worst = max(splits, key=lambda m: np.nan_to_num(ratio(m), nan=-1.0))
    head = (
        f"mixture of {num_modes} Laplace modes: pooled variance = within-mode + between-mode "
        f"variance. Largest between- vs within-mode sd: {worst.name} "
        f"({worst.between_sd:.3g} vs {worst.within_sd:.3g})"
    )
    if ratio(worst) > 1:
        return [
            head + ": the modes disagree by more than each mode's own uncertainty, so the "
            "pooled intervals are mostly the spread between modes. Compare the modes' final "
            "losses (optimization attrs) to see whether they are equally good fits."
        ]
    return [head + ": the modes agree to within each mode's uncertainty."]


def _split_variables(tree: xr.DataTree, post: xr.Dataset) -> tuple[list[str], list[str]]:
    network = set(_attr_list(tree, "ucsciml_network_sites"))
    physical = _attr_list(tree, "ucsciml_physical_sites")
    if physical is None:
        physical = [v for v in post.data_vars if v not in network]
        return [str(v) for v in physical], []
    fields = [str(v) for v in post.data_vars if v not in network and v not in physical]
    return [p for p in physical if p in post], fields


def _rows(tree, post, physical, fields, mixing_applies) -> list[Row]:
    names = [*physical, *fields]
    if not names:
        return []
    ds = post[names]
    mean, sd = ds.mean(("chain", "draw")), ds.std(("chain", "draw"))
    moving = [n for n in names if not _constant(ds[n])]
    if mixing_applies and moving:
        sub = xr.DataTree.from_dict({"posterior": ds[moving]})
        # Constant elements of a moving array give 0/0 inside ArviZ; their NaN is skipped
        # when the worst element is taken, so it never reaches a verdict.
        with np.errstate(invalid="ignore", divide="ignore"):
            rhat = azs.rhat(sub, method="rank").to_dataset()
            ess_b = azs.ess(sub, method="bulk").to_dataset()
            ess_t = azs.ess(sub, method="tail").to_dataset()
            mcse = azs.mcse(sub, method="mean").to_dataset()
    rows = []
    for name in names:
        if (
            name in physical
            and ds[name].size // (ds.sizes["chain"] * ds.sizes["draw"]) <= _MAX_ELEMENTS
        ):
            flat = _elements(ds[name])
        else:
            flat = [(f"{name} (worst of {ds[name][0, 0].size})", None)]
        for label, sel in flat:

            def pick(x, sel=sel):
                return x if sel is None else x.isel(sel)

            if not mixing_applies or _constant(pick(ds[name])):
                # A quantity that never moves (a site held by subspace NUTS, a field value
                # pinned by hard constraints) has no R-hat or ESS to judge: say it is constant.
                rows.append(
                    Row(
                        label,
                        _worst(pick(mean[name]), np.mean),
                        _worst(pick(sd[name]), np.mean),
                        None,
                        None,
                        None,
                        None,
                        "constant" if mixing_applies else "n/a",
                    )
                )
                continue
            r = _worst(pick(rhat[name]), np.max)
            eb = _worst(pick(ess_b[name]), np.min)
            et = _worst(pick(ess_t[name]), np.min)
            verdict = "pass" if (r < RHAT_MAX and eb > ESS_MIN and et > ESS_MIN) else "warn"
            rows.append(
                Row(
                    label,
                    _worst(pick(mean[name]), np.mean),
                    _worst(pick(sd[name]), np.mean),
                    r,
                    eb,
                    et,
                    _worst(pick(mcse[name]), np.max),
                    verdict,
                )
            )
    return rows


def _constant(da: xr.DataArray) -> bool:
    """True when no element of ``da`` changes over chains and draws."""
    return bool((da.max(("chain", "draw")) == da.min(("chain", "draw"))).all())


def _elements(da: xr.DataArray) -> list[tuple[str, dict | None]]:
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    if not extra:
        return [(str(da.name), None)]
    shape = [da.sizes[d] for d in extra]
    out = []
    for idx in np.ndindex(*shape):
        out.append((f"{da.name}[{','.join(map(str, idx))}]", dict(zip(extra, idx, strict=True))))
    return out


def _worst(da: xr.DataArray, reduce) -> float:
    values = np.asarray(da.values, dtype=float)
    if np.isnan(values).all():
        return float("nan")
    return float(reduce(values[~np.isnan(values)]))


def _sampler_checks(tree, stats: xr.Dataset, messages: list[str]):
    divergences = bfmi = depth_fraction = None
    if "diverging" in stats:
        divergences = int(stats["diverging"].sum())
        if divergences:
            frac = divergences / stats["diverging"].size
            messages.append(
                f"{divergences} divergent transition(s) ({100 * frac:.1f}% of draws): "
                "the sampler missed regions of high curvature; raise "
                "target_accept_prob or reparameterise."
            )
    if "energy" in stats and stats.sizes.get("draw", 0) > 1:
        bfmi = tuple(float(b) for b in np.atleast_1d(azs.bfmi(tree).to_dataset()["energy"].values))
        if _low(bfmi):
            messages.append(
                f"low BFMI (min {min(bfmi):.2f} < {BFMI_MIN}): momentum resampling "
                "explores the energy poorly; the posterior may have heavy tails."
            )
    if "reached_max_treedepth" in stats:
        depth_fraction = float(stats["reached_max_treedepth"].mean())
        if depth_fraction > 0:
            messages.append(
                f"{100 * depth_fraction:.1f}% of draws hit the maximum tree depth: "
                "trajectories were cut short, so exploration is inefficient."
            )
    return divergences, bfmi, depth_fraction


def _low(bfmi) -> bool:
    return bfmi is not None and min(bfmi) < BFMI_MIN


def _not_applicable(kind: str, num_modes: int = 1) -> str:
    reasons = {
        "laplace-mixture": (
            f"the {num_modes} chains are the components of an equal-weight mixture of "
            "Gaussians at different MAP modes, which are meant to differ; R-hat across a "
            "mixture's components measures how far apart the modes are, not whether chains "
            "mixed, so it is not computed"
        ),
        "variational": "draws are independent samples from a fitted variational approximation",
        "laplace": "draws are independent samples from a Gaussian at the mode",
        "dropout": (
            "draws are stochastic forward passes of one fitted network; parameters outside "
            "the network (e.g. unknown PDE coefficients) are point estimates with sd 0"
        ),
        "ensemble": "draws are ensemble members (independent optimisations), not Markov chains",
    }
    return (
        f"R-hat, ESS, divergences and BFMI do not apply: {reasons.get(kind, kind)}. "
        "Judge this posterior by calibration instead."
    )


def _attr_list(tree: xr.DataTree, name: str) -> list[str] | None:
    raw = tree.attrs.get(name)
    if raw is None:
        return None
    return list(json.loads(raw)) if isinstance(raw, str) else list(raw)


def _fmt(value, width: int, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"
