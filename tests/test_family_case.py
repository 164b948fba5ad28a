"""Family cases through the spine: the shared training loop, strict [model] tables, the run
directory, summary, report and resume, on a toy family with an exact answer."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import render_in_chromium

from ucsciml import cli, config, optimize, registry, runner
from ucsciml.family_case import FamilyRun
from ucsciml.posterior import draws_tree, load


def _noisy_quadratic(target):
    def loss(theta, key):
        return jnp.sum((theta - target - 0.1 * jax.random.normal(key, theta.shape)) ** 2)

    return loss


def test_train_reaches_the_minimum_of_a_stochastic_quadratic():
    # E[(theta - t - 0.1 eps)^2] is minimised at theta = t; with a decayed rate the end
    # point's noise is far below 0.02 (the step noise is 0.1 * lr at the end).
    target = jnp.array([1.5, -2.0])
    opt = optimize.adam(0.05, 2000, "exponential")
    out = optimize.train(
        _noisy_quadratic(target),
        jnp.zeros(2),
        opt,
        num_steps=2000,
        key=jax.random.key(0),
        phase="toy",
        progress=False,
    )
    np.testing.assert_allclose(np.asarray(out.params), np.asarray(target), atol=0.02)
    assert out.losses.shape == (2000,)
    assert out.verdict["converged"] and out.verdict["stochastic"]
    record = out.record("loss")
    assert record["convergence"]["converged"] and len(record["trace"]) == 2000


def test_train_flags_a_fit_that_is_still_moving_and_keys_match_split():
    # 200 constant-rate steps of 0.05 move theta by at most ~10 of the 50 it has to go: the
    # loss still falls by several percent per window, far outside the noise
    opt = optimize.adam(0.05, 200, "constant")
    out = optimize.train(
        _noisy_quadratic(jnp.array([50.0])),
        jnp.zeros(1),
        opt,
        num_steps=200,
        key=jax.random.key(1),
        phase="toy",
        progress=False,
    )
    assert not out.verdict["converged"]
    # step_keys="split" uses the k-th of split(key, num_steps), as the old family loops did
    seen = []
    keys = jax.random.split(jax.random.key(2), 4)

    def loss(theta, key):
        return jnp.sum(theta * jax.random.normal(key, theta.shape))

    a = optimize.train(
        loss,
        jnp.ones(3),
        optax.sgd(0.0),
        num_steps=4,
        key=jax.random.key(2),
        phase="k",
        step_keys="split",
        progress=False,
        chunk_size=3,
    )
    for k in keys:
        seen.append(float(jnp.sum(jax.random.normal(k, (3,)))))
    np.testing.assert_allclose(a.losses, seen, rtol=1e-6)
    with pytest.raises(ValueError, match="step_keys"):
        optimize.train(
            loss,
            jnp.ones(3),
            optax.sgd(0.1),
            num_steps=4,
            key=jax.random.key(0),
            phase="k",
            step_keys="bad",
        )


@dataclass(frozen=True)
class ToyCase:
    """A normal mean with known variance: y_i ~ N(mu, 1), mu ~ N(0, 10^2); the posterior
    is exact (closed form), and a fit of the posterior mean by Adam is judged."""

    backends: ClassVar[tuple[str, ...]] = ("closed_form",)
    own_backends: ClassVar[tuple[str, ...]] = ("closed_form",)

    mu: float = 0.7
    num_observations: int = 50
    num_steps: int = 1500
    learning_rate: float = 0.05
    schedule: str = "exponential"

    def __post_init__(self):
        if self.num_observations < 1:
            raise ValueError(f"[model] num_observations must be >= 1, got {self.num_observations}")

    def run(self, backend, settings, *, key, progress):
        assert backend == "closed_form" and settings is None
        data_key, fit_key, draw_key = jax.random.split(key, 3)
        y = self.mu + jax.random.normal(data_key, (self.num_observations,))
        precision = self.num_observations + 1 / 100
        mean, sd = float(jnp.sum(y) / precision), float(precision**-0.5)

        def loss(m, k):
            batch = jax.random.choice(k, y, (10,))
            return 0.5 * self.num_observations * jnp.mean((batch - m) ** 2) + m**2 / 200

        opt = optimize.adam(self.learning_rate, self.num_steps, self.schedule)
        fit = optimize.train(
            loss,
            jnp.zeros(()),
            opt,
            num_steps=self.num_steps,
            key=fit_key,
            phase="toy mean",
            progress=progress,
        )
        draws = mean + sd * np.asarray(jax.random.normal(draw_key, (2, 500)))
        tree = draws_tree(
            {"mu": draws},
            kind="closed_form",
            program="toy",
            physical_sites=("mu",),
            optimization=fit.record("loss"),
            attrs={"truth": {"mu": self.mu}},
        )
        return FamilyRun(tree, {"mu": {"exact_mean": mean, "fitted_mean": float(fit.params)}})


@pytest.fixture
def toy_family(monkeypatch):
    module = types.ModuleType("ucsciml_toy_family")
    module.ToyCase = ToyCase
    monkeypatch.setitem(sys.modules, "ucsciml_toy_family", module)
    monkeypatch.setitem(registry.CASES, "toy", "ucsciml_toy_family:ToyCase")


def _write(tmp_path, text):
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


def test_family_case_files_are_strict(toy_family, tmp_path):
    ok = '[case]\nname = "toy"\n[model]\nname = "toy"\nnum_steps = 10\n'
    cfg = config.load_case(_write(tmp_path, ok))
    assert cfg["case"]["backend"] == "closed_form"  # the family's first backend by default
    assert cfg["model"]["num_steps"] == 10 and cfg["model"]["mu"] == 0.7
    for bad, match in (
        (ok + "bogus = 1\n", r"unknown key\(s\) \['bogus'\] in \[model\]"),
        (ok + 'learning_rate = "fast"\n', "learning_rate"),
        (ok + "[pde]\nname = 'heat'\n", r"\['pde'\] do not apply to model 'toy'"),
        (
            ok.replace('name = "toy"\n[model]', 'name = "toy"\nbackend = "nuts"\n[model]'),
            "backend 'nuts' does not apply",
        ),
        (ok + "[backend.closed_form]\nx = 1\n", "is its own fit"),
    ):
        with pytest.raises(config.ConfigError, match=match):
            config.load_case(_write(tmp_path, bad))
    with pytest.raises(config.ConfigError, match="num_observations must be >= 1"):
        config.build_family(config.load_case(_write(tmp_path, ok + "num_observations = 0\n")))


def test_family_run_writes_the_standard_run_directory(toy_family, tmp_path, capsys):
    case = _write(tmp_path, '[case]\nname = "toy"\nseed = 3\n[model]\nname = "toy"\n')
    result = runner.run_case(config.load_case(case), out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("posterior.nc", "metrics.json", "report.html", "config.toml", "log.txt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    numbers = metrics["family"]["mu"]
    # the Adam fit of the posterior mean agrees with the closed form to its step noise
    assert abs(numbers["fitted_mean"] - numbers["exact_mean"]) < 0.05
    tree = load(run / "posterior.nc")
    assert tree["posterior"]["mu"].shape == (2, 500)
    assert "optimization" in tree.children
    assert result.diagnostics.optimization and result.diagnostics.optimization[0]["converged"]
    render_in_chromium(run / "report.html", tmp_path)  # no console errors
    html = (run / "report.html").read_text()
    assert "Results" in html and "fitted_mean" in html and "truth" in html
    assert cli.main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mu.exact_mean" in out and "toy mean" in out
    again = runner.run_case(config.load_case(case), out=run, resume=True)
    assert again.metrics["resumed"] and again.metrics["family"] == metrics["family"]


def test_an_unconverged_family_fit_is_a_warning(toy_family, tmp_path):
    case = _write(
        tmp_path,
        '[case]\nname = "toy"\n[model]\nname = "toy"\nmu = 50.0\nnum_steps = 100\nlearning_rate = 0.2\nschedule = "constant"\n',
    )
    result = runner.run_case(config.load_case(case), out=tmp_path / "run")
    assert not result.diagnostics.optimization[0]["converged"]
    assert any("toy mean" in m for m in result.diagnostics.messages)
