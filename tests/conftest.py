"""Shared fixtures: PRNG keys, the shared reference data, a conjugate regression program."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ucsciml as uq

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.exists():
    SHARED = Path(__file__).resolve().parents[1] / "shared"


#: Inputs the property-based (hypothesis) tests ran, by test and outcome; printed at the end
#: of the session (``pytest_terminal_summary``).
HYPOTHESIS_COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    if not HYPOTHESIS_COUNTS:
        return
    terminalreporter.section("hypothesis: generated inputs")
    tests = sorted({test for test, _ in HYPOTHESIS_COUNTS})
    for test in tests:
        outcomes = {o: n for (t, o), n in HYPOTHESIS_COUNTS.items() if t == test}
        detail = ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items()))
        terminalreporter.write_line(f"{test}: {sum(outcomes.values())} ({detail})")
    total = sum(n for (_, o), n in HYPOTHESIS_COUNTS.items())
    failed = sum(n for (_, o), n in HYPOTHESIS_COUNTS.items() if o == "FAILED")
    terminalreporter.write_line(
        f"total: {total} inputs, {failed} failed (uncaught exception, silent NaN or an error "
        "message naming no field or file)"
    )


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip the calling test when ``condition`` is false, or fail it when the environment
    variable ``CI`` is ``true``: in CI a missing tool (Chromium, simulated devices) is a
    broken environment, not a reason to pass silently."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this test must run in CI, so it fails, not skips)")
    pytest.skip(reason)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (reference solutions); skips when absent (a user's clone)."""
    path = SHARED / "data"
    if not path.exists():
        pytest.skip("../shared/data is absent (only present in the project's CI)")
    return path


NOISE_SD = 0.5
PRIOR_SD = 1.0


def regression_model(X, targets=None):
    """Bayesian linear regression with known noise: the conjugate test problem."""
    beta = numpyro.sample("beta", dist.Normal(0.0, PRIOR_SD).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(X @ beta, NOISE_SD), obs=targets)


def regression_data(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + NOISE_SD * rng.normal(size=n)
    return X, y


def exact_regression_posterior(X, y):
    """Closed-form Gaussian posterior of ``beta``: mean and covariance."""
    precision = X.T @ X / NOISE_SD**2 + np.eye(X.shape[1]) / PRIOR_SD**2
    cov = np.linalg.inv(precision)
    return cov @ (X.T @ y) / NOISE_SD**2, cov


@pytest.fixture
def regression():
    """(program, exact mean, exact covariance) of the conjugate regression."""
    X, y = regression_data()
    program = uq.Program.from_numpyro(
        regression_model,
        jnp.asarray(X),
        jnp.asarray(y),
        dims={"beta": ("feature",), "y": ("obs",), "inputs": ("obs", "feature")},
        name="regression",
    )
    mean, cov = exact_regression_posterior(X, y)
    return program, mean, cov


# A tiny heat-equation B-PINN case: seconds of compute, every run-directory file.
TINY_CASE = """
[case]
name = "tiny_heat"
seed = 0

[pde]
name = "heat"
kappa = { prior = "LogNormal", loc = -2.3, scale = 0.5, truth = 0.1 }

[data]
num_sensors = 30
noise = 0.01

[model]
name = "bpinn"
width = 8
depth = 1
num_collocation = 40
hard_constraints = true

[backend.nuts]
num_warmup = 30
num_samples = 30
num_chains = 2
max_tree_depth = 4
progress_bar = false

[evaluation]
grid = [8, 4]
"""


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """``cli.main`` attaches a console handler to the ``ucsciml`` logger writing to the
    test's captured stderr; remove it after the test so later tests do not log to a
    closed stream."""
    import logging

    logger = logging.getLogger("ucsciml")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
    logger.propagate, logger.level = propagate, level


CHROMIUM = "/usr/bin/chromium"


def render_in_chromium(page, tmp_path):
    """Open the HTML file ``page`` in headless Chromium and return the screenshot's path;
    fails on any console message or failed resource (skips outside CI when Chromium is
    missing)."""
    import os
    import subprocess

    require_or_skip(
        os.path.exists(CHROMIUM), "headless Chromium (Debian package `chromium`) is not installed"
    )
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # page console messages are logged as CONSOLE(...) lines; failed resources as net errors
    console = [ln for ln in result.stderr.splitlines() if "CONSOLE" in ln or "ERR_FILE" in ln]
    assert not console, console
    return shot
