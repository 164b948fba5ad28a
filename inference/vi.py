"""Stochastic variational inference on any Program: NumPyro SVI with an Optax optimiser."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO, autoguide
from numpyro.infer.initialization import init_to_sample, init_to_value
from numpyro.optim import optax_to_numpyro
from numpyro.primitives import Messenger
from tqdm.auto import tqdm

from ucsciml import checkpoint
from ucsciml._types import PRNGKey
from ucsciml.convergence import judge
from ucsciml.inference._driver import chunk_scan, scan_in_chunks
from ucsciml.inference._map import (
    ProgramSignature,
    check_continuous,
    constrain_fn,
    init_fn,
    with_deterministics,
)
from ucsciml.inference._mapfit import map_starts
from ucsciml.inference._mapfit_settings import (
    MAPFit,
    fold_legacy,
    legacy,
    map_field,
    settings_of,
)
from ucsciml.optimize import SCHEDULES, adam
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import config_hash, provenance

log = logging.getLogger(__name__)

GUIDES = ("normal", "lowrank", "fullrank", "flow")
_TRACE_POINTS = 200
_CHECKPOINT_FIELDS = ("checkpoint_dir", "checkpoint_every")


@dataclass(frozen=True)
class VI:
    r"""Variational inference: maximise the ELBO of an autoguide with an Optax optimiser.

    .. math::
        \mathcal L(\phi) = \mathbb E_{q_\phi(z)}\big[\log p(y, z) - \log q_\phi(z)\big],

    estimated with ``num_particles`` reparameterised draws per step (NumPyro ``Trace_ELBO``)
    in the unconstrained space of the latent sites. Guides: ``"normal"`` (mean-field,
    ``AutoNormal``), ``"lowrank"`` (``AutoLowRankMultivariateNormal``), ``"fullrank"``
    (``AutoMultivariateNormal``) and ``"flow"`` (``AutoIAFNormal``, an inverse autoregressive
    flow). The fitted guide's draws are the posterior, laid out as ``(chain=1,
    draw=num_samples)``; deterministic sites are recomputed for each draw.

    The negative-ELBO trace, thinned to at most 200 points, its final value and convergence
    verdicts (:func:`ucsciml.convergence.judge`: the mean loss of the last 10% of steps
    against the 10% before, within ``convergence_tol`` relative once three standard errors of
    noise are allowed; and the MAP start's verdict with ``init="map"``) are stored in
    ``Posterior.attrs["optimization"]`` (kept in the DataTree's attributes and judged by
    ``diagnostics.check``).

    **Minibatching.** ``minibatch={"plate": size}`` subsamples the named plates each step,
    and NumPyro scales their log-likelihood by ``N / size``, so the ELBO estimate stays
    unbiased. A program exposes a minibatchable plate by indexing its per-element data with
    ``numpyro.subsample(x, event_dim=...)`` inside ``numpyro.plate(name, N)``: the backend
    sets the plate's subsample size and ``subsample`` picks the matching rows. A plate whose
    data are not indexed that way (the B-PINN computes its field before its plates) is
    rejected with a ValueError before any compute.

    **Checkpoints.** With ``checkpoint_dir`` set, the optimiser state and the loss trace are
    saved atomically every ``checkpoint_every`` steps to ``checkpoint_dir/vi.npz``; a later
    run with the same settings, key and data continues from the last checkpoint and ends
    with exactly the same state as an uninterrupted run (``ucsciml run --resume``).

    **Compile once.** The data are traced arguments of executables cached per model, data
    shapes and settings: a second run, or a new program of the same model on new data of the
    same shapes, traces and compiles nothing.

    Args:
        guide: ``"normal"``, ``"lowrank"``, ``"fullrank"`` or ``"flow"``.
        num_steps: optimisation steps.
        learning_rate: Adam's initial learning rate.
        schedule: ``"constant"``, ``"exponential"`` (decay to ``final_lr_fraction`` of the
            initial rate) or ``"cosine"`` (cosine decay to that fraction).
        final_lr_fraction: last learning rate over the first, in (0, 1].
        clip_norm: global gradient-norm clip (0, the default, disables it); can tame the
            first noisy steps of a network, but slows the scale parameters of large-data fits.
        num_particles: ELBO draws per step.
        num_samples: posterior draws from the fitted guide.
        rank: low-rank guide's rank (0: NumPyro's default, about sqrt(dim)).
        flow_layers, flow_hidden: IAF flow depth and hidden width.
        init_scale: initial guide scale in unconstrained space (not used by the flow).
        init: ``"prior"`` (guide centred on a prior draw) or ``"map"`` (on a MAP fit; useful
            for networks, whose prior draws fit nothing).
        map: that MAP fit (:class:`~ucsciml.inference.MAPFit`; default 2000 Adam steps at
            1e-2, then 200 L-BFGS steps). ``learning_rate`` and ``schedule`` above are the
            ELBO optimiser's, not the MAP fit's.
        minibatch: ``{plate name: batch size}``; empty for full-batch.
        convergence_tol: relative change of the windowed loss mean accepted as converged.
        checkpoint_dir: folder for ``vi.npz``; ``None`` disables checkpointing.
        checkpoint_every: steps between checkpoints (also the length of one jitted chunk).

    Example:
        >>> posterior = VI(guide="fullrank", num_steps=3000).run(program, jax.random.key(0))
        ... # doctest: +SKIP

    References:
        Kucukelbir, Tran, Ranganath, Gelman & Blei (2017), Automatic differentiation
        variational inference, JMLR 18. Hoffman, Blei, Wang & Paisley (2013), Stochastic
        variational inference, JMLR 14. Kingma et al. (2016), Improved variational inference
        with inverse autoregressive flow, NeurIPS.

    ``map_steps``, ``map_learning_rate`` and ``map_lbfgs_steps`` are deprecated spellings of
    ``map=MAPFit(adam_steps=..., learning_rate=..., lbfgs_steps=...)``.
    """

    guide: Literal["normal", "lowrank", "fullrank", "flow"] = "normal"
    num_steps: int = 5000
    learning_rate: float = 1e-2
    schedule: Literal["constant", "exponential", "cosine"] = "exponential"
    final_lr_fraction: float = 0.01
    clip_norm: float = 0.0
    num_particles: int = 1
    num_samples: int = 1000
    rank: int = 0
    flow_layers: int = 2
    flow_hidden: int = 32
    init_scale: float = 0.1
    init: Literal["prior", "map"] = "prior"
    map: MAPFit = map_field(adam_steps=2000, learning_rate=1e-2, lbfgs_steps=200)
    minibatch: Mapping[str, int] = field(default_factory=dict)
    convergence_tol: float = 1e-3
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    map_steps: int | None = legacy("adam_steps")
    map_learning_rate: float | None = legacy("learning_rate")
    map_lbfgs_steps: int | None = legacy("lbfgs_steps")

    def __post_init__(self):
        fold_legacy(self)
        low = {"num_steps": 1, "num_particles": 1, "num_samples": 1, "rank": 0}
        low |= {"flow_layers": 1, "flow_hidden": 1, "checkpoint_every": 1}
        for name, minimum in low.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"VI.{name} must be an integer >= {minimum}, got {value!r}")
        choices = {"guide": GUIDES, "schedule": SCHEDULES, "init": ("prior", "map")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VI.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("learning_rate", "init_scale", "convergence_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VI.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.final_lr_fraction <= 1:
            raise ValueError(
                f"VI.final_lr_fraction must be in (0, 1], got {self.final_lr_fraction}"
            )
        if not self.clip_norm >= 0:
            raise ValueError(f"VI.clip_norm must be >= 0 (0 disables), got {self.clip_norm}")
        try:
            batches = tuple(sorted(dict(self.minibatch).items()))
        except (TypeError, ValueError):
            raise ValueError(
                f"VI.minibatch must map plate names to batch sizes, got {self.minibatch!r}"
            ) from None
        for name, size in batches:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"VI.minibatch[{name!r}] must be an integer >= 1, got {size!r}")
        object.__setattr__(self, "minibatch", batches)

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Fit the guide to ``program``'s posterior and draw from it.

        Raises:
            ValueError: for discrete latent sites, or minibatch plates the program does not
                expose (see the class docstring), before any compute.
        """
        check_continuous(program, "VI")
        core = _vi_core(ProgramSignature(program), self._static())
        init_key, map_key, draw_key, det_key, predictive_key = jax.random.split(key, 5)
        init_values, map_verdict = self._init_values(program, map_key)
        data = (program.inputs, program.targets)
        state = core.init(init_key, *data, init_values)

        path = Path(self.checkpoint_dir) / "vi.npz" if self.checkpoint_dir else None
        fingerprint = self._fingerprint(program, key)
        start = 0
        if path is not None:
            restored = checkpoint.load(path, state, fingerprint)
            if restored is not None:
                state, start = restored
                log.info("VI resumes from checkpoint %s at step %d", path, start)

        bar = tqdm(
            total=self.num_steps,
            initial=start,
            desc="VI",
            unit="step",
            disable=None,
            leave=False,
            dynamic_ncols=True,
        )

        def save(carry, at, _info):
            if path is not None:
                checkpoint.save(path, carry, at, fingerprint)
            done = np.asarray(carry[1][:at])
            bar.set_postfix_str(f"loss {float(done[-1]):.5g}", refresh=False)
            bar.update(at - bar.n)

        with bar:
            (svi_state, losses), _ = scan_in_chunks(
                lambda carry, length: core.chunk(carry, length, *data),
                state,
                self.num_steps,
                start=start,
                chunk_size=self.checkpoint_every,
                on_chunk=save,
            )
        latent = core.draw(draw_key, svi_state, program.inputs, self.num_samples)
        sites = set(program.latent_sites())
        latent = {k: v for k, v in latent.items() if k in sites}
        draws = with_deterministics(program, latent, det_key)
        optimization = self._optimization_record(np.asarray(losses), start, map_verdict)
        settings = settings_of(self)
        settings["minibatch"] = dict(self.minibatch)
        return Posterior(
            samples={k: np.asarray(v)[None] for k, v in draws.items()},
            program=program,
            key=predictive_key,
            kind="variational",
            attrs=provenance(backend="vi", settings=settings, optimization=optimization),
        )

    def _model(self, program: Program):
        if not self.minibatch:
            return program.fn
        sizes = dict(self.minibatch)
        model = _Minibatch(program.fn, sizes)
        try:
            trace = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(
                program.inputs, targets=program.targets
            )
        except ValueError as err:
            raise ValueError(
                f"VI.minibatch={sizes}: program '{program.name}' cannot be minibatched ({err}). "
                "Inside each minibatched plate, index per-element data with "
                "numpyro.subsample(x, event_dim=...), or set minibatch={}"
            ) from None
        plates = {k: v for k, v in trace.items() if v["type"] == "plate"}
        missing = sorted(set(sizes) - set(plates))
        if missing:
            raise ValueError(
                f"VI.minibatch names plates {missing} that program '{program.name}' does not "
                f"have; its plates are {sorted(plates)}"
            )
        return model

    def _init_values(self, program: Program, key: PRNGKey):
        """The guide's initial location (constrained latent values) and the MAP verdict:
        ``(None, None)`` for a prior start (the guide draws it from its init key)."""
        if self.init == "prior":
            return None, None
        signature = ProgramSignature(program)
        start = init_fn(signature)(key[None], program.inputs, program.targets)
        z, _, verdict = map_starts(
            program,
            start,
            self.map,
            phase="VI MAP initialisation",
            hint="raise map.adam_steps or map.lbfgs_steps (the guide still fits from this start)",
            shard=False,
            checkpoint=checkpoint.Slot(
                self.checkpoint_dir, "vi-map", self._fingerprint(program, key)
            )
            if self.checkpoint_dir
            else None,
        )
        constrained = constrain_fn(signature)(z, program.inputs, program.targets)
        latent = set(program.latent_sites())
        return {k: v[0] for k, v in constrained.items() if k in latent}, verdict

    def _static(self) -> VI:
        """These settings with those that do not change the compiled fit (draw count, MAP
        start, checkpointing, verdict tolerance) at fixed values: the cache key of
        :func:`_vi_core`."""
        return dataclasses.replace(
            self,
            num_samples=1,
            map=MAPFit(),
            convergence_tol=1e-3,
            checkpoint_dir=None,
            checkpoint_every=1,
        )

    def _guide(self, model, init_loc_fn):
        common = {"init_loc_fn": init_loc_fn}
        if self.guide == "normal":
            return autoguide.AutoNormal(model, init_scale=self.init_scale, **common)
        if self.guide == "lowrank":
            rank = self.rank or None
            return autoguide.AutoLowRankMultivariateNormal(
                model, rank=rank, init_scale=self.init_scale, **common
            )
        if self.guide == "fullrank":
            return autoguide.AutoMultivariateNormal(model, init_scale=self.init_scale, **common)
        return autoguide.AutoIAFNormal(
            model,
            num_flows=self.flow_layers,
            hidden_dims=[self.flow_hidden, self.flow_hidden],
            **common,
        )

    def _optimizer(self) -> optax.GradientTransformation:
        return adam(
            self.learning_rate,
            self.num_steps,
            self.schedule,
            final_fraction=self.final_lr_fraction,
            clip_norm=self.clip_norm,
        )

    def _fingerprint(self, program: Program, key: PRNGKey) -> str:
        settings = {k: v for k, v in settings_of(self).items() if k not in _CHECKPOINT_FIELDS}
        digest = hashlib.sha256()
        for leaf in jax.tree.leaves((program.inputs, program.targets)):
            digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        key_data = np.asarray(jax.random.key_data(key)).tolist()
        return config_hash([settings, key_data, program.name, digest.hexdigest()])

    def _optimization_record(self, losses: np.ndarray, start: int, map_verdict) -> dict:
        n = losses.shape[0]
        verdict = judge(
            losses,
            phase="VI (negative ELBO)",
            rtol=self.convergence_tol,
            stochastic=True,
            hint="raise num_steps, lower learning_rate or use more num_particles",
        )
        every = max(1, -(-n // _TRACE_POINTS))
        window = max(1, n // 10)
        return {
            "objective": "negative ELBO",
            "num_steps": n,
            "final_loss": float(losses[-1]),
            "final_window_mean": float(losses[-window:].mean()),
            "converged": verdict["converged"],
            "window_change": verdict["relative_change"],
            "convergence": [verdict, *([map_verdict] if map_verdict else [])],
            "trace_every": every,
            "trace": [float(x) for x in losses[::every]],
            "resumed_from_step": start,
        }


class _VICore(NamedTuple):
    """The compiled pieces of one VI configuration (see :func:`_vi_core`)."""

    init: Callable  # (init key, inputs, targets, init values | None) -> (SVI state, losses)
    chunk: Callable  # (state, length, inputs, targets) -> (state, None)
    draw: Callable  # (draw key, SVI state, inputs, num_samples) -> {site: (num_samples, ...)}


@functools.lru_cache(maxsize=8)
def _vi_core(signature: ProgramSignature, vi: VI) -> _VICore:
    """SVI's init, its update steps as :func:`~ucsciml.inference._driver.chunk_scan` chunks
    and the guide's draws, with the data as traced arguments: compiled once per model, data
    shapes and settings (``vi`` is :meth:`VI._static`).

    NumPyro's autoguides are stateful: a guide records its model's prototype (site shapes and
    supports) on its first call. The guide of the update steps records it here, eagerly, on
    the first program's data, so no tracer is ever stored in it; later programs reuse that
    prototype (the same model and shapes) with their own data as arguments; only a support
    that depends on the data (e.g. ``Uniform(0, max(x))``) would keep the first program's. The
    per-run
    initial state comes from a fresh guide traced inside ``init``, so it depends on the
    run's init key (and MAP start) exactly as a new guide's would.
    """
    program = signature.program
    model = vi._model(program)
    optim = optax_to_numpyro(vi._optimizer())
    loss = Trace_ELBO(vi.num_particles)
    guide = vi._guide(model, init_to_sample)
    svi = SVI(model, guide, optim, loss)
    svi.init(jax.random.key(0), program.inputs, targets=program.targets)

    @jax.jit
    def init(init_key, inputs, targets, init_values):
        loc_fn = init_to_sample if init_values is None else init_to_value(values=init_values)
        fresh = SVI(model, vi._guide(model, loc_fn), optim, loss)
        state = fresh.init(init_key, inputs, targets=targets)
        return state, jnp.full(vi.num_steps, jnp.nan)

    def step(carry, inputs, targets):
        svi_state, losses = carry
        step_index = svi_state.optim_state[0]
        svi_state, value = svi.update(svi_state, inputs, targets=targets)
        return (svi_state, losses.at[step_index].set(value)), None

    @functools.partial(jax.jit, static_argnums=3)
    def draw(draw_key, svi_state, inputs, num_samples):
        params = svi.get_params(svi_state)
        return guide.sample_posterior(draw_key, params, inputs, sample_shape=(num_samples,))

    return _VICore(init, chunk_scan(step), draw)


class _Minibatch(Messenger):
    """Sets the subsample size of the named plates; NumPyro then scales their sites by
    ``size / batch`` and ``numpyro.subsample`` picks the matching rows of the data."""

    def __init__(self, fn, sizes: dict[str, int]):
        self.sizes = sizes
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["name"] in self.sizes:
            size = msg["args"][0]
            batch = self.sizes[msg["name"]]
            if batch < size:
                msg["args"] = (size, batch)
                msg["value"] = None
