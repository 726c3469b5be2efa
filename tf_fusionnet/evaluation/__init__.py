"""Evaluation: anytime prediction, budgeted batch classification, calibration."""

from tf_fusionnet.exits import (
    budgeted_curve,
    exit_indices,
    exit_proportions,
    fit_thresholds,
    simulate,
    thresholds_for_budget,
)

__all__ = [
    "budgeted_curve",
    "exit_indices",
    "exit_proportions",
    "fit_thresholds",
    "simulate",
    "thresholds_for_budget",
]
