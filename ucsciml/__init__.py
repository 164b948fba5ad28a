"""ucsciml: Bayesian and uncertainty-quantification framework for scientific machine learning.

Example:
    >>> import jax, ucsciml as uq
    >>> from ucsciml import models, inference
    >>> # program = uq.compile(models.BayesianPINN(pde=uq.pde.Burgers()), data)
    >>> # posterior = inference.NUTS().run(program, jax.random.key(0))
"""

# NumPyro must be imported before arviz_base: importing arviz_base first leaves
# `numpyro.distributions.distribution` unset, which breaks numpyro.factor (constrained sites).
import numpyro  # noqa: F401, I001

from ucsciml import calibration, data, diagnostics, pde, physics, recalibration
from ucsciml.pde import Unknown
from ucsciml.posterior import Posterior, load
from ucsciml.program import Program, compile
from ucsciml.report import report

__version__ = "0.1.0"

__all__ = [
    "Posterior",
    "Program",
    "Unknown",
    "calibration",
    "compile",
    "data",
    "diagnostics",
    "load",
    "pde",
    "physics",
    "recalibration",
    "report",
]


def __getattr__(name):
    # models and inference import the spine; importing them lazily here keeps the spine
    # free of import cycles while `from ucsciml import models, inference` still works.
    if name in ("models", "inference"):
        import importlib

        return importlib.import_module(f"ucsciml.{name}")
    raise AttributeError(f"module 'ucsciml' has no attribute {name!r}")
