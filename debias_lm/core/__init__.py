"""Pure tensor math shared by every backend (no model calls, no engine types)."""

from .ches import ches_from_sums, completion_score_mask, masked_hidden_sums, normalized_edit_distance
from .contrast import (
    CALIBRATION_MODES,
    batch_prior,
    calibrate,
    calibration_offsets,
    contrast,
    tempered_calibration_offsets,
)

__all__ = [
    "CALIBRATION_MODES", "batch_prior", "calibrate", "calibration_offsets", "contrast", "tempered_calibration_offsets",
    "ches_from_sums", "completion_score_mask", "masked_hidden_sums", "normalized_edit_distance"]
