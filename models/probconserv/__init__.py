"""ProbConserv: a conservation law imposed on any probabilistic surrogate, with its base models.

Public names: the closed-form conservation update and its variants (:func:`condition`,
:func:`condition_lowrank`, :func:`condition_diagonal`, :func:`condition_draws`,
:func:`update_draws`), the HardC baseline (:func:`hardc`), the NumPyro program of the same
model (:func:`constraint_program`), the constraint (:func:`conservation_constraint`,
:func:`conservation_matrix`, :func:`trapezoid_weights`), the scores
(:func:`conservation_error`, :func:`mean_squared_error`, :func:`gaussian_log_likelihood`,
:func:`crps_gaussian`, :func:`front_position`) and sampling (:func:`sample`,
:func:`sample_gaussian`); ProbConserv on any backend's draws (:func:`condition_posterior`), on
a run's predicted field for a case file's ``[conservation]`` table (:func:`conserve_prediction`)
and the family case (:class:`ConservationCase`); the study's context design (:func:`stratified_context`,
:func:`scale_inputs`).

Modules: ``probconserv`` (the update, constraint and scores); ``case`` (the family case);
``conserve`` (the update after any backend's run); the two base models
``context_gp`` (an exact GP per function, :class:`GPFit`) and ``attentive_np`` (an attentive
neural process per family, :class:`AttentiveNP`); private ``_contexts`` (the context design
both base models share). Only this family imports the private module.

References:
    Hansen, Maddix, Alizadeh, Gupta & Mahoney (2023), Learning Physical Models that Can
    Respect Conservation Laws, ICML (ProbConserv).
"""

from ucsciml.models.probconserv import attentive_np, context_gp
from ucsciml.models.probconserv._contexts import scale_inputs, stratified_context
from ucsciml.models.probconserv.attentive_np import ANPPrediction, AttentiveNP
from ucsciml.models.probconserv.case import ConservationCase, condition_posterior
from ucsciml.models.probconserv.conserve import conserve_prediction
from ucsciml.models.probconserv.context_gp import GPFit
from ucsciml.models.probconserv.probconserv import (
    Gaussian,
    LowRankGaussian,
    condition,
    condition_diagonal,
    condition_draws,
    condition_lowrank,
    conservation_constraint,
    conservation_error,
    conservation_matrix,
    constraint_program,
    crps_gaussian,
    front_position,
    gaussian_log_likelihood,
    hardc,
    mean_squared_error,
    sample,
    sample_gaussian,
    trapezoid_weights,
    update_draws,
)

__all__ = [
    "ANPPrediction",
    "AttentiveNP",
    "ConservationCase",
    "GPFit",
    "Gaussian",
    "LowRankGaussian",
    "attentive_np",
    "condition",
    "condition_diagonal",
    "condition_draws",
    "condition_lowrank",
    "condition_posterior",
    "conservation_constraint",
    "conserve_prediction",
    "conservation_error",
    "conservation_matrix",
    "constraint_program",
    "context_gp",
    "crps_gaussian",
    "front_position",
    "gaussian_log_likelihood",
    "hardc",
    "mean_squared_error",
    "sample",
    "sample_gaussian",
    "scale_inputs",
    "stratified_context",
    "trapezoid_weights",
    "update_draws",
]
