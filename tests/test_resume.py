"""Crash-safe runs: a backend killed with SIGKILL mid-phase resumes to the very same result.

Each test kills a run in a subprocess right after its n-th checkpoint of a chosen phase
(the ``UCSCIML_TEST_KILL_AFTER_CHUNK=phase:n`` hook of :mod:`ucsciml.checkpoint`), resumes it
here from the checkpoint folder and compares with an uninterrupted run of the same seed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CASE, regression_data, regression_model
from test_compile_reuse import COMPILE, TRACE, compilations

import ucsciml as uq
from ucsciml import checkpoint, inference
from ucsciml.inference import MAPFit

TESTS = str(Path(__file__).parent)
MAP = MAPFit(adam_steps=40, lbfgs_steps=10)
BACKENDS = {
    "nuts": inference.NUTS(
        num_warmup=30, num_samples=30, num_chains=2, init="map", map=MAP, progress_bar=False
    ),
    "ensemble": inference.DeepEnsemble(num_members=3, map=MAP),
    "laplace": inference.Laplace(map=MAP, num_samples=16),
}
_CACHE = Path(tempfile.gettempdir()) / f"ucsciml-test-resume-cache-{os.getuid()}"
_KILLED = """
import sys
sys.path.insert(0, {tests!r})
import dataclasses, jax
from test_resume import BACKENDS, program
backend = dataclasses.replace(BACKENDS[{name!r}], checkpoint_dir={folder!r})
backend.run(program(), jax.random.key(3))
"""


def program() -> uq.Program:
    X, y = regression_data()
    return uq.Program.from_numpyro(regression_model, jnp.asarray(X), jnp.asarray(y))


def _run_killed(code: str, phase: str, count: int) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself after checkpoint ``count`` of
    ``phase``; fail unless it died that way. It sees one CPU device, as this process does
    (the CLI would split chains over one device per core: other float rounding)."""
    env = {
        **os.environ,
        "UCSCIML_CPU_DEVICES": "1",
        checkpoint.KILL_AFTER: f"{phase}:{count}",
        # The killed processes share compiled code through JAX's persistent cache.
        "JAX_COMPILATION_CACHE_DIR": str(_CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=300, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


def _killed_backend(name: str, folder: Path, phase: str, count: int) -> None:
    _run_killed(_KILLED.format(tests=TESTS, name=name, folder=str(folder)), phase, count)
    assert (folder / f"{phase}.npz").exists()


def _resumed_and_fresh(name: str, folder: Path, caplog):
    import dataclasses

    backend = BACKENDS[name]
    with caplog.at_level(logging.INFO, logger="ucsciml"):
        resumed = dataclasses.replace(backend, checkpoint_dir=str(folder)).run(
            program(), jax.random.key(3)
        )
    fresh = backend.run(program(), jax.random.key(3))
    return resumed, fresh, caplog.text


@pytest.mark.slow  # with the next test, ~50 s: a fresh interpreter compiles NUTS each time
@pytest.mark.parametrize(
    ("phase", "count", "resumed_at"),
    [("nuts-map-Adam", 2, "Adam at step 8"), ("nuts-map-L-BFGS", 1, "L-BFGS at step 41")],
)
def test_nuts_killed_in_map_init_resumes_to_the_same_draws(
    tmp_path, caplog, phase, count, resumed_at
):
    _killed_backend("nuts", tmp_path, phase, count)
    assert not (tmp_path / "nuts-sample.npz").exists()  # killed before sampling began
    resumed, fresh, log = _resumed_and_fresh("nuts", tmp_path, caplog)
    assert f"resumes from {resumed_at}" in log  # the finished chunks were not redone
    np.testing.assert_allclose(resumed.samples["beta"], fresh.samples["beta"], rtol=1e-6)
    np.testing.assert_array_equal(resumed.sample_stats["n_steps"], fresh.sample_stats["n_steps"])


@pytest.mark.slow
def test_nuts_killed_while_sampling_resumes_to_the_same_draws(tmp_path, caplog):
    # 60 steps in chunks of 3: killed after step 15 (the end of warm-up is step 30).
    _killed_backend("nuts", tmp_path, "nuts-sample", 5)
    resumed, fresh, log = _resumed_and_fresh("nuts", tmp_path, caplog)
    assert "NUTS resumes from" in log and "at step 15" in log
    assert "resumes from L-BFGS at step 50" in log  # the finished MAP start is reused
    np.testing.assert_allclose(resumed.samples["beta"], fresh.samples["beta"], rtol=1e-6)
    for name in ("n_steps", "step_size", "energy"):
        np.testing.assert_allclose(
            resumed.sample_stats[name], fresh.sample_stats[name], rtol=1e-6, err_msg=name
        )


def test_ensemble_killed_mid_fit_resumes_to_the_same_members(tmp_path, caplog):
    _killed_backend("ensemble", tmp_path, "ensemble-Adam", 3)
    resumed, fresh, log = _resumed_and_fresh("ensemble", tmp_path, caplog)
    assert "ensemble resumes from Adam at step 12" in log
    np.testing.assert_allclose(resumed.samples["beta"], fresh.samples["beta"], rtol=1e-6)
    opt_resumed, opt_fresh = resumed.attrs["optimization"], fresh.attrs["optimization"]
    np.testing.assert_allclose(
        opt_resumed["final_loss_per_member"], opt_fresh["final_loss_per_member"], rtol=1e-6
    )


def test_checkpointing_changes_no_draw_and_compiles_nothing_more(tmp_path):
    import dataclasses

    for name, backend in BACKENDS.items():
        plain = backend.run(program(), jax.random.key(3))
        again = program()
        again.sites()  # a new program's one abstract trace of its sites; nothing compiles
        with compilations() as events:
            saved = dataclasses.replace(backend, checkpoint_dir=str(tmp_path / name)).run(
                again, jax.random.key(3)
            )
        assert events[TRACE] == events[COMPILE] == 0, (name, dict(events))
        # Checkpointed NUTS samples in 20 chunks, the plain run in one call: same draws.
        np.testing.assert_array_equal(plain.samples["beta"], saved.samples["beta"])


def test_stale_checkpoints_are_ignored(tmp_path):
    import dataclasses

    X, y = regression_data(seed=1)
    other_data = uq.Program.from_numpyro(regression_model, jnp.asarray(X), jnp.asarray(y))
    backend = dataclasses.replace(BACKENDS["ensemble"], checkpoint_dir=str(tmp_path))
    first = backend.run(program(), jax.random.key(3))
    # Other data, same shapes: the finished checkpoints' fingerprint differs, so they are
    # ignored (logged) and the fit starts afresh.
    other = backend.run(other_data, jax.random.key(3))
    fresh = BACKENDS["ensemble"].run(other_data, jax.random.key(3))
    np.testing.assert_array_equal(other.samples["beta"], fresh.samples["beta"])
    assert not np.allclose(first.samples["beta"], other.samples["beta"])
    for name in ("ensemble-Adam.npz", "ensemble-L-BFGS.npz"):  # unreadable: ignored too
        (tmp_path / name).write_bytes(b"not a checkpoint")
    garbled = backend.run(other_data, jax.random.key(3))
    np.testing.assert_array_equal(garbled.samples["beta"], fresh.samples["beta"])


_KILLED_CLI = """
from ucsciml.cli import main
raise SystemExit(main(["run", {case!r}, "--out", {out!r}]))
"""

RESUMABLE_CASE = (
    TINY_CASE.replace("num_warmup = 30", "num_warmup = 10")
    .replace("num_samples = 30", "num_samples = 10")
    .replace(
        "progress_bar = false",
        'progress_bar = false\ninit = "map"\nmap = { adam_steps = 40, lbfgs_steps = 10 }',
    )
)


@pytest.mark.slow  # two tiny B-PINN runs and a killed one in a subprocess (~2 min)
def test_cli_run_killed_while_sampling_resumes_with_resume(tmp_path):
    from ucsciml import config
    from ucsciml.runner import run_case

    case = tmp_path / "tiny.toml"
    case.write_text(RESUMABLE_CASE)
    out = tmp_path / "killed"
    _run_killed(_KILLED_CLI.format(case=str(case), out=str(out)), "nuts-sample", 4)
    assert (out / "checkpoints" / "nuts-sample.npz").exists()
    assert not (out / "posterior.nc").exists()
    cfg = config.load_case(case)
    resumed = run_case(cfg, out=out, resume=True)
    assert not (out / "checkpoints").exists()  # posterior.nc now holds the result
    fresh = run_case(cfg, out=tmp_path / "fresh")
    a = uq.load(out / "posterior.nc")["posterior"]
    b = uq.load(tmp_path / "fresh" / "posterior.nc")["posterior"]
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-6, err_msg=name)
    assert resumed.metrics["parameters"] == fresh.metrics["parameters"]


@pytest.mark.slow  # one tiny B-PINN run and its resume (~25 s)
def test_posterior_without_network_weights_keeps_parameters_and_field(tmp_path):
    from ucsciml import config
    from ucsciml.posterior import tree_attr
    from ucsciml.runner import run_case

    case = tmp_path / "tiny.toml"
    case.write_text(TINY_CASE + "\n[output]\nsave_network_weights = false\n")
    cfg = config.load_case(case)
    first = run_case(cfg, out=tmp_path / "run")
    tree = uq.load(tmp_path / "run" / "posterior.nc")
    network = set(tree_attr(tree, "ucsciml_network_sites"))
    assert network and not network & set(tree["posterior"].data_vars)
    assert "kappa" in tree["posterior"] and "u" in tree["predictions"]
    again = run_case(cfg, out=tmp_path / "run", resume=True)  # from the stored predictions
    assert again.metrics["resumed"] and again.metrics["field"] == first.metrics["field"]


def test_output_table_is_checked():
    from conftest import TINY_CASE as case

    from ucsciml.config import ConfigError, resolve_config

    raw = tomllib.loads(case)
    assert resolve_config(raw)["output"] == {"save_network_weights": True}
    assert resolve_config({**raw, "output": {"save_network_weights": False}})["output"] == {
        "save_network_weights": False
    }
    with pytest.raises(ConfigError, match="save_network_weights must be bool"):
        resolve_config({**raw, "output": {"save_network_weights": "no"}})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config({**raw, "output": {"save_weights": False}})


def test_save_without_network_weights(tmp_path):
    import numpyro
    import numpyro.distributions as dist

    from ucsciml.posterior import Posterior

    def model(X, targets=None):  # "beta" plays the network, "noise" a physical parameter
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        noise = numpyro.sample("noise", dist.LogNormal(-0.7, 0.3))
        with numpyro.plate("obs", X.shape[0], dim=-1):
            numpyro.sample("y", dist.Normal(X @ beta, noise), obs=targets)

    X, y = regression_data()
    net = uq.Program.from_numpyro(model, jnp.asarray(X), jnp.asarray(y), network_sites=("beta",))
    posterior = inference.Laplace(map=MAP, num_samples=16).run(net, jax.random.key(0))
    full = uq.load(posterior.save(tmp_path / "full.nc"))
    light = uq.load(posterior.save(tmp_path / "light.nc", network_weights=False))
    assert "beta" in full["posterior"] and "beta" not in light["posterior"]
    np.testing.assert_array_equal(light["posterior"]["noise"], full["posterior"]["noise"])
    assert set(light.children) == set(full.children)  # every other group is kept
    np.testing.assert_array_equal(
        light["log_likelihood"]["y"].values, full["log_likelihood"]["y"].values
    )
    reloaded = Posterior.from_datatree(light, net, jax.random.key(1))
    with pytest.raises(ValueError, match="save_network_weights"):
        reloaded.predict(np.ones((2, 3)), jax.random.key(2))
