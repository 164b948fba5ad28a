r"""The spectral GP on sensor data for grids too large to factorise: conjugate gradients.

Beyond :data:`ucsciml.models.spectral_gp._gp_solve.DENSE_LIMIT` grid points the evidence of
:mod:`ucsciml.models.spectral_gp._gp_program` (a dense factorisation) is out of reach, so the
hyper-parameters are fitted by the alternating scheme of :func:`ucsciml.models.spectral_gp._gp_solve.fit`
on the joint density of grid values, sensors, residual and hyper-parameters: per step the
exact conditional mean of the grid values by conjugate gradients with Kronecker matvecs
(warm-started), then one Adam step on the hyper-parameters at that mean, in unconstrained
coordinates (spectral means in the grid's resolvable band, coefficients in their prior's
support). Memory stays :math:`O(N + \sum_j n_j^2 + S \prod_{j>1} n_j)`: no ``N x N`` matrix.
:func:`ucsciml.models.spectral_gp._gp_solve.predict` then gives the band from Matheron draws.

References:
    Fang et al. (2024), Solving High Frequency and Multi-Scale PDEs with Gaussian Processes,
    ICLR 2024.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

from ucsciml import optimize
from ucsciml.models.spectral_gp import _gp_solve as solve
from ucsciml.models.spectral_gp import _kron
from ucsciml.models.spectral_gp._gp_data import (
    check_linear,
    kernel_sites,
    sensor_inputs,
    start_values,
    transforms,
    with_data_defaults,
)
from ucsciml.models.spectral_gp._gp_precond import kron_jacobi


def fit_sensors(
    model,
    data,
    *,
    num_steps: int,
    learning_rate: float = 1e-2,
    cg_tol: float = 1e-8,
    cg_maxiter: int = 100,
    cg_final_maxiter: int | None = None,
    precondition: bool = True,
    progress: bool = True,
) -> solve.SpectralGPFit:
    """Fit a :class:`~ucsciml.models.SpectralGP` to sensor data by the alternating scheme.

    Args:
        model: the model definition (a linear PDE; any grid size).
        data: sensor data (:func:`ucsciml.data.sensors`), with ``noise_std`` or with the
            model's ``noise_std`` set.
        num_steps: alternating steps (run on :func:`ucsciml.optimize.train`).
        learning_rate: Adam's rate on the unconstrained hyper-parameters.
        cg_tol, cg_maxiter: the per-step CG solves (warm-started, capped).
        cg_final_maxiter: cap of the final solve (default ``10 * cg_maxiter``); a
            :class:`RuntimeWarning` is raised when it stops above ``cg_tol``.
        precondition: precondition CG with the Kronecker-eigenbasis Jacobi preconditioner
            (:func:`ucsciml.models.spectral_gp._gp_precond.kron_jacobi`).
        progress: show a progress bar.

    Returns:
        :class:`~ucsciml.models.spectral_gp._gp_solve.SpectralGPFit` whose ``inputs`` hold the data, for
        :func:`~ucsciml.models.spectral_gp._gp_solve.predict`. A fit whose loss still changes over its
        last window is logged as not converged; the verdict is in ``verdict``.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("fit_sensors needs float64: jax.config.update('jax_enable_x64', True)")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(
            f"fit_sensors(num_steps=...) must be a positive integer, got {num_steps!r}"
        )
    check_linear(model)
    model = with_data_defaults(model)
    inputs = sensor_inputs(model, data)
    if "sensor_noise" not in inputs:
        raise ValueError(
            "fit_sensors needs the sensor noise: give the data a noise_std or set "
            "SpectralGP.noise_std (a latent noise scale needs the dense evidence program)"
        )
    init = start_values(model)
    values = {k: init[k] for k in kernel_sites(model)}
    values |= {k: jnp.asarray(v.prior.mean) for k, v in model.pde.unknowns().items()}
    values["log_tau2"] = jnp.zeros(())
    if inputs["boundary_index"].shape[0]:
        values["log_tau1"] = jnp.zeros(())
    bijections = transforms(model, values)
    free0 = {k: bijections[k].inv(jnp.asarray(v)) for k, v in values.items()}
    shape = model.grid
    opt = optax.adam(learning_rate)
    final = 10 * cg_maxiter if cg_final_maxiter is None else cg_final_maxiter

    def constrain(free):
        return {k: bijections[k](v) for k, v in free.items()}

    def neg_log_joint(free, u):
        theta = constrain(free)
        system = solve.linear_system(model, theta, inputs)
        z = _kron.kron_whiten(system.chols, u)
        resid = system.g_fn(z) - system.y
        log_p = _kron.kron_logpdf(system.chols, u) - 0.5 * resid @ resid + system.log_scale
        log_p += sum(jnp.sum(bijections[k].log_abs_det_jacobian(free[k], theta[k])) for k in free)
        for name, value in model.pde.unknowns().items():
            log_p += value.prior.log_prob(theta[name])
        for name in ("log_tau1", "log_tau2"):
            if name in theta:
                log_p += dist.Normal(0.0, model.tau_prior_scale).log_prob(theta[name])
        return -log_p

    def conditional_mean(free, z_prev, maxiter):
        theta = constrain(free)
        system = solve.linear_system(model, theta, inputs)
        pre = kron_jacobi(model, theta, inputs) if precondition else None
        z, relres = solve.solve_cg_checked(system, shape, system.y, z_prev, cg_tol, maxiter, pre)
        return z, _kron.kron_matvec(system.chols, z), relres

    def loss_fn(free, _key, z_prev):
        # the grid values are the conditional mean at this step's kernel (CG warm-started
        # from the previous step), held fixed for the hyper-parameter gradient
        z, u, _ = conditional_mean(free, z_prev, cg_maxiter)
        return neg_log_joint(free, jax.lax.stop_gradient(u)), z

    trained = optimize.train(
        loss_fn,
        free0,
        opt,
        num_steps=num_steps,
        key=jax.random.key(0),  # a deterministic objective: the step keys are unused
        phase="spectral GP (CG, alternating)",
        progress=progress,
        hint="raise num_steps or learning_rate",
        state=jnp.zeros(shape),
    )
    free, z = trained.params, trained.state
    z, u, relres = jax.jit(lambda f, z: conditional_mean(f, z, final))(free, z)
    solve._warn_unconverged(
        relres, cg_tol, "spectral_gp.fit_sensors (final solve)", "raise cg_final_maxiter"
    )
    theta = constrain(free)
    losses = jnp.asarray(trained.losses)
    return solve.SpectralGPFit(
        theta,
        u,
        z,
        losses,
        jnp.full(losses.shape, jnp.nan),
        "alternating",
        relres,
        inputs,
        trained.verdict,
    )
