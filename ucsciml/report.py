"""One self-contained HTML report of a posterior: provenance, diagnostics, calibration, fields.

``ucsciml.report(tree, path)`` writes a single HTML file (images base64-embedded, no scripts,
no external resources) that a scientist can open anywhere. Sections appear when the tree has
what they need:

* provenance (case, backend, seed, wall time, versions) from the tree's attributes;
* the diagnostics table of :func:`ucsciml.diagnostics.check` (only checks that apply to the
  backend kind) and, for MCMC, rank, ESS and energy plots from ``arviz_plots``;
* unknown PDE parameters against the truth (``tree.attrs["ucsciml_program_attrs"]["truth"]``);
* posterior predictive checks and in-sample calibration (``posterior_predictive`` vs
  ``observed_data``);
* for fields (a ``predictions`` group on a grid, truth in ``predictions_constant_data`` as
  ``<name>_true``): calibration curve, PIT ECDF with envelope, coverage table and the mean,
  sd, error and 90% coverage maps.

A section that fails to draw says so in the report and in the log; it never aborts the rest.

:func:`table_page` writes one formatted table as a page in the same style (run comparison,
:mod:`ucsciml.compare`; studies, :mod:`ucsciml.study`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from ucsciml import calibration as cal
from ucsciml import diagnostics
from ucsciml._io import write_text
from ucsciml.family_case import family_metrics
from ucsciml.posterior import tree_attr

log = logging.getLogger(__name__)

LEVELS = (0.5, 0.8, 0.9, 0.95)
_MAX_PLOT_VARS = 6


def report(tree: xr.DataTree, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the HTML report of a posterior DataTree, atomically.

    Args:
        tree: a DataTree from ``Posterior.to_datatree()`` or ``ucsciml.load``; a
            ``predictions`` group with a ``<name>_true`` truth in ``predictions_constant_data``
            adds the field sections.
        path: destination ``.html`` file.
        title: heading; defaults to the case or program name.

    Returns:
        The path written.

    Raises:
        ValueError: when the tree has no posterior group.

    Example:
        >>> ucsciml.report(posterior.to_datatree(), "report.html")  # doctest: +SKIP
    """
    if not isinstance(tree, xr.DataTree) or "posterior" not in tree.children:
        raise ValueError(
            "report(tree, path) needs a DataTree with a 'posterior' group, e.g. "
            "posterior.to_datatree() or ucsciml.load('run/posterior.nc')"
        )
    title = title or str(
        tree.attrs.get("ucsciml_case") or tree.attrs.get("ucsciml_program", "ucsciml")
    )
    diag = diagnostics.check(tree)
    parts = [f"<h1>{_e(title)}: posterior report</h1>"]
    sections: list[tuple[str, Callable[[], str]]] = [
        ("Provenance", lambda: _provenance(tree)),
        ("Diagnostics", lambda: _diagnostics(tree, diag)),
        ("Results", lambda: _results(tree)),
        ("Unknown parameters", lambda: _parameters(tree)),
        ("Posterior predictive checks", lambda: _ppc(tree)),
        ("Field", lambda: _field(tree)),
        ("Conservation law", lambda: _conservation(tree)),
        ("Calibration under model error", lambda: _replicate_calibration(tree)),
    ]
    for name, build in sections:
        try:
            body = build()
        except Exception as err:  # a broken section must not lose the rest of the report
            log.warning("report section %r failed: %s: %s", name, type(err).__name__, err)
            body = f"<p class='fail'>This section could not be drawn: {_e(type(err).__name__)}: {_e(str(err))}</p>"
        if body:
            parts.append(f"<section><h2>{_e(name)}</h2>{body}</section>")
    document = _PAGE.format(title=_e(title), body="\n".join(parts))
    return write_text(path, document)


# ------------------------------------------------------------------------------------ sections


def table_page(
    path: str | os.PathLike,
    title: str,
    header: list[str],
    body: list[list[str]],
    *,
    notes: list[str] = (),
) -> Path:
    """Write one table (cells already formatted) with notes below as an HTML page, atomically."""
    parts = [f"<h1>{_e(title)}</h1>", _table(header, body)]
    parts.extend(f"<p>{_e(note)}</p>" for note in notes)
    return write_text(path, _PAGE.format(title=_e(title), body="\n".join(parts)))


def _provenance(tree: xr.DataTree) -> str:
    attrs = tree_attr(tree, "ucsciml_attrs", {}) or {}
    rows = [
        ("case", tree.attrs.get("ucsciml_case")),
        ("program", tree.attrs.get("ucsciml_program")),
        ("backend", tree.attrs.get("ucsciml_backend") or attrs.get("backend")),
        ("kind", tree.attrs.get("ucsciml_kind")),
        ("seed", tree.attrs.get("ucsciml_seed")),
        ("wall time (s)", format_number(tree.attrs.get("ucsciml_wall_time_s"))),
        ("config hash", tree.attrs.get("ucsciml_config_hash")),
        ("created", attrs.get("created_at")),
        ("platform", attrs.get("platform")),
        ("devices", attrs.get("device_count")),
        ("python", attrs.get("python")),
    ]
    settings = attrs.get("settings")
    if settings:
        rows.append(("backend settings", json.dumps(settings, sort_keys=True)))
    versions = attrs.get("versions") or {}
    rows.extend((f"version: {k}", v) for k, v in versions.items())
    return _table(["", ""], [(k, v) for k, v in rows if v is not None], header=False)


def _diagnostics(tree: xr.DataTree, diag: diagnostics.Diagnostics) -> str:
    mcmc = diag.kind == "mcmc"
    header = (
        ["quantity", "mean", "sd"]
        + (["R-hat", "ESS bulk", "ESS tail"] if mcmc else [])
        + ["verdict"]
    )
    rows = []
    for r in diag.rows:
        row = [r.name, format_number(r.mean), format_number(r.sd)]
        if mcmc:
            row += [
                format_number(r.rhat, ".3f"),
                format_number(r.ess_bulk, ".0f"),
                format_number(r.ess_tail, ".0f"),
            ]
        rows.append([*row, _verdict(r.verdict)])
    out = [_table(header, rows, raw_last=True)]
    facts = [f"{diag.kind}: {diag.num_chains} chain(s) × {diag.num_draws} draw(s)"]
    if diag.divergences is not None:
        facts.append(f"divergences: {diag.divergences}")
    if diag.bfmi is not None:
        facts.append("BFMI per chain: " + ", ".join(f"{b:.2f}" for b in diag.bfmi))
    if diag.max_treedepth_fraction is not None:
        facts.append(f"draws at max tree depth: {100 * diag.max_treedepth_fraction:.1f}%")
    out.append(
        "<p>" + " · ".join(_e(f) for f in facts) + f" · overall: {_verdict(diag.verdict)}</p>"
    )
    if diag.messages:
        out.append("<ul>" + "".join(f"<li>{_e(m)}</li>" for m in diag.messages) + "</ul>")
    if diag.optimization:
        out.append("<h3>Optimisation verdicts</h3>")
        out.append(
            _table(
                [
                    "phase",
                    "fits",
                    "failed",
                    "Newton decrease (nats)",
                    "max |grad|",
                    "loss change",
                    "verdict",
                ],
                [
                    [
                        v["phase"],
                        str(v["fits"]),
                        str(v["failed"]),
                        format_number(v.get("decrease")),
                        format_number(v.get("grad_norm")),
                        format_number(v.get("relative_change")),
                        _verdict("pass" if v["converged"] else "warn"),
                    ]
                    for v in diag.optimization
                ],
                raw_last=True,
            )
        )
    names = _plot_vars(tree)
    if mcmc and names and diag.num_chains >= 2:
        import arviz_plots as azp

        out.append(
            _figure_or_note("Rank plots", lambda: _azp(azp.plot_rank, tree, var_names=names))
        )
        out.append(_figure_or_note("ESS", lambda: _azp(azp.plot_ess, tree, var_names=names)))
        if "sample_stats" in tree.children and "energy" in tree["sample_stats"].data_vars:
            out.append(_figure_or_note("Energy", lambda: _azp(azp.plot_energy, tree)))
    return "".join(out)


def _results(tree: xr.DataTree) -> str:
    """A family case's headline numbers (:func:`ucsciml.family_case.family_metrics`)."""
    numbers = family_metrics(tree)
    if not numbers:
        return ""
    rows = []

    def walk(values, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                shown = format_number(value) if isinstance(value, int | float) else str(value)
                rows.append((f"{prefix}{key}", str(value) if isinstance(value, bool) else shown))

    walk(numbers)
    return _table(["quantity", "value"], rows)


def _conservation(tree: xr.DataTree) -> str:
    """The ``[conservation]`` update's numbers (``ucsciml_conservation``): the law, the
    conservation error and the field scores before and after."""
    raw = tree.attrs.get("ucsciml_conservation")
    if not isinstance(raw, str):
        return ""
    numbers = json.loads(raw)
    law = (
        f"<p>Imposed on every predictive draw after the backend (ProbConserv): the integral "
        f"of the field over {_e(numbers['over'])} equals {format_number(numbers['total'])} at "
        f"each of {numbers['constraints']} grid slices, &sigma;<sub>G</sub> = "
        f"{format_number(numbers['noise_std'])}; {numbers['draws']} draws moved. The field "
        "section above shows the conserved field.</p>"
    )
    if numbers.get("fixed_slices"):
        law += (
            f"<p>{numbers['fixed_slices']} slice(s) have the same integral in every draw (a "
            "condition the model builds in) and were left as they are.</p>"
        )
    rows = [
        (
            "max |integral - total| of the predictive mean",
            format_number(numbers["error_before"], ".3g"),
            format_number(numbers["error_after"], ".3g"),
        ),
        (
            "mean over draws of each draw's max |integral - total|",
            format_number(numbers["draw_error_before"], ".3g"),
            format_number(numbers["draw_error_after"], ".3g"),
        ),
    ]
    before = numbers.get("field_before") or {}
    after = _field_scores(tree)
    for key, label in (("rel_l2", "relative L2 of the mean"), ("coverage_90", "90% coverage")):
        if key in before and key in after:
            rows.append(
                (label, format_number(before[key], ".3g"), format_number(after[key], ".3g"))
            )
    return law + _table(["quantity", "before", "after"], rows)


def _field_scores(tree: xr.DataTree) -> dict[str, float]:
    """Relative L2 and 90% coverage of the field in ``predictions`` against its truth."""
    if "predictions" not in tree.children or "predictions_constant_data" not in tree.children:
        return {}
    preds = tree["predictions"].to_dataset()
    consts = tree["predictions_constant_data"].to_dataset()
    for name in preds.data_vars:
        truth = consts.get(f"{name}_true")
        if truth is not None:
            summary = cal.summary(preds[name], truth)
            return {"rel_l2": summary["rel_l2"], "coverage_90": summary["coverage_90"]}
    return {}


def _parameters(tree: xr.DataTree) -> str:
    names = _physical(tree)
    if not names:
        return ""
    truth = (tree_attr(tree, "ucsciml_program_attrs", {}) or {}).get("truth") or {}
    post = tree["posterior"].to_dataset()
    rows = []
    for name in names:
        values = np.asarray(post[name].values, dtype=float)
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        for j in range(flat.shape[1]):
            label = name if flat.shape[1] == 1 else f"{name}[{j}]"
            lo, hi = np.quantile(flat[:, j], [0.05, 0.95])
            t = _truth_value(truth.get(name), j)
            inside = "" if t is None else ("inside" if lo <= t <= hi else "<b>OUTSIDE</b>")
            rows.append(
                [
                    label,
                    format_number(flat[:, j].mean()),
                    format_number(flat[:, j].std()),
                    f"[{lo:.4g}, {hi:.4g}]",
                    format_number(t),
                    inside,
                ]
            )
    out = [
        _table(
            ["parameter", "mean", "sd", "90% interval", "truth", "truth in 90%"],
            rows,
            raw_last=True,
        )
    ]
    out.append(
        _figure_or_note(
            "Posterior against the truth",
            lambda: _posterior_vs_truth(post, names[:_MAX_PLOT_VARS], truth),
        )
    )
    return "".join(out)


def _replicate_calibration(tree: xr.DataTree) -> str:
    """The ``[calibration]`` step: calibrated intervals beside the raw ones, and the numbers
    behind them (bias, replicate spread, inflation), plus field and held-out coverage."""
    if "calibration" not in tree.children:
        return ""
    cal = tree["calibration"].to_dataset()
    attrs = cal.attrs
    out = []
    truth = (tree_attr(tree, "ucsciml_program_attrs", {}) or {}).get("truth") or {}
    if "parameter" in cal.coords and "calibrated_posterior" in tree.children:
        level = float(attrs.get("level", 0.9))
        out.append(
            f"<p>{int(attrs.get('successful', 0))} of {int(attrs.get('replicates', 0))} replicate "
            f"datasets in {int(attrs.get('rounds', 1))} round(s), simulated with the "
            "reference solver (same sensors, same noise level; round 1 at the fitted "
            "parameters, later rounds at the estimate corrected by the previous round's bias) "
            "and refitted from fresh starts by the same pipeline, measured its error. Calibrated intervals are bias-corrected and widened to that "
            "spread (Student-t prediction intervals, never narrower than the posterior's); "
            "bias and spread are in each parameter's unconstrained space (log for a positive "
            "one). The raw posterior is unchanged.</p>"
        )
        post = tree["posterior"].to_dataset()
        calibrated = tree["calibrated_posterior"].to_dataset()
        rows = []
        for i, name in enumerate(cal.parameter.values):
            raw = np.asarray(post[name].values, dtype=float).ravel()
            new = np.asarray(calibrated[name].values, dtype=float).ravel()
            q = (0.5 - level / 2, 0.5 + level / 2)
            rlo, rhi = np.quantile(raw, q)
            clo, chi = np.quantile(new, q)
            t = _truth_value(truth.get(str(name)), 0)
            inside = "" if t is None else ("inside" if clo <= t <= chi else "<b>OUTSIDE</b>")
            rows.append(
                [
                    str(name),
                    f"[{rlo:.4g}, {rhi:.4g}]",
                    f"[{clo:.4g}, {chi:.4g}]",
                    format_number(float(cal.bias.values[i]), "+.3g"),
                    format_number(float(cal.spread.values[i]), ".3g"),
                    f"×{float(cal.inflation.values[i]):.1f}",
                    format_number(t),
                    inside,
                ]
            )
        pct = f"{round(100 * level)}%"
        out.append(
            _table(
                [
                    "parameter",
                    f"raw {pct}",
                    f"calibrated {pct}",
                    "bias",
                    "replicate sd",
                    "inflation",
                    "truth",
                    "truth in calibrated",
                ],
                rows,
                raw_last=True,
            )
        )
    facts = []
    if "field_coverage_90" in attrs:
        facts.append(f"calibrated field band: 90% coverage {100 * attrs['field_coverage_90']:.1f}%")
    if "holdout_num_sensors" in attrs:
        line = (
            f"{int(attrs['holdout_num_sensors'])} held-out sensors: 90% predictive coverage "
            f"raw {100 * attrs['holdout_coverage_raw']:.0f}%"
        )
        if "holdout_coverage_calibrated" in attrs:
            line += f", calibrated {100 * attrs['holdout_coverage_calibrated']:.0f}%"
        scale = float(attrs["holdout_variance_scale"])
        line += (
            "; noise alone covers them at the nominal level"
            if scale == 0
            else f"; variance scaling fitted on them ×{scale:.2f}"
        )
        if "holdout_field_coverage_90" in attrs:
            line += f" gives field 90% coverage {100 * attrs['holdout_field_coverage_90']:.1f}%"
        facts.append(line)
    if facts:
        out.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in facts) + "</ul>")
    return "".join(out)


def _ppc(tree: xr.DataTree) -> str:
    if "posterior_predictive" not in tree.children or "observed_data" not in tree.children:
        return ""
    import arviz_plots as azp

    pp = tree["posterior_predictive"].to_dataset()
    obs = tree["observed_data"].to_dataset()
    names = [v for v in pp.data_vars if v in obs.data_vars]
    if not names:
        return ""
    out = [
        _figure_or_note(
            "Posterior predictive density",
            lambda: _azp(azp.plot_ppc_dist, tree, var_names=names, num_samples=30),
        ),
        _figure_or_note(
            "PIT ECDF of the observations (arviz-plots, simultaneous envelope)",
            lambda: _azp(azp.plot_ppc_pit, tree, var_names=names),
        ),
    ]
    for name in names:
        pred, truth = pp[name], obs[name]
        out.append(f"<h3>In-sample calibration of {_e(name)} (replicated vs observed data)</h3>")
        out.append(_calibration_block(cal.scores(pred, truth, LEVELS, full=True), truth))
    return "".join(out)


def _field(tree: xr.DataTree) -> str:
    if "predictions" not in tree.children:
        return ""
    preds = tree["predictions"].to_dataset()
    consts = (
        tree["predictions_constant_data"].to_dataset()
        if "predictions_constant_data" in tree.children
        else xr.Dataset()
    )
    out = []
    for name in preds.data_vars:
        pred = preds[name]
        truth = consts.get(f"{name}_true")
        grid_dims = [d for d in pred.dims if d not in cal.SAMPLE_DIMS]
        out.append(
            f"<h3>{_e(name)} on the evaluation grid ({' × '.join(f'{pred.sizes[d]} {d}' for d in grid_dims)})</h3>"
        )
        per_point = None
        if truth is not None:
            per_point = cal.scores(pred, truth, LEVELS, full=True)
            out.append(_calibration_block(per_point, truth))
            band = cal.simultaneous_band(pred, 0.9)
            joint = bool(cal.band_covers(band, truth))
            out.append(
                f"<p>Simultaneous 90% band (multiplier {float(band.multiplier):.2f} sd): the "
                f"whole true field is {'inside' if joint else '<b>not</b> inside'} it.</p>"
            )
        if len(grid_dims) == 2:
            out.append(
                _figure_or_note(
                    "Mean, sd, error and 90% coverage maps",
                    lambda pred=pred, truth=truth, pp=per_point: _maps(pred, truth, pp),
                )
            )
    return "".join(out)


def _calibration_block(per_point: xr.Dataset, truth) -> str:
    summary = cal.summarize(per_point, truth)
    rows = [
        [f"{round(100 * lv)}%", f"{100 * summary[f'coverage_{round(100 * lv)}']:.1f}%"]
        for lv in LEVELS
    ]
    cov = _table(["nominal", "observed coverage"], rows)
    scores = _table(
        ["score", "value"],
        [
            ["CRPS (mean)", format_number(summary["crps"])],
            ["NLL (mean, KDE)", format_number(summary["nll"])],
            ["rel. L2 of the mean", format_number(summary["rel_l2"])],
            ["sharpness (mean 90% width)", format_number(summary["sharpness_90"])],
            ["miscalibration area", format_number(summary["miscalibration_area"])],
            ["RMSCE", format_number(summary["rmsce"])],
        ],
    )
    figure = _figure_or_note(
        "Calibration curve and PIT ECDF", lambda: _calibration_figure(per_point.pit)
    )
    return f"<div class='row'>{cov}{scores}</div>{figure}"


# ------------------------------------------------------------------------------------ figures


def _calibration_figure(pit_values):
    from matplotlib.figure import Figure

    curve = cal.curve_from_pit(pit_values)
    pit = np.sort(np.asarray(pit_values).ravel())
    n = pit.size
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
    ax1.plot(curve.nominal, curve.observed, color="C0", lw=2, label="observed")
    ax1.fill_between(curve.nominal, curve.nominal, curve.observed, color="C0", alpha=0.15)
    ax1.set(
        xlabel="nominal central-interval level",
        ylabel="observed coverage",
        title="Calibration curve",
    )
    ax1.legend(loc="upper left")
    grid = np.linspace(0, 1, 201)
    ecdf = np.searchsorted(pit, grid, side="right") / n
    # Dvoretzky-Kiefer-Wolfowitz: a simultaneous 99% band for the ECDF of n independent
    # uniforms (exact for independent points; neighbouring grid points are correlated).
    eps = np.sqrt(np.log(2 / 0.01) / (2 * n))
    ax2.fill_between(grid, -eps, eps, color="0.85", label="99% envelope (DKW)")
    ax2.plot(grid, ecdf - grid, color="C1", lw=2, label="ECDF − uniform")
    ax2.axhline(0, color="0.5", lw=0.8)
    ax2.set(xlabel="PIT", ylabel="ECDF difference", title=f"PIT ECDF (n = {n})")
    ax2.legend(loc="lower right")
    return fig


def _maps(pred: xr.DataArray, truth, per_point):
    from matplotlib.figure import Figure

    grid_dims = [d for d in pred.dims if d not in cal.SAMPLE_DIMS]
    mean, sd = pred.mean(cal.SAMPLE_DIMS), pred.std(cal.SAMPLE_DIMS)
    panels = [("posterior mean", mean, "viridis"), ("posterior sd", sd, "magma")]
    if truth is not None:
        truth = truth.transpose(*grid_dims)
        panels.append(("|mean − truth|", np.abs(mean - truth), "magma"))
        inside = per_point.covered.sel(level=0.9).astype(float)
        panels.append(("truth inside 90% interval", inside, "RdYlGn"))
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    ydim, xdim = grid_dims
    for ax, (label, da, cmap) in zip(axes, panels, strict=True):
        da = da.transpose(ydim, xdim)
        xs = da[xdim].values if xdim in da.coords else np.arange(da.sizes[xdim])
        ys = da[ydim].values if ydim in da.coords else np.arange(da.sizes[ydim])
        kwargs = {"vmin": 0, "vmax": 1} if cmap == "RdYlGn" else {}
        mesh = ax.pcolormesh(
            xs, ys, np.asarray(da.values, dtype=float), cmap=cmap, shading="auto", **kwargs
        )
        fig.colorbar(mesh, ax=ax)
        ax.set(title=label, xlabel=xdim, ylabel=ydim)
    return fig


def _posterior_vs_truth(post: xr.Dataset, names, truth):
    from matplotlib.figure import Figure

    panels = []
    for name in names:
        values = np.asarray(post[name].values, dtype=float)
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        for j in range(min(flat.shape[1], _MAX_PLOT_VARS)):
            panels.append(
                (
                    name if flat.shape[1] == 1 else f"{name}[{j}]",
                    flat[:, j],
                    _truth_value(truth.get(name), j),
                )
            )
    panels = panels[:_MAX_PLOT_VARS]
    fig = Figure(figsize=(3.6 * len(panels), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (label, draws, t) in zip(axes, panels, strict=True):
        ax.hist(draws, bins=40, color="C0", alpha=0.7, density=True)
        lo, hi = np.quantile(draws, [0.05, 0.95])
        ax.axvspan(lo, hi, color="C0", alpha=0.1, label="90% interval")
        if t is not None:
            ax.axvline(t, color="C3", lw=2, label="truth")
        ax.set(title=label, yticks=[])
        ax.legend(fontsize="small")
    return fig


def _azp(plot_fn, tree, **kwargs):
    pc = plot_fn(tree, backend="matplotlib", **kwargs)
    return pc.viz["figure"].item()


def _figure_or_note(caption: str, build) -> str:
    try:
        fig = build()
        return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{_png(fig)}'/><figcaption>{_e(caption)}</figcaption></figure>"
    except Exception as err:  # plotting libraries raise many types; the report goes on
        log.warning("report figure %r failed: %s: %s", caption, type(err).__name__, err)
        return f"<p class='fail'>{_e(caption)}: not drawn ({_e(type(err).__name__)}: {_e(str(err))})</p>"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    if hasattr(fig, "number"):  # a pyplot-managed figure (arviz-plots): release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------ helpers


def _physical(tree: xr.DataTree) -> list[str]:
    post = tree["posterior"].to_dataset()
    physical = tree_attr(tree, "ucsciml_physical_sites")
    if physical is None:
        network = set(tree_attr(tree, "ucsciml_network_sites", []) or [])
        physical = [v for v in post.data_vars if v not in network]
    return [str(p) for p in physical if p in post.data_vars]


def _plot_vars(tree: xr.DataTree) -> list[str]:
    post = tree["posterior"].to_dataset()
    small = [
        n
        for n in _physical(tree)
        if post[n].size // (post.sizes["chain"] * post.sizes["draw"]) <= 4
    ]
    return small[:_MAX_PLOT_VARS]


def _truth_value(value, index: int):
    if value is None:
        return None
    flat = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    return float(flat[index]) if index < flat.size else None


def _table(columns, rows, *, header=True, raw_last=False) -> str:
    head = "" if not header else "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in columns) + "</tr>"
    body = []
    for row in rows:
        cells = (
            [f"<td>{_e(c)}</td>" for c in row[:-1]]
            if raw_last
            else [f"<td>{_e(c)}</td>" for c in row]
        )
        if raw_last:
            cells.append(f"<td>{row[-1]}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _verdict(v: str) -> str:
    cls = {"pass": "pass", "warn": "warn"}.get(v, "na")
    return f"<span class='{cls}'>{_e(v)}</span>"


def format_number(value, spec: str = ".4g") -> str:
    """``value`` formatted with ``spec``; "–" for a missing or non-finite number, ``str`` of a
    non-number."""
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not np.isfinite(value) else format(value, spec)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
h1 {{ border-bottom: 2px solid #345; }} h2 {{ color: #345; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: 0.6em 1.2em 0.6em 0; font-size: 0.92em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #eef2f6; }} .row {{ display: flex; flex-wrap: wrap; align-items: flex-start; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; }} figcaption {{ color: #555; }}
.pass {{ color: #176a17; font-weight: bold; }} .warn {{ color: #b34700; font-weight: bold; }}
.na {{ color: #666; }} .fail {{ color: #a00; }}
</style></head>
<body>
{body}
<footer><p>Written by ucsciml. Images are embedded; this file needs nothing else to open.</p></footer>
</body></html>
"""
