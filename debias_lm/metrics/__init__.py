"""Metric definitions (each defined once; formulas in the docstrings and in docs/metrics.md).

Modules: ``toxicity`` (EMT, per-prompt toxicity probability, per-generation toxic rate), ``counterfactual``
(group gaps, W1 sentiment gap, gendered-word rate), ``fluency`` (conditional perplexity, dist-n), ``bbq``
(accuracy, S_DIS, S_AMB), ``stereotype`` (CrowS-Pairs, StereoSet ICAT), ``occupational`` (vs BLS), ``pope``
(POPE with the yes-ratio of predictions, ECE), ``overhead`` (throughput ratio, forward-equivalents/token) and
``bootstrap`` (paired bootstrap intervals over prompts).
"""

from .bbq import bbq_metrics, biased_answer_index
from .bootstrap import mean_difference, paired_bootstrap, share_of_reduction
from .counterfactual import counterfactual_gap, gendered_word_rate, group_gap, wasserstein_1
from .fluency import conditional_perplexities, dist_n, mean_dist_n, mean_perplexity
from .occupational import (
    amplification_pp,
    mae_pp,
    occupational_metrics,
    parity_gap_pp,
    pearson_r,
    relative_reduction,
)
from .overhead import LayerCounter, PeakMemory, throughput_ratio
from .pope import expected_calibration_error, pope_metrics
from .stereotype import crows_pairs_metrics, sentence_logliks, stereoset_metrics
from .toxicity import expected_max_toxicity, toxic_rate, toxicity_metrics, toxicity_probability

__all__ = [
    "LayerCounter",
    "PeakMemory",
    "amplification_pp",
    "bbq_metrics",
    "biased_answer_index",
    "conditional_perplexities",
    "counterfactual_gap",
    "crows_pairs_metrics",
    "dist_n",
    "expected_calibration_error",
    "expected_max_toxicity",
    "gendered_word_rate",
    "group_gap",
    "mae_pp",
    "mean_difference",
    "mean_dist_n",
    "mean_perplexity",
    "occupational_metrics",
    "paired_bootstrap",
    "parity_gap_pp",
    "pearson_r",
    "pope_metrics",
    "relative_reduction",
    "sentence_logliks",
    "share_of_reduction",
    "stereoset_metrics",
    "throughput_ratio",
    "toxic_rate",
    "toxicity_metrics",
    "toxicity_probability",
    "wasserstein_1",
]
