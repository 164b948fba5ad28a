"""Monte Carlo dropout: fit with dropout active, predict with T stochastic passes."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np
from numpyro import handlers

from ucsciml._types import PRNGKey
from ucsciml.convergence import judge
from ucsciml.inference._driver import sample_scan
from ucsciml.inference._map import ProgramSignature, potential_family, with_deterministics
from ucsciml.optimize import adam_core, is_finite_tree
from ucsciml.posterior import Posterior
from ucsciml.program import Program
from ucsciml.provenance import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCDropout:
    r"""MC dropout: a network fitted with dropout noise, sampled by stochastic forward passes.

    The program states its dropout layer: ``program.attrs["dropout_sites"]`` names Bernoulli
    keep-mask sample sites (``models.BayesianPINN(dropout=p)`` adds one per hidden layer).
    Training minimises the potential averaged over masks,

    .. math::
        \min_z\ \mathbb E_{m \sim \text{Bernoulli}(1-p)}\big[-\log p(y, z \mid m)\big],

    with Adam, one fresh mask per step (the weight prior plays the part of weight decay).
    Prediction then draws ``num_passes`` masks with the fitted weights: pass ``t`` is draw
    ``t`` of a single chain, so samples have shape ``(chain=1, draw=num_passes, ...)``;
    the mask sites are stored with the draws, so ``Posterior.predict`` replays the same
    passes at new points.

    **What is uncertain.** Only the network is stochastic. Every other latent site (unknown
    PDE parameters such as Burgers' ``lambda1``/``lambda2``, noise scales) is a point
    estimate, the same in every draw: its posterior sd is 0. Make such a parameter a
    network output, or use VI/ensembles/NUTS, to get its uncertainty.

    **Compile once.** The data are traced arguments of executables cached per model, data
    shapes and settings: a second run, or a new program of the same model on new data of the
    same shapes, traces and compiles nothing.

    Args:
        num_steps: Adam steps (learning rate decays to 1%).
        learning_rate: Adam's initial rate.
        num_passes: stochastic forward passes T kept as draws.
        rate: dropout rate p to build the model with (see :meth:`prepare_model`); ``None``
            (default) keeps the model's own rate.

    Example:
        >>> program = ucsciml.compile(models.BayesianPINN(pde, dropout=0.05), data)
        >>> posterior = MCDropout(num_passes=200).run(program, jax.random.key(0))
        ... # doctest: +SKIP

    References:
        Gal & Ghahramani (2016), Dropout as a Bayesian approximation: representing model
        uncertainty in deep learning, ICML.
    """

    num_steps: int = 3000
    learning_rate: float = 1e-2
    num_passes: int = 500
    rate: float | None = None

    def __post_init__(self):
        for name, minimum in {"num_steps": 1, "num_passes": 1}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MCDropout.{name} must be an integer >= {minimum}, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"MCDropout.learning_rate must be > 0, got {self.learning_rate}")
        if self.rate is not None and not 0.0 < self.rate < 1.0:
            raise ValueError(f"MCDropout.rate must be in (0, 1) or None, got {self.rate}")

    def prepare_model(self, model):
        """The model with dropout rate ``rate``, for a model that has a ``dropout`` field.

        The case runner calls this hook before compiling, so one case file serves every
        backend: ``[backend.dropout] rate = 0.01`` switches the B-PINN's dropout layer on only
        for this backend. Models without a ``dropout`` field are returned unchanged (``run``
        then explains what is missing).
        """
        if self.rate is None or "dropout" not in getattr(model, "__dataclass_fields__", {}):
            return model
        return dataclasses.replace(model, dropout=self.rate)

    def run(self, program: Program, key: PRNGKey) -> Posterior:
        """Fit ``program``'s network with dropout and draw ``num_passes`` stochastic passes.

        Raises:
            ValueError: when the program has no network or no dropout mask sites, or has
                other discrete latents, before any compute.
        """
        masks = _mask_distributions(program)
        init_key, fit_key, pass_key, det_key, predictive_key = jax.random.split(key, 5)
        core = _dropout_core(
            ProgramSignature(program), tuple(masks), self.num_steps, self.learning_rate
        )
        losses, point, finite = core.fit(init_key, fit_key, program.inputs, program.targets)
        losses = np.asarray(losses)
        if not bool(finite):
            raise FloatingPointError(
                "MC dropout fit diverged (non-finite weights); lower learning_rate"
            )
        latent = [s for s in program.latent_sites() if s not in masks]
        passes = core.passes(pass_key, self.num_passes)
        draws = {
            s: np.broadcast_to(np.asarray(point[s]), (self.num_passes, *np.shape(point[s])))
            for s in latent
        }
        draws = with_deterministics(program, {**draws, **passes}, det_key)
        window = max(1, self.num_steps // 10)
        every = max(1, -(-self.num_steps // 200))
        optimization = {
            "objective": "negative log joint, averaged over dropout masks",
            "final_loss": float(losses[-1]),
            "final_window_mean": float(losses[-window:].mean()),
            "trace_every": every,
            "trace": [float(x) for x in losses[::every]],
            "dropout_rate": program.attrs.get("dropout_rate"),
            "convergence": judge(
                losses,
                phase="MC dropout fit",
                stochastic=True,
                hint="raise num_steps or lower learning_rate",
            ),
            "point_estimates": [s for s in latent if s not in program.network_sites],
        }
        return Posterior(
            samples={k: np.asarray(v)[None] for k, v in draws.items()},
            program=program,
            key=predictive_key,
            kind="dropout",
            attrs=provenance(
                backend="dropout", settings=dataclasses.asdict(self), optimization=optimization
            ),
        )


class _DropoutCore(NamedTuple):
    """The compiled pieces of one MC dropout configuration (see :func:`_dropout_core`)."""

    fit: Callable  # (init key, fit key, inputs, targets) -> (losses, point, finite)
    passes: Callable  # (pass key, num_passes) -> {mask site: (num_passes, ...)}


@functools.lru_cache(maxsize=8)
def _dropout_core(
    signature, mask_sites: tuple[str, ...], num_steps: int, learning_rate: float
) -> _DropoutCore:
    """The dropout fit (:func:`~ucsciml.optimize.adam_core` steps, one fresh mask per step,
    one ``lax.scan``) and the mask draws, with the data as traced arguments: compiled once
    per model, mask sites, data shapes and settings."""
    program = signature.program
    trace = program.trace(jax.random.key(0))
    masks = {s: trace[s]["fn"] for s in mask_sites}

    def draw_masks(k):
        keys = jax.random.split(k, len(masks))
        return {n: d.sample(kk) for (n, d), kk in zip(masks.items(), keys, strict=True)}

    family = potential_family(
        program, jax.random.key(0), _masked(program.fn), masks=draw_masks(jax.random.key(0))
    )

    def loss_fn(z, mask, inputs, targets):
        return family.make(inputs=inputs, targets=targets, masks=mask)(z)

    init, step = adam_core(loss_fn, num_steps, learning_rate, "exponential")

    @jax.jit
    def fit(init_key, fit_key, inputs, targets):
        z0 = family.init(init_key, inputs=inputs, targets=targets, masks=draw_masks(init_key))

        def keyed_step(k, state):
            return step(state, draw_masks(k), inputs, targets)

        (z, _), (_, losses) = sample_scan(keyed_step, init(z0), fit_key, num_steps)
        point = family.postprocess(inputs=inputs, targets=targets, masks=draw_masks(init_key))(z)
        return losses, point, is_finite_tree(z)

    @functools.partial(jax.jit, static_argnums=1)
    def passes(pass_key, num_passes):
        return jax.vmap(draw_masks)(jax.random.split(pass_key, num_passes))

    return _DropoutCore(fit, passes)


def _masked(fn):
    def model(inputs, targets=None, *, masks):
        with handlers.condition(data=masks):
            fn(inputs, targets=targets)

    return model


def _mask_distributions(program: Program) -> dict:
    """The prior of each dropout mask site, after checking the program has a dropout layer."""
    sites = list(program.attrs.get("dropout_sites", ()))
    if not program.network_sites or not sites:
        what = "no network" if not program.network_sites else "no dropout layer"
        raise ValueError(
            f"MCDropout needs a network with dropout; program '{program.name}' has {what}. "
            "Build a B-PINN with dropout > 0 (e.g. BayesianPINN(..., dropout=0.05)), or for "
            "your own model add Bernoulli keep-mask sites and list them in "
            "Program.attrs['dropout_sites']"
        )
    trace = program.sites()
    missing = [s for s in sites if s not in trace]
    if missing:
        raise ValueError(f"Program.attrs['dropout_sites'] names {missing}, not sites of the model")
    latent = {k: s for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    not_masks = [s for s in sites if s not in latent or not latent[s]["fn"].support.is_discrete]
    if not_masks:
        raise ValueError(f"dropout sites {not_masks} must be latent Bernoulli (discrete) sites")
    discrete = [k for k, s in latent.items() if s["fn"].support.is_discrete and k not in sites]
    if discrete:
        raise ValueError(
            f"MCDropout handles only dropout masks as discrete latents; {discrete} are also "
            "discrete. Marginalise them out"
        )
    return {s: latent[s]["fn"] for s in sites}
