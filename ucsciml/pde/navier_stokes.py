"""2-D incompressible Navier–Stokes in stream-function/vorticity form, with a pseudo-spectral
reference solver on the periodic box.

A scalar network ``psi(x, y, t)`` is the stream function, so the velocity
``(u, v) = (psi_y, -psi_x)`` is divergence-free by construction and the pressure drops out
of the curl of the momentum equation. Sensors measure velocity, not ``psi`` (whose additive
constant is a gauge), which :meth:`NavierStokes2D.observables` states for the model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from ucsciml._types import Array
from ucsciml.pde.base import AbstractPDE, Unknown

TWO_PI = 2.0 * math.pi

# psi0 = sum of a * sin(kx x + ky y + phase): shells |k|^2 = 1, 2, 5, so omega0 is not a
# function of psi0 alone and the advection term is active (a single shell, e.g. Taylor–Green,
# makes (u.grad) omega vanish identically and lambda1 unidentifiable).
INITIAL_MODES: tuple[tuple[float, int, int, float], ...] = (
    (1.0, 1, 1, 0.0),
    (1.0, 1, -1, math.pi / 2),
    (0.5, 0, 1, math.pi / 2),
    (0.6, 2, -1, 0.5),
    (0.4, 1, 2, 1.0),
)


@dataclass(frozen=True, eq=False)
class NavierStokes2D(AbstractPDE):
    r"""2-D incompressible Navier–Stokes on the periodic box :math:`[0, 2\pi]^2`, :math:`t \in
    [0, 1]`, for a stream function :math:`\psi` with :math:`(u, v) = (\psi_y, -\psi_x)`.

    .. math:: \mathbf u_t + \lambda_1 (\mathbf u\cdot\nabla)\mathbf u = -\nabla p
        + \lambda_2 \Delta \mathbf u,\quad \nabla\cdot\mathbf u = 0

    becomes, with the vorticity :math:`\omega = v_x - u_y = -\Delta\psi`,

    .. math:: \omega_t + \lambda_1 (u\,\omega_x + v\,\omega_y) - \lambda_2 \Delta\omega = 0,

    a residual in derivatives of :math:`\psi` up to fourth order. The initial stream function
    is the sum of sines in :data:`INITIAL_MODES`; :meth:`solve` integrates the vorticity
    equation pseudo-spectrally (:func:`solve_vorticity`).

    The reference grid is ``grid_size``:sup:`2` = 64\ :sup:`2` (velocity within ~3e-6 of a
    128\ :sup:`2` run) with time step ``time_step`` = 0.01 (within ~4e-7 of a four times
    finer step), states stored every ``store_every`` steps.

    Args:
        lambda1: advection coefficient (truth 1), a number or :class:`Unknown`.
        lambda2: kinematic viscosity (> 0), a number or :class:`Unknown` with a positive prior.

    Example:
        >>> import numpy as np
        >>> pde = NavierStokes2D()
        >>> sorted(pde.solve_observables(np.zeros((1, 3))))
        ['u', 'v']

    References:
        Raissi, Perdikaris & Karniadakis (2019), Physics-informed neural networks, JCP 378
            (the stream-function network for the Navier–Stokes inverse problem).
        Canuto, Hussaini, Quarteroni & Zang (2006), Spectral Methods: Fundamentals in Single
            Domains, Springer (pseudo-spectral vorticity, 2/3 dealiasing).
    """

    lambda1: float | Unknown = 1.0
    lambda2: float | Unknown = 0.05

    coords = ("x", "y", "t")
    derivatives = (
        "u_x",
        "u_y",
        "u_xxt",
        "u_yyt",
        "u_xxx",
        "u_xyy",
        "u_xxy",
        "u_yyy",
        "u_xxxx",
        "u_xxyy",
        "u_yyyy",
    )
    domain = {"x": (0.0, TWO_PI), "y": (0.0, TWO_PI), "t": (0.0, 1.0)}
    positive = ("lambda2",)
    grid_size: ClassVar[int] = 64
    time_step: ClassVar[float] = 0.01
    store_every: ClassVar[int] = 1

    def residual(self, derivs: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        d = derivs
        u, v = d["u_y"], -d["u_x"]
        omega_t = -(d["u_xxt"] + d["u_yyt"])
        omega_x = -(d["u_xxx"] + d["u_xyy"])
        omega_y = -(d["u_xxy"] + d["u_yyy"])
        laplace_omega = -(d["u_xxxx"] + 2.0 * d["u_xxyy"] + d["u_yyyy"])
        return (
            omega_t
            + params["lambda1"] * (u * omega_x + v * omega_y)
            - params["lambda2"] * laplace_omega
        )

    def observables(self) -> dict[str, dict[str, float]]:
        """Velocity sensors: ``u = psi_y``, ``v = -psi_x``."""
        return {"u": {"u_y": 1.0}, "v": {"u_x": -1.0}}

    def solve(self, points: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
        """Reference stream function at ``points`` ``(n, 3)`` (gauge: zero spatial mean)."""
        return self._reference(params).evaluate(_check_points(points), "psi")

    def solve_observables(
        self, points: np.ndarray, params: Mapping[str, float] | None = None
    ) -> dict[str, np.ndarray]:
        """Reference velocity ``{"u": (n,), "v": (n,)}`` at ``points`` ``(n, 3)``."""
        solution, pts = self._reference(params), _check_points(points)
        return {"u": solution.evaluate(pts, "u"), "v": solution.evaluate(pts, "v")}

    def _reference(self, params: Mapping[str, float] | None) -> VorticitySolution:
        p = self.true_parameters() if params is None else dict(params)
        if not p["lambda2"] > 0:
            raise ValueError(f"lambda2 (viscosity) must be > 0, got {p['lambda2']}")
        return _cached_reference(
            float(p["lambda1"]),
            float(p["lambda2"]),
            self.grid_size,
            self.time_step,
            self.store_every,
            self.domain["t"][1],
        )


@functools.lru_cache(maxsize=4)
def _cached_reference(lambda1, lambda2, n, dt, store_every, t_end) -> VorticitySolution:
    num_steps = round(t_end / dt)
    return solve_vorticity(
        initial_vorticity(n), lambda1, lambda2, dt=dt, num_steps=num_steps, store_every=store_every
    )


def _check_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (n, 3) for columns (x, y, t); got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN/inf; drop those rows")
    t = pts[:, 2]
    if t.min(initial=0.0) < 0 or t.max(initial=0.0) > NavierStokes2D.domain["t"][1] + 1e-12:
        raise ValueError(
            f"points' t must lie in {NavierStokes2D.domain['t']}, got [{t.min()}, {t.max()}]"
        )
    return pts


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Collocation grid ``x_j = 2 pi j / n`` as ``(x, y)`` arrays of shape ``(n, n)``, ``ij``."""
    axis = TWO_PI * np.arange(n) / n
    return np.meshgrid(axis, axis, indexing="ij")


def initial_vorticity(n: int, modes=INITIAL_MODES) -> np.ndarray:
    r"""Fourier coefficients of :math:`\omega_0 = -\Delta\psi_0` for
    :math:`\psi_0 = \sum a \sin(k_x x + k_y y + \phi)` on an ``n x n`` grid."""
    x, y = grid(n)
    omega = sum(a * (kx**2 + ky**2) * np.sin(kx * x + ky * y + ph) for a, kx, ky, ph in modes)
    return np.fft.fft2(omega)


class VorticitySolution(NamedTuple):
    """Stored states of :func:`solve_vorticity`: ``times`` ``(m,)``, ``omega_hat`` and its
    time derivative ``omega_hat_t`` ``(m, n, n)`` (``numpy.fft.fft2`` convention), and the
    uniform ``mean_flow`` ``(U, V)``."""

    times: np.ndarray
    omega_hat: np.ndarray
    omega_hat_t: np.ndarray
    mean_flow: tuple[float, float]

    def evaluate(self, points: np.ndarray, field: str) -> np.ndarray:
        r"""``"psi"``, ``"omega"``, ``"u"`` or ``"v"`` at ``points`` ``(n, 3)``.

        The Fourier series is summed exactly at each point's ``(x, y)``; in time, the cubic
        Hermite interpolant between the two stored states that bracket ``t`` uses the exact
        stored time derivatives (error :math:`O(\Delta t_{store}^4)`, about 1e-8 here).
        """
        pts = np.asarray(points, dtype=float)
        n = self.omega_hat.shape[-1]
        factor = _field_factor(n, field)
        times = self.times
        idx = np.clip(np.searchsorted(times, pts[:, 2], side="right") - 1, 0, len(times) - 2)
        h = times[idx + 1] - times[idx]
        s = (pts[:, 2] - times[idx]) / h
        basis = (
            2 * s**3 - 3 * s**2 + 1,
            (s**3 - 2 * s**2 + s) * h,
            -2 * s**3 + 3 * s**2,
            (s**3 - s**2) * h,
        )
        # States are band-limited to |k| < n/3 (2/3 rule), so only those modes are summed.
        k = np.fft.fftfreq(n, 1.0 / n)
        band = np.flatnonzero(np.abs(k) < n / 3)
        k, factor = k[band], factor[np.ix_(band, band)]
        out = np.empty(pts.shape[0])
        for j in np.unique(idx):
            sel = np.flatnonzero(idx == j)
            ex = np.exp(1j * pts[sel, 0, None] * k[None, :])
            ey = np.exp(1j * pts[sel, 1, None] * k[None, :])
            coeffs = [
                c[np.ix_(band, band)]
                for c in (
                    self.omega_hat[j],
                    self.omega_hat_t[j],
                    self.omega_hat[j + 1],
                    self.omega_hat_t[j + 1],
                )
            ]
            values = [np.real(np.einsum("pk,kl,pl->p", ex, factor * c, ey)) / n**2 for c in coeffs]
            out[sel] = sum(b[sel] * val for b, val in zip(basis, values, strict=True))
        if field in ("u", "v"):
            out += self.mean_flow[0 if field == "u" else 1]
        return out


def _wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.fft.fftfreq(n, 1.0 / n)
    kx, ky = k[:, None], k[None, :]
    k2 = kx**2 + ky**2
    return kx, ky, k2


def _field_factor(n: int, field: str) -> np.ndarray:
    """Multiplier taking omega_hat to the named field's coefficients."""
    kx, ky, k2 = _wavenumbers(n)
    inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    factors = {
        "omega": np.ones_like(k2, dtype=complex),
        "psi": inv_k2 + 0j,
        "u": 1j * ky * inv_k2,
        "v": -1j * kx * inv_k2,
    }
    if field not in factors:
        raise ValueError(f"field must be one of {sorted(factors)}, got {field!r}")
    return factors[field]


def vorticity_tendency(
    omega_hat: np.ndarray,
    lambda1: float,
    lambda2: float,
    mean_flow: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    r"""Full right-hand side :math:`\hat\omega_t = -\lambda_1 \widehat{\mathbf u\cdot\nabla\omega}
    - \lambda_2 |k|^2 \hat\omega` (the product dealiased by the 2/3 rule)."""
    n = omega_hat.shape[-1]
    _, _, k2 = _wavenumbers(n)
    return _advection(omega_hat, lambda1, mean_flow) - lambda2 * k2 * omega_hat


def _advection(omega_hat, lambda1, mean_flow):
    n = omega_hat.shape[-1]
    kx, ky, _ = _wavenumbers(n)
    dealias = (np.abs(kx) < n / 3) & (np.abs(ky) < n / 3)
    u = np.real(np.fft.ifft2(_field_factor(n, "u") * omega_hat)) + mean_flow[0]
    v = np.real(np.fft.ifft2(_field_factor(n, "v") * omega_hat)) + mean_flow[1]
    omega_x = np.real(np.fft.ifft2(1j * kx * omega_hat))
    omega_y = np.real(np.fft.ifft2(1j * ky * omega_hat))
    return -lambda1 * dealias * np.fft.fft2(u * omega_x + v * omega_y)


def solve_vorticity(
    omega_hat0: np.ndarray,
    lambda1: float,
    lambda2: float,
    *,
    dt: float,
    num_steps: int,
    store_every: int = 1,
    mean_flow: tuple[float, float] = (0.0, 0.0),
) -> VorticitySolution:
    r"""Integrate :math:`\omega_t + \lambda_1 (\mathbf U + \mathbf u)\cdot\nabla\omega =
    \lambda_2\Delta\omega` on :math:`[0, 2\pi]^2` by integrating-factor RK4.

    The viscous term is integrated exactly (factor :math:`e^{-\lambda_2 |k|^2 t}`), the
    advection term by classical RK4 on the pseudo-spectral product with 2/3 dealiasing; the
    scheme is fourth order in ``dt``. The initial state is truncated to the dealiased band
    :math:`|k_x|, |k_y| < n/3`. Written in NumPy (float64, run once per parameter set to
    make synthetic truth), not JAX: it is never differentiated.

    Args:
        omega_hat0: ``(n, n)`` initial vorticity coefficients (``numpy.fft.fft2``).
        lambda1, lambda2: advection coefficient and viscosity (>= 0).
        dt: time step; num_steps: steps; store_every: keep every this many steps.
        mean_flow: uniform background velocity ``(U, V)`` (validation against the translated
            Taylor–Green vortex, whose advection term is active).

    Returns:
        :class:`VorticitySolution` at ``t = 0, store_every * dt, ...``.

    References:
        Kassam & Trefethen (2005), Fourth-order time-stepping for stiff PDEs, SIAM J. Sci.
        Comput. 26 (integrating-factor RK4).
    """
    omega = np.asarray(omega_hat0, dtype=complex)
    if omega.ndim != 2 or omega.shape[0] != omega.shape[1]:
        raise ValueError(f"omega_hat0 must be a square (n, n) array, got shape {omega.shape}")
    if not (dt > 0 and num_steps >= 1 and store_every >= 1 and num_steps % store_every == 0):
        raise ValueError(
            f"need dt > 0 and num_steps a positive multiple of store_every; got dt={dt}, "
            f"num_steps={num_steps}, store_every={store_every}"
        )
    if lambda2 < 0:
        raise ValueError(f"lambda2 (viscosity) must be >= 0, got {lambda2}")
    kx, ky, k2 = _wavenumbers(omega.shape[0])
    # Project the initial state onto the dealiased band, where every later state lies.
    omega = omega * ((np.abs(kx) < omega.shape[0] / 3) & (np.abs(ky) < omega.shape[0] / 3))
    half = np.exp(-lambda2 * k2 * dt / 2)
    full = half**2

    def advect(w):
        return dt * _advection(w, lambda1, mean_flow)

    stored = [omega]
    for step in range(1, num_steps + 1):
        k1 = advect(omega)
        k2_ = advect(half * (omega + k1 / 2))
        k3 = advect(half * omega + k2_ / 2)
        k4 = advect(full * omega + half * k3)
        omega = full * omega + (full * k1 + 2 * half * (k2_ + k3) + k4) / 6
        if step % store_every == 0:
            stored.append(omega)
    states = np.stack(stored)
    tendencies = np.stack([vorticity_tendency(w, lambda1, lambda2, mean_flow) for w in states])
    times = dt * store_every * np.arange(len(states))
    return VorticitySolution(times, states, tendencies, (float(mean_flow[0]), float(mean_flow[1])))
