"""PDEs: named derivatives in, residual out; parameters known or :class:`Unknown`."""

from ucsciml.pde.advection import Advection
from ucsciml.pde.allen_cahn import AllenCahn1D, AllenCahn2D
from ucsciml.pde.autodiff import derivatives
from ucsciml.pde.base import AbstractPDE, Unknown, derivative_indices
from ucsciml.pde.burgers import NU_RAISSI, Burgers, burgers_cole_hopf
from ucsciml.pde.gpme import (
    AbstractConservationLaw,
    BurgersShock,
    GPMEHeat,
    LinearAdvection,
    PorousMedium,
    Stefan,
    mass_rhs,
)
from ucsciml.pde.heat import Heat
from ucsciml.pde.manufactured import AbstractManufacturedPDE
from ucsciml.pde.navier_stokes import NavierStokes2D
from ucsciml.pde.nonlinear_poisson import NonlinearPoisson1D
from ucsciml.pde.parametric_burgers import ParametricBurgers
from ucsciml.pde.poisson import Poisson1D, Poisson2D

__all__ = [
    "NU_RAISSI",
    "AbstractManufacturedPDE",
    "Advection",
    "AllenCahn1D",
    "AllenCahn2D",
    "AbstractConservationLaw",
    "AbstractPDE",
    "Burgers",
    "BurgersShock",
    "GPMEHeat",
    "Heat",
    "LinearAdvection",
    "NonlinearPoisson1D",
    "ParametricBurgers",
    "NavierStokes2D",
    "Poisson1D",
    "Poisson2D",
    "PorousMedium",
    "Stefan",
    "Unknown",
    "burgers_cole_hopf",
    "derivative_indices",
    "derivatives",
    "mass_rhs",
]
