"""A study: one case under several backends, same data and seed, one comparison table.

``run_study`` runs :func:`ucsciml.runner.run_case` once per backend into
``<out>/<backend>/`` (each a complete run directory) and writes, atomically, in ``<out>``:

- ``study.csv``: one row per backend, raw numbers (machine-readable);
- ``study.md``: the same table formatted for reading, with the command that made it;
- ``study.html``: the table as a self-contained page (the report machinery's style).

Columns: wall time, relative L2 of the predictive mean on the evaluation grid, field
coverage at 50/90/95%, CRPS and NLL, and per unknown PDE parameter the posterior mean, its
error ``|mean - truth| / truth`` in %, the 90% interval and whether it holds the truth;
the worst R-hat, smallest bulk ESS and divergence count where they apply (MCMC only; other
backends show "n/a"). A family case (:mod:`ucsciml.family_case`, e.g. the fOU Hurst case
under ``nuts`` and ``vi``) shows its site summaries as parameters and its other headline
numbers as columns of their own; the field columns appear only when a run scored a field.
A backend that fails is recorded with its error and the study goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucsciml import registry
from ucsciml._io import write_text
from ucsciml.config import is_family
from ucsciml.report import table_page
from ucsciml.runner import run_case

log = logging.getLogger("ucsciml")

FIELD_COLUMNS = ("rel_l2", "coverage_50", "coverage_90", "coverage_95", "crps", "nll")


@dataclass(frozen=True)
class StudyResult:
    """What a finished study left behind: its folder, one row per backend, the table files."""

    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]

    @property
    def failed(self) -> list[str]:
        """Backends whose run raised."""
        return [r["backend"] for r in self.rows if r["status"] != "ok"]


def parse_backends(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    """``"nuts,vi"`` -> ``["nuts", "vi"]``, checked against ``allowed``.

    Args:
        text: comma-separated backend names.
        allowed: the names the case can run (:func:`case_backends`); default every
            registered inference backend.

    Raises:
        ValueError: for an empty list, a name not in ``allowed`` or a repeated name.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--backends needs at least one name, e.g. --backends nuts,vi")
    choices = sorted(registry.BACKENDS) if allowed is None else list(allowed)
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown} for this case; choose from {choices}")
    if len(set(names)) != len(names):
        raise ValueError(f"--backends lists a backend twice: {names}")
    return names


def case_backends(cfg: Mapping[str, Any]) -> list[str]:
    """The backends a resolved case can run: a family case's own list (the fOU case's
    ``nuts`` and ``vi``, ProbConserv's ``closed_form``), else every inference backend."""
    if is_family(dict(cfg)):
        family = registry.resolve(registry.CASES, cfg["model"]["name"], "model")
        return list(family.backends)
    return sorted(registry.BACKENDS)


def run_study(
    cfg: Mapping[str, Any],
    backends: Sequence[str],
    *,
    seed: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    root: str | Path = "runs",
    command: str | None = None,
) -> StudyResult:
    """Run ``cfg`` under each backend and write the comparison table.

    Args:
        cfg: a resolved case config (:func:`ucsciml.config.load_case`).
        backends: backend names, run in this order.
        seed: inference seed for every backend (default: the case's).
        out: study folder (default ``root/<case>/study-seed<seed>``).
        resume: reuse finished runs whose config matches (see ``run_case``).
        root: parent of the default study folder.
        command: the command line that made the study, written into ``study.md``.
    """
    parse_backends(",".join(backends), case_backends(cfg))
    seed = int(cfg["case"]["seed"] if seed is None else seed)
    out_dir = Path(out) if out else Path(root) / cfg["case"]["name"] / f"study-seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in backends:
        log.info("study %s: backend %s", cfg["case"]["name"], name)
        try:
            result = run_case(cfg, backend=name, seed=seed, out=out_dir / name, resume=resume)
        except (ValueError, TypeError, FloatingPointError, RuntimeError) as err:
            log.error("backend %s failed: %s: %s", name, type(err).__name__, err)
            rows.append({"backend": name, "status": f"failed: {type(err).__name__}: {err}"})
            continue
        rows.append(study_row(name, result.metrics))
    files = write_tables(rows, out_dir, title=cfg["case"]["name"], command=command)
    return StudyResult(out_dir, rows, files)


def study_row(backend: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row of the table from a run's ``metrics.json`` content."""
    field = metrics.get("field") or {}
    diag = metrics.get("diagnostics") or {}
    row: dict[str, Any] = {
        "backend": backend,
        "status": "ok",
        "kind": diag.get("kind"),
        "wall_time_s": metrics.get("wall_time_s"),
    }
    row.update({k: field.get(k) for k in FIELD_COLUMNS})
    row.update(_parameter_columns(metrics.get("parameters") or {}, ""))
    row.update(_family_columns(metrics.get("family") or {}))
    calibrated = metrics.get("calibrated") or {}
    row.update(_parameter_columns(calibrated.get("parameters") or {}, "calibrated "))
    if "field" in calibrated:
        row["calibrated_coverage_90"] = calibrated["field"]["coverage_90"]
    mcmc = diag.get("kind") == "mcmc"
    rhats = [r["rhat"] for r in diag.get("rows", []) if r.get("rhat") is not None]
    ess = [r["ess_bulk"] for r in diag.get("rows", []) if r.get("ess_bulk") is not None]
    row["r_hat_max"] = max(rhats) if mcmc and rhats else None
    row["ess_bulk_min"] = min(ess) if mcmc and ess else None
    row["divergences"] = diag.get("divergences") if mcmc else None
    row["verdict"] = diag.get("verdict")
    return row


def _parameter_columns(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Mean, 90% interval and, with a truth, error and coverage of each parameter."""
    row: dict[str, Any] = {}
    for name, p in params.items():
        key = f"{prefix}{name}"
        row[f"{key}_mean"] = p["mean"]
        row[f"{key}_q05"], row[f"{key}_q95"] = p["q05"], p["q95"]
        if "truth" in p:
            row[f"{key}_truth"] = p["truth"]
            if "rel_error" in p:
                row[f"{key}_error_pct"] = 100.0 * p["rel_error"]
            row[f"{key}_truth_in_90"] = p["truth_in_90"]
    return row


def _family_columns(numbers: Mapping[str, Any]) -> dict[str, Any]:
    """A family run's headline numbers (``metrics.json["family"]``) as columns: a site
    summary (a table with ``mean``, ``q05``, ``q95``) like a parameter, every other number
    as ``family_<name>``; nested tables of other shapes and the family's own timing stay in
    its ``metrics.json``."""
    row: dict[str, Any] = {}
    for name, value in numbers.items():
        if isinstance(value, Mapping) and {"mean", "q05", "q95"} <= value.keys():
            summary = dict(value)
            truth = summary.get("truth")
            if truth is not None and "rel_error" not in summary and truth != 0:
                summary["rel_error"] = abs(summary["mean"] - truth) / abs(truth)
            if truth is not None and "truth_in_90" not in summary:
                summary["truth_in_90"] = summary["q05"] <= truth <= summary["q95"]
            row.update(_parameter_columns({name: summary}, ""))
        elif isinstance(value, bool | int | float) and name not in ("seconds", "divergences"):
            row[f"family_{name}"] = value
    return row


def write_tables(
    rows: list[dict[str, Any]], out_dir: Path, *, title: str, command: str | None = None
) -> dict[str, Path]:
    """Write ``study.csv``, ``study.md`` and ``study.html`` into ``out_dir`` atomically."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    header, body = readable_table(rows)
    made_by = f"Made by: `{command}`\n\n" if command else ""
    markdown = (
        f"# Study: {title}\n\n{made_by}"
        + _markdown(header, body)
        + "\n\n"
        + LEGEND
        + "\n"
        + "".join(f"\n- {r['backend']}: {r['status']}" for r in rows if r["status"] != "ok")
    )
    return {
        "csv": write_text(out_dir / "study.csv", buffer.getvalue()),
        "md": write_text(out_dir / "study.md", markdown.rstrip() + "\n"),
        "html": table_page(
            out_dir / "study.html",
            f"Study: {title}",
            header,
            body,
            notes=[
                LEGEND,
                *(f"{r['backend']}: {r['status']}" for r in rows if r["status"] != "ok"),
            ],
        ),
    }


LEGEND = (
    "Parameters: posterior mean, error vs truth in %, [5%, 95%] interval; a check mark when "
    "the interval holds the truth; 'calibrated' columns are the [calibration] step's "
    "replicate-calibrated intervals and field band, beside the raw posterior's. Field: relative L2 of the predictive mean, coverage of "
    "the true field by central 50/90/95% intervals, CRPS and NLL (per point, lower is "
    "better) on the evaluation grid. R-hat, ESS and divergences apply to MCMC only."
)


def readable_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Formatted header and cells: one column per parameter, one per field score (when a
    run scored a field) and one per family headline number (family cases)."""
    params = list(
        dict.fromkeys(
            k.removesuffix("_mean")
            for r in rows
            for k in r
            if k.endswith("_mean") and not k.startswith("family_")
        )
    )
    extra = list(dict.fromkeys(k for r in rows for k in r if k.startswith("family_")))
    scored = any(r.get(k) is not None for r in rows for k in FIELD_COLUMNS)
    header = ["backend", "time (s)", *params, *(k.removeprefix("family_") for k in extra)]
    if scored:
        header += ["rel. L2", "cov. 50/90/95%", "CRPS", "NLL"]
    calibrated = any("calibrated_coverage_90" in r for r in rows)
    if calibrated:
        header.append("calibrated cov. 90%")
    header += ["max R-hat", "min ESS", "divergences"]
    body = []
    for r in rows:
        if r["status"] != "ok":
            body.append([r["backend"], "failed", *["–"] * (len(header) - 2)])
            continue
        cells = [r["backend"], _fmt(r.get("wall_time_s"), ".0f")]
        cells += [_parameter_cell(r, p) for p in params]
        cells += [_number_cell(r.get(k)) for k in extra]
        if scored:
            cover = [r.get(f"coverage_{q}") for q in (50, 90, 95)]
            cells += [
                _fmt(r.get("rel_l2"), ".3g"),
                "/".join("–" if c is None else f"{100 * c:.0f}" for c in cover),
                _fmt(r.get("crps"), ".3g"),
                _fmt(r.get("nll"), ".3g"),
            ]
        cells += [
            *([_fmt(100 * r.get("calibrated_coverage_90", math.nan), ".0f")] if calibrated else []),
            _fmt(r.get("r_hat_max"), ".2f", missing="n/a"),
            _fmt(r.get("ess_bulk_min"), ".0f", missing="n/a"),
            _fmt(r.get("divergences"), "d", missing="n/a"),
        ]
        body.append(cells)
    return header, body


def _number_cell(value: Any) -> str:
    """A family number: yes/no for a flag, 4 significant digits otherwise."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _fmt(value, ".4g")


def _parameter_cell(row: Mapping[str, Any], name: str) -> str:
    mean = row.get(f"{name}_mean")
    if mean is None:
        return "–"
    text = f"{mean:.4g} [{row[f'{name}_q05']:.4g}, {row[f'{name}_q95']:.4g}]"
    if f"{name}_error_pct" in row:
        mark = "✓" if row[f"{name}_truth_in_90"] else "✗"
        text = f"{mean:.4g} ({row[f'{name}_error_pct']:.1f}%) [{row[f'{name}_q05']:.4g}, {row[f'{name}_q95']:.4g}] {mark}"
    return text


def _fmt(value, spec: str, *, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
    return "\n".join(lines)
