"""Bayesian physics-informed neural network (B-PINN) for forward and inverse PDE problems."""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr
from scipy.stats import qmc

from ucsciml import data as sensor_data
from ucsciml._types import Array
from ucsciml.pde import AbstractPDE, Unknown, derivatives
from ucsciml.program import Program

_RESIDUAL_AT = ("collocation", "sensors", "sensors+collocation")
_ACTIVATIONS = {"tanh": jnp.tanh, "sin": jnp.sin, "gelu": jax.nn.gelu, "softplus": jax.nn.softplus}


@dataclass(frozen=True, eq=False)
class BayesianPINN:
    r"""A neural surrogate ``u(x, t)`` with a weight prior, a data likelihood and a PDE-residual
    likelihood; unknown PDE parameters are latent sites.

    .. math::
        w \sim \mathcal N(0, s^2 / \text{fan-in}),\quad
        u_i \sim \mathcal N(u_w(x_i), \sigma^2),\quad
        0 \sim \mathcal N(\mathcal R[u_w; \lambda](x_j^c), \sigma_r^2),\quad \lambda \sim p(\lambda).

    The network is an Equinox MLP on inputs scaled to ``[-1, 1]`` by the PDE's domain. Its
    derivatives come from forward-mode autodiff (:func:`ucsciml.pde.derivatives`).
    Collocation points are the first ``num_collocation`` points of an unscrambled Halton
    sequence over the domain, so compiling is deterministic. With ``hard_constraints=True``
    the PDE's ansatz ``u = B + D * N`` enforces initial and boundary conditions exactly.

    Sites: ``w{l}``, ``b{l}`` (weights and biases of layer ``l``; network sites), one site per
    unknown PDE parameter, ``sigma`` / ``residual_std`` when those are unknown, ``u`` (the field at
    the sensors, deterministic), ``u_obs`` (data likelihood), ``residual`` (pseudo-observation).
    A PDE whose sensors observe derivatives of the field (:meth:`AbstractPDE.observables`, e.g.
    velocity ``u = psi_y``, ``v = -psi_x`` of a stream function) gets one deterministic site
    and one ``<name>_obs`` likelihood site per observable instead of ``u``/``u_obs``; the data
    then holds one variable per observable (``ucsciml.data.sensors(values=...)``).

    Args:
        pde: the PDE (parameters known or :class:`ucsciml.Unknown`).
        width: hidden units per layer.
        depth: hidden layers.
        activation: ``"tanh"``, ``"sin"``, ``"gelu"`` or ``"softplus"``.
        prior_scale: ``s`` in the weight prior (biases get ``N(0, s^2)``).
        noise_std: data noise sd: a number, :class:`Unknown`, or ``None`` to use the data's
            per-sensor ``noise_std``.
        residual_std: ``sigma_r`` of the residual pseudo-likelihood, a number or :class:`Unknown`.
        num_collocation: Halton residual points (used when ``residual_at`` includes
            ``"collocation"``).
        residual_at: where the PDE residual is evaluated: ``"collocation"`` (Halton points
            over the domain), ``"sensors"`` (only at the sensor locations, as Raissi et al.
            2019 do for inverse problems: the residual is never asked to hold where the data
            cannot pin a sharp front, so it cannot outvote them there), or
            ``"sensors+collocation"`` (both).
        hard_constraints: use the PDE's ansatz for initial/boundary conditions.
        dropout: rate ``p`` of MC dropout on hidden units. When ``> 0`` the model adds
            Bernoulli(1 - p) keep-mask sites ``dropout{l}`` (one mask per unit, shared by all
            points, inverted scaling) that ``inference.MCDropout`` samples; such a program has
            discrete latents, so NUTS/VI/Laplace/ensembles refuse it. ``0`` (default) adds
            nothing.

    References:
        Yang, Meng & Karniadakis (2021), B-PINNs: Bayesian physics-informed neural networks
        for forward and inverse PDE problems with noisy data, JCP 425.
        Dongre & Hora (2023), Evaluating uncertainty quantification approaches for neural PDEs
        in scientific applications, NeurIPS AI4Science workshop.
    """

    pde: AbstractPDE
    width: int = 32
    depth: int = 3
    activation: str = "tanh"
    prior_scale: float = 1.0
    noise_std: float | Unknown | None = None
    residual_std: float | Unknown = 0.05
    num_collocation: int = 1000
    residual_at: str = "collocation"
    hard_constraints: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.pde, AbstractPDE):
            raise TypeError(
                f"BayesianPINN.pde must be a ucsciml PDE, got {type(self.pde).__name__}"
            )
        for name in ("width", "depth", "num_collocation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BayesianPINN.{name} must be a positive integer, got {value!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"BayesianPINN.activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.residual_at not in _RESIDUAL_AT:
            raise ValueError(
                f"BayesianPINN.residual_at must be one of {list(_RESIDUAL_AT)}, "
                f"got {self.residual_at!r}"
            )
        if not self.prior_scale > 0:
            raise ValueError(f"BayesianPINN.prior_scale must be > 0, got {self.prior_scale}")
        for name in ("noise_std", "residual_std"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not value > 0:
                raise ValueError(f"BayesianPINN.{name} must be > 0, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BayesianPINN.dropout must be in [0, 1), got {self.dropout}")
        if self.hard_constraints and self.pde.ansatz() is None:
            raise ValueError(
                f"{type(self.pde).__name__} has no hard-constraint ansatz; set "
                "hard_constraints=False"
            )

    def network(self) -> eqx.nn.MLP:
        """The MLP's structure (its weights are replaced by sampled values in the model)."""
        return eqx.nn.MLP(
            len(self.pde.coords),
            "scalar",
            self.width,
            self.depth,
            activation=_ACTIVATIONS[self.activation],
            key=jax.random.key(0),
        )

    def collocation_points(self) -> np.ndarray:
        """Deterministic Halton collocation points over the PDE's domain."""
        lo, hi = self._bounds()
        halton = qmc.Halton(len(lo), scramble=False)
        unit = halton.random(self.num_collocation + 1)[1:]
        return lo + unit * (hi - lo)

    def residual_points(self, sensor_points: np.ndarray) -> np.ndarray:
        """The points where the residual likelihood is evaluated (see ``residual_at``)."""
        parts = []
        if self.residual_at.startswith("sensors"):
            parts.append(np.asarray(sensor_points, dtype=float))
        if self.residual_at.endswith("collocation"):
            parts.append(self.collocation_points())
        return np.concatenate(parts, axis=0)

    def compile(self, data: xr.Dataset) -> Program:
        """Compile against sensor data whose coordinates are the PDE's coordinates."""
        sensor_data.validate(data)
        names = sensor_data.coordinate_names(data)
        if tuple(names) != tuple(self.pde.coords):
            raise ValueError(
                f"data coordinates {names} do not match the PDE's {self.pde.coords}; "
                "rename the data's coordinates or reorder them"
            )
        noise = sensor_data.noise_std(data)
        if self.noise_std is None and noise is None:
            raise ValueError(
                "the data has no noise_std and BayesianPINN.noise_std is None; give "
                "the data a noise_std or set noise_std=Unknown(prior)"
            )
        observables = self._observables()
        if observables is not None and set(sensor_data.observed_names(data)) != set(observables):
            raise ValueError(
                f"{type(self.pde).__name__} observes {tuple(observables)} but the data holds "
                f"{sensor_data.observed_names(data)}; give the data one variable per observable "
                "(ucsciml.data.sensors(values={...}))"
            )
        points = sensor_data.points(data)
        if isinstance(self.noise_std, int | float):
            noise = np.full(points.shape[0], float(self.noise_std))
        inputs = {
            "points": jnp.asarray(points),
            "noise_std": None if noise is None else jnp.asarray(noise),
            "collocation": jnp.asarray(self.residual_points(points)),
        }
        mean_noise = None if noise is None else float(np.mean(noise))
        layers = self._layer_shapes()
        observed_sites = ("u",) if observables is None else tuple(observables)
        dims = {
            **{k: ("sensor",) for k in observed_sites},
            **{f"{k}_obs": ("sensor",) for k in observed_sites},
            "residual": ("collocation",),
            "points": ("sensor", "coord"),
            "noise_std": ("sensor",),
            "collocation": ("collocation", "coord"),
        }
        for i, (out_dim, _in_dim) in enumerate(layers):
            dims[f"w{i}"] = (f"layer{i}_out", f"layer{i}_in") if out_dim else (f"layer{i}_in",)
            if out_dim:
                dims[f"b{i}"] = (f"layer{i}_out",)
        for name in self._dropout_site_names():
            dims[name] = (f"layer{name.removeprefix('dropout')}_out",)
        truth = {k: v.truth for k, v in self.pde.unknowns().items() if v.truth is not None}

        def query(new_points):
            n = np.asarray(new_points).shape[0]
            return {
                "points": jnp.asarray(new_points, dtype=float),
                "noise_std": None if mean_noise is None else jnp.full(n, mean_noise),
                "collocation": None,
            }

        targets = (
            jnp.asarray(sensor_data.observations(data))
            if observables is None
            else {f"{k}_obs": jnp.asarray(data[k].values, dtype=float) for k in observables}
        )
        return Program(
            fn=self._model_fn(),
            inputs=inputs,
            targets=targets,
            dims=dims,
            coords={"coord": np.array(names)},
            query_fn=query,
            field_fn=self._field_fn(),
            observed=tuple(f"{k}_obs" for k in observed_sites),
            predict_sites=(*observed_sites, *(f"{k}_obs" for k in observed_sites)),
            network_sites=(*self._weight_site_names(), *self._dropout_site_names()),
            name=f"bpinn-{type(self.pde).__name__.lower()}",
            attrs={
                "truth": truth,
                "pde": type(self.pde).__name__,
                "coords": list(names),
                **(
                    {"dropout_sites": self._dropout_site_names(), "dropout_rate": self.dropout}
                    if self.dropout
                    else {}
                ),
            },
        )

    def _observables(self) -> dict[str, dict[str, float]] | None:
        """The PDE's observables, or ``None`` when sensors observe the field itself."""
        observables = self.pde.observables()
        return None if observables == {"u": {"u": 1.0}} else observables

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([self.pde.domain[c][0] for c in self.pde.coords], dtype=float)
        hi = np.array([self.pde.domain[c][1] for c in self.pde.coords], dtype=float)
        return lo, hi

    def _layer_shapes(self) -> list[tuple[int, int]]:
        """(out, in) per layer, with out = 0 for the scalar output's weight vector."""
        leaves = jax.tree.leaves(eqx.filter(self.network(), eqx.is_inexact_array))
        shapes = []
        for w in leaves[::2]:
            shapes.append((w.shape[0], w.shape[1]) if w.ndim == 2 else (0, w.shape[0]))
        return shapes

    def _weight_site_names(self) -> list[str]:
        names = []
        for i in range(len(self._layer_shapes())):
            names.extend((f"w{i}", f"b{i}"))
        return names

    def _dropout_site_names(self) -> list[str]:
        """Bernoulli keep-masks on each hidden layer's units (only when ``dropout > 0``)."""
        return [f"dropout{i}" for i in range(self.depth)] if self.dropout else []

    def _field_fn(self):
        """``field_fn(sample, points)``: the network field for one draw of the weights."""
        field, site_names = self._field_builder()
        return lambda sample, pts: field([sample[n] for n in site_names], pts)

    def _field_builder(self):
        net = self.network()
        params, static = eqx.partition(net, eqx.is_inexact_array)
        treedef = jax.tree.structure(params)
        lo, hi = (jnp.asarray(b) for b in self._bounds())
        ansatz = self.pde.ansatz() if self.hard_constraints else None

        def field(values: list[Array], pts: Array) -> Array:
            network = eqx.combine(jax.tree.unflatten(treedef, values), static)
            scaled = 2.0 * (pts - lo) / (hi - lo) - 1.0
            out = jax.vmap(network)(scaled)
            if ansatz is not None:
                boundary, distance = ansatz
                out = boundary(pts) + distance(pts) * out
            return out

        return field, self._weight_site_names()

    def _model_fn(self):
        net = self.network()
        leaves = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))
        site_names = self._weight_site_names()
        fan_in = [w.shape[-1] for w in leaves[::2]]
        pde, scale = self.pde, self.prior_scale
        field, _ = self._field_builder()
        observables = self._observables()

        # One XLA computation each for the field and the residual: inside a jitted potential
        # they inline, and when NumPyro runs the model eagerly (site discovery, traces) they
        # compile once instead of dispatching hundreds of small ops one by one.
        field_of = jax.jit(field)

        @jax.jit
        def residual_of(values, colloc, params):
            derivs = derivatives(lambda p: field(values, p), colloc, pde.derivatives, pde.coords)
            return pde.residual(derivs, params)

        def model(inputs, targets=None):
            values = []
            for i, (name, leaf) in enumerate(zip(site_names, leaves, strict=True)):
                sd = scale / np.sqrt(fan_in[i // 2]) if i % 2 == 0 else scale
                values.append(
                    numpyro.sample(
                        name, dist.Normal(0.0, sd).expand(leaf.shape).to_event(leaf.ndim)
                    )
                )
            # Dropout on hidden layer l's units = masking the columns of layer l+1's
            # weights (inverted-dropout scaling keeps the mean pre-activation).
            for i, name in enumerate(self._dropout_site_names()):
                keep = numpyro.sample(
                    name, dist.Bernoulli(probs=1.0 - self.dropout).expand((self.width,)).to_event(1)
                )
                values[2 * i + 2] = values[2 * i + 2] * keep / (1.0 - self.dropout)
            params = {k: _site(k, v) for k, v in pde.parameters().items()}
            points = inputs["points"]
            if observables is None:
                u = numpyro.deterministic("u", field_of(values, points))
            sigma = (
                _site("sigma", self.noise_std)
                if self.noise_std is not None
                else inputs["noise_std"]
            )
            if observables is None:
                with numpyro.plate("sensor", points.shape[0], dim=-1):
                    numpyro.sample("u_obs", dist.Normal(u, sigma), obs=targets)
            else:
                _observe(observables, lambda p: field(values, p), points, sigma, targets, pde)
            colloc = inputs["collocation"]
            if colloc is not None:
                res = residual_of(values, colloc, params)
                sigma_r = _site("residual_std", self.residual_std)
                with numpyro.plate("collocation", colloc.shape[0], dim=-1):
                    numpyro.sample("residual", dist.Normal(res, sigma_r), obs=jnp.zeros_like(res))

        return model


def _observe(observables, field_fn, points, sigma, targets, pde) -> None:
    """Deterministic site and ``<name>_obs`` likelihood for each linear observable."""
    names = sorted({d for combo in observables.values() for d in combo})
    derivs = derivatives(field_fn, points, names, pde.coords)
    for name, combo in observables.items():
        value = numpyro.deterministic(name, sum(c * derivs[d] for d, c in combo.items()))
        obs = None if targets is None else targets[f"{name}_obs"]
        with numpyro.plate("sensor", points.shape[0], dim=-1):
            numpyro.sample(f"{name}_obs", dist.Normal(value, sigma), obs=obs)


def _site(name: str, value):
    if isinstance(value, Unknown):
        return numpyro.sample(name, value.prior)
    return value
