r"""Physics consistency of a posterior: PDE residuals and conservation defects per draw.

A posterior can fit the sensors and still violate the physics between them. These helpers
put a distribution on that violation: the RMS of the PDE residual for every posterior draw,
and, where a conservation law applies, the drift of the conserved total per draw.

Two routes to the residual:

* :func:`residual_rms` at any points, through the program's ``field_fn`` hook (the field of
  one draw as a differentiable function of the points), with derivatives from
  :func:`ucsciml.pde.derivatives` and the PDE's own residual;
* :func:`pseudo_observation_rms` at the program's own collocation points, reading the mean
  of a residual pseudo-observation site (``residual`` in ``models.BayesianPINN``); no hook
  needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers

from ucsciml.pde import AbstractPDE, Unknown, derivatives
from ucsciml.posterior import SAMPLE_DIMS, Posterior, _map_draws


def residual_draws(
    posterior: Posterior, pde: AbstractPDE, points: np.ndarray, *, batch_size: int = 16
) -> xr.DataArray:
    r"""PDE residual :math:`\mathcal R[u_s; \lambda_s](x_j)` of every draw at ``points``.

    Unknown PDE parameters take each draw's value; known ones their number.

    Args:
        posterior: draws of a program with a ``field_fn`` hook.
        pde: the PDE whose residual to evaluate.
        points: ``(n, d)`` points, columns in ``pde.coords`` order.
        batch_size: draws evaluated at once.

    Returns:
        ``DataArray`` ``(chain, draw, point)``.

    Raises:
        ValueError: when the program has no ``field_fn`` or the points have the wrong width.
    """
    program = posterior.program
    if program.field_fn is None:
        raise ValueError(
            f"program '{program.name}' has no field_fn; give Program(field_fn=...) "
            "(the field of one draw at points) or use pseudo_observation_rms"
        )
    points = jnp.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != len(pde.coords):
        raise ValueError(
            f"points must be (n, {len(pde.coords)}) in the order {pde.coords}, got {points.shape}"
        )
    field_fn = program.field_fn
    parameters = pde.parameters()

    def one(sample, _key):
        params = {
            k: sample[k] if isinstance(v, Unknown) else jnp.asarray(v)
            for k, v in parameters.items()
        }
        derivs = derivatives(lambda p: field_fn(sample, p), points, pde.derivatives, pde.coords)
        return {"residual": pde.residual(derivs, params)}

    out = _map_draws(one, posterior.latent_samples(), jax.random.key(0), batch_size)["residual"]
    return xr.DataArray(out, dims=(*SAMPLE_DIMS, "point"), name="residual")


def residual_rms(
    posterior: Posterior, pde: AbstractPDE, points: np.ndarray, *, batch_size: int = 16
) -> xr.DataArray:
    r"""RMS of the PDE residual per draw, :math:`\sqrt{\frac1n\sum_j \mathcal R_s(x_j)^2}`.

    Returns:
        ``DataArray`` ``(chain, draw)``: its distribution says how physical the posterior is.
    """
    res = residual_draws(posterior, pde, points, batch_size=batch_size)
    return np.sqrt((res**2).mean("point")).rename("residual_rms")


def pseudo_observation_rms(
    posterior: Posterior, site: str = "residual", *, batch_size: int = 64
) -> xr.DataArray:
    r"""RMS per draw of the mean of a residual pseudo-observation site.

    A physics-informed model observes zeros through ``Normal(R(x_j), sigma_r)``; the mean of
    that distribution is the residual at the program's collocation points.

    Raises:
        ValueError: when the model has no such site.
    """
    program = posterior.program
    trace = program.sites()
    if site not in trace:
        raise ValueError(
            f"program '{program.name}' has no site '{site}'; its sites are {sorted(trace)}"
        )

    def one(sample, key):
        model = handlers.substitute(handlers.seed(program.fn, key), data=sample)
        tr = handlers.trace(model).get_trace(program.inputs, targets=program.targets)
        mean = tr[site]["fn"].mean
        return {"rms": jnp.sqrt(jnp.mean(mean**2))}

    out = _map_draws(one, posterior.latent_samples(), jax.random.key(0), batch_size)["rms"]
    return xr.DataArray(out, dims=SAMPLE_DIMS, name="residual_rms")


def conservation_defect(field: xr.DataArray, *, over: str, along: str) -> xr.DataArray:
    r"""Largest drift of a conserved total per draw, :math:`\max_t |M(t) - M(t_0)|`,
    :math:`M(t) = \int u(x, t)\,dx` (trapezoid rule over the ``over`` coordinate).

    Args:
        field: draws on a tensor grid with coordinates for ``over`` and ``along``,
            e.g. ``(chain, draw, x, t)``.
        over: the dim integrated over (space).
        along: the dim the total should stay constant along (time).

    Returns:
        The defect per draw (``field``'s dims without ``over`` and ``along``).
    """
    for dim in (over, along):
        if dim not in field.dims:
            raise ValueError(f"field has no dim '{dim}' (dims {field.dims})")
    if over not in field.coords:
        raise ValueError(f"conservation_defect needs coordinate values for '{over}'")
    total = field.integrate(over)
    return np.abs(total - total.isel({along: 0})).max(along).rename("conservation_defect")
