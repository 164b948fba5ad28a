"""PDEs: named derivatives in, residual out; parameters known or :class:`Unknown`."""

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

__all__ = [
    "NU_RAISSI",
    "AbstractConservationLaw",
    "AbstractPDE",
    "Burgers",
    "BurgersShock",
    "GPMEHeat",
    "Heat",
    "LinearAdvection",
    "PorousMedium",
    "Stefan",
    "Unknown",
    "burgers_cole_hopf",
    "derivative_indices",
    "derivatives",
    "mass_rhs",
]
