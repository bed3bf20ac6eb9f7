"""Metric definitions (each defined once; formulas in the docstrings and in docs/metrics.md)."""

from .occupational import (
    amplification_pp,
    mae_pp,
    occupational_metrics,
    parity_gap_pp,
    pearson_r,
    relative_reduction,
)

__all__ = [
    "amplification_pp",
    "mae_pp",
    "occupational_metrics",
    "parity_gap_pp",
    "pearson_r",
    "relative_reduction",
]
