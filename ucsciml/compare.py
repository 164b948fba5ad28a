"""Comparing finished runs: one row per run directory, as a terminal table or an HTML page.

:func:`compare_runs` reads each run directory (backend, time, parameters, field scores) and
adds ELPD-LOO (``arviz_stats.loo``) and, between runs on the same data, a LOO ranking
(``arviz_stats.compare``); :func:`compare_text` and :func:`compare_html` show the rows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ucsciml.report import format_number, table_page

log = logging.getLogger(__name__)


def compare_runs(run_dirs) -> list[dict]:
    """One row per run directory: backend, time, parameters, field scores and LOO/ELPD.

    ELPD-LOO comes from ``arviz_stats.loo`` (PSIS) where the tree has a ``log_likelihood``
    group; ``arviz_stats.compare`` ranks the runs when at least two have one. Nothing is
    swallowed: a LOO that raised is the row's ``loo_error``, Pareto-k and other warnings are
    its ``loo_warning``, a ranking that failed is ``compare_error`` on every row; each is
    logged as a warning and printed by :func:`compare_text`. A run without a
    ``log_likelihood`` group gets a ``loo_note`` saying so.

    Raises:
        FileNotFoundError: when a directory or its ``posterior.nc`` is missing.
        DataError: when ``posterior.nc`` or ``metrics.json`` is unreadable, naming the file.
    """
    import warnings

    import arviz_stats as azs

    from ucsciml.rundir import load_metrics, load_tree

    rows, trees = [], {}
    for run_dir in map(Path, run_dirs):
        tree = load_tree(run_dir)
        metrics = load_metrics(run_dir) or {}
        name = _unique(run_dir.name, [r["run"] for r in rows])
        row = {
            "run": name,
            "path": str(run_dir),
            "backend": metrics.get("backend") or tree.attrs.get("ucsciml_backend"),
            "kind": tree.attrs.get("ucsciml_kind"),
            "wall_time_s": metrics.get("wall_time_s", tree.attrs.get("ucsciml_wall_time_s")),
            "verdict": (metrics.get("diagnostics") or {}).get("verdict"),
            "parameters": metrics.get("parameters") or {},
            "field": metrics.get("field") or {},
        }
        if "log_likelihood" in tree.children:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    elpd = azs.loo(tree)
                    row["elpd_loo"], row["elpd_loo_se"] = float(elpd.elpd), float(elpd.se)
                    trees[name] = tree
                except Exception as err:  # arviz raises many types; the row says which
                    row["loo_error"] = f"{type(err).__name__}: {_first_line(err)}"
                    log.warning("%s: ELPD-LOO not computed: %s", run_dir, row["loo_error"])
            if caught:
                row["loo_warning"] = "; ".join(sorted({str(w.message) for w in caught}))
                log.warning("%s: LOO warning: %s", run_dir, row["loo_warning"])
        else:
            row["loo_note"] = "posterior.nc has no log_likelihood group"
        rows.append(row)
    if len(trees) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                table = azs.compare(trees)
            except Exception as err:  # e.g. runs on different data
                table = None
                message = f"{type(err).__name__}: {_first_line(err)}"
                log.warning("LOO ranking not computed: %s", message)
                for row in rows:
                    row["compare_error"] = message
        for row in rows:
            if table is not None and row["run"] in table.index:
                row["loo_rank"] = int(table.loc[row["run"], "rank"])
                row["elpd_diff"] = float(table.loc[row["run"], "elpd_diff"])
        if caught:
            notes = "; ".join(sorted({str(w.message) for w in caught}))
            log.warning("LOO ranking warning: %s", notes)
            for row in rows:
                row["compare_warning"] = notes
    return rows


def compare_notes(rows: list[dict]) -> list[str]:
    """The comparison's warnings and notes, one line each (failed LOO first)."""
    notes = [
        f"WARNING: {r['run']}: ELPD-LOO not computed: {r['loo_error']}"
        for r in rows
        if r.get("loo_error")
    ]
    if rows and rows[0].get("compare_error"):
        notes.append(f"WARNING: LOO rank not computed: {rows[0]['compare_error']}")
    notes += [f"{r['run']}: LOO note: {r['loo_warning']}" for r in rows if r.get("loo_warning")]
    if rows and rows[0].get("compare_warning"):
        notes.append(f"LOO rank note: {rows[0]['compare_warning']}")
    notes += [f"{r['run']}: no ELPD-LOO: {r['loo_note']}" for r in rows if r.get("loo_note")]
    if any("loo_rank" in r for r in rows):
        notes.insert(0, "LOO rank: 0 = best (arviz-stats compare; same data only).")
    return notes


def compare_text(rows: list[dict]) -> str:
    """The comparison as a fixed-width terminal table, its notes below."""
    header, body = _compare_cells(rows)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)) for r in body)
    return "\n".join(lines + compare_notes(rows))


def compare_html(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the comparison as a self-contained HTML page."""
    header, body = _compare_cells(rows)
    legend = (
        "Parameters: posterior mean [5%, 95%] (truth). ELPD-LOO: PSIS-LOO expected log "
        "predictive density of the observed data (higher is better) ± se; LOO rank from "
        "arviz-stats compare (0 = best; meaningful only between runs on the same data)."
    )
    notes = [n for n in compare_notes(rows) if not n.startswith("LOO rank: 0")]
    return table_page(path, "Run comparison", header, body, notes=[legend, *notes])


def _compare_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    params = []
    for r in rows:
        params.extend(p for p in r["parameters"] if p not in params)
    header = ["run", "backend", "kind", "time (s)", "verdict", *params]
    header += ["rel. L2", "cov. 90%", "CRPS", "NLL", "ELPD-LOO", "LOO rank"]
    body = []
    for r in rows:
        cells = [
            r["run"],
            str(r["backend"]),
            str(r["kind"]),
            format_number(r["wall_time_s"], ".1f"),
            str(r["verdict"]),
        ]
        for p in params:
            v = r["parameters"].get(p)
            if v is None:
                cells.append("–")
                continue
            truth = f" ({v['truth']:.4g})" if v.get("truth") is not None else ""
            cells.append(f"{v['mean']:.4g} [{v['q05']:.4g}, {v['q95']:.4g}]{truth}")
        f = r["field"]
        cov = f.get("coverage_90")
        cells += [
            format_number(f.get("rel_l2")),
            "–" if cov is None else f"{100 * cov:.1f}%",
            format_number(f.get("crps")),
            format_number(f.get("nll")),
            _elpd_cell(r),
            str(r.get("loo_rank", "–")),
        ]
        body.append(cells)
    return header, body


def _elpd_cell(row: dict) -> str:
    if "elpd_loo" in row:
        return f"{row['elpd_loo']:.2f} ± {row['elpd_loo_se']:.2f}"
    return "failed (see below)" if row.get("loo_error") else "–"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def _unique(name: str, taken: list[str]) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}-{i}", i + 1
    return candidate
