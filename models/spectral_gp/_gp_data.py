"""Sensor data and parameter spaces shared by the spectral GP's exact and iterative fits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ucsciml import data as sensor_data
from ucsciml._types import Array
from ucsciml.models.spectral_gp import _spectral_kernels as sk


def with_data_defaults(model):
    """``model`` with ``collocation="auto"`` resolved for sensor data (midpoints)."""
    if model.collocation == "auto":
        return dataclasses.replace(model, collocation="midpoints")
    return model


def kernel_sites(model) -> tuple[str, ...]:
    """Names of the kernel's sites."""
    names = ("eta", "mu", "log_ell") if model.kernel in sk.MIXTURES else ("eta", "log_ell")
    return tuple(f"{n}_{c}" for c in model.pde.coords for n in names)


def sensor_inputs(model, data) -> dict[str, Array]:
    """The solver's inputs from sensor data: forcing, boundary rows and sensors (checked)."""
    sensor_data.validate(data)
    coords = tuple(model.pde.coords)
    names = tuple(sensor_data.coordinate_names(data))
    if names != coords:
        raise ValueError(
            f"data coordinates {names} do not match the PDE's {coords}; rename or reorder them"
        )
    if model.pde.observables() != {"u": {"u": 1.0}}:
        raise ValueError(
            f"SpectralGP observes the field u itself; {type(model.pde).__name__} observes "
            f"{sorted(model.pde.observables())}: use the B-PINN for derived observables"
        )
    observed = sensor_data.observed_names(data)
    if len(observed) != 1:
        raise ValueError(f"SpectralGP needs one observed variable (the field); data has {observed}")
    points = np.asarray(sensor_data.points(data), np.float64)
    for j, c in enumerate(coords):
        lo, hi = model.pde.domain[c]
        tol = 1e-9 * (hi - lo)
        outside = (points[:, j] < lo - tol) | (points[:, j] > hi + tol)
        if outside.any():
            raise ValueError(
                f"{int(outside.sum())} sensor(s) lie outside the grid's domain along '{c}' "
                f"[{lo:g}, {hi:g}] (e.g. {c} = {points[outside, j][0]:g}); the GP's grid covers "
                "the PDE's domain only: drop those sensors or use a PDE whose domain holds them"
            )
    inputs: dict[str, Array] = {
        "source": jnp.asarray(model.forcing_on_grid()),
        "sensor_points": jnp.asarray(points),
        "sensor_values": jnp.asarray(sensor_data.observations(data), jnp.float64),
    }
    noise = (
        np.full(points.shape[0], float(model.noise_std))
        if model.noise_std is not None
        else sensor_data.noise_std(data)
    )
    if noise is not None:
        inputs["sensor_noise"] = jnp.asarray(noise, jnp.float64)
    if model.boundary == "solution":
        index = model.boundary_indices()
        inputs["boundary_index"] = jnp.asarray(index)
        inputs["boundary_values"] = jnp.asarray(model.pde.solve(model.points()[index]))
    else:
        inputs["boundary_index"] = jnp.zeros((0,), jnp.int32)
    return inputs


def frequency_bounds(model) -> dict[str, constraints.Constraint]:
    """Spectral means limited to ``[0, f_max]``, ``f_max`` the grid's resolvable frequency
    (:data:`~ucsciml.models.spectral_gp._spectral_kernels.MIN_POINTS_PER_PERIOD` points per period):
    above it a component aliases onto the grid and fits noise."""
    if model.kernel not in sk.MIXTURES:
        return {}
    return {
        f"mu_{c}": constraints.interval(0.0, resolvable(h))
        for c, h in zip(model.pde.coords, model.spacings(), strict=True)
    }


#: Choices of ``SpectralGP.kernel_prior``.
KERNEL_PRIORS = ("flat", "normal")
#: Sd of the Normal priors on ``eta`` and ``log_ell`` (``kernel_prior="normal"``): a factor
#: of ~7 either way at one sd, ~55 at two, of weight and length-scale around their centres.
KERNEL_PRIOR_SCALE = 2.0


def kernel_priors(model, spread: float) -> dict[str, dist.Distribution]:
    r"""Proper, weakly informative priors of the kernel's sites (``kernel_prior="normal"``).

    Per coordinate :math:`c` of length :math:`L_c` with :math:`Q` components and :math:`D`
    coordinates: :math:`\eta_{c,q} \sim \mathcal N(\log(s^2)/D - \log Q, 2)`, so the product
    kernel's variance is centred on the sensor values' variance :math:`s^2` (and the amplitude
    shared between the axes' kernels, flat under the Jeffreys prior, is pinned);
    :math:`\log \ell_{c,q} \sim \mathcal N(\log L_c, 2)` (from a fiftieth of the domain to
    fifty domains at two sd); spectral means uniform on ``[0, f_max]``. Unlike the flat
    default, the posterior is proper: components the data do not need keep their prior
    instead of drifting to zero weight or infinite length, and NUTS can sample the kernel.
    """
    count = len(model.pde.coords)
    bounds = frequency_bounds(model)
    q = model.num_components if model.kernel in sk.MIXTURES else 1
    centre = np.log(max(spread, 1e-12) ** 2) / count - np.log(q)
    out: dict[str, dist.Distribution] = {}
    for c in model.pde.coords:
        lo, hi = model.pde.domain[c]
        out[f"eta_{c}"] = dist.Normal(jnp.full((q,), centre), KERNEL_PRIOR_SCALE).to_event(1)
        out[f"log_ell_{c}"] = dist.Normal(
            jnp.full((q,), np.log(hi - lo)), KERNEL_PRIOR_SCALE
        ).to_event(1)
        if f"mu_{c}" in bounds:
            top = bounds[f"mu_{c}"].upper_bound
            out[f"mu_{c}"] = dist.Uniform(jnp.zeros((q,)), jnp.full((q,), top)).to_event(1)
    return out


def resolvable(spacing: float) -> float:
    """The highest frequency (cycles per unit) a grid of this spacing resolves."""
    return 1.0 / (sk.MIN_POINTS_PER_PERIOD * spacing)


def start_values(model) -> dict[str, Array]:
    """The model's starting values with spectral means strictly inside their bounds."""
    init = model.init_params()
    for name, bound in frequency_bounds(model).items():
        top = bound.upper_bound
        init[name] = jnp.clip(init[name], 0.01 * top, 0.97 * top)
    return init


def transforms(model, values: dict) -> dict:
    """Bijections from the reals to each site's support (kernel frequencies to their
    interval, unknown coefficients to their prior's support, the rest the identity)."""
    supports = {k: v.prior.support for k, v in model.pde.unknowns().items()}
    supports |= frequency_bounds(model)
    return {k: biject_to(supports.get(k, constraints.real)) for k in values}


def check_linear(model) -> None:
    """Raise unless the PDE's residual is affine in the field, checked numerically on random
    derivatives (a PDE's ``linear`` flag is not trusted alone)."""
    pde = model.pde
    name = type(pde).__name__
    if not getattr(pde, "linear", False):
        raise ValueError(
            f"{name} is not linear in u (or does not declare linear = True): the exact "
            "Gaussian solve does not apply; use the B-PINN, or the spectral GP's joint "
            "optimisation (ucsciml.models.spectral_gp.fit(..., method='joint'))"
        )
    key = jax.random.key(0)
    names = (*pde.derivatives, "f")
    k1, k2 = jax.random.split(key)
    a = {n: jax.random.normal(jax.random.fold_in(k1, i), (7,)) for i, n in enumerate(names)}
    b = {n: jax.random.normal(jax.random.fold_in(k2, i), (7,)) for i, n in enumerate(names)}
    zero = {n: jnp.zeros(7) for n in names}
    params = {k: v.truth if hasattr(v, "prior") else v for k, v in pde.parameters().items()}
    params = {k: 1.0 if v is None else v for k, v in params.items()}

    def residual(d):
        return pde.residual(d, params)

    both = residual({n: a[n] + b[n] for n in names})
    gap = both - residual(a) - residual(b) + residual(zero)
    scale = float(jnp.max(jnp.abs(both))) + 1.0
    if float(jnp.max(jnp.abs(gap))) > 1e-8 * scale:
        raise ValueError(
            f"{name}.residual is not affine in the field's derivatives although {name} declares "
            "linear = True: the exact Gaussian solve does not apply; fix the flag or use the "
            "B-PINN"
        )
