"""The ``ucsciml`` command line: run cases, list what exists, summarise run directories.

Exit codes: 0 on success, 2 for bad input (config, data, arguments, missing or unreadable
files, a run directory another run is using), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ucsciml import registry
from ucsciml.rundir import RunDirectoryBusy, load_metrics, load_tree

#: The bundled case files: installed, ``case_studies/`` ships as package data ``ucsciml/cases/``
#: (pyproject.toml's ``package-dir``); in a source checkout (or an editable install) they are
#: read from ``case_studies/`` itself, so there is one copy of each.
CASE_DIR = next(
    (
        folder
        for folder in (
            Path(__file__).resolve().parent / "cases",
            Path(__file__).resolve().parents[1] / "case_studies",
        )
        if folder.is_dir()
    ),
    Path(__file__).resolve().parent / "cases",
)
DEFAULT_CASE = "burgers_inverse"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ucsciml`` command."""
    use_every_core()
    use_compilation_cache()
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = argv
    _configure_logging(args.quiet)
    try:
        _start_distributed(args)
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError, RunDirectoryBusy) as err:
        print(f"ucsciml: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ucsciml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ucsciml list | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def use_every_core(environ=os.environ) -> None:
    """Give XLA one CPU device per core, so independent chains, ensemble members and
    replicate fits (sharded over devices) keep every core busy.

    XLA:CPU runs one small vmapped computation on one core; split over host devices the
    shards run in parallel. Must run before JAX initialises its backends (the CLI calls it
    first). ``UCSCIML_CPU_DEVICES=1`` turns it off; a device count already in ``XLA_FLAGS``
    is left alone. The layout is recorded in each posterior's provenance (``shards``).
    """
    flags = environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = environ.get("UCSCIML_CPU_DEVICES") or str(len(os.sched_getaffinity(0)))
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"UCSCIML_CPU_DEVICES must be a positive integer, got {count!r}")
    environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def use_compilation_cache(environ=os.environ) -> str | None:
    """Keep XLA's compiled programs on disk between runs (JAX's persistent compilation cache).

    Backends take data as traced arguments, so a second run of a case, every replicate of a
    coverage study and every run of the same shapes reuse the first one's compiled fits.
    The folder is ``$UCSCIML_CACHE_DIR`` or ``~/.cache/ucsciml/xla``; an empty
    ``UCSCIML_CACHE_DIR`` turns it off. Returns the folder used, or ``None``.
    """
    import jax

    folder = environ.get("UCSCIML_CACHE_DIR", str(Path.home() / ".cache" / "ucsciml" / "xla"))
    if not folder:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    return folder


def _configure_logging(quiet: bool) -> None:
    # The package logger always records INFO (run directories keep the full log.txt);
    # the console handler shows INFO unless --quiet.
    logger = logging.getLogger("ucsciml")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, "_ucsciml_console", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    console._ucsciml_console = True
    logger.addHandler(console)
    logger.propagate = False
    # JAX logs at INFO that it found no TPU/proxy backend: noise on a CPU or GPU machine.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ucsciml",
        description="Bayesian uncertainty quantification for scientific machine learning.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a case file end to end and write a run directory")
    run.add_argument(
        "case",
        nargs="?",
        default=None,
        help=f"case TOML file, or the name of a bundled case (`ucsciml list`; default: {DEFAULT_CASE})",
    )
    run.add_argument("--backend", help=f"inference backend: {', '.join(sorted(registry.BACKENDS))}")
    run.add_argument("--seed", type=int, help="integer seed for inference (default: the case's)")
    run.add_argument("--out", help="run directory (default: runs/<case>/<backend>-seed<seed>)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="reuse a finished posterior.nc in the run directory if the config matches",
    )
    run.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process run: start JAX's distributed runtime from the "
        "cluster (SLURM, Open MPI); `ucsciml launch` sets this up on one machine",
    )
    run.set_defaults(func=_cmd_run)

    launch = sub.add_parser(
        "launch",
        help="run a command as N cooperating local processes (a distributed run on one machine)",
        description="Example: ucsciml launch --processes 2 -- run CASE.toml. Each process gets "
        "its share of the cores as XLA devices; process 0 writes the run directory.",
    )
    launch.add_argument("--processes", type=int, required=True, help="number of processes")
    launch.add_argument(
        "--devices", type=int, help="XLA CPU devices per process (default: cores / processes)"
    )
    launch.add_argument("rest", nargs=argparse.REMAINDER, help="`--` then the ucsciml command")
    launch.set_defaults(func=_cmd_launch)

    study = sub.add_parser(
        "study",
        help="run one case under several backends and write one comparison table",
        description="Runs the case under each backend on the same data and seed, each into "
        "OUT/<backend>/, and writes OUT/study.md, study.csv and study.html.",
    )
    study.add_argument(
        "case",
        nargs="?",
        default=None,
        help=f"case TOML file, or the name of a bundled case (`ucsciml list`; default: {DEFAULT_CASE})",
    )
    study.add_argument(
        "--backends",
        default=None,
        help="comma-separated backends (default: every backend the case can run: "
        f"{','.join(registry.BACKENDS)} for a PDE-sensor case, a family case's own list, "
        "e.g. nuts,vi for fbm_hurst)",
    )
    study.add_argument("--seed", type=int, help="integer seed for every backend")
    study.add_argument("--out", help="study folder (default: runs/<case>/study-seed<seed>)")
    study.add_argument(
        "--resume", action="store_true", help="reuse finished runs whose config matches"
    )
    study.set_defaults(func=_cmd_study)

    cov = sub.add_parser(
        "coverage",
        help="replicate a synthetic case on fresh data and measure its 90%% interval coverage",
        description="Runs the case on K datasets with fresh sensor locations and noise "
        "(replicate r: data seed FIRST_SEED + r, inference seed SEED + r), each into "
        "OUT/replicate-<r>/, and writes OUT/coverage.json, coverage.md and coverage.html: "
        "per unknown PDE parameter the fraction of 90% intervals holding the truth with its "
        "binomial 95% interval, and the field's 90% coverage over replicates.",
    )
    cov.add_argument(
        "case",
        nargs="?",
        default=None,
        help=f"case TOML file, or the name of a bundled case (default: {DEFAULT_CASE}); "
        "needs [data] source = 'synthetic'",
    )
    cov.add_argument(
        "--replicates",
        type=int,
        default=20,
        metavar="K",
        help="number of datasets K >= 2 (default: 20)",
    )
    cov.add_argument("--backend", help=f"inference backend: {', '.join(sorted(registry.BACKENDS))}")
    cov.add_argument("--seed", type=int, help="inference seed of replicate 0 (default: the case's)")
    cov.add_argument(
        "--first-seed",
        type=int,
        help="data seed of replicate 0 (default: the case's [data] seed + 1000)",
    )
    cov.add_argument("--out", help="study folder (default: runs/<case>/coverage-<backend>)")
    cov.add_argument(
        "--resume",
        action="store_true",
        help="skip replicates already finished with the same config",
    )
    cov.set_defaults(func=_cmd_coverage)

    summary = sub.add_parser("summary", help="print the diagnostics table of a run directory")
    summary.add_argument("run_dir", help="a directory written by `ucsciml run`")
    summary.set_defaults(func=_cmd_summary)

    rep = sub.add_parser("report", help="write report.html of a run directory")
    rep.add_argument("run_dir", help="a directory written by `ucsciml run`")
    rep.add_argument("--out", help="output file (default: RUN_DIR/report.html)")
    rep.set_defaults(func=_cmd_report)

    cmp = sub.add_parser("compare", help="compare run directories in one table (terminal + HTML)")
    cmp.add_argument("run_dirs", nargs="+", help="directories written by `ucsciml run`")
    cmp.add_argument("--html", help="write the table as HTML here (default: compare.html)")
    cmp.set_defaults(func=_cmd_compare)

    lst = sub.add_parser("list", help="list case files, model families, backends and PDEs")
    lst.set_defaults(func=_cmd_list)
    return parser


def case_path(name: str | None) -> Path:
    """A case argument to a case file path: an existing file or a ``.toml`` path as given, a
    bare name (``burgers_inverse``) as the bundled case :data:`CASE_DIR`/``NAME.toml``, no
    argument as the default case."""
    if name is None:
        return CASE_DIR / f"{DEFAULT_CASE}.toml"
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    return CASE_DIR / f"{name}.toml"


def _start_distributed(args) -> None:
    """Join a distributed run when the launcher's variables are set or ``--distributed``."""
    from ucsciml import distributed

    settings = distributed.settings_from_env()
    if settings is not None or getattr(args, "distributed", False):
        distributed.initialize(settings)


def _cmd_launch(args) -> int:
    from ucsciml.launch import launch

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return launch(args.processes, rest, devices=args.devices)


def _cmd_run(args) -> int:
    import tempfile

    from ucsciml import distributed
    from ucsciml.config import load_case
    from ucsciml.runner import run_case

    cfg = load_case(case_path(args.case))
    if not distributed.is_main():
        # Every process computes; only process 0 writes the run directory. With --resume
        # the others get process 0's posterior.nc and checkpoints in their scratch folder
        # (runner._shared_resume), so every process skips or continues the same work.
        with tempfile.TemporaryDirectory(prefix="ucsciml-process-") as scratch:
            run_case(cfg, backend=args.backend, seed=args.seed, out=scratch, resume=args.resume)
        return 0
    result = run_case(cfg, backend=args.backend, seed=args.seed, out=args.out, resume=args.resume)
    print(f"run directory: {result.run_dir}")
    print(result.diagnostics.to_text())
    _print_parameters(result.metrics)
    _print_warnings(result.metrics)
    return 0


def _cmd_study(args) -> int:
    from ucsciml.config import load_case
    from ucsciml.study import case_backends, parse_backends, readable_table, run_study

    cfg = load_case(case_path(args.case))
    allowed = case_backends(cfg)
    backends = parse_backends(args.backends or ",".join(allowed), allowed)
    command = " ".join(["ucsciml", *(sys.argv[1:] if args.argv is None else args.argv)])
    result = run_study(
        cfg, backends, seed=args.seed, out=args.out, resume=args.resume, command=command
    )
    header, body = readable_table(result.rows)
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    for cells in (header, *body):
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)))
    for name, path in result.files.items():
        print(f"{name}: {path}")
    if result.failed:
        print(f"ucsciml: backends that failed: {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_coverage(args) -> int:
    from ucsciml.config import load_case
    from ucsciml.coverage import run_coverage, text_table

    cfg = load_case(case_path(args.case))
    command = " ".join(["ucsciml", *(sys.argv[1:] if args.argv is None else args.argv)])
    result = run_coverage(
        cfg,
        args.replicates,
        backend=args.backend,
        seed=args.seed,
        first_seed=args.first_seed,
        out=args.out,
        resume=args.resume,
        command=command,
        progress=not args.quiet,
    )
    print(text_table(result.summary))
    for name, path in result.files.items():
        print(f"{name}: {path}")
    if result.failed:
        failed = ", ".join(str(f["replicate"]) for f in result.failed)
        print(f"ucsciml: replicates that failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _cmd_summary(args) -> int:
    from ucsciml.diagnostics import check

    run_dir = Path(args.run_dir)
    tree = load_tree(run_dir)
    metrics = load_metrics(run_dir)
    print(f"run: {run_dir}")
    print(check(tree).to_text())
    if metrics is not None:
        _print_parameters(metrics)
        _print_family(metrics.get("family"))
        _print_warnings(metrics)
    return 0


def _print_family(numbers) -> None:
    """A family case's headline numbers (``metrics.json`` ``family``), one per line."""
    if not isinstance(numbers, dict) or not numbers:
        return
    print("\nresults:")
    for name, value in _flat(numbers):
        print(f"  {name:<32} {value:.6g}" if isinstance(value, float) else f"  {name:<32} {value}")


def _flat(numbers: dict, prefix: str = ""):
    for key, value in numbers.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, f"{name}.")
        else:
            yield name, value


def _cmd_report(args) -> int:
    from ucsciml.report import report

    run_dir = Path(args.run_dir)
    path = report(load_tree(run_dir), args.out or run_dir / "report.html")
    print(f"report: {path}")
    return 0


def _cmd_compare(args) -> int:
    from ucsciml.compare import compare_html, compare_runs, compare_text

    for run_dir in map(Path, args.run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory not found: {run_dir}")
    rows = compare_runs(args.run_dirs)
    print(compare_text(rows))
    print(f"\nHTML table: {compare_html(rows, args.html or 'compare.html')}")
    return 0


def _cmd_list(args) -> int:
    print(f"cases ({CASE_DIR}):")
    for path in sorted(CASE_DIR.glob("*.toml")):
        print(f"  {path.stem}")
    print("model families ([case files]: `[model] name = ...` in a case file; [Python]: API only):")
    for name, family in registry.FAMILIES.items():
        reach = "[case files]" if name in registry.MODELS or name in registry.CASES else "[Python]"
        print(f"  {name:<12} {reach:<12} {family.description}  ({family.target})")
    for title, table in (
        ("backends", registry.BACKENDS),
        ("pdes", registry.PDES),
    ):
        print(f"{title}:")
        for name, target in sorted(table.items()):
            print(f"  {name:<12} {target}")
    return 0


def _print_warnings(metrics: dict) -> None:
    for message in metrics.get("warnings") or []:
        print(f"\nWARNING: {message}")


def _print_parameters(metrics: dict) -> None:
    _print_parameter_rows(
        "unknown PDE parameters, raw posterior (mean, sd, 90% interval, truth):",
        metrics.get("parameters") or {},
    )
    fieldm = metrics.get("field") or {}
    if fieldm:
        print(
            f"\nfield on a {fieldm['grid_points']}-point grid: rel. L2 of the mean "
            f"{fieldm['rel_l2']:.3g}, 90% coverage of the truth {100 * fieldm['coverage_90']:.1f}%"
            " (raw posterior)"
        )
    cal = metrics.get("calibrated") or {}
    if cal.get("method") == "replicates":
        print(
            f"\ncalibrated by {cal['successful']} of {cal['replicates']} replicate refits in "
            f"{cal.get('rounds', 1)} round(s) (data simulated with the reference solver at the "
            "fitted, then bias-corrected, parameters; same sensors and noise; refitted):"
        )
        if cal.get("main_fit_failed"):
            print(
                f"  WARNING: no posterior draw fits the data (best reduced chi2 "
                f"{cal['best_misfit']:.3g} > {cal.get('max_misfit', 'max_misfit')}): the fit "
                "itself failed, and these calibrated intervals correct a failed fit's bias as "
                "if the fit were the estimator refitted; do not trust them. Fix the fit first."
            )
        _print_parameter_rows("", cal.get("parameters") or {}, calibrated=True)
        if "field" in cal:
            print(
                f"  field: 90% coverage of the truth {100 * cal['field']['coverage_90']:.1f}% "
                f"(band widened x{cal['field']['inflation_median']:.1f} at the median point)"
            )
        refits = cal.get("refit_convergence")
        if refits:
            print(
                f"  {refits['message']}"
                + (
                    ""
                    if refits["converged"]
                    else " Their optimisation error is part of the spread the calibration measures."
                )
            )
    held = cal.get("holdout")
    if held:
        line = (
            f"\nheld-out sensors ({held['num_sensors']}, not fitted): 90% predictive coverage "
            f"raw {100 * held['coverage_raw']:.0f}%"
        )
        if "coverage_calibrated" in held:
            line += f", calibrated {100 * held['coverage_calibrated']:.0f}%"
        line += (
            "; noise alone covers them at the nominal level"
            if held["variance_scale"] == 0
            else f"; variance scaling fitted on them: x{held['variance_scale']:.2f}"
        )
        if "field_recalibrated" in held:
            line += f" -> field 90% coverage {100 * held['field_recalibrated']['coverage_90']:.1f}%"
        print(line)


def _print_parameter_rows(title: str, params: dict, calibrated: bool = False) -> None:
    if not params:
        return
    if title:
        print(f"\n{title}")
    for name, row in params.items():
        truth = row.get("truth")
        extra = ""
        if truth is not None:
            inside = "inside" if row["truth_in_90"] else "OUTSIDE"
            extra = (
                f"  truth {truth:.6g} ({100 * row['rel_error']:.1f}% off, {inside} the 90% "
                "interval)"
            )
        if calibrated:
            extra += f"  [sd x{row['inflation']:.1f} of the posterior's]"
        print(
            f"  {name:<10} {row['mean']:.6g} ± {row['sd']:.3g}  "
            f"[{row['q05']:.6g}, {row['q95']:.6g}]{extra}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
