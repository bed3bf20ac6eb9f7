"""core.sampling's HF-semantics helpers against transformers' own warpers and sampler (the reference they must
match exactly: the HF loops that use them are compared with ``generate`` token for token)."""

from __future__ import annotations

import pytest
import torch

from debias_lm.core.sampling import draw, filter_scores


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8),
                                                       (1.3, 7, 0.9), (0.5, 60, 0.5)])
def test_filter_scores_equals_hf_warpers_in_hf_order(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(1)) * 3
    ref = scores.clone()
    if temperature != 1.0:
        ref = TemperatureLogitsWarper(temperature)(None, ref)
    if top_k:
        ref = TopKLogitsWarper(top_k=top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(filter_scores(scores, temperature, top_k, top_p), ref)


def test_draw_consumes_the_generator_like_hf_multinomial_sampling():
    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(2))
    scores[:, 5:] = float("-inf")  # masked tokens are never drawn
    got = draw(scores, torch.Generator().manual_seed(7))
    ref = torch.multinomial(scores.softmax(-1), 1, generator=torch.Generator().manual_seed(7)).squeeze(1)
    assert torch.equal(got, ref) and bool((got < 5).all())
