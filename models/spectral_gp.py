r"""GP-HM: a Gaussian-process PDE solver with spectral-mixture kernels on a collocation grid.

The solution's values on a tensor grid get a GP prior with a product over dimensions of
per-dimension spectral-mixture kernels (:mod:`ucsciml.models._spectral_kernels`), so
:math:`\mathrm{vec}\,U \sim \mathcal N(0, C_1\otimes\dots\otimes C_d)`. Derivatives on the grid
are :math:`U \times_j D_j^{(m_j)} C_j^{-1}` (:mod:`ucsciml.models._kron`). The likelihood is the
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
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import cholesky
from numpyro.distributions import constraints

from ucsciml._types import Array
from ucsciml.models import _kron
from ucsciml.models import _spectral_kernels as sk
from ucsciml.models._gp_solve import SpectralGPFit, fit, posterior_draws, predict
from ucsciml.pde.base import Unknown
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

#: Fewer grid points than this per period of the highest frequency cannot resolve it.
MIN_POINTS_PER_PERIOD = 3.0


@dataclass(frozen=True, eq=False)
class SpectralGP:
    r"""GP-HM model definition: spectral-mixture GP prior on grid values of a PDE's solution.

    Sites: ``eta_<c>``, ``mu_<c>``, ``log_ell_<c>`` per coordinate ``c`` (``mu`` only for the
    mixtures), one site per :class:`~ucsciml.Unknown` PDE parameter, ``log_tau1``,
    ``log_tau2``, ``u_grid`` (the grid values), ``boundary`` (Dirichlet data, observed) and
    ``residual`` (pseudo-observation of zero); ``tau1``, ``tau2`` deterministic.

    Args:
        pde: a PDE with a manufactured solution (:class:`ucsciml.pde.manufactured.AbstractManufacturedPDE`).
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

    pde: AbstractManufacturedPDE
    grid: tuple[int, ...]
    kernel: str = "student_t"
    num_components: int = 30
    max_frequency: float | tuple[float, ...] | None = None
    boundary_weight: float = 1.0
    jitter: float = 1e-8
    tau_prior_scale: float = 10.0

    def __post_init__(self):
        if not isinstance(self.pde, AbstractManufacturedPDE):
            raise TypeError(
                "SpectralGP.pde must be a PDE with a manufactured solution "
                f"(ucsciml.pde.manufactured.AbstractManufacturedPDE), got {type(self.pde).__name__}"
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
        for name in ("boundary_weight", "jitter", "tau_prior_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SpectralGP.{name} must be > 0, got {getattr(self, name)}")
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

    def boundary_indices(self) -> np.ndarray:
        """Flat indices of grid points on the PDE's Dirichlet faces."""
        mask = np.zeros(self.grid, dtype=bool)
        for face in self.pde.faces():
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

    def factors(self, kparams: tuple[sk.KernelParams, ...]):
        """Cholesky factors ``L_j`` and derivative operators ``{m: D_j^(m) C_j^-1}`` per axis."""
        needed = [
            {
                m
                for name in self.pde.derivatives
                for m in [_kron.orders_from_name(name, self.pde.coords)[j]]
                if m
            }
            for j in range(len(self.grid))
        ]
        chols, operators = [], []
        for n, h, p, orders in zip(self.grid, self.spacings(), kparams, needed, strict=True):
            c = sk.toeplitz_gram(self.kernel, p, n, h)
            c = c + self.jitter * sk.kernel(self.kernel, p, jnp.zeros(())) * jnp.eye(n)
            chol = cholesky(c, lower=True)
            chols.append(chol)
            operators.append(
                {
                    m: _kron.derivative_operator(sk.toeplitz_gram(self.kernel, p, n, h, m), chol)
                    for m in orders
                }
            )
        return chols, operators

    def grid_residual(self, operators, u: Array, source: Array, params: dict) -> Array:
        """PDE residual on the grid from grid values ``u``."""
        derivs = {
            name: _kron.grid_derivative(operators, _kron.orders_from_name(name, self.pde.coords), u)
            for name in self.pde.derivatives
        }
        derivs["f"] = source
        return self.pde.residual(derivs, params)

    def pde_params(self, sites: dict[str, Array]) -> dict[str, Array]:
        """PDE parameter values (numbers, or site values for unknowns)."""
        return {
            k: sites[k] if isinstance(v, Unknown) else v for k, v in self.pde.parameters().items()
        }

    # --- the NumPyro program --------------------------------------------------------------
    def compile(self, data=None) -> Program:
        """Compile to a :class:`~ucsciml.Program`.

        Args:
            data: ``None``: the Dirichlet data are the PDE's manufactured solution at the
                boundary grid points (sensor data off the grid do not fit the grid model).

        Returns:
            The Program; its ``inputs`` hold the forcing on the grid and the boundary indices,
            its ``targets`` the boundary values.
        """
        if data is not None:
            raise ValueError(
                "SpectralGP takes its Dirichlet data from the PDE's solution at the grid "
                "boundary; call compile() or compile(None)"
            )
        with jax.enable_x64(True):
            pts = self.points()
            inputs = {
                "source": jnp.asarray(self.pde.source(pts), jnp.float64).reshape(self.grid),
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


class FlatAt(dist.Distribution):
    """Improper flat density on the reals (log density 0) whose ``sample`` returns ``value``.

    The GP-HM sites have flat priors (on ``eta`` this is the Jeffreys prior on ``w = e^eta``).
    NumPyro's ``ImproperUniform`` cannot be sampled, so seeded traces and
    ``init_to_sample`` would fail; returning the model's deterministic starting value instead
    makes every backend start where the paper does. Posterior propriety over these sites is not
    guaranteed (a pruned component's ``eta`` is unbounded below): use MAP, or NUTS on a
    program with proper priors.
    """

    support = constraints.real_vector

    def __init__(self, value: Array):
        self.value = jnp.asarray(value)
        super().__init__(batch_shape=(), event_shape=self.value.shape)

    def sample(self, key, sample_shape=()):
        return jnp.broadcast_to(self.value, sample_shape + self.value.shape)

    def log_prob(self, value):
        return jnp.zeros(jnp.shape(value)[: jnp.ndim(value) - len(self.event_shape)])


def points_per_period(model: SpectralGP, frequency: float) -> tuple[float, ...]:
    """Grid points per period of ``frequency`` (cycles per unit length) along each axis."""
    return tuple(1.0 / (frequency * h) if frequency > 0 else math.inf for h in model.spacings())
