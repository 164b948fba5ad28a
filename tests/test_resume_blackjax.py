"""Crash-safe BlackJAX NUTS: killed with SIGKILL after warm-up or mid-sampling, a rerun with
the same settings, key and data resumes from its checkpoints to the very same draws.

As in :mod:`test_resume`, each run is killed in a subprocess right after its n-th checkpoint
of a phase (``UCSCIML_TEST_KILL_AFTER_CHUNK``), then resumed here and compared with an
uninterrupted run of the same seed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from test_compile_reuse import COMPILE, TRACE, compilations
from test_resume import _CACHE, TESTS, _run_killed, program

from ucsciml import checkpoint, inference

# 30 kept draws, checkpointed in chunks of 2 steps (15 chunks).
BLACKJAX = inference.NUTS(
    engine="blackjax", num_warmup=30, num_samples=30, num_chains=2, progress_bar=False
)
_KILLED = """
import sys
sys.path.insert(0, {tests!r})
import dataclasses, jax
from test_resume import program
from test_resume_blackjax import BLACKJAX
backend = dataclasses.replace(BLACKJAX, checkpoint_dir={folder!r})
backend.run(program(), jax.random.key(3))
"""


def _killed(folder: Path, phase: str, count: int) -> None:
    _run_killed(_KILLED.format(tests=TESTS, folder=str(folder)), phase, count)
    assert (folder / f"{phase}.npz").exists()


_RUN = """
import logging, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import dataclasses, jax, numpy as np
from test_resume import program
from test_resume_blackjax import BLACKJAX
backend = dataclasses.replace(BLACKJAX, checkpoint_dir={folder!r})
posterior = backend.run(program(), jax.random.key(3))
np.savez({out!r}, beta=posterior.samples["beta"],
         **{{k: np.asarray(v) for k, v in posterior.sample_stats.items()}})
"""


def _run_to_end(folder: Path | None, out: Path) -> tuple[dict, str]:
    """Run BlackJAX NUTS to the end in a fresh interpreter, in the killed runs' environment
    (one CPU device, their compilation cache), so the resumed, the fresh and the killed
    runs all share one compiled program: the pytest process may have compiled the same
    model under other settings earlier in the suite (other float rounding)."""
    code = _RUN.format(tests=TESTS, folder=None if folder is None else str(folder), out=str(out))
    env = {
        **os.environ,
        "UCSCIML_CPU_DEVICES": "1",
        "JAX_COMPILATION_CACHE_DIR": str(_CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    env.pop(checkpoint.KILL_AFTER, None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    with np.load(out) as saved:
        return {k: saved[k] for k in saved.files}, proc.stderr.decode()


def _resumed_and_fresh(folder: Path):
    resumed, log = _run_to_end(folder, folder.parent / f"{folder.name}-resumed.npz")
    fresh, _ = _run_to_end(None, folder.parent / f"{folder.name}-fresh.npz")
    return resumed, fresh, log


def _assert_same(resumed, fresh) -> None:
    np.testing.assert_allclose(resumed["beta"], fresh["beta"], rtol=1e-6)
    for name in ("n_steps", "step_size", "energy", "lp"):
        np.testing.assert_allclose(resumed[name], fresh[name], rtol=1e-6, err_msg=name)


@pytest.mark.slow  # ~30 s each: three fresh interpreters per test
def test_blackjax_killed_while_sampling_resumes_to_the_same_draws(tmp_path):
    _killed(tmp_path, "nuts-sample", 5)  # after kept step 10 of 30
    assert (tmp_path / "nuts-warmup.npz").exists()
    resumed, fresh, log = _resumed_and_fresh(tmp_path)
    assert "NUTS resumes from" in log and "at step 10" in log
    assert "warm-up done" not in log  # the sampling checkpoint holds the adapted kernel
    _assert_same(resumed, fresh)


@pytest.mark.slow  # ~30 s each: three fresh interpreters per test
def test_blackjax_killed_after_warmup_resumes_without_redoing_it(tmp_path):
    _killed(tmp_path, "nuts-warmup", 1)
    assert not (tmp_path / "nuts-sample.npz").exists()  # killed before sampling began
    resumed, fresh, log = _resumed_and_fresh(tmp_path)
    assert "nuts-warmup.npz: warm-up done" in log
    _assert_same(resumed, fresh)


def test_blackjax_checkpointing_changes_no_draw_and_compiles_nothing_more(tmp_path):
    plain = BLACKJAX.run(program(), jax.random.key(3))
    again = program()
    again.sites()  # a new program's one abstract trace of its sites; nothing compiles
    with compilations() as events:
        saved = dataclasses.replace(BLACKJAX, checkpoint_dir=str(tmp_path)).run(
            again, jax.random.key(3)
        )
    assert events[TRACE] == events[COMPILE] == 0, dict(events)
    # Checkpointed sampling runs in 20 chunks of the plain run's one executable: same draws.
    np.testing.assert_array_equal(plain.samples["beta"], saved.samples["beta"])
    for name, value in plain.sample_stats.items():
        np.testing.assert_array_equal(value, saved.sample_stats[name], err_msg=name)
    assert {p.name for p in tmp_path.iterdir()} == {"nuts-warmup.npz", "nuts-sample.npz"}
