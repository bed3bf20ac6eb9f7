"""Pure tensor math shared by every backend (no model calls, no engine types)."""

from .ches import ches_from_sums, completion_score_mask, masked_hidden_sums, normalized_edit_distance

__all__ = ["ches_from_sums", "completion_score_mask", "masked_hidden_sums", "normalized_edit_distance"]
