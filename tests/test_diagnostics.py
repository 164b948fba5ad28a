import json

import arviz_base as azb
import numpy as np
import pytest

import ucsciml as uq


def _tree(chain_means, kind="mcmc", draws=500, network=True, seed=0):
    rng = np.random.default_rng(seed)
    chains = len(chain_means)
    lam = np.asarray(chain_means)[:, None] + 0.01 * rng.normal(size=(chains, draws))
    groups = {
        "posterior": {
            "lambda1": lam,
            "w0": rng.normal(size=(chains, draws, 3)) * np.arange(1, chains + 1)[:, None, None],
            "u": lam[..., None] + 0.01 * rng.normal(size=(chains, draws, 5)),
        },
        "sample_stats": {
            "diverging": np.zeros((chains, draws), bool),
            "energy": rng.normal(size=(chains, draws)),
            "reached_max_treedepth": np.zeros((chains, draws), bool),
        },
    }
    tree = azb.from_dict(groups, dims={"w0": ["hidden"], "u": ["sensor"]})
    tree.attrs.update(
        {
            "ucsciml_kind": kind,
            "ucsciml_network_sites": json.dumps(["w0"] if network else []),
            "ucsciml_physical_sites": json.dumps(["lambda1"] if network else ["lambda1", "w0"]),
        }
    )
    return tree


def test_mixed_chains_pass():
    diag = uq.diagnostics.check(_tree([1.0, 1.0, 1.0, 1.0]))
    assert diag.verdict == "pass" and diag.converged
    names = [r.name for r in diag.rows]
    assert names == ["lambda1", "u (worst of 5)"]
    assert all(r.rhat < 1.01 for r in diag.rows)


def test_weights_never_judged():
    # w0's chains have different scales (as permuted network weights would): they must not
    # make the run fail, because the weights are excluded from convergence diagnostics.
    diag = uq.diagnostics.check(_tree([1.0] * 4))
    assert "w0" not in " ".join(r.name for r in diag.rows)
    judged = uq.diagnostics.check(_tree([1.0] * 4, network=False))
    assert any(r.name.startswith("w0") and r.verdict == "warn" for r in judged.rows)


def test_stuck_chains_are_flagged_in_words():
    diag = uq.diagnostics.check(_tree([0.9, 1.0, 1.1, 1.2]))
    assert diag.verdict == "warn"
    assert not diag.converged
    text = diag.to_text()
    assert "did NOT mix" in text and "has not converged" in text
    lam = next(r for r in diag.rows if r.name == "lambda1")
    assert lam.rhat > 2 and lam.verdict == "warn"


def test_divergences_and_treedepth_warn():
    tree = _tree([1.0] * 4)
    stats = tree["sample_stats"].to_dataset()
    stats["diverging"][0, :3] = True
    stats["reached_max_treedepth"][1, :50] = True
    tree["sample_stats"] = tree["sample_stats"].assign(stats.data_vars)
    diag = uq.diagnostics.check(tree)
    assert diag.divergences == 3
    assert diag.max_treedepth_fraction == pytest.approx(50 / 2000)
    assert diag.verdict == "warn"
    assert any("divergent" in m for m in diag.messages)


@pytest.mark.parametrize("kind", ["variational", "ensemble", "laplace", "dropout"])
def test_non_mcmc_kinds_say_rhat_does_not_apply(kind):
    diag = uq.diagnostics.check(_tree([0.9, 1.1], kind=kind))
    assert diag.verdict == "n/a" and diag.converged is None  # no optimisation recorded
    assert all(r.rhat is None for r in diag.rows)
    assert "do not apply" in diag.messages[0]


def test_tree_without_posterior():
    import xarray as xr

    with pytest.raises(ValueError, match="no 'posterior' group"):
        uq.diagnostics.check(xr.DataTree())


def test_constant_quantities_are_not_called_unmixed():
    # Field values pinned by hard constraints never move: R-hat is 0/0 for them. A field
    # with every value pinned is reported constant; a partly pinned one is judged on the rest.
    tree = _tree([1.0] * 4)
    post = tree["posterior"].to_dataset()
    pinned = post["u"].copy(data=np.broadcast_to(np.arange(5.0), post["u"].shape).copy())
    partly = post["u"].copy()
    partly[..., 0] = 3.0
    for u, verdict in ((pinned, "constant"), (partly, "pass")):
        tree["posterior"] = post.assign(u=u)
        diag = uq.diagnostics.check(tree)
        row = next(r for r in diag.rows if r.name.startswith("u"))
        assert row.verdict == verdict
        assert diag.verdict == "pass" and "did NOT mix" not in diag.to_text()
