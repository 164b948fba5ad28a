r"""GP-HM: a Gaussian-process PDE solver with spectral-mixture kernels on a collocation grid.

The solution's values on a tensor grid get a GP prior with a product over dimensions of
per-dimension spectral-mixture kernels (:mod:`ucsciml.models.spectral_gp._spectral_kernels`), so
:math:`\mathrm{vec}\,U \sim \mathcal N(0, C_1\otimes\dots\otimes C_d)`. Derivatives on the grid
are :math:`U \times_j D_j^{(m_j)} C_j^{-1}` (:mod:`ucsciml.models.spectral_gp._kron`). The likelihood is the
boundary data with precision :math:`\lambda_b\tau_1` and the PDE residual at every grid point
with precision :math:`\tau_2`:

.. math::
    \log p = \log\mathcal N(\mathrm{vec}\,U; 0, \otimes_j C_j)
      + \log\mathcal N(g; U_{\partial}, (\lambda_b\tau_1)^{-1})
      + \log\mathcal N(0; \mathcal R[U], \tau_2^{-1}) + \log p(\theta).

Weights are :math:`w_q = e^{\eta_q}` with a flat prior on :math:`\eta` (the Jeffreys prior on
:math:`w`, which prunes components). :meth:`SpectralGP.compile` returns this as a NumPyro
:class:`~ucsciml.Program`, so every ucsciml backend applies. :func:`ucsciml.models.spectral_gp.fit`
goes beyond the paper for linear PDEs: the grid values given the kernel are Gaussian, so they are
solved for exactly and alternated with Adam steps on the kernel, and their posterior covariance
gives credible bands of ``u``.

References:
    Fang, Wang, Li, Li, Zhe & Kirby (2024), Solving High Frequency and Multi-Scale PDEs with
    Gaussian Processes, ICLR 2024.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import cholesky, solve_triangular

from ucsciml._types import Array
from ucsciml.models.spectral_gp import _kron
from ucsciml.models.spectral_gp import _spectral_kernels as sk
from ucsciml.models.spectral_gp._gp_data import KERNEL_PRIORS
from ucsciml.models.spectral_gp._gp_program import BOUNDARY, COLLOCATION, FlatAt, compile_sensors
from ucsciml.models.spectral_gp._gp_solve import SpectralGPFit, fit, posterior_draws, predict
from ucsciml.pde.base import AbstractPDE, Unknown
from ucsciml.pde.manufactured import AbstractManufacturedPDE
from ucsciml.program import Program

__all__ = [
    "SpectralGP",
    "SpectralGPFit",
    "fit",
    "points_per_period",
    "posterior_draws",
    "predict",
]

MIN_POINTS_PER_PERIOD = sk.MIN_POINTS_PER_PERIOD


@dataclass(frozen=True, eq=False)
class SpectralGP:
    r"""GP-HM model definition: spectral-mixture GP prior on grid values of a PDE's solution.

    Sites: ``eta_<c>``, ``mu_<c>``, ``log_ell_<c>`` per coordinate ``c`` (``mu`` only for the
    mixtures), one site per :class:`~ucsciml.Unknown` PDE parameter, ``log_tau1``,
    ``log_tau2``, ``u_grid`` (the grid values), ``boundary`` (Dirichlet data, observed) and
    ``residual`` (pseudo-observation of zero); ``tau1``, ``tau2`` deterministic.

    Args:
        pde: the PDE (the same objects the B-PINN takes). Sensor data work with any PDE
            that is linear in ``u`` for the exact solve; the benchmark program without data
            needs a manufactured solution
            (:class:`ucsciml.pde.manufactured.AbstractManufacturedPDE`).
        grid: points per coordinate (uniform, endpoints included).
        kernel: ``"student_t"`` (Matérn-5/2 envelope), ``"gaussian"`` (SE envelope),
            or the baselines ``"matern"``, ``"se"`` (no cosine, one component).
        num_components: ``Q`` per dimension.
        max_frequency: highest initial spectral mean per coordinate, in cycles per unit length
            (a float for all coordinates or one per coordinate); default: the highest
            frequency resolved with 3 points per period. A warning is raised when the grid has
            fewer than ~3 points per period of it.
        boundary_weight: :math:`\lambda_b`.
        jitter: added to each :math:`C_j`'s diagonal, relative to :math:`k_j(0)`.
        tau_prior_scale: sd of the Normal(0, s) priors on ``log_tau1`` and ``log_tau2``.
        forcing: the PDE's right-hand side on the grid: a number, a callable of ``(N, d)``
            points, or a grid-shaped array; default: a manufactured PDE's source, else 0.
        boundary: Dirichlet rows on the PDE's faces: ``"solution"`` (the PDE's reference
            solution there), ``"none"``, or ``"auto"`` (``"none"`` with sensor data, which
            pin the solution; ``"solution"`` for the benchmark program).
        noise_std: known sensor noise sd; default: the data's ``noise_std``, else a latent
            ``log_noise`` site.
        fit_steps, fit_learning_rate, fit_lbfgs_steps: the type-II MAP fit of the kernel
            (Adam then L-BFGS on the exact log evidence) that ``compile(data)`` runs.
        collocation: where the PDE residual is imposed: ``"grid"`` (Fang et al.), or
            ``"midpoints"`` (the grid and its midpoints, about ``2^d`` times as many
            equations as grid values, so the residual cannot be met exactly and its fitted
            precision measures the grid's discretisation error instead of growing without
            bound); ``"auto"``: midpoints with sensor data, the grid without.
        kernel_posterior: with sensor data, keep the kernel's sites latent in the program
            (started at their type-II fit) so the backend's posterior includes the kernel's
            uncertainty; ``False`` fixes them at the fit (empirical Bayes: faster, but the
            coefficients' intervals are conditional on one kernel and measured too narrow).
        kernel_prior: with sensor data, the kernel sites' prior: ``"flat"`` (Fang et al.:
            flat on ``eta`` and ``log_ell``, uniform spectral means; improper, so only the
            type-II fit and a Laplace around it apply) or ``"normal"`` (proper, weakly
            informative, scaled to the data and domain:
            :func:`~ucsciml.models.spectral_gp._gp_data.kernel_priors`; needed to sample the
            kernel with NUTS).

    Example:
        >>> import ucsciml as uq
        >>> from ucsciml.pde.poisson import Poisson1D
        >>> model = SpectralGP(pde=Poisson1D(), grid=(400,), num_components=30)
        >>> model.axes()[0].shape
        (400,)

    References:
        Fang et al. (2024), Solving High Frequency and Multi-Scale PDEs with Gaussian
        Processes, ICLR 2024.
    """

    needs_float64: ClassVar[bool] = True

    pde: AbstractPDE
    grid: tuple[int, ...]
    kernel: str = "student_t"
    num_components: int = 30
    max_frequency: float | tuple[float, ...] | None = None
    boundary_weight: float = 1.0
    jitter: float = 1e-8
    tau_prior_scale: float = 10.0
    forcing: float | Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None
    boundary: str = "auto"
    noise_std: float | None = None
    fit_steps: int = 1000
    fit_learning_rate: float = 1e-2
    fit_lbfgs_steps: int = 300
    collocation: str = "auto"
    kernel_posterior: bool = False
    kernel_prior: str = "flat"

    def __post_init__(self):
        if not isinstance(self.pde, AbstractPDE):
            raise TypeError(
                "SpectralGP.pde must be a ucsciml PDE (ucsciml.pde.AbstractPDE), got "
                f"{type(self.pde).__name__}"
            )
        grid = tuple(self.grid) if isinstance(self.grid, tuple | list) else (self.grid,)
        if len(grid) != len(self.pde.coords) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 4 for n in grid
        ):
            raise ValueError(
                f"SpectralGP.grid must give an integer >= 4 per coordinate {self.pde.coords}, "
                f"got {self.grid!r}"
            )
        object.__setattr__(self, "grid", grid)
        if self.kernel not in sk.KINDS:
            raise ValueError(f"SpectralGP.kernel must be one of {sk.KINDS}, got {self.kernel!r}")
        if not isinstance(self.num_components, int) or self.num_components < 1:
            raise ValueError(
                f"SpectralGP.num_components must be a positive integer, got {self.num_components!r}"
            )
        for name in ("boundary_weight", "jitter", "tau_prior_scale", "fit_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SpectralGP.{name} must be > 0, got {getattr(self, name)}")
        if self.boundary not in BOUNDARY:
            raise ValueError(
                f"SpectralGP.boundary must be one of {BOUNDARY}, got {self.boundary!r}"
            )
        if self.kernel_prior not in KERNEL_PRIORS:
            raise ValueError(
                f"SpectralGP.kernel_prior must be one of {KERNEL_PRIORS}, got {self.kernel_prior!r}"
            )
        if self.collocation not in COLLOCATION:
            raise ValueError(
                f"SpectralGP.collocation must be one of {COLLOCATION}, got {self.collocation!r}"
            )
        if self.noise_std is not None and not self.noise_std > 0:
            raise ValueError(
                f"SpectralGP.noise_std must be > 0 (or None: the data's, else latent), "
                f"got {self.noise_std}"
            )
        for name in ("fit_steps", "fit_lbfgs_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SpectralGP.{name} must be an integer >= 0, got {value!r}")
        if self.fit_steps + self.fit_lbfgs_steps == 0:
            raise ValueError("SpectralGP.fit_steps and fit_lbfgs_steps cannot both be 0")
        for c, f, h in zip(self.pde.coords, self.frequencies(), self.spacings(), strict=True):
            if f * h * MIN_POINTS_PER_PERIOD > 1.0 + 1e-9:
                warnings.warn(
                    f"SpectralGP grid along '{c}' has {1.0 / (f * h):.2f} points per period of "
                    f"the requested frequency {f:.4g}; below the ~{MIN_POINTS_PER_PERIOD:g} points "
                    "per period limit the solution cannot be resolved: refine the grid "
                    "or lower max_frequency",
                    UserWarning,
                    stacklevel=3,
                )

    # --- geometry -------------------------------------------------------------------------
    def axes(self) -> tuple[np.ndarray, ...]:
        """Grid coordinates per dimension (float64 numpy)."""
        return tuple(
            np.linspace(*self.pde.domain[c], n)
            for c, n in zip(self.pde.coords, self.grid, strict=True)
        )

    def spacings(self) -> tuple[float, ...]:
        """Grid spacing per dimension."""
        return tuple(
            (hi - lo) / (n - 1) for (lo, hi), n in zip(self._bounds(), self.grid, strict=True)
        )

    def frequencies(self) -> tuple[float, ...]:
        """Highest initial spectral mean per dimension (cycles per unit length)."""
        if self.max_frequency is None:
            return tuple(1.0 / (MIN_POINTS_PER_PERIOD * h) for h in self.spacings())
        if isinstance(self.max_frequency, int | float):
            return (float(self.max_frequency),) * len(self.grid)
        if len(self.max_frequency) != len(self.grid):
            raise ValueError(
                f"SpectralGP.max_frequency needs one value per coordinate {self.pde.coords}, "
                f"got {self.max_frequency!r}"
            )
        return tuple(float(f) for f in self.max_frequency)

    def points(self) -> np.ndarray:
        """All grid points, ``(N, d)``, in C order of the grid."""
        mesh = np.meshgrid(*self.axes(), indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)

    def faces(self) -> tuple[str, ...]:
        """Faces with Dirichlet data: the PDE's own list, else every face."""
        faces = getattr(self.pde, "faces", None)
        if callable(faces):
            return tuple(faces())
        return tuple(f"{c}{s}" for c in self.pde.coords for s in "-+")

    def boundary_indices(self) -> np.ndarray:
        """Flat indices of grid points on the PDE's Dirichlet faces."""
        mask = np.zeros(self.grid, dtype=bool)
        for face in self.faces():
            axis = self.pde.coords.index(face[0])
            index = [slice(None)] * len(self.grid)
            index[axis] = 0 if face[1] == "-" else -1
            mask[tuple(index)] = True
        return np.flatnonzero(mask.ravel())

    def _bounds(self):
        return [self.pde.domain[c] for c in self.pde.coords]

    # --- parameters -----------------------------------------------------------------------
    def init_params(self) -> dict[str, Array]:
        """Deterministic starting values of every latent site (float64)."""
        out: dict[str, Array] = {}
        for c, f, (lo, hi) in zip(self.pde.coords, self.frequencies(), self._bounds(), strict=True):
            p = sk.default_params(self.kernel, self.num_components, f, hi - lo)
            out[f"eta_{c}"] = p.eta
            if self.kernel in sk.MIXTURES:
                out[f"mu_{c}"] = p.mu
            out[f"log_ell_{c}"] = p.log_ell
        for name, value in self.pde.unknowns().items():
            out[name] = jnp.asarray(value.prior.mean, dtype=jnp.float64)
        out["log_tau1"] = jnp.zeros((), jnp.float64)
        out["log_tau2"] = jnp.zeros((), jnp.float64)
        out["u_grid"] = jnp.zeros(self.grid, jnp.float64)
        return out

    def kernel_params(self, sites: dict[str, Array]) -> tuple[sk.KernelParams, ...]:
        """Per-dimension :class:`KernelParams` from site values."""
        out = []
        for c in self.pde.coords:
            eta = sites[f"eta_{c}"]
            mu = sites[f"mu_{c}"] if self.kernel in sk.MIXTURES else jnp.zeros_like(eta)
            out.append(sk.KernelParams(eta, mu, sites[f"log_ell_{c}"]))
        return tuple(out)

    def collocation_axes(self) -> tuple[np.ndarray, ...]:
        """Where the PDE residual is imposed, per axis: the grid itself (``"grid"``, and
        ``"auto"`` until :meth:`compile` resolves it) or the grid with its midpoints
        (``"midpoints"``, ``2 n - 1`` points)."""
        if self.collocation == "midpoints":
            return tuple(np.linspace(a[0], a[-1], 2 * a.size - 1) for a in self.axes())
        return self.axes()

    def covariance_factors(self, kparams: tuple[sk.KernelParams, ...]) -> list[Array]:
        """Per-axis Cholesky factors ``L_j`` of the grid covariance (jitter included)."""
        return [
            self._cholesky(p, sk.toeplitz_gram(self.kernel, p, n, h), n)
            for n, h, p in zip(self.grid, self.spacings(), kparams, strict=True)
        ]

    def _cholesky(self, p: sk.KernelParams, gram: Array, n: int) -> Array:
        c = gram + self.jitter * sk.kernel(self.kernel, p, jnp.zeros(())) * jnp.eye(n)
        return cholesky(c, lower=True)

    def factors(self, kparams: tuple[sk.KernelParams, ...]):
        r"""Cholesky factors ``L_j`` and derivative operators ``{m: D_j^(m) C_j^-1}`` per axis.

        :math:`D^{(m)}_{ik} = \partial^m k(x'_i, x_k)` from the grid to the collocation
        points :math:`x'` (:meth:`collocation_axes`); on the grid itself order 0 is the
        identity and is left out. Each axis evaluates its kernel once for every order.
        """
        on_grid = self.collocation != "midpoints"
        chols, operators = [], []
        for j, (n, h, p, x, xc) in enumerate(
            zip(
                self.grid,
                self.spacings(),
                kparams,
                self.axes(),
                self.collocation_axes(),
                strict=True,
            )
        ):
            orders = {o[j] for o in self.derivative_orders() if o[j] or not on_grid}
            if on_grid:
                grams = sk.toeplitz_grams(self.kernel, p, n, h, orders | {0})
                chol = self._cholesky(p, grams[0], n)
            else:
                chol = self._cholesky(p, sk.toeplitz_gram(self.kernel, p, n, h), n)
                grams = sk.lattice_grams(self.kernel, p, xc, x, orders) if orders else {}
            chols.append(chol)
            operators.append({m: _kron.derivative_operator(grams[m], chol) for m in orders})
        return chols, operators

    def derivative_orders(self) -> list[tuple[int, ...]]:
        """Per-axis orders of each of the PDE's derivatives, in its order."""
        return [_kron.orders_from_name(n, self.pde.coords) for n in self.pde.derivatives]

    def whitened_operators(self, kparams, chols) -> list[dict[int, Array]]:
        r"""Per axis ``{m: D_j^(m) L_j^{-T}}`` for every order the residual needs, order 0
        included (the grid to its collocation points, in whitened coordinates ``u = L z``)."""
        axes, colloc = self.axes(), self.collocation_axes()
        out = []
        for j, (p, chol) in enumerate(zip(kparams, chols, strict=True)):
            orders = {o[j] for o in self.derivative_orders()}
            ops = {}
            if 0 in orders and self.collocation != "midpoints":
                ops[0] = chol
                orders.discard(0)
            if orders:
                grams = sk.lattice_grams(self.kernel, p, colloc[j], axes[j], orders)
                for m in sorted(orders):
                    ops[m] = solve_triangular(chol, grams[m].T, lower=True).T
            out.append(ops)
        return out

    def grid_residual(self, operators, u: Array, source: Array, params: dict) -> Array:
        """PDE residual on the grid from grid values ``u`` and the forcing ``source``.

        A manufactured PDE takes the forcing inside its residual (``L[u] - f``); for any other
        PDE the residual is ``pde.residual(...) - source``.
        """
        derivs = {
            name: _kron.grid_derivative(operators, _kron.orders_from_name(name, self.pde.coords), u)
            for name in self.pde.derivatives
        }
        return self._residual(derivs, source, params)

    def residual_offset(self, source: Array, params: dict) -> Array:
        """:meth:`grid_residual` at ``u = 0`` (the affine residual's constant term), without
        the derivative operators: every derivative of zero is zero."""
        zero = jnp.zeros(source.shape, source.dtype)
        return self._residual({name: zero for name in self.pde.derivatives}, source, params)

    def _residual(self, derivs: dict, source: Array, params: dict) -> Array:
        if isinstance(self.pde, AbstractManufacturedPDE):
            derivs["f"] = source
            return self.pde.residual(derivs, params)
        return self.pde.residual(derivs, params) - source

    def forcing_on_grid(self) -> np.ndarray:
        """The forcing at the collocation points (:meth:`collocation_axes`), shaped as their
        tensor grid: ``forcing`` (a number, a callable of ``(N, d)`` points or an array of that
        shape), else a manufactured PDE's source, else 0."""
        axes = self.collocation_axes()
        shape = tuple(a.size for a in axes)
        pts = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=-1)
        value = self.forcing
        if value is None:
            if isinstance(self.pde, AbstractManufacturedPDE):
                return np.asarray(self.pde.source(pts), np.float64).reshape(shape)
            return np.zeros(shape)
        if callable(value):
            out = np.asarray(value(pts), np.float64)
            if out.shape not in ((pts.shape[0],), shape):
                raise ValueError(
                    f"SpectralGP.forcing(points) must return one value per collocation point "
                    f"({pts.shape[0]}), got shape {out.shape}"
                )
            out = out.reshape(shape)
        else:
            out = np.asarray(value, np.float64)
            if out.ndim == 0:
                out = np.full(shape, float(out))
            elif out.shape != shape:
                raise ValueError(
                    f"SpectralGP.forcing as an array must have the collocation grid's shape "
                    f"{shape} (collocation={self.collocation!r}), got {out.shape}; give a "
                    "callable of (N, d) points instead, or collocation='grid' for an array on "
                    "the grid"
                )
        if not np.all(np.isfinite(out)):
            raise ValueError("SpectralGP.forcing has NaN or infinite values")
        return out

    def pde_params(self, sites: dict[str, Array]) -> dict[str, Array]:
        """PDE parameter values (numbers, or site values for unknowns)."""
        return {
            k: sites[k] if isinstance(v, Unknown) else v for k, v in self.pde.parameters().items()
        }

    # --- the NumPyro program --------------------------------------------------------------
    def compile(self, data=None) -> Program:
        """Compile to a :class:`~ucsciml.Program`.

        Args:
            data: sensor data (:func:`ucsciml.data.sensors`): the field is marginalised
                exactly and the program's latent sites are the PDE's unknowns and the noise
                precisions, with the kernel fitted by type-II MAP at compile time
                (:func:`ucsciml.models.spectral_gp._gp_program.compile_sensors`; needs float64 enabled).
                ``None``: the benchmark program of Fang et al. with the grid values as a
                site and Dirichlet data from the PDE's manufactured solution.

        Returns:
            The Program. Without data its ``inputs`` hold the forcing on the grid and the
            boundary indices, its ``targets`` the boundary values.
        """
        if data is not None:
            return compile_sensors(self, data)
        if not isinstance(self.pde, AbstractManufacturedPDE):
            raise ValueError(
                f"SpectralGP.compile() without data needs a PDE with a manufactured solution; "
                f"{type(self.pde).__name__} has none: pass sensor data, compile(data)"
            )
        with jax.enable_x64(True):
            pts = self.points()
            inputs = {
                "source": jnp.asarray(self.forcing_on_grid(), jnp.float64),
                "boundary_index": jnp.asarray(self.boundary_indices()),
            }
            targets = jnp.asarray(self.pde.solve(pts[self.boundary_indices()]))
            program = Program.from_numpyro(
                self._model_fn(),
                inputs,
                targets,
                dims={"u_grid": tuple(f"grid_{c}" for c in self.pde.coords)},
                coords={f"grid_{c}": a for c, a in zip(self.pde.coords, self.axes(), strict=True)},
                observed=("boundary",),
                predict_sites=("u_grid",),
                name=f"spectral_gp_{type(self.pde).__name__}",
            )
        return program

    def log_density_fn(self):
        """``(sites, inputs, targets) -> log joint`` of the program (site values unconstrained)."""
        fn = self._model_fn()

        def log_density(sites, inputs, targets):
            return numpyro.infer.util.log_density(fn, (inputs,), {"targets": targets}, sites)[0]

        return log_density

    def _model_fn(self):
        init = self.init_params()
        lam, scale = self.boundary_weight, self.tau_prior_scale

        def flat(name):
            return numpyro.sample(name, FlatAt(init[name]))

        def model(inputs, targets=None):
            sites = {}
            for c in self.pde.coords:
                names = (
                    ("eta", "mu", "log_ell") if self.kernel in sk.MIXTURES else ("eta", "log_ell")
                )
                for name in names:
                    sites[f"{name}_{c}"] = flat(f"{name}_{c}")
            for name, value in self.pde.unknowns().items():
                sites[name] = numpyro.sample(name, value.prior)
            log_tau1 = numpyro.sample("log_tau1", dist.Normal(0.0, scale))
            log_tau2 = numpyro.sample("log_tau2", dist.Normal(0.0, scale))
            tau1 = numpyro.deterministic("tau1", jnp.exp(log_tau1))
            tau2 = numpyro.deterministic("tau2", jnp.exp(log_tau2))
            u = flat("u_grid")
            chols, operators = self.factors(self.kernel_params(sites))
            numpyro.factor("gp_prior", _kron.kron_logpdf(chols, u))
            res = self.grid_residual(operators, u, inputs["source"], self.pde_params(sites))
            ub = u.ravel()[inputs["boundary_index"]]
            numpyro.sample(
                "boundary", dist.Normal(ub, 1.0 / jnp.sqrt(lam * tau1)).to_event(1), obs=targets
            )
            numpyro.sample(
                "residual",
                dist.Normal(res, 1.0 / jnp.sqrt(tau2)).to_event(res.ndim),
                obs=jnp.zeros_like(res),
            )

        return model


def points_per_period(model: SpectralGP, frequency: float) -> tuple[float, ...]:
    """Grid points per period of ``frequency`` (cycles per unit length) along each axis."""
    return tuple(1.0 / (frequency * h) if frequency > 0 else math.inf for h in model.spacings())
