"""Deep ensembles: M MAP fits as one vmapped (and device-sharded) computation."""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.primitives import Messenger

from ucsciml import checkpoint
from ucsciml._types import PRNGKey
from ucsciml.convergence import judge
from ucsciml.inference._chains import chain_keys, map_chains, num_shards, tile
from ucsciml.inference._map import (
    ProgramSignature,
    check_continuous,
    constrain_fn,
    family_of,
    potential_family,
)
from ucsciml.inference._mapfit import MapFitter
from ucsciml.inference._mapfit_settings import MAPFit, fold_legacy, legacy, map_field, settings_of
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepEnsemble:
    r"""An ensemble of MAP fits from independent initialisations; optionally anchored.

    Member ``m`` minimises the potential :math:`U(z) = -\log p(y, z)` in unconstrained
    space from its own prior draw, with Adam then (optionally) L-BFGS (``map``). With
    ``anchored=True`` each member instead minimises the randomise-then-optimise objective

    .. math::
        U_m(\theta) = -\log p(\tilde y_m \mid \theta) - \log p_0(\theta - a_m + \mu_0),\qquad
        a_m \sim p_0,\quad \tilde y_m = y + \sigma\,\xi_m,\ \xi_m \sim \mathcal N(0, I):

    the prior is re-centred on a prior draw ``a_m`` and the data are perturbed by the
    likelihood noise. For a linear-Gaussian model the minimisers are exact posterior
    draws. Anchoring applies to ``Normal``, ``MultivariateNormal`` and ``LogNormal``
    priors (re-centred in their Gaussian base) and perturbation to ``Normal`` likelihoods
    (data and pseudo-observations such as PDE residuals, with the scale stopped from
    gradients); other sites keep their plain terms, so with non-Gaussian priors, a latent
    noise scale or a nonlinear model the ensemble is an approximation.

    **Antithetic pairs** (``antithetic=True``, the default when anchored): member ``2k+1``
    takes member ``2k``'s anchor and noise reflected through the prior's location and the
    data, :math:`a_{2k+1} = 2\mu_0 - a_{2k}` (in the Gaussian base of each site, parents
    first, so the pair are both prior draws) and :math:`\xi_{2k+1} = -\xi_{2k}`. For a
    linear-Gaussian model the minimiser is affine in :math:`(a, \xi)`, so each pair averages
    to the posterior mean exactly and the ensemble mean carries no Monte Carlo error; the
    spread is estimated from the ``M/2`` pairs. Each member still starts from its own prior
    draw; an odd ``M`` leaves the last member unpaired. Antithetic variates: Hammersley &
    Morton (1956), A new Monte Carlo technique: antithetic variates, Proc. Camb. Phil. Soc.

    **Layout.** Members are the ``draw`` axis of a single chain: samples have shape
    ``(chain=1, draw=num_members, ...)``, so pooled statistics over ``(chain, draw)`` are
    ensemble statistics and ArviZ's conventions (draws outnumber chains) hold. Member ``m``
    uses ``fold_in(key, m)`` whatever the device layout; members are one ``vmap`` on a device
    and split evenly over devices (``shard_map``) when there are several and ``shard=True``.
    R-hat and ESS do not apply (members are independent optimisations, not Markov chain
    draws); diagnostics say so.

    **Compile once.** The data are traced arguments of executables cached per model, data
    shapes and settings: a second run, or a new program of the same model on new data of the
    same shapes, traces and compiles nothing.

    Args:
        num_members: ensemble size M.
        map: each member's MAP fit (:class:`~ucsciml.inference.MAPFit`; default 3000 Adam
            steps at 1e-2, then 200 L-BFGS steps).
        anchored: randomise-then-optimise members (see above).
        antithetic: anchored members in antithetic pairs (see above); ignored unless
            ``anchored``.
        shard: split members across devices when there are several.
        checkpoint_dir: folder for checkpoints of the member fits (``None``: none): all
            members' optimiser states and losses are saved after every chunk of each phase
            (``ensemble-Adam.npz``, ``ensemble-L-BFGS.npz``); a later run with the same
            settings, key and data continues from the last one and ends with the very
            members an uninterrupted run fits.

    Example:
        >>> posterior = DeepEnsemble(num_members=8).run(program, jax.random.key(0))
        ... # doctest: +SKIP

    References:
        Lakshminarayanan, Pritzel & Blundell (2017), Simple and scalable predictive
        uncertainty estimation using deep ensembles, NeurIPS. Pearce, Leibfried & Brintrup
        (2020), Uncertainty in neural networks: approximately Bayesian ensembling, AISTATS.
        Bardsley, Solonen, Haario & Laine (2014), Randomize-then-optimize, SIAM J. Sci.
        Comput. 36(4).

    ``num_steps``, ``learning_rate`` and ``lbfgs_steps`` are deprecated spellings of
    ``map=MAPFit(adam_steps=..., learning_rate=..., lbfgs_steps=...)``.
    """

    num_members: int = 8
    map: MAPFit = map_field(adam_steps=3000, learning_rate=1e-2, lbfgs_steps=200)
    anchored: bool = False
    antithetic: bool = True
    shard: bool = True
    checkpoint_dir: str | None = None
    num_steps: int | None = legacy("adam_steps")
    learning_rate: float | None = legacy("learning_rate")
    lbfgs_steps: int | None = legacy("lbfgs_steps")

    def __post_init__(self):
        fold_legacy(self)
        value = self.num_members
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"DeepEnsemble.num_members must be an integer >= 1, got {value!r}")
        for name in ("anchored", "antithetic", "shard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DeepEnsemble.{name} must be true or false")

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Fit the members and return them as ``(chain=1, draw=M)`` draws.

        Raises:
            ValueError: for discrete latent sites, before any compute.
        """
        check_continuous(program, "DeepEnsemble")
        run_key, predictive_key = jax.random.split(key)
        keys = chain_keys(run_key, self.num_members)
        slot = self._slot(program, key)
        if self.anchored:
            z, losses, grads, shards = self._fit_anchored(program, keys, slot)
        else:
            z, losses, grads, shards = self._fit_batches(
                program, keys, tile(program.targets, len(keys)), checkpoint=slot
            )
        signature = ProgramSignature(program)
        constrained = constrain_fn(signature)(z, program.inputs, program.targets)
        final = np.asarray(losses[:, -1], dtype=float)
        if not np.isfinite(final).all():
            log.warning(
                "%d of %d ensemble members ended at a non-finite loss; lower map.learning_rate",
                int((~np.isfinite(final)).sum()),
                self.num_members,
            )
        optimization = {
            "objective": "anchored potential" if self.anchored else "negative log joint",
            "final_loss_per_member": final.tolist(),
            "convergence": self._verdict(losses, grads, "ensemble members"),
        }
        return self._posterior(program, constrained, predictive_key, shards, optimization)

    def _posterior(self, program, constrained, key, shards, optimization) -> Posterior:
        """Fits as draws ``(chain=1, draw=fit)``, with this backend's provenance."""
        return Posterior(
            samples={k: np.asarray(v)[None] for k, v in constrained.items()},
            program=program,
            key=key,
            kind="ensemble",
            attrs=provenance(
                backend="ensemble",
                settings=settings_of(self),
                shards=shards,
                optimization=optimization,
            ),
        )

    def fit_replicates(self, program: Program, targets, key: PRNGKey) -> Posterior:
        """One MAP fit per replicate dataset, all in one compiled, vmapped computation.

        Replicate ``r`` minimises the program's potential with ``targets[r]`` (a pytree like
        ``program.targets`` with a leading replicate axis) from its own prior draw
        (``fold_in(key, r)``), with this ensemble's optimiser settings; anchoring is not
        applied (each replicate is one plain MAP fit, the unit an ensemble averages).

        Returns:
            A Posterior with draws ``(chain=1, draw=R)``: draw ``r`` is replicate ``r``'s fit.
            ``attrs["optimization"]["final_loss_per_member"]`` holds each fit's final loss.

        Raises:
            ValueError: for discrete latent sites, or targets without a replicate axis.
        """
        check_continuous(program, "DeepEnsemble.fit_replicates")
        leaves = jax.tree.leaves(targets)
        expected = [np.ndim(x) + 1 for x in jax.tree.leaves(program.targets)]
        if not leaves or [np.ndim(x) for x in leaves] != expected:
            raise ValueError(
                "fit_replicates needs targets shaped like program.targets with a leading "
                "replicate axis"
            )
        num = int(np.shape(leaves[0])[0])
        z, losses, grads, shards = self._fit_batches(
            program, chain_keys(key, num), targets, desc="replicate refits"
        )
        constrain = constrain_fn(ProgramSignature(program))
        constrained = constrain(z, program.inputs, program.targets)
        optimization = {
            "objective": "negative log joint (replicate data)",
            "final_loss_per_member": np.asarray(losses[:, -1], dtype=float).tolist(),
            "convergence": self._verdict(losses, grads, "replicate refits"),
        }
        return self._posterior(program, constrained, key, shards, optimization)

    def _slot(self, program: Program, key: PRNGKey) -> checkpoint.Slot | None:
        """The members' checkpoint slot, fingerprinted by these settings (less the folder),
        the run's key and the data; ``None`` without a ``checkpoint_dir``."""
        if self.checkpoint_dir is None:
            return None
        settings = {k: v for k, v in settings_of(self).items() if k != "checkpoint_dir"}
        data = (program.inputs, program.targets)
        fingerprint = checkpoint.fingerprint(settings, key, data, program.name)
        return checkpoint.Slot(self.checkpoint_dir, "ensemble", fingerprint)

    def _verdict(self, losses, grads, phase: str) -> dict:
        hint = (
            "raise map.lbfgs_steps (an L-BFGS polish converges where Adam's decayed rate stalls)"
            if self.map.lbfgs_steps == 0
            else "raise map.adam_steps or map.lbfgs_steps, or lower map.learning_rate"
        )
        return judge(
            np.asarray(losses),
            np.asarray(grads),
            phase=phase,
            gtol=self.map.lbfgs_tol,
            hint=hint,
        )

    def _fit_anchored(self, program: Program, keys, slot=None):
        """Randomise-then-optimise members (see the class docstring), through one cached
        executable per model, data shapes and settings (:func:`_anchored_fitter`)."""
        _log_unanchored(program)
        fit, shards = _anchored_fitter(
            ProgramSignature(program), self.map, self.num_members, self.shard, self.antithetic
        )
        data = tile((program.inputs, program.targets), self.num_members)
        z, losses, grads = fit((keys, *_pairing(keys, self.antithetic), *data), checkpoint=slot)
        return z, losses, grads, shards

    def _fitter(self, program: Program, batch: int):
        return _map_fitter(ProgramSignature(program), self.map, batch, self.shard)

    def _fit_batches(
        self, program: Program, keys, targets, desc: str = "ensemble members", checkpoint=None
    ):
        """Plain MAP fits, one per key and target set, ``num_members`` at a time through one
        cached executable (:func:`_map_fitter`): an ensemble's members and every batch of
        replicate refits of the same program compile once. A ``checkpoint`` slot (one batch
        only) saves and resumes the fits."""
        num = int(keys.shape[0])
        batch = min(self.num_members, num)
        if num % batch:
            raise ValueError(
                f"{num} fits do not split into batches of num_members = {batch}; use a "
                "multiple of num_members"
            )
        fit, shards = self._fitter(program, batch)
        inputs = tile(program.inputs, batch)
        zs, losses, grads = [], [], []
        for start in range(0, num, batch):
            part = _rows(targets, start, start + batch)
            label = desc if num == batch else f"{desc} {start // batch + 1}/{num // batch}"
            slot = checkpoint if num == batch else None
            z, loss, grad = fit((keys[start : start + batch], part, inputs), label, slot)
            zs.append(z)
            losses.append(loss)
            grads.append(grad)
        z = jax.tree.map(lambda *xs: jnp.concatenate(xs), *zs)
        return z, jnp.concatenate(losses), jnp.concatenate(grads), shards


@functools.lru_cache(maxsize=8)
def _map_fitter(signature, settings, batch, shard):
    """``fit((keys, targets, inputs)) -> (z, losses, end_checks)``: ``batch`` plain MAP fits
    of ``program``'s potential with the data as traced arguments (leading batch axis on all
    three), one after another on each device (``lax.map``: vmapping L-BFGS's line search
    costs ~3x) and split over devices (``shard_map``), in chunks with a progress bar
    (:class:`~ucsciml.inference._mapfit.MapFitter` with the MAPFit ``settings``). Cached per
    model, data shapes and settings (:class:`~ucsciml.inference._map.ProgramSignature`), so
    later calls, new programs of the same model on new data of the same shapes included,
    reuse the compiled executables; with JAX's persistent compilation cache (on in the CLI)
    so do later processes."""
    family = family_of(signature)
    fitter = MapFitter(
        lambda data: family.make(inputs=data[1], targets=data[0]),
        batch,
        settings,
        shard=shard,
        sequential=True,
    )
    starts = map_chains(
        lambda a: family.init(jax.random.split(a[0], 3)[0], inputs=a[2], targets=a[1]),
        batch,
        shard=shard,
        sequential=True,
    )

    def fit(args, desc="ensemble members", checkpoint=None):
        keys, targets, inputs = args
        return fitter(starts(args), (targets, inputs), desc=desc, checkpoint=checkpoint)

    fit.fitter = fitter
    shards = num_shards(batch) if shard else 1
    return fit, shards


def _pairing(keys, antithetic: bool):
    """Per member the key of its anchor and noise and their sign: with ``antithetic``,
    member ``2k+1`` reuses member ``2k``'s key with sign -1 (an odd last member keeps its
    own key, sign +1); otherwise every member its own key, sign +1."""
    m = np.arange(len(keys))
    partner = m - m % 2 if antithetic else m
    signs = np.where(partner != m, -1.0, 1.0)
    return keys[partner], jnp.asarray(signs)


@functools.lru_cache(maxsize=8)
def _anchored_fitter(signature, settings, num_members, shard, antithetic=False):
    """``fit((keys, anchor_keys, signs, inputs, targets)) -> (z, losses, end_checks)``:
    ``num_members`` randomise-then-optimise fits with the data as traced arguments (leading
    member axis on all five): member ``m`` starts from a prior draw from its key and
    minimises the potential anchored on a prior draw and on data perturbed by the
    likelihood noise, both from its anchor key and reflected where its sign is -1 (see
    :func:`_pairing`). Cached per model, data shapes and settings, like
    :func:`_map_fitter`."""
    program = signature.program
    family = family_of(signature)
    anchored = potential_family(
        program,
        jax.random.key(0),
        _anchored_model(program.fn),
        anchors=_prior_draw(program, jax.random.key(0)),
        noise_key=jax.random.key(0),
        sign=1.0,
    )

    def member_potential(args):
        _, anchor_key, sign, inputs, targets = args
        _, anchor_key, noise_key = jax.random.split(anchor_key, 3)
        anchors = _prior_draw(program, anchor_key, inputs, targets, sign if antithetic else None)
        return anchored.make(
            inputs=inputs, targets=targets, anchors=anchors, noise_key=noise_key, sign=sign
        )

    fitter = MapFitter(member_potential, num_members, settings, shard=shard)
    starts = map_chains(
        lambda a: family.init(jax.random.split(a[0], 3)[0], inputs=a[3], targets=a[4]),
        num_members,
        shard=shard,
    )

    def fit(args, checkpoint=None):
        return fitter(starts(args), args, desc="anchored ensemble members", checkpoint=checkpoint)

    fit.fitter = fitter
    return fit, num_shards(num_members) if shard else 1


def _rows(tree, start: int, stop: int):
    """Rows ``start:stop`` of every leaf's leading axis."""
    return jax.tree.map(lambda x: jnp.asarray(x)[start:stop], tree)


def _prior_draw(program: Program, key: PRNGKey, inputs=None, targets=None, sign=None) -> dict:
    """A prior draw of the latent sites (at the given data, else the program's); with a
    ``sign`` (possibly traced), Gaussian-based sites are reflected through their location
    where it is -1 (:class:`_Reflect`)."""
    if sign is None:
        trace = program.trace(key, inputs, targets)
    else:
        args = program.inputs if inputs is None else inputs
        obs = program.targets if inputs is None else targets
        seeded = _Reflect(sign, handlers.seed(program.fn, key))
        trace = handlers.trace(seeded).get_trace(args, targets=obs)
    return {
        k: s["value"] for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]
    }


def _anchored_model(fn):
    def model(inputs, targets=None, *, anchors, noise_key, sign):
        with _Anchor(anchors, noise_key, sign):
            fn(inputs, targets=targets)

    return model


class _Reflect(Messenger):
    """Draws each latent ``Normal``/``LogNormal``/``MultivariateNormal`` site as usual and,
    where ``sign`` is -1, reflects it through its location (in the Gaussian base). Sites run
    in order, so a child's location already holds its reflected parents: with the same seed
    the two signs are a pair of prior draws whose standard-normal noises are negatives. Must
    sit outside ``seed`` (it reads the site's key)."""

    def __init__(self, sign, fn=None):
        self.sign = sign
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        base = _base(msg["fn"])
        if not isinstance(base, dist.Normal | dist.LogNormal | dist.MultivariateNormal):
            return
        kwargs = msg["kwargs"]
        value = msg["fn"](rng_key=kwargs["rng_key"], sample_shape=kwargs["sample_shape"])
        if isinstance(base, dist.LogNormal):
            msg["value"] = jnp.exp(base.loc + self.sign * (jnp.log(value) - base.loc))
        else:
            msg["value"] = base.loc + self.sign * (value - base.loc)


def _base(fn):
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _anchor(fn, anchor):
    """``fn`` re-centred on ``anchor`` (same scale), or ``None`` when it cannot be."""
    base = _base(fn)
    if isinstance(base, dist.LogNormal):
        shifted = dist.LogNormal(jnp.log(anchor), jnp.broadcast_to(base.scale, jnp.shape(anchor)))
    elif isinstance(base, dist.Normal):
        shifted = dist.Normal(anchor, jnp.broadcast_to(base.scale, jnp.shape(anchor)))
    elif isinstance(base, dist.MultivariateNormal):
        return dist.MultivariateNormal(anchor, scale_tril=base.scale_tril)
    else:
        return None
    return shifted.to_event(fn.event_dim) if fn.event_dim else shifted


class _Anchor(Messenger):
    """Re-centres Gaussian priors on ``anchors`` and perturbs Normal observations."""

    def __init__(self, anchors, noise_key, sign=1.0, fn=None):
        self.anchors, self.noise_key, self.sign = anchors, noise_key, sign
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        name = msg["name"]
        if not msg["is_observed"] and name in self.anchors:
            anchored = _anchor(msg["fn"], self.anchors[name])
            if anchored is not None:
                msg["fn"] = anchored
        elif msg["is_observed"] and isinstance(_base(msg["fn"]), dist.Normal):
            value = msg["value"]
            scale = jax.lax.stop_gradient(
                jnp.broadcast_to(_base(msg["fn"]).scale, jnp.shape(value))
            )
            site_key = jax.random.fold_in(self.noise_key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
            noise = jax.random.normal(site_key, jnp.shape(value))
            msg["value"] = value + self.sign * scale * noise


def _log_unanchored(program: Program) -> None:
    trace = handlers.trace(handlers.seed(program.fn, jax.random.key(0))).get_trace(
        program.inputs, targets=program.targets
    )
    plain = [
        k
        for k, s in trace.items()
        if s["type"] == "sample" and not s["is_observed"] and _anchor(s["fn"], s["value"]) is None
    ]
    if plain:
        log.warning(
            "anchored ensemble: priors of %s are not Normal/LogNormal/MultivariateNormal and "
            "keep their plain (un-anchored) form",
            plain,
        )
