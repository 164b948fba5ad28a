"""Random-grid neural processes (RGNP): physics-trained forward and inverse maps for a
parametric PDE family.

Public names: the model definition :class:`RGNP` (``fit``, ``predict``, ``infer``, ``evaluate``,
``refinement_program``), its trainable state :class:`RGNPParams` with the forward network
(:class:`ForwardNet`, :class:`FourierFeatures`) and the inverse encoder :class:`GICNet`, and
the family case :class:`RGNPCase` (``[model] name = "rgnp"`` in a case file).

Modules: ``rgnp`` (the model definition, objective and refinement program), ``case`` (the
family case: train, score on prior test pairs, the standard tree); private helpers
``_gicnet`` (the grid-invariant encoder and its bounded Gaussian head) and ``_rgnp_train``
(Adam with a staircase decay on :func:`ucsciml.optimize.train`). Only this family imports
them.

References:
    Vadeboncoeur et al. (2023), Random Grid Neural Processes for Parametric Partial
    Differential Equations, ICML 2023.
"""

from ucsciml.models.rgnp._gicnet import GICNet
from ucsciml.models.rgnp.case import RGNPCase
from ucsciml.models.rgnp.rgnp import RGNP, ForwardNet, FourierFeatures, RGNPParams

__all__ = ["GICNet", "FourierFeatures", "ForwardNet", "RGNP", "RGNPCase", "RGNPParams"]
