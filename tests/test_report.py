"""The HTML report, `ucsciml report` and `ucsciml compare`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from conftest import TINY_CASE, render_in_chromium

import ucsciml as uq
from ucsciml.cli import main
from ucsciml.posterior import save_tree

BETA = np.array([0.7, -0.3])


def _model(features, targets=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("obs", features.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(features @ beta, 0.5), obs=targets)


def _tree(seed: int = 0, kind: str = "mcmc", field: bool = True) -> xr.DataTree:
    """Exact conjugate posterior draws, NUTS-like sample stats, and a field on a grid."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(30, 2))
    y = features @ BETA + 0.5 * rng.normal(size=30)
    program = uq.Program.from_numpyro(
        _model,
        jnp.asarray(features),
        jnp.asarray(y),
        dims={"beta": ("feature",), "y": ("obs",)},
        attrs={"truth": {"beta": BETA.tolist()}},
    )
    precision = np.eye(2) + features.T @ features / 0.25
    cov = np.linalg.inv(precision)
    mean = cov @ features.T @ y / 0.25
    draws = rng.multivariate_normal(mean, cov, size=(4, 200))
    stats = {"energy": rng.normal(size=(4, 200)), "diverging": np.zeros((4, 200), bool)}
    posterior = uq.Posterior(
        {"beta": draws},
        program,
        jax.random.key(seed),
        sample_stats=stats if kind == "mcmc" else {},
        kind=kind,
    )
    tree = posterior.to_datatree()
    tree.attrs.update({"ucsciml_case": "synthetic", "ucsciml_backend": "exact"})
    if not field:
        return tree
    x, t = np.linspace(-1, 1, 24), np.linspace(0, 1, 12)
    truth = np.sin(np.pi * x)[:, None] * np.exp(-t)[None, :]
    field = truth + 0.1 * rng.normal(size=(4, 200, 1, 1)) + 0.05 * rng.normal(size=(4, 200, 24, 12))
    coords = {"x": x, "t": t}
    tree["predictions"] = xr.Dataset({"u": (("chain", "draw", "x", "t"), field)}, coords=coords)
    tree["predictions_constant_data"] = xr.Dataset({"u_true": (("x", "t"), truth)}, coords=coords)
    return tree


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    uq.report(_tree(), path)
    return path


def test_report_is_self_contained_with_all_sections(report_path):
    text = report_path.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)=['\"]?(https?:|file:|//)", text)
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    # rank, ESS, energy, parameters vs truth, PPC density, PPC PIT, two calibration
    # figures (observed data, field) and the field maps
    assert len(images) >= 9, len(images)
    for heading in (
        "Provenance",
        "Diagnostics",
        "Unknown parameters",
        "Posterior predictive checks",
    ):
        assert f"<h2>{heading}</h2>" in text
    assert "<th>R-hat</th>" in text and "BFMI" in text and "observed coverage" in text
    assert "beta[0]" in text and "truth in 90%" in text
    assert "Simultaneous 90% band" in text
    assert "could not be drawn" not in text and "not drawn" not in text


def test_report_skips_mcmc_checks_for_other_kinds(tmp_path):
    path = uq.report(_tree(kind="variational", field=False), tmp_path / "vi.html")
    text = path.read_text(encoding="utf-8")
    assert "<th>R-hat</th>" not in text and "Rank plots" not in text
    assert "do not apply" in text


def test_report_rejects_a_tree_without_posterior(tmp_path):
    with pytest.raises(ValueError, match="posterior"):
        uq.report(xr.DataTree(), tmp_path / "x.html")


def test_report_renders_in_headless_chromium(report_path, tmp_path):
    import matplotlib.image

    shot = render_in_chromium(report_path, tmp_path)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    # the embedded plots rendered: saturated (coloured) pixels, which text and tables lack
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert np.mean(saturation > 0.3) > 0.01, np.mean(saturation > 0.3)


def _run_dir(root: Path, name: str, seed: int, backend: str) -> Path:
    run = root / name
    run.mkdir()
    tree = _tree(seed, field=False)  # the field sections are covered above; keep this fast
    tree.attrs["ucsciml_backend"] = backend
    save_tree(tree, run / "posterior.nc")
    metrics = {
        "backend": backend,
        "wall_time_s": 1.5 + seed,
        "diagnostics": {"verdict": "pass"},
        "parameters": {"lambda1": {"mean": 1.0, "sd": 0.1, "q05": 0.8, "q95": 1.2, "truth": 1.0}},
        "field": {"rel_l2": 0.01, "coverage_90": 0.9, "crps": 0.02, "nll": -1.0},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_cli_report_and_compare(tmp_path, capsys):
    a = _run_dir(tmp_path, "nuts-seed0", 0, "nuts")
    b = _run_dir(tmp_path, "vi-seed1", 1, "vi")
    assert main(["-q", "report", str(a)]) == 0
    assert (a / "report.html").stat().st_size > 10_000
    capsys.readouterr()
    html_path = tmp_path / "compare.html"
    assert main(["-q", "compare", str(a), str(b), "--html", str(html_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["run", "backend", "kind", "time", "(s)"]
    assert any(ln.startswith("nuts-seed0") and " nuts " in ln for ln in lines)
    assert any(ln.startswith("vi-seed1") and " vi " in ln for ln in lines)
    assert "ELPD-LOO" in lines[0] and "±" in out
    assert "<table>" in html_path.read_text(encoding="utf-8")
    assert main(["-q", "compare", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_run_writes_report_and_compare_two_backends(tmp_path, capsys):
    case = tmp_path / "tiny.toml"
    case.write_text(TINY_CASE)
    runs = []
    for backend in ("nuts", "laplace"):
        out = tmp_path / backend
        assert main(["-q", "run", str(case), "--backend", backend, "--out", str(out)]) == 0
        assert (out / "report.html").exists()
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"crps", "nll", "coverage_50", "coverage_90", "rel_l2"} <= set(metrics["field"])
        tree = uq.load(out / "posterior.nc")
        assert "predictions" in tree.children and "predictions_constant_data" in tree.children
        runs.append(out)
    capsys.readouterr()
    assert main(["-q", "compare", *map(str, runs), "--html", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "kappa" in out and "nuts" in out and "laplace" in out
