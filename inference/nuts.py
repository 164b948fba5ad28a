"""The No-U-Turn sampler on any Program: NumPyro's NUTS, or BlackJAX's with window adaptation."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from tqdm.auto import tqdm

from ucsciml import checkpoint
from ucsciml._types import PRNGKey
from ucsciml.inference._chains import chain_keys, map_chains, num_shards, tile
from ucsciml.inference._map import ProgramSignature, constrain_fn, family_of, init_fn
from ucsciml.inference._mapfit import map_starts
from ucsciml.inference._mapfit_settings import MAPFit, fold_legacy, legacy, map_field, settings_of
from ucsciml.inference._nuts_numpyro import numpyro_sampler
from ucsciml.inference._nuts_numpyro import sample as numpyro_sample
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NUTS:
    r"""No-U-Turn Hamiltonian Monte Carlo (Hoffman & Gelman, 2014).

    ``engine="numpyro"`` runs NumPyro's NUTS kernel (the draws of
    ``numpyro.infer.MCMC(NUTS(...), chain_method="vectorized")`` with the same chain keys) on a
    compile-once driver (:mod:`ucsciml.inference._nuts_numpyro`); ``engine="blackjax"`` runs
    ``blackjax.nuts`` after ``blackjax.window_adaptation`` (warm-up one compiled call, sampling
    one ``fori_loop`` with traced bounds, so chunks reuse the executable). Both
    sample the unconstrained potential of the same program, with the data as traced
    arguments of executables cached per model, data shapes and settings: a second run, or a
    new program of the same model on new data of the same shapes, compiles nothing. Chains
    are vmapped on one device and split evenly across devices when there are several; chain
    ``i`` uses ``fold_in(key, i)``.

    Args:
        num_warmup: adaptation steps per chain (step size and diagonal/dense mass matrix).
        num_samples: kept draws per chain.
        num_chains: independent chains (>= 2 for R-hat).
        engine: ``"numpyro"`` or ``"blackjax"``.
        target_accept_prob: dual-averaging target.
        max_tree_depth: cap on the trajectory doubling (2^depth - 1 leapfrog steps).
        dense_mass: adapt a dense mass matrix (small models only).
        init: ``"prior"`` (a prior draw per chain) or ``"map"`` (per-chain MAP fit from
            a prior draw: chains start in high-density regions, so warm-up is short; chains
            that land in different modes stay there, and R-hat says so).
        map: each chain's MAP fit with ``init="map"`` (:class:`~ucsciml.inference.MAPFit`;
            default 2000 Adam steps at 1e-2, then 200 L-BFGS steps).
        progress_bar: show progress bars: the MAP fits and sampling in chunks (both
            engines; BlackJAX's warm-up is one call, its bar fills when it ends).
        shard: split chains across devices when there are several and they divide the
            chains; ``False`` vmaps every chain on one device.
        sample_sites: latent sites to sample; every other latent site is held at the MAP of
            the best chain (lowest potential), so NUTS explores a subspace posterior, e.g. a
            Bayesian last layer plus the PDE coefficients of a B-PINN
            (``("w4", "b4", "lambda1", "lambda2")``). Needs ``init="map"``; every chain
            starts from that MAP. Empty (the default): sample all latent sites.
        checkpoint_dir: folder for checkpoints of the long phases (``None``: none). The MAP
            initialisation saves its optimiser state after every chunk
            (``nuts-map-Adam.npz``, ``nuts-map-L-BFGS.npz``) and, with the NumPyro engine,
            sampling saves the chain states and the draws so far after each of its 20 chunks
            (``nuts-sample.npz``). With the BlackJAX engine, window adaptation runs as one
            compiled call whose result (chain states, step sizes, inverse mass matrices) is
            saved (``nuts-warmup.npz``), then sampling runs in 20 chunks of one executable,
            saving the chain states and the draws so far after each (``nuts-sample.npz``).
            A later run with the same settings, key and data continues from the last
            checkpoint (without redoing the MAP fit or warm-up once saved) and draws exactly
            what an uninterrupted run draws.

    Example:
        >>> posterior = NUTS(num_warmup=200, num_samples=200).run(program, jax.random.key(0))
        ... # doctest: +SKIP

    References:
        Hoffman & Gelman (2014), The No-U-Turn Sampler, JMLR 15.

    ``map_steps``, ``map_learning_rate`` and ``map_lbfgs_steps`` are deprecated spellings of
    ``map=MAPFit(adam_steps=..., learning_rate=..., lbfgs_steps=...)``.
    """

    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    engine: Literal["numpyro", "blackjax"] = "numpyro"
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init: Literal["prior", "map"] = "prior"
    map: MAPFit = map_field(adam_steps=2000, learning_rate=1e-2, lbfgs_steps=200)
    progress_bar: bool = True
    shard: bool = True
    sample_sites: tuple[str, ...] = ()
    checkpoint_dir: str | None = None
    map_steps: int | None = legacy("adam_steps")
    map_learning_rate: float | None = legacy("learning_rate")
    map_lbfgs_steps: int | None = legacy("lbfgs_steps")

    def __post_init__(self):
        fold_legacy(self)
        sites = self.sample_sites
        if isinstance(sites, str) or not all(isinstance(s, str) for s in sites):
            raise ValueError(f"NUTS.sample_sites must be a list of site names, got {sites!r}")
        object.__setattr__(self, "sample_sites", tuple(sites))
        if self.sample_sites and self.init != "map":
            raise ValueError(
                "NUTS.sample_sites needs init='map': the sites left out are held at the MAP"
            )
        for name in ("num_warmup", "num_samples", "num_chains", "max_tree_depth"):
            value = getattr(self, name)
            low = 0 if name == "num_warmup" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"NUTS.{name} must be an integer >= {low}, got {value!r}")
        if self.engine not in ("numpyro", "blackjax"):
            raise ValueError(f"NUTS.engine must be 'numpyro' or 'blackjax', got {self.engine!r}")
        if self.init not in ("prior", "map"):
            raise ValueError(f"NUTS.init must be 'prior' or 'map', got {self.init!r}")
        if not 0.0 < self.target_accept_prob < 1.0:
            raise ValueError(
                f"NUTS.target_accept_prob must be in (0, 1), got {self.target_accept_prob}"
            )

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Sample the posterior of ``program``.

        Raises:
            ValueError: when the program has discrete latent sites (NUTS needs gradients).
        """
        _check_continuous(program)
        fixed_sites = _fixed_sites(program, self.sample_sites)
        run_key, predictive_key = jax.random.split(key)
        keys = chain_keys(run_key, self.num_chains)
        optimization = None
        if self.init == "prior" and not fixed_sites:
            # Each engine draws the prior start itself: no extra compile here.
            if self.engine == "numpyro":
                samples, stats = self._run_numpyro(program, keys, None, key)
            else:
                samples, stats = self._run_blackjax(program, keys, None, key)
        else:
            init_params, losses, verdict = self._initial_positions(program, keys, key)
            if verdict is not None:
                optimization = {"objective": "MAP initialisation", "convergence": verdict}
            sampled, fixed = program, {}
            if fixed_sites:
                sampled, init_params, fixed = _subspace(program, init_params, losses, fixed_sites)
            if self.engine == "numpyro":
                samples, stats = self._run_numpyro(sampled, keys, init_params, key)
            else:
                samples, stats = self._run_blackjax(sampled, keys, init_params, key)
            # Held sites enter the draws as constants, so predictions use the full model.
            draws = next(iter(samples.values())).shape[:2]
            for name, value in fixed.items():
                samples[name] = np.broadcast_to(value, draws + value.shape).copy()
        settings = settings_of(self)
        return Posterior(
            samples=samples,
            program=program,
            key=predictive_key,
            sample_stats=stats,
            kind="mcmc",
            attrs=provenance(
                backend="nuts",
                settings=settings,
                shards=self._shards(),
                **({"optimization": optimization} if optimization else {}),
            ),
        )

    def _shards(self) -> int:
        return num_shards(self.num_chains) if self.shard else 1

    def _slot(self, prefix: str, program: Program, key: PRNGKey, start):
        """The checkpoint slot of one phase: its fingerprint covers these settings (less
        the checkpoint folder and the progress bar), the run's key, the data and the phase's
        starting point; ``None`` without a ``checkpoint_dir``."""
        if self.checkpoint_dir is None:
            return None
        settings = settings_of(self)
        for name in ("checkpoint_dir", "progress_bar"):
            settings.pop(name)
        data = (program.inputs, program.targets, start)
        fingerprint = checkpoint.fingerprint(settings, key, data, program.name, prefix)
        return checkpoint.Slot(self.checkpoint_dir, prefix, fingerprint)

    def _initial_positions(self, program, keys, key):
        start_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        starts = init_fn(ProgramSignature(program))(start_keys, program.inputs, program.targets)
        if self.init == "prior":
            return starts, None, None
        z, losses, verdict = map_starts(
            program,
            starts,
            self.map,
            phase="NUTS MAP initialisation",
            hint="raise map.adam_steps or map.lbfgs_steps (warmup still adapts from these starts)",
            shard=self.shard,
            progress=self.progress_bar,
            checkpoint=self._slot("nuts-map", program, key, starts),
        )
        final = losses[:, -1]
        log.info("MAP initialisation: final potential per chain %s", np.round(final, 2).tolist())
        return z, final, verdict

    def _run_numpyro(self, program, keys, init_params, key):
        sampler = numpyro_sampler(
            ProgramSignature(program),
            self.num_warmup,
            self.num_samples,
            self.num_chains,
            self.target_accept_prob,
            self.max_tree_depth,
            self.dense_mass,
            self.shard,
            init_params is None,
        )
        samples, extra = numpyro_sample(
            sampler,
            keys,
            init_params,
            program.inputs,
            program.targets,
            progress=self.progress_bar,
            checkpoint=self._slot("nuts", program, key, init_params),
        )
        samples = {k: np.asarray(v) for k, v in samples.items()}
        num_steps = np.asarray(extra["num_steps"])
        stats = {
            "diverging": np.asarray(extra["diverging"]),
            "n_steps": num_steps,
            "tree_depth": np.ceil(np.log2(num_steps + 1)).astype(np.int64),
            "reached_max_treedepth": num_steps >= 2**self.max_tree_depth - 1,
            "step_size": np.asarray(extra["adapt_state.step_size"]),
            "energy": np.asarray(extra["energy"]),
            "lp": -np.asarray(extra["potential_energy"]),
            "acceptance_rate": np.asarray(extra["accept_prob"]),
        }
        return samples, stats

    def _run_blackjax(self, program, keys, init_params, key):
        sampler = self._blackjax(program, self.num_chains, from_prior=init_params is None)
        starts = keys if init_params is None else init_params
        args = (
            keys,
            starts,
            tile(program.inputs, self.num_chains),
            tile(program.targets, self.num_chains),
        )
        slot = self._slot("nuts", program, key, init_params)
        samples, infos, lp, step_size = _sample_blackjax(
            sampler, args, slot, progress=self.progress_bar
        )
        stats = _blackjax_stats(infos, lp, step_size, self.max_tree_depth)
        return {k: np.asarray(v) for k, v in samples.items()}, stats

    def _blackjax(self, program, num_chains: int, *, from_prior: bool):
        return _blackjax_sampler(
            ProgramSignature(program),
            self.num_warmup,
            self.num_samples,
            num_chains,
            self.target_accept_prob,
            self.max_tree_depth,
            self.dense_mass,
            self.shard,
            from_prior,
        )

    def sample_replicates(
        self, program: Program, targets, keys: jax.Array, *, chunk_size: int = 25
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Sample the posterior of ``program`` for each of several replicate datasets.

        Replicate ``r`` is ``run(replace(program, targets=targets[r]), keys[r])``: the same
        chain keys, the same sampler. With the BlackJAX engine, prior starts and no
        ``sample_sites``, ``chunk_size`` replicates run at once as one vmapped (and, over
        several devices, sharded) program of ``chunk_size * num_chains`` chains, each with its
        replicate's targets as traced data; every chunk, the last padded to full size,
        reuses one executable. Otherwise the replicates run one after another (each ``run``
        reusing its compiled sampler). Used by :func:`ucsciml.sbc.sbc`.

        Args:
            program: the model and its inputs (its targets are replaced).
            targets: a pytree like ``program.targets`` with a leading replicate axis.
            keys: ``(R,)`` keys, one per replicate.
            chunk_size: replicates per vmapped call.

        Returns:
            Draws ``{site: (R, chain, draw, ...)}`` and sample statistics
            ``{name: (R, chain, draw)}``.

        Raises:
            ValueError: for discrete latent sites, before any compute.
        """
        num = int(keys.shape[0])
        if self.engine != "blackjax" or self.init != "prior" or self.sample_sites:
            single = dataclasses.replace(self, checkpoint_dir=None)  # replicates never resume
            runs = [
                single.run(dataclasses.replace(program, targets=_row(targets, r)), keys[r])
                for r in range(num)
            ]
            return (
                {k: np.stack([p.samples[k] for p in runs]) for k in runs[0].samples},
                {k: np.stack([p.sample_stats[k] for p in runs]) for k in runs[0].sample_stats},
            )
        _check_continuous(program)
        chunk = max(1, min(chunk_size, num))
        chains = self.num_chains
        sampler = self._blackjax(program, chunk * chains, from_prior=True)
        inputs = tile(program.inputs, chunk * chains)
        samples, stats = [], []
        for first in range(0, num, chunk):
            rows = np.minimum(np.arange(first, first + chunk), num - 1)  # pad with the last
            run_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys[rows])
            flat_keys = jax.vmap(lambda k: chain_keys(k, chains))(run_keys).reshape(-1)
            flat_targets = jax.tree.map(
                lambda t, rows=rows: jnp.repeat(jnp.asarray(t)[rows], chains, axis=0), targets
            )
            draws, infos, lp, step_size = sampler((flat_keys, flat_keys, inputs, flat_targets))
            keep = min(chunk, num - first)

            def unflatten(x, keep=keep):
                x = np.asarray(x)
                return x.reshape(chunk, chains, *x.shape[1:])[:keep]

            samples.append({k: unflatten(v) for k, v in draws.items()})
            stats.append(
                {
                    k: unflatten(v)
                    for k, v in _blackjax_stats(infos, lp, step_size, self.max_tree_depth).items()
                }
            )
        return (
            {k: np.concatenate([s[k] for s in samples]) for k in samples[0]},
            {k: np.concatenate([s[k] for s in stats]) for k in stats[0]},
        )


def _row(tree, index: int):
    """Row ``index`` of every leaf's leading axis."""
    return jax.tree.map(lambda x: np.asarray(x)[index], tree)


def _blackjax_stats(infos, lp, step_size, max_depth: int) -> dict[str, np.ndarray]:
    """BlackJAX's recorded NUTS infos ``(..., draw)`` as the sample statistics ArviZ names."""
    depth = np.asarray(infos["num_trajectory_expansions"])
    return {
        "diverging": np.asarray(infos["is_divergent"]),
        "n_steps": np.asarray(infos["num_integration_steps"]),
        "tree_depth": depth,
        "reached_max_treedepth": depth >= max_depth,
        "step_size": np.broadcast_to(np.asarray(step_size)[..., None], depth.shape).copy(),
        "energy": np.asarray(infos["energy"]),
        "lp": np.asarray(lp),
        "acceptance_rate": np.asarray(infos["acceptance_rate"]),
    }


#: Checkpoint chunks of BlackJAX's sampling phase (as the NumPyro engine's).
CHUNKS = 20


class BlackJAXSampler(NamedTuple):
    """The compiled pieces of one BlackJAX NUTS configuration (see :func:`_blackjax_sampler`).

    ``warmup((keys, starts, inputs, targets)) -> carry`` runs window adaptation; the carry is
    ``(state, adapted parameters, record buffer)`` per chain. ``advance((carry, keys, start,
    stop, inputs, targets)) -> carry`` runs sampling steps ``start .. stop`` (traced bounds,
    one per chain) into the buffer, so one call or any chunking runs the same executable on
    the same per-step keys. ``finish((carry, inputs, targets))`` gives the constrained draws,
    the recorded statistics, the log densities and the step sizes.
    """

    warmup: Callable
    advance: Callable
    finish: Callable
    num_samples: int
    carry_shapes: Callable  # (args) -> the carry's ShapeDtypeStructs (checkpoint template)

    def __call__(self, args):
        """Warm-up, every sampling step in one call, then the draws: ``sample(args)``."""
        keys, _, inputs, targets = args
        carry = self.warmup(args)
        carry = self.run_steps(carry, keys, inputs, targets, 0, self.num_samples)
        return self.finish((carry, inputs, targets))

    def run_steps(self, carry, keys, inputs, targets, start: int, stop: int):
        num = keys.shape[0]
        bounds = (jnp.full((num,), start, jnp.int32), jnp.full((num,), stop, jnp.int32))
        return self.advance((carry, keys, *bounds, inputs, targets))

    def _cache_size(self) -> int:
        """Compiled variants of the pieces (1: each compiled once), as ``jax.jit`` reports."""
        sizes = [getattr(f, "_cache_size", lambda: 1)() for f in self[:3]]
        return max(sizes)


def _record(state, info) -> dict:
    """What is kept of each BlackJAX NUTS step."""
    return {
        "position": state.position,
        "logdensity": state.logdensity,
        "is_divergent": info.is_divergent,
        "num_integration_steps": info.num_integration_steps,
        "num_trajectory_expansions": info.num_trajectory_expansions,
        "energy": info.energy,
        "acceptance_rate": info.acceptance_rate,
    }


@functools.lru_cache(maxsize=8)
def _blackjax_sampler(
    signature, num_warmup, num_samples, num_chains, target, max_depth, dense, shard, from_prior
) -> BlackJAXSampler:
    """BlackJAX window adaptation then NUTS per chain, chains vmapped or sharded; data and
    starts are traced arguments (leading chain axis on all), so each piece is compiled once
    per model, data shapes and settings. With ``from_prior`` the starts are the chain keys
    and each chain draws its own prior start. Warm-up is one compiled call (one ``lax.scan``);
    sampling step ``i`` of a chain uses ``split(sample_key, num_samples)[i]`` where
    ``warm_key, sample_key = split(chain_key)``, whatever the chunking."""
    family = family_of(signature)

    def kernel_of(inputs, targets, parameters):
        potential_fn = family.make(inputs=inputs, targets=targets)
        return blackjax.nuts(lambda z: -potential_fn(z), max_num_doublings=max_depth, **parameters)

    def warmup_one(args):
        key, start, inputs, targets = args
        potential_fn = family.make(inputs=inputs, targets=targets)
        position = (
            family.init(jax.random.fold_in(start, 1), inputs=inputs, targets=targets)
            if from_prior
            else start
        )
        warm_key, sample_key = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts,
            lambda z: -potential_fn(z),
            is_mass_matrix_diagonal=not dense,
            target_acceptance_rate=target,
            max_num_doublings=max_depth,
        )
        (state, parameters), _ = warmup.run(warm_key, position, num_steps=num_warmup)
        # Only the adapted arrays travel (and are checkpointed); the tree depth is static.
        parameters = {k: parameters[k] for k in ("step_size", "inverse_mass_matrix")}
        kernel = kernel_of(inputs, targets, parameters)
        shapes = jax.eval_shape(lambda s: _record(*kernel.step(sample_key, s)), state)
        buffer = jax.tree.map(lambda x: jnp.zeros((num_samples, *x.shape), x.dtype), shapes)
        return state, parameters, buffer

    def advance_one(args):
        (state, parameters, buffer), key, start, stop, inputs, targets = args
        kernel = kernel_of(inputs, targets, parameters)
        step_keys = jax.random.split(jax.random.split(key)[1], num_samples)

        def body(i, carry):
            state, buffer = carry
            state, info = kernel.step(step_keys[i], state)
            buffer = jax.tree.map(
                lambda b, r: jax.lax.dynamic_update_index_in_dim(b, r, i, axis=0),
                buffer,
                _record(state, info),
            )
            return state, buffer

        state, buffer = jax.lax.fori_loop(start, stop, body, (state, buffer))
        return state, parameters, buffer

    def finish_one(args):
        (_, parameters, buffer), inputs, targets = args
        constrained = jax.vmap(family.postprocess(inputs=inputs, targets=targets))(
            buffer["position"]
        )
        stats = {k: v for k, v in buffer.items() if k not in ("position", "logdensity")}
        return constrained, stats, buffer["logdensity"], parameters["step_size"]

    shapes = {}

    def carry_shapes(args):
        # Traced once per sampler (its model, data shapes and chains fix the carry's shapes).
        if not shapes:
            shapes["carry"] = jax.eval_shape(jax.vmap(warmup_one), args)
        return shapes["carry"]

    return BlackJAXSampler(
        map_chains(warmup_one, num_chains, shard),
        map_chains(advance_one, num_chains, shard),
        map_chains(finish_one, num_chains, shard),
        num_samples,
        carry_shapes,
    )


def _sample_blackjax(sampler: BlackJAXSampler, args, slot, *, progress: bool = False) -> tuple:
    """Run ``sampler`` on ``args``. With a checkpoint ``slot`` warm-up's carry is saved
    (``<prefix>-warmup.npz``) and a later call with the same slot continues from the furthest
    checkpoint (``<prefix>-sample.npz``). With ``progress`` (or a slot) sampling runs in
    :data:`CHUNKS` calls of the same executable, with a progress bar (and a checkpoint)
    between them; warm-up is one compiled call, so its bar fills when it ends. Chunked or not,
    the draws are those of an uninterrupted run."""
    keys, _, inputs, targets = args
    total = sampler.num_samples
    chains = f"{keys.shape[0]} chain{'s' if keys.shape[0] > 1 else ''}"
    carry, done = None, 0
    if slot is not None and (slot.path("sample").exists() or slot.path("warmup").exists()):
        # The template is traced only to resume, so a fresh checkpointed run traces nothing
        # that a plain run does not.
        like = sampler.carry_shapes(args)
        restored = slot.load("sample", like)
        if restored is not None and 0 < restored.step <= total:
            carry, done = restored
            log.info("NUTS resumes from %s at step %d", slot.path("sample"), done)
        else:
            restored = slot.load("warmup", like)
            if restored is not None:
                carry = restored.state
                log.info("NUTS resumes from %s: warm-up done", slot.path("warmup"))
    if carry is None:
        with _bar(1, f"NUTS warm-up ({chains}, one compiled call)", progress, unit="call") as bar:
            carry = sampler.warmup(args)
            jax.block_until_ready(carry)
            bar.update(1)
        if slot is not None:
            slot.save("warmup", carry, 0)
    chunked = progress or slot is not None
    length = -(-total // CHUNKS) if chunked else total
    with _bar(total, f"NUTS ({chains})", progress, initial=done) as bar:
        # Chunk boundaries stay at multiples of ``length`` after a resume.
        for start in range(done, total, length):
            stop = min(start + length, total)
            carry = sampler.run_steps(carry, keys, inputs, targets, start, stop)
            jax.block_until_ready(carry)
            if slot is not None:
                slot.save("sample", carry, stop)
            bar.update(stop - start)
    return sampler.finish((carry, inputs, targets))


def _bar(total: int, desc: str, progress: bool, *, initial: int = 0, unit: str = "step"):
    """The progress bar of a BlackJAX phase, styled as the NumPyro engine's."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not progress or None,
        leave=False,
        dynamic_ncols=True,
    )


def _fixed_sites(program: Program, sample_sites: tuple[str, ...]) -> list[str]:
    """Latent sites outside ``sample_sites`` (none when ``sample_sites`` is empty)."""
    if not sample_sites:
        return []
    trace = program.sites()
    latent = [n for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]
    unknown = [n for n in sample_sites if n not in latent]
    if unknown:
        raise ValueError(
            f"NUTS.sample_sites names {unknown}, which are not latent sites of program "
            f"'{program.name}'; its latent sites are {latent}"
        )
    return [n for n in latent if n not in sample_sites]


def _subspace(program, init_params, losses, fixed_sites):
    """Condition ``program`` on the best chain's MAP values of ``fixed_sites``.

    The held values travel with the inputs (``inputs = (program.inputs, held)``) of one
    conditioned model per model and held sites (:func:`_conditioned`), so the sampler of the
    subspace compiles once like that of the full program.

    Returns the conditioned program, every chain's start (the best chain's MAP restricted to
    the sampled sites) and the held values (constrained, as numpy).
    """
    best = int(np.argmin(losses))
    z_best = jax.tree.map(lambda x: x[best][None], init_params)
    constrained = constrain_fn(ProgramSignature(program))(z_best, program.inputs, program.targets)
    fixed = {n: np.asarray(constrained[n][0]) for n in fixed_sites}
    log.info("subspace NUTS: holding %s at chain %d's MAP", fixed_sites, best)
    sub = dataclasses.replace(
        program,
        fn=_conditioned(program.fn, tuple(fixed_sites)),
        inputs=(program.inputs, {n: jnp.asarray(v) for n, v in fixed.items()}),
    )
    num_chains = len(losses)
    starts = {
        n: np.broadcast_to(v[0], (num_chains, *v.shape[1:])).copy()
        for n, v in z_best.items()
        if n not in fixed
    }
    return sub, starts, fixed


@functools.lru_cache(maxsize=16)
def _conditioned(fn, names: tuple[str, ...]):
    """``fn`` with the sites ``names`` held at values passed in ``inputs[1]``."""

    def model(inputs, targets=None):
        data, held = inputs
        return handlers.condition(fn, data=held)(data, targets=targets)

    return model


def _check_continuous(program: Program) -> None:
    trace = program.sites()
    discrete = [
        name
        for name, site in trace.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and getattr(site["fn"], "has_enumerate_support", False)
        and site["fn"].support.is_discrete
    ]
    if discrete:
        raise ValueError(
            f"NUTS needs continuous latent sites; {discrete} are discrete. "
            "Marginalise them out in the model, or use another backend"
        )
