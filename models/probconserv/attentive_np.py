r"""An attentive neural process (ANP) amortised over a family of conservation laws.

The ANP maps a context set :math:`C = \{(x_i, y_i)\}` (here 10 stratified times x 10 sorted
positions of one solution of the family) to a Gaussian prediction at any query :math:`x_*`:

.. math::
    r_* = \mathrm{CrossAttn}\big(x_*, \{x_i\}, \mathrm{SelfAttn}(\{\mathrm{MLP}(x_i, y_i)\})\big),
    \quad z \sim q(z \mid C) = \mathcal N\big(\mu_z(s_C), \sigma_z^2(s_C)\big),
    \quad y_* \mid z \sim \mathcal N\big(\mu(r_*, z, x_*), \sigma^2(r_*, z, x_*)\big),

with :math:`s_C` the mean of a self-attended encoding of :math:`C`. Training maximises the
ELBO over functions drawn from the family,

.. math:: \mathbb E_{q(z\mid C\cup T)}\textstyle\sum_{j\in T}\log p(y_j\mid x_j, r_j, z)
    - \mathrm{KL}\big(q(z\mid C\cup T)\,\|\,q(z\mid C)\big),

with the target set :math:`T` holding the context points plus uniform points of the domain.

The prediction on a grid is Gaussian: :math:`S` latent draws give decoder means
:math:`\mu_s` and variances :math:`\sigma_s^2`; moment matching gives
:math:`\bar\mu = \tfrac1S\sum_s\mu_s` and
:math:`\Sigma = \mathrm{diag}(\tfrac1S\sum_s\sigma_s^2) + FF^\top`,
:math:`F = [\mu_s - \bar\mu]_s/\sqrt S` (:class:`ANPPrediction`): a diagonal plus a rank-``S``
part, the form ``probconserv.condition_lowrank`` takes directly, and whose diagonal is the
reference code's ``var_total = mean(scale**2) + var(loc)``. (The reference applies
ProbConserv to each latent draw's diagonal Gaussian and then mixes; here the update acts on
the moment-matched Gaussian, with full or diagonal :math:`\Sigma`.)

Sized for a CPU: width 64, 4-head cross-attention, no self-attention by default, a 16-dim latent, a few
thousand Adam steps on a pre-drawn set of functions (the reference: width 128, 10 000
functions, 500 epochs on a GPU).

References:
    Kim, Mnih, Schwarz, Garnelo, Eslami, Rosenbaum, Vinyals & Teh (2019), Attentive Neural
    Processes, ICLR.
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (the ANP base model, the GPME data sets).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ucsciml import optimize
from ucsciml._types import Array, Float, PRNGKey
from ucsciml.models.probconserv._contexts import scale_inputs, stratified_context
from ucsciml.pde.gpme import AbstractConservationLaw

# Decoder sd floor: the data are noise-free, so far below Kim et al.'s 0.1; a floor keeps
# the Gaussian likelihood bounded while the mean is still poor early in training.
_MIN_SD = 5e-3


class _SelfAttention(eqx.Module):
    """Residual multi-head self-attention with a layer norm (one transformer sub-block)."""

    attention: eqx.nn.MultiheadAttention
    norm: eqx.nn.LayerNorm

    def __init__(self, width: int, heads: int, *, key: PRNGKey):
        self.attention = eqx.nn.MultiheadAttention(heads, width, key=key)
        self.norm = eqx.nn.LayerNorm(width)

    def __call__(self, h: Float[Array, "m w"]) -> Float[Array, "m w"]:
        return jax.vmap(self.norm)(h + self.attention(h, h, h))


class AttentiveNP(eqx.Module):
    """The ANP's weights (deterministic and latent paths, decoder); build with a key.

    Args:
        x_dim: input dimension (2 for ``(x, t)``).
        width: hidden width of every MLP and attention layer.
        latent_dim: size of the global latent :math:`z`.
        heads: attention heads.
        self_attention: add a self-attention layer over the context encodings in both paths
            (Kim et al.'s full ANP; about 2x the cost of a training step on a CPU).
        key: initialisation key (keyword-only, no default).
    """

    det_encoder: eqx.nn.MLP
    det_self: _SelfAttention | None
    embed: eqx.nn.MLP
    cross: eqx.nn.MultiheadAttention
    lat_encoder: eqx.nn.MLP
    lat_self: _SelfAttention | None
    lat_head: eqx.nn.MLP
    decoder: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        key: PRNGKey,
        x_dim: int = 2,
        width: int = 64,
        latent_dim: int = 16,
        heads: int = 4,
        self_attention: bool = False,
    ):
        for name, value in (("x_dim", x_dim), ("width", width), ("latent_dim", latent_dim)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"AttentiveNP({name}=...) must be a positive int, got {value!r}")
        if width % heads:
            raise ValueError(f"AttentiveNP: width ({width}) must be divisible by heads ({heads})")
        keys = jax.random.split(key, 8)
        act = jax.nn.gelu
        self.det_encoder = eqx.nn.MLP(x_dim + 1, width, width, 2, act, key=keys[0])
        self.det_self = _SelfAttention(width, heads, key=keys[1]) if self_attention else None
        self.embed = eqx.nn.MLP(x_dim, width, width, 1, act, key=keys[2])
        self.cross = eqx.nn.MultiheadAttention(heads, width, key=keys[3])
        self.lat_encoder = eqx.nn.MLP(x_dim + 1, width, width, 2, act, key=keys[4])
        self.lat_self = _SelfAttention(width, heads, key=keys[5]) if self_attention else None
        self.lat_head = eqx.nn.MLP(width, 2 * latent_dim, width, 1, act, key=keys[6])
        self.decoder = eqx.nn.MLP(2 * width + latent_dim, 2, width, 3, act, key=keys[7])
        self.latent_dim = latent_dim


def _pairs(x, y):
    return jnp.concatenate([x, y[:, None]], axis=-1)


def _encode(mlp, attention, x, y):
    h = jax.vmap(mlp)(_pairs(x, y))
    return h if attention is None else attention(h)


def latent_distribution(model: AttentiveNP, x, y) -> tuple[Array, Array]:
    """:math:`q(z \\mid \\{(x_i, y_i)\\})`: mean and sd (sd in (0.1, 1) as in Kim et al.)."""
    s = _encode(model.lat_encoder, model.lat_self, x, y).mean(0)
    mu, raw = jnp.split(model.lat_head(s), 2)
    return mu, 0.1 + 0.9 * jax.nn.sigmoid(raw)


def deterministic_path(model: AttentiveNP, xc, yc, xq) -> Float[Array, "n w"]:
    """:math:`r_*`: cross-attention of the queries over the self-attended context encoding."""
    values = _encode(model.det_encoder, model.det_self, xc, yc)
    return model.cross(jax.vmap(model.embed)(xq), jax.vmap(model.embed)(xc), values)


def decode(model: AttentiveNP, r, z, xq) -> tuple[Array, Array]:
    """Decoder mean and sd at the queries for one latent draw ``z``."""
    inputs = jnp.concatenate(
        [r, jnp.broadcast_to(z, (xq.shape[0], z.shape[-1])), jax.vmap(model.embed)(xq)], -1
    )
    out = jax.vmap(model.decoder)(inputs)
    return out[:, 0], _MIN_SD + jax.nn.softplus(out[:, 1])


def elbo_loss(model: AttentiveNP, key: PRNGKey, xc, yc, xt, yt) -> Array:
    """Negative ELBO per target point of one function (context ⊂ targets is the caller's
    choice; :func:`train` passes context + uniform points)."""
    mu_c, sd_c = latent_distribution(model, xc, yc)
    mu_t, sd_t = latent_distribution(model, xt, yt)
    z = mu_t + sd_t * jax.random.normal(key, mu_t.shape, mu_t.dtype)
    mean, sd = decode(model, deterministic_path(model, xc, yc, xt), z, xt)
    nll = -jnp.sum(jax.scipy.stats.norm.logpdf(yt, mean, sd))
    kl = jnp.sum(jnp.log(sd_c / sd_t) + (sd_t**2 + (mu_t - mu_c) ** 2) / (2 * sd_c**2) - 0.5)
    return (nll + kl) / yt.shape[0]


class FamilyData(NamedTuple):
    """Pre-drawn functions of a family, inputs scaled to the unit square.

    ``xc (f, m, 2)``, ``yc (f, m)``: contexts; ``xt (f, q, 2)``, ``yt (f, q)``: extra targets;
    ``parameter (f,)``: each function's family parameter.
    """

    xc: np.ndarray
    yc: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    parameter: np.ndarray


def family_data(
    key: PRNGKey,
    family: type[AbstractConservationLaw],
    num_functions: int,
    *,
    parameters: np.ndarray | None = None,
    num_targets: int = 50,
) -> FamilyData:
    """Draw ``num_functions`` solutions: parameter ~ ``family.parameter_range`` (or the given
    ``parameters``), 10 x 10 stratified contexts, ``num_targets`` uniform target points."""
    if not (isinstance(family, type) and issubclass(family, AbstractConservationLaw)):
        raise TypeError(f"family must be an AbstractConservationLaw subclass, got {family!r}")
    if num_functions < 1:
        raise ValueError(f"num_functions must be >= 1, got {num_functions}")
    param_key, context_key, target_key = jax.random.split(key, 3)
    if parameters is None:
        low, high = family.parameter_range
        parameters = np.asarray(
            jax.random.uniform(param_key, (num_functions,), minval=low, maxval=high)
        )
    parameters = np.asarray(parameters, dtype=float)
    problem = family(**{family.parameter: float(parameters[0])})
    domain = problem.domain
    contexts = np.asarray(
        jax.vmap(lambda k: stratified_context(k, domain["x"], domain["t"]))(
            jax.random.split(context_key, num_functions)
        )
    )
    unit = np.asarray(jax.random.uniform(target_key, (num_functions, num_targets, 2)))
    (x0, x1), (t0, t1) = domain["x"], domain["t"]
    targets = unit * [x1 - x0, t1 - t0] + [x0, t0]
    yc, yt = [], []
    for value, c, t in zip(parameters, contexts, targets, strict=True):
        member = family(**{family.parameter: float(value)})
        yc.append(member.solve(c))
        yt.append(member.solve(t))
    return FamilyData(scale_inputs(problem, contexts), np.stack(yc), unit, np.stack(yt), parameters)


class TrainResult(NamedTuple):
    """Trained model, the loss per step (negative ELBO per target point) and the training
    verdict (:func:`ucsciml.convergence.judge`'s dict)."""

    model: AttentiveNP
    losses: np.ndarray
    verdict: dict[str, Any]


def train(
    key: PRNGKey,
    model: AttentiveNP,
    data: FamilyData,
    *,
    num_steps: int = 3000,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    chunk: int = 100,
    progress: bool = True,
) -> TrainResult:
    """Adam on the negative ELBO, minibatches of functions drawn with replacement.

    Runs on the families' shared loop (:func:`ucsciml.optimize.train`: jitted ``lax.scan``
    chunks of ``chunk`` steps, a progress bar, a convergence verdict logged when it fails);
    step ``k`` uses ``jax.random.split(key, num_steps)[k]``. The learning rate follows a
    cosine decay to 10% of ``learning_rate``; gradients are clipped to global norm 1.
    """
    if num_steps < 1 or batch_size < 1 or chunk < 1:
        raise ValueError(
            f"num_steps, batch_size, chunk must be >= 1; got {num_steps}, {batch_size}, {chunk}"
        )
    arrays = tuple(jnp.asarray(a) for a in data[:4])
    num_functions = arrays[0].shape[0]
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.1)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

    def batch_loss(net, key):
        index_key, z_key = jax.random.split(key)
        index = jax.random.randint(index_key, (batch_size,), 0, num_functions)
        xc, yc, xt, yt = (a[index] for a in arrays)
        xt, yt = jnp.concatenate([xc, xt], 1), jnp.concatenate([yc, yt], 1)
        keys = jax.random.split(z_key, batch_size)
        return jnp.mean(jax.vmap(lambda *a: elbo_loss(net, *a))(keys, xc, yc, xt, yt))

    trained = optimize.train(
        batch_loss,
        model,
        optimiser,
        num_steps=num_steps,
        key=key,
        phase="ANP",
        chunk_size=chunk,
        step_keys="split",
        progress=progress,
        hint="raise num_steps or lower learning_rate",
    )
    return TrainResult(trained.params, trained.losses, trained.verdict)


class ANPPrediction(NamedTuple):
    r"""Moment-matched prediction :math:`\mathcal N(\bar\mu, \mathrm{diag}(d) + FF^\top)`."""

    mean: Float[Array, " n"]
    diag: Float[Array, " n"]
    factor: Float[Array, "n s"]

    def variance(self) -> Float[Array, " n"]:
        return self.diag + jnp.sum(self.factor**2, -1)

    def covariance(self) -> Float[Array, "n n"]:
        return jnp.diag(self.diag) + self.factor @ self.factor.T


@eqx.filter_jit
def _predict(model, key, xc, yc, xq, num_draws):
    mu_z, sd_z = latent_distribution(model, xc, yc)
    z = mu_z + sd_z * jax.random.normal(key, (num_draws, mu_z.shape[0]), mu_z.dtype)
    r = deterministic_path(model, xc, yc, xq)
    means, sds = jax.vmap(lambda z: decode(model, r, z, xq))(z)
    centre = means.mean(0)
    factor = ((means - centre) / jnp.sqrt(float(num_draws))).T
    return ANPPrediction(centre, jnp.mean(sds**2, 0), factor)


def predict(
    model: AttentiveNP,
    key: PRNGKey,
    xc: Float[Array, "m d"],
    yc: Float[Array, " m"],
    xq: Float[Array, "n d"],
    num_draws: int = 64,
) -> ANPPrediction:
    """Gaussian prediction at ``xq`` from ``num_draws`` draws of :math:`z \\sim q(z \\mid C)`.

    Inputs are in the unit square the model was trained on (:func:`scale_inputs`); batch
    over functions with ``jax.vmap`` (``num_draws`` static).

    Raises:
        ValueError: for mismatched shapes or ``num_draws < 2``.
    """
    xc, yc, xq = jnp.asarray(xc), jnp.asarray(yc), jnp.asarray(xq)
    x_dim = model.embed.in_size
    if xc.ndim != 2 or xc.shape[1] != x_dim or yc.shape != xc.shape[:1]:
        raise ValueError(
            f"predict needs xc (m, {x_dim}) and yc (m,); got {xc.shape} and {yc.shape}"
        )
    if xq.ndim != 2 or xq.shape[1] != x_dim:
        raise ValueError(f"predict needs xq (n, {x_dim}), got {xq.shape}")
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 (a covariance needs spread), got {num_draws}")
    return _predict(model, key, xc, yc, xq, num_draws)
