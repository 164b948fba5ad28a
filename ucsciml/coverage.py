"""A coverage study: does a case's 90% interval hold the truth 90% of the time?

``run_coverage`` makes ``K`` replicates of a synthetic case. Replicate ``r`` draws fresh
sensor locations and noise from the case's reference solver (``[data] seed = first_seed +
r``) and uses its own inference seed (``[case] seed = seed + r``), then runs the case's whole
pipeline (:func:`ucsciml.runner.run_case`) into ``<out>/replicate-<r>/``. For each unknown
PDE parameter the hits ``k`` (replicates whose central 90% interval holds the truth) give the
observed coverage ``k / n`` with its exact (Clopper–Pearson) 95% binomial interval

.. math::

    \\big[\\,B^{-1}(\\alpha/2;\\ k,\\ n-k+1),\\ B^{-1}(1-\\alpha/2;\\ k+1,\\ n-k)\\,\\big],

where :math:`B^{-1}` is the beta quantile function. A calibrated method should give an
interval that contains 0.9. When a run also reports recalibrated intervals
(``metrics["calibrated"]``), they are tallied in the same way, next to the raw ones. The
field's 90% coverage on the evaluation grid (a fraction of grid points per replicate) is
summarised by its mean, min and max over replicates and by the fraction of replicates whose
coverage lies in ``FIELD_BAND``.

Files written atomically into ``<out>``: ``coverage.json`` (tallies and one row per
replicate), ``coverage.md`` and ``coverage.html`` (tables and an embedded PNG plot).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import html
import io
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucsciml import config as case_config
from ucsciml import registry
from ucsciml._io import write_json, write_text
from ucsciml.provenance import config_hash
from ucsciml.runner import run_case

log = logging.getLogger("ucsciml")

NOMINAL = 0.9
CONFIDENCE = 0.95
FIELD_BAND = (0.80, 0.97)
KINDS = ("raw", "calibrated")


@dataclass(frozen=True)
class CoverageResult:
    """What a finished coverage study left behind."""

    out_dir: Path
    summary: dict[str, Any]
    files: dict[str, Path]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Replicates whose run raised: ``{"replicate", "error"}`` each."""
        return self.summary["failed"]


def clopper_pearson(hits: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper–Pearson) binomial interval for a success probability.

    Args:
        hits: number of successes ``k``, ``0 <= k <= n``.
        n: number of trials; ``n = 0`` gives the uninformative ``(0, 1)``.
        confidence: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(low, high)``; ``low = 0`` when ``k = 0`` and ``high = 1`` when ``k = n``.

    Raises:
        ValueError: when ``hits`` is not within ``[0, n]`` or ``confidence`` not in ``(0, 1)``.
    """
    from scipy.stats import beta

    if not 0 <= hits <= n:
        raise ValueError(f"hits must lie in [0, n], got hits={hits}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return low, high


def proportion(hits: int, n: int) -> dict[str, Any]:
    """``{"hits", "n", "coverage", "ci_low", "ci_high"}``; coverage is ``None`` when ``n = 0``."""
    low, high = clopper_pearson(hits, n)
    return {
        "hits": hits,
        "n": n,
        "coverage": hits / n if n else None,
        "ci_low": low,
        "ci_high": high,
    }


def parameter_tables(metrics: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The per-parameter table of one run: ``"raw"`` or ``"calibrated"`` (``None`` if absent)."""
    if kind == "raw":
        return metrics.get("parameters") or {}
    if kind == "calibrated":
        calibrated = metrics.get("calibrated")
        return None if not calibrated else calibrated.get("parameters") or {}
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def tally(runs: Sequence[Mapping[str, Any]], kind: str = "raw") -> dict[str, dict[str, Any]]:
    """Hits of the 90% interval per unknown over runs, with binomial intervals.

    Args:
        runs: ``metrics`` dicts (or replicate rows, which share their layout).
        kind: ``"raw"`` (``metrics["parameters"]``) or ``"calibrated"``
            (``metrics["calibrated"]["parameters"]``); a run without that table, or a
            parameter without a truth, does not count towards ``n``.

    Returns:
        ``{name: proportion(hits, n)}`` for every parameter seen with a truth.
    """
    counts: dict[str, list[int]] = {}
    for metrics in runs:
        for name, row in (parameter_tables(metrics, kind) or {}).items():
            if row.get("truth_in_90") is None:
                continue
            hits_n = counts.setdefault(name, [0, 0])
            hits_n[0] += bool(row["truth_in_90"])
            hits_n[1] += 1
    return {name: proportion(hits, n) for name, (hits, n) in counts.items()}


def field_summary(
    runs: Sequence[Mapping[str, Any]], band: tuple[float, float] = FIELD_BAND
) -> dict[str, Any]:
    """Field 90% coverage over runs, raw and (where present) calibrated.

    Returns:
        ``{"band": [lo, hi], "raw": stats, "calibrated": stats or None}`` where ``stats`` has
        ``coverage_90`` and ``rel_l2`` (each ``{"mean", "min", "max"}``) and ``in_band``
        (the fraction of runs whose coverage lies in ``band``, as :func:`proportion`).
    """
    raw = [m.get("field") or {} for m in runs]
    calibrated = [(m.get("calibrated") or {}).get("field") or {} for m in runs]
    return {
        "band": list(band),
        "raw": _field_stats(raw, band),
        "calibrated": _field_stats(calibrated, band) if any(calibrated) else None,
    }


def _field_stats(fields: Sequence[Mapping[str, Any]], band) -> dict[str, Any] | None:
    cover = [f["coverage_90"] for f in fields if _finite(f.get("coverage_90"))]
    if not cover:
        return None
    inside = sum(band[0] <= c <= band[1] for c in cover)
    return {
        "coverage_90": _spread(cover),
        "rel_l2": _spread([f["rel_l2"] for f in fields if _finite(f.get("rel_l2"))]),
        "in_band": proportion(inside, len(cover)),
    }


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def replicate_row(
    replicate: int, data_seed: int, seed: int, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """The part of one replicate's metrics a coverage study keeps (same layout as metrics)."""
    keep = ("mean", "q05", "q95", "truth", "truth_in_90")

    def trim(table):
        return {n: {k: row.get(k) for k in keep} for n, row in (table or {}).items()}

    calibrated = metrics.get("calibrated")
    field = metrics.get("field") or {}
    return {
        "replicate": replicate,
        "data_seed": data_seed,
        "seed": seed,
        "status": "ok",
        "resumed": bool(metrics.get("resumed", False)),
        "parameters": trim(metrics.get("parameters")),
        "field": {k: field.get(k) for k in ("coverage_90", "rel_l2")},
        "calibrated": None
        if not calibrated
        else {
            "method": calibrated.get("method"),
            "level": calibrated.get("level"),
            "parameters": trim(calibrated.get("parameters")),
            "field": {"coverage_90": (calibrated.get("field") or {}).get("coverage_90")},
        },
    }


def summarize(
    rows: Sequence[Mapping[str, Any]], *, case: str, backend: str, replicates: int
) -> dict[str, Any]:
    """The ``coverage.json`` content from the replicate rows (failed ones included)."""
    ok = [r for r in rows if r["status"] == "ok"]
    raw, calibrated = tally(ok, "raw"), tally(ok, "calibrated")
    has_calibrated = any(r.get("calibrated") for r in ok)
    return {
        "case": case,
        "backend": backend,
        "replicates": replicates,
        "nominal": NOMINAL,
        "confidence": CONFIDENCE,
        "parameters": {
            name: {
                "raw": raw.get(name),
                "calibrated": calibrated.get(name) if has_calibrated else None,
            }
            for name in dict.fromkeys([*raw, *calibrated])
        },
        "field": field_summary(ok),
        "rows": list(rows),
        "failed": [
            {"replicate": r["replicate"], "error": r["status"].removeprefix("failed: ")}
            for r in rows
            if r["status"] != "ok"
        ],
    }


def table_cells(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The parameter coverage table: header and formatted cells (raw, then calibrated)."""
    kinds = [k for k in KINDS if any(p[k] for p in summary["parameters"].values())]
    header = ["unknown"]
    for kind in kinds:
        header += [f"{kind} hits/n", f"{kind} coverage [95% CI]", f"{kind}: 0.9 in CI"]
    body = []
    for name, entry in summary["parameters"].items():
        cells = [name]
        for kind in kinds:
            cells += _proportion_cells(entry[kind], summary["nominal"])
        body.append(cells)
    return header, body


def _proportion_cells(p: Mapping[str, Any] | None, nominal: float) -> list[str]:
    if not p or not p["n"]:
        return ["–", "–", "–"]
    inside = "yes" if p["ci_low"] <= nominal <= p["ci_high"] else "NO"
    return [
        f"{p['hits']}/{p['n']}",
        f"{p['coverage']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}]",
        inside,
    ]


def field_lines(summary: Mapping[str, Any]) -> list[str]:
    """One sentence per kind (raw, calibrated) on the field's 90% coverage over replicates."""
    field = summary["field"]
    lo, hi = field["band"]
    lines = []
    for kind in KINDS:
        stats = field[kind]
        if not stats:
            continue
        c, b, err = stats["coverage_90"], stats["in_band"], stats["rel_l2"]
        line = (
            f"field ({kind}): 90% coverage mean {c['mean']:.3f} (min {c['min']:.3f}, "
            f"max {c['max']:.3f}); in [{lo:.2f}, {hi:.2f}] for {b['hits']}/{b['n']} replicates "
            f"({b['coverage']:.2f} [{b['ci_low']:.2f}, {b['ci_high']:.2f}])"
        )
        if err["mean"] is not None:
            line += f"; rel. L2 mean {err['mean']:.3g}"
        lines.append(line)
    return lines


def text_table(summary: Mapping[str, Any]) -> str:
    """The coverage table as aligned plain text (what the CLI prints)."""
    header, body = table_cells(summary)
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in (header, *body)
    ]
    lines += field_lines(summary)
    lines += [f"replicate {f['replicate']} failed: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines)


def _intro(summary: Mapping[str, Any]) -> str:
    ok = len(summary["rows"]) - len(summary["failed"])
    return (
        f"{summary['replicates']} replicates ({ok} finished) of case {summary['case']} with "
        f"backend {summary['backend']}: fresh sensor locations and noise each. Coverage is the "
        f"fraction of replicates whose 90% interval holds the truth; the bracket is its exact "
        f"(Clopper–Pearson) {100 * summary['confidence']:.0f}% binomial interval, which "
        f"should contain the nominal {summary['nominal']}."
    )


def markdown(summary: Mapping[str, Any], command: str | None = None) -> str:
    """``coverage.md``: the tables, the field summary and the per-replicate intervals."""
    header, body = table_cells(summary)
    parts = [f"# Coverage: {summary['case']} ({summary['backend']})", ""]
    if command:
        parts += [f"Made by: `{command}`", ""]
    parts += [_intro(summary), "", _markdown_table(header, body), ""]
    parts += [f"- {line}" for line in field_lines(summary)] + [""]
    rheader, rbody = replicate_cells(summary)
    parts += ["## Replicates", "", _markdown_table(rheader, rbody), ""]
    parts += [f"- replicate {f['replicate']} failed: {f['error']}" for f in summary["failed"]]
    return "\n".join(parts).rstrip() + "\n"


def replicate_cells(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One line per replicate: seeds, each unknown's interval (hit or miss), field scores."""
    names = list(summary["parameters"])
    header = ["replicate", "data seed", "seed", *names, "field cov. 90%", "rel. L2"]
    body = []
    for r in summary["rows"]:
        cells = [str(r["replicate"]), str(r["data_seed"]), str(r["seed"])]
        if r["status"] != "ok":
            body.append([*cells, *["failed"] + ["–"] * (len(header) - 4)])
            continue
        for name in names:
            text = _interval_cell(r["parameters"].get(name))
            cal = (r.get("calibrated") or {}).get("parameters", {}).get(name)
            if cal:
                text += f"; cal. {_interval_cell(cal)}"
            cells.append(text)
        field = r["field"]
        cells += [_num(field.get("coverage_90"), ".3f"), _num(field.get("rel_l2"), ".3g")]
        body.append(cells)
    return header, body


def _interval_cell(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("q05") is None:
        return "–"
    mark = {True: " ✓", False: " ✗"}.get(row.get("truth_in_90"), "")
    return f"[{row['q05']:.4g}, {row['q95']:.4g}]{mark}"


def _num(value, spec: str) -> str:
    return format(value, spec) if _finite(value) else "–"


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
    return "\n".join(lines)


def figure(summary: Mapping[str, Any]):
    """Observed coverage per unknown with its binomial interval (top) and each replicate's
    90% interval against the truth, one panel per unknown (bottom).

    Returns:
        A ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary["parameters"])
    calibrated = any(r.get("calibrated") for r in summary["rows"] if r["status"] == "ok")
    fig = Figure(figsize=(max(7.0, 3.4 * max(len(names), 1)), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, max(len(names), 1))
    _coverage_panel(fig.add_subplot(grid[0, :]), summary, calibrated)
    for i, name in enumerate(names):
        _interval_panel(fig.add_subplot(grid[1, i]), summary["rows"], name, calibrated, i == 0)
    return fig


def _coverage_panel(ax, summary, calibrated: bool) -> None:
    names = list(summary["parameters"])
    shifts = {"raw": -0.1, "calibrated": 0.1} if calibrated else {"raw": 0.0}
    for kind, colour in zip(KINDS, ("C0", "C1"), strict=True):
        points = [
            (i + shifts.get(kind, 0.0), summary["parameters"][name][kind])
            for i, name in enumerate(names)
            if (summary["parameters"][name][kind] or {}).get("n")
        ]
        if points:
            ax.errorbar(
                [x for x, _ in points],
                [p["coverage"] for _, p in points],
                yerr=[
                    [p["coverage"] - p["ci_low"] for _, p in points],
                    [p["ci_high"] - p["coverage"] for _, p in points],
                ],
                fmt="o",
                color=colour,
                capsize=4,
                label=kind,
            )
    field = summary["field"]["raw"]
    if field:
        c = field["coverage_90"]
        ax.errorbar(
            [len(names)],
            [c["mean"]],
            yerr=[[c["mean"] - c["min"]], [c["max"] - c["mean"]]],
            fmt="s",
            color="C2",
            capsize=4,
            label="field (mean, min–max)",
        )
    ax.axhline(summary["nominal"], color="k", linestyle="--", linewidth=1, label="nominal 0.9")
    labels = [*names, *(["field"] if field else [])]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("coverage of the 90% interval")
    ax.set_title(
        "coverage of the truth by 90% intervals (bars: 95% binomial CI)",
        pad=24,
    )
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, fontsize="small")


def _interval_panel(ax, rows, name, calibrated: bool, legend: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    kinds = (
        (("raw", -0.15, "C0"), ("calibrated", 0.15, "C1")) if calibrated else (("raw", 0, "C0"),)
    )
    truth = None
    for r in rows:
        if r["status"] != "ok":
            continue
        for kind, shift, colour in kinds:
            table = parameter_tables(r, kind) or {}
            row = table.get(name)
            if not row or row.get("q05") is None:
                continue
            truth = row.get("truth", truth)
            style = ":" if row.get("truth_in_90") is False else "-"
            x = r["replicate"] + shift
            ax.plot([x, x], [row["q05"], row["q95"]], style, color=colour, linewidth=2)
            ax.plot([x], [row["mean"]], "o", color=colour, markersize=3)
    if truth is not None:
        ax.axhline(truth, color="k", linestyle="--", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("replicate")
    ax.set_title(name)
    if legend:
        ax.set_ylabel("90% interval (q05–q95) and mean")
        handles = [
            Line2D([], [], color="k", linestyle="--", label="truth"),
            Line2D([], [], color="C0", linestyle="-", label="holds the truth"),
            Line2D([], [], color="C0", linestyle=":", label="misses it"),
        ]
        if calibrated:
            handles.append(Line2D([], [], color="C1", label="calibrated"))
        ax.legend(handles=handles, fontsize="x-small")


def page(summary: Mapping[str, Any], command: str | None = None) -> str:
    """``coverage.html``: a self-contained page (inline CSS, the plot as a base64 PNG)."""
    header, body = table_cells(summary)
    rheader, rbody = replicate_cells(summary)
    title = f"Coverage: {summary['case']} ({summary['backend']})"
    parts = [f"<h1>{_e(title)}</h1>"]
    if command:
        parts.append(f"<p>Made by: <code>{_e(command)}</code></p>")
    parts += [f"<p>{_e(_intro(summary))}</p>", _html_table(header, body)]
    parts += [f"<p>{_e(line)}</p>" for line in field_lines(summary)]
    try:
        png = _png(figure(summary))
        parts.append(
            f"<figure><img alt='coverage plot' src='data:image/png;base64,{png}'/></figure>"
        )
    except Exception as err:  # matplotlib raises many types; the tables are what matter
        log.warning("coverage plot failed: %s: %s", type(err).__name__, err)
        parts.append(f"<p class='fail'>plot not drawn: {_e(type(err).__name__)}: {_e(err)}</p>")
    parts += ["<h2>Replicates</h2>", _html_table(rheader, rbody)]
    parts += [
        f"<p class='fail'>replicate {f['replicate']} failed: {_e(f['error'])}</p>"
        for f in summary["failed"]
    ]
    return _PAGE.format(title=_e(title), body="\n".join(parts))


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
.fail {{ color: #a00; }}
</style></head>
<body>
{body}
</body></html>
"""


def replicate_configs(
    cfg: Mapping[str, Any],
    replicates: int,
    *,
    backend: str | None = None,
    seed: int | None = None,
    first_seed: int | None = None,
) -> list[dict[str, Any]]:
    """One resolved config per replicate: data seed ``first_seed + r``, inference seed
    ``seed + r``.

    Args:
        cfg: a resolved case config (:func:`ucsciml.config.load_case`).
        replicates: ``K >= 2``.
        backend: backend name overriding ``[case] backend``.
        seed: inference seed of replicate 0 (default: the case's).
        first_seed: data seed of replicate 0 (default: the case's ``[data] seed + 1000``,
            so no replicate reuses the case's own sensors).

    Raises:
        ConfigError: for ``K < 2``, an unknown backend, or a case whose data come from a
            file (only synthetic data can be redrawn).
    """
    if replicates < 2:
        raise case_config.ConfigError(
            f"--replicates must be >= 2 (a coverage fraction needs several datasets), "
            f"got {replicates}; try --replicates 20 (replicates=20 from Python)"
        )
    data = cfg["data"]
    if data.get("source", "synthetic") != "synthetic":
        raise case_config.ConfigError(
            f"case {cfg['case']['name']}: [data] source = {data['source']!r} cannot be "
            "replicated: a coverage study redraws sensors and noise from the reference "
            "solver, which needs [data] source = 'synthetic' (with num_sensors and noise)"
        )
    backend = backend or cfg["case"]["backend"]
    if backend not in registry.BACKENDS:
        raise case_config.ConfigError(
            f"unknown backend '{backend}'; choose one of {sorted(registry.BACKENDS)}"
        )
    seed = int(cfg["case"]["seed"] if seed is None else seed)
    first_seed = int(data["seed"]) + 1000 if first_seed is None else int(first_seed)
    out = []
    for r in range(replicates):
        rep = copy.deepcopy(dict(cfg))
        rep["data"]["seed"] = first_seed + r
        rep["case"]["seed"] = seed + r
        rep["case"]["backend"] = backend
        out.append(rep)
    return out


def run_coverage(
    cfg: Mapping[str, Any],
    replicates: int,
    *,
    backend: str | None = None,
    seed: int | None = None,
    first_seed: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    root: str | Path = "runs",
    command: str | None = None,
    progress: bool = True,
) -> CoverageResult:
    """Run ``replicates`` fresh datasets of ``cfg`` and write the coverage tables.

    Args:
        cfg: a resolved case config with ``[data] source = "synthetic"``.
        replicates: number of datasets ``K >= 2``.
        backend: backend name overriding ``[case] backend``.
        seed: inference seed of replicate 0 (replicate ``r`` uses ``seed + r``).
        first_seed: data seed of replicate 0 (see :func:`replicate_configs`).
        out: study folder (default ``root/<case>/coverage-<backend>``).
        resume: skip replicates whose ``metrics.json`` has the same config hash, and let
            the others reuse a matching ``posterior.nc`` (see ``run_case``).
        root: parent of the default study folder.
        command: the command line, written into ``coverage.md`` and ``coverage.html``.
        progress: show a progress bar on stderr with the running coverage.
    """
    from tqdm import tqdm

    configs = replicate_configs(cfg, replicates, backend=backend, seed=seed, first_seed=first_seed)
    name, backend = cfg["case"]["name"], configs[0]["case"]["backend"]
    out_dir = Path(out) if out else Path(root) / name / f"coverage-{backend}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(configs),
        desc=f"coverage {name}",
        unit="replicate",
        file=sys.stderr,
        disable=not progress,
    )
    with _logs_above_bar(log, enabled=progress):
        for r, rep in enumerate(configs):
            rows.append(_replicate(r, rep, out_dir / f"replicate-{r}", resume))
            bar.set_postfix_str(_running(rows), refresh=False)
            bar.update(1)
    bar.close()
    summary = summarize(rows, case=name, backend=backend, replicates=replicates)
    files = {
        "json": write_json(out_dir / "coverage.json", summary),
        "md": write_text(out_dir / "coverage.md", markdown(summary, command)),
        "html": write_text(out_dir / "coverage.html", page(summary, command)),
    }
    return CoverageResult(out_dir, summary, files)


def _replicate(r: int, cfg: dict[str, Any], run_dir: Path, resume: bool) -> dict[str, Any]:
    data_seed, seed = cfg["data"]["seed"], cfg["case"]["seed"]
    metrics = _finished(cfg, run_dir) if resume else None
    if metrics is not None:
        log.info("replicate %d: reusing %s", r, run_dir / "metrics.json")
        return replicate_row(r, data_seed, seed, {**metrics, "resumed": True})
    try:
        result = run_case(cfg, backend=cfg["case"]["backend"], out=run_dir, resume=resume)
    except Exception as err:  # one failed dataset must not end the study; it is recorded
        log.error("replicate %d failed: %s: %s", r, type(err).__name__, err)
        return {
            "replicate": r,
            "data_seed": data_seed,
            "seed": seed,
            "status": f"failed: {type(err).__name__}: {err}",
        }
    return replicate_row(r, data_seed, seed, result.metrics)


def _finished(cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics when ``metrics.json`` exists and was made from this very config."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("config_hash") == config_hash(cfg) else None


def _running(rows: Sequence[Mapping[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    parts = [f"{n} {p['hits']}/{p['n']}" for n, p in tally(ok, "raw").items()]
    failed = len(rows) - len(ok)
    return ", ".join(parts + ([f"failed {failed}"] if failed else []))


@contextlib.contextmanager
def _logs_above_bar(logger: logging.Logger, *, enabled: bool = True):
    """Route the logger's console handlers through ``tqdm.write`` (same level, format and
    stream) so that log lines print above the progress bar instead of through it."""
    saved = logger.handlers
    if enabled:
        logger.handlers = [_bar_safe(h) for h in saved]
    try:
        yield
    finally:
        logger.handlers = saved


def _bar_safe(handler: logging.Handler) -> logging.Handler:
    console = type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)
    if not console:
        return handler
    swapped = _TqdmWrite(handler.stream)
    swapped.setLevel(handler.level)
    swapped.setFormatter(handler.formatter)
    for log_filter in handler.filters:
        swapped.addFilter(log_filter)
    return swapped


class _TqdmWrite(logging.StreamHandler):
    """A stream handler that writes with ``tqdm.write``, which keeps an open bar intact."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own contract: a handler never raises
            self.handleError(record)
