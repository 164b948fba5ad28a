"""Crash-safe BlackJAX NUTS: killed with SIGKILL after warm-up or mid-sampling, a rerun with
the same settings, key and data resumes from its checkpoints to the very same draws.

As in :mod:`test_resume`, each run is killed in a subprocess right after its n-th checkpoint
of a phase (``UCSCIML_TEST_KILL_AFTER_CHUNK``), then resumed here and compared with an
uninterrupted run of the same seed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np
from test_compile_reuse import COMPILE, TRACE, compilations
from test_resume import TESTS, _run_killed, program

from ucsciml import inference

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


def _resumed_and_fresh(folder: Path, caplog):
    with caplog.at_level(logging.INFO, logger="ucsciml"):
        resumed = dataclasses.replace(BLACKJAX, checkpoint_dir=str(folder)).run(
            program(), jax.random.key(3)
        )
    fresh = BLACKJAX.run(program(), jax.random.key(3))
    return resumed, fresh, caplog.text


def _assert_same(resumed, fresh) -> None:
    np.testing.assert_allclose(resumed.samples["beta"], fresh.samples["beta"], rtol=1e-6)
    for name in ("n_steps", "step_size", "energy", "lp"):
        np.testing.assert_allclose(
            resumed.sample_stats[name], fresh.sample_stats[name], rtol=1e-6, err_msg=name
        )


def test_blackjax_killed_while_sampling_resumes_to_the_same_draws(tmp_path, caplog):
    _killed(tmp_path, "nuts-sample", 5)  # after kept step 10 of 30
    assert (tmp_path / "nuts-warmup.npz").exists()
    resumed, fresh, log = _resumed_and_fresh(tmp_path, caplog)
    assert "NUTS resumes from" in log and "at step 10" in log
    assert "warm-up done" not in log  # the sampling checkpoint holds the adapted kernel
    _assert_same(resumed, fresh)


def test_blackjax_killed_after_warmup_resumes_without_redoing_it(tmp_path, caplog):
    _killed(tmp_path, "nuts-warmup", 1)
    assert not (tmp_path / "nuts-sample.npz").exists()  # killed before sampling began
    resumed, fresh, log = _resumed_and_fresh(tmp_path, caplog)
    assert "nuts-warmup.npz: warm-up done" in log
    _assert_same(resumed, fresh)


def test_blackjax_checkpointing_changes_no_draw_and_compiles_nothing_more(tmp_path):
    plain = BLACKJAX.run(program(), jax.random.key(3))
    with compilations() as events:
        saved = dataclasses.replace(BLACKJAX, checkpoint_dir=str(tmp_path)).run(
            program(), jax.random.key(3)
        )
    assert events[TRACE] == events[COMPILE] == 0, dict(events)
    # Checkpointed sampling runs in 20 chunks of the plain run's one executable: same draws.
    np.testing.assert_array_equal(plain.samples["beta"], saved.samples["beta"])
    for name, value in plain.sample_stats.items():
        np.testing.assert_array_equal(value, saved.sample_stats[name], err_msg=name)
    assert {p.name for p in tmp_path.iterdir()} == {"nuts-warmup.npz", "nuts-sample.npz"}
