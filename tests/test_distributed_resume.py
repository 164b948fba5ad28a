"""A distributed run killed in one process resumes with ``--resume``.

Three launches of the tiny NUTS case over 2 processes x 1 device (about 1.5-2 minutes each
on 2 loaded cores, so the test is slow-marked): an uninterrupted reference; a launch whose
process 1 kills itself (``SIGKILL``, the checkpoint test hook) after its 3rd sampling
checkpoint, which must fail with one line naming the process and ``--resume``; and the same
command with ``--resume``, which must continue from process 0's checkpoints and end with the
reference's draws. A fourth launch with ``--resume`` reuses the finished run.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_CASE

from ucsciml.checkpoint import KILL_AFTER
from ucsciml.launch import launch


@pytest.mark.slow
def test_a_launch_killed_in_one_process_resumes_to_the_uninterrupted_draws(
    tmp_path, monkeypatch, capsys
):
    case = tmp_path / "tiny.toml"
    case.write_text(TINY_CASE)
    # One compile cache for the four launches: only the first pays for compilation.
    monkeypatch.setenv("UCSCIML_CACHE_DIR", str(tmp_path / "xla"))
    monkeypatch.chdir(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert launch(2, ["-q", "run", str(case), "--out", str(reference)], devices=1) == 0

    command = ["-q", "run", str(case), "--out", str(killed)]
    monkeypatch.setenv(KILL_AFTER, "nuts-sample:3@1")
    assert launch(2, command, devices=1) == 1
    err = capsys.readouterr().err
    assert "process 1 of 2 was killed by SIGKILL" in err and "`--resume`" in err
    assert not (killed / "posterior.nc").exists()
    assert (killed / "checkpoints" / "nuts-sample.npz").is_file()

    monkeypatch.delenv(KILL_AFTER)
    assert launch(2, [*command, "--resume"], devices=1) == 0
    log = (killed / "log.txt").read_text()
    assert "resume: all 2 processes resume from process 0's posterior.nc" in log
    assert "NUTS resumes from" in log
    one = xr.open_datatree(reference / "posterior.nc")
    two = xr.open_datatree(killed / "posterior.nc")
    for name, value in one["posterior"].ds.data_vars.items():
        np.testing.assert_allclose(
            two["posterior"].ds[name].values, value.values, rtol=1e-6, atol=1e-6
        )

    assert launch(2, [*command, "--resume"], devices=1) == 0
    assert "resume: reusing" in (killed / "log.txt").read_text()
