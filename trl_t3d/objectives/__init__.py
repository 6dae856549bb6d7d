"""The objective as components: loss terms over a shared step context, and named objectives of weighted terms.

Add a term of your own with `register_loss_term` (see the README, "Your own loss term")."""

from .base import (
    LossTerm,
    ReferenceOutputs,
    StepContext,
    TermOutput,
    loss_term_class,
    loss_term_names,
    objective_names,
    register_loss_term,
    register_objective,
    resolve_objective,
)
from .terms import CertaintyTerm, DDOTerm, MeanFieldTerm, NTDTerm, PathTerm, SFTTerm, TADTerm

__all__ = [
    "CertaintyTerm",
    "DDOTerm",
    "LossTerm",
    "MeanFieldTerm",
    "NTDTerm",
    "PathTerm",
    "ReferenceOutputs",
    "SFTTerm",
    "StepContext",
    "TADTerm",
    "TermOutput",
    "loss_term_class",
    "loss_term_names",
    "objective_names",
    "register_loss_term",
    "register_objective",
    "resolve_objective",
]
