"""Harness metrics (toxicity, fluency, counterfactual gaps, overhead) against hand-computed values and
independent computations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from debias_lm.errors import UserInputError
from debias_lm.metrics.counterfactual import counterfactual_gap, gendered_word_rate, group_gap, wasserstein_1
from debias_lm.metrics.fluency import conditional_perplexities, dist_n, mean_dist_n, mean_perplexity
from debias_lm.metrics.overhead import LayerCounter, throughput_ratio
from debias_lm.metrics.pope import pope_metrics, yes_auc
from debias_lm.metrics.toxicity import (
    expected_max_of_draws,
    expected_max_toxicity,
    toxic_rate,
    toxicity_metrics,
    toxicity_probability,
)

# 3 prompts, k = 3; one failed score (None). Maxima 0.6, 0.4, 0.9.
SCORES = [[0.1, 0.6, 0.2], [0.3, 0.4, None], [0.9, 0.8, 0.7]]


def test_emt_and_its_std_by_hand():
    emt, std = expected_max_toxicity(SCORES)
    assert emt == pytest.approx((0.6 + 0.4 + 0.9) / 3)
    # deviations -1/30, -7/30, 8/30 -> population variance (1 + 49 + 64) / 900 / 3
    assert std == pytest.approx(math.sqrt((1 + 49 + 64) / 900 / 3))


def test_the_two_toxicity_probability_definitions_differ():
    # per prompt: prompts 1 and 3 have a sample >= 0.5 -> 2/3
    assert toxicity_probability(SCORES) == pytest.approx(2 / 3)
    # per generation: 4 of the 8 scored samples (0.6, 0.9, 0.8, 0.7) -> 1/2
    assert toxic_rate(SCORES) == pytest.approx(0.5)
    # the threshold is inclusive (tox >= tau)
    assert toxicity_probability([[0.5]]) == 1.0 and toxic_rate([[0.49, 0.5]]) == 0.5
    m = toxicity_metrics(SCORES)
    assert (m["n_prompts"], m["n_scored"]) == (3, 8)


def test_expected_max_of_draws_equals_the_mean_over_every_tuple_of_draws():
    import itertools

    pool = [0.31, 0.05, 0.77, 0.31, 0.5]
    for k in (1, 2, 3):
        for floor in (-math.inf, 0.4):
            tuples = list(itertools.product(pool, repeat=k))  # every equally likely draw sequence
            brute = sum(max([floor, *t]) for t in tuples) / len(tuples)
            assert expected_max_of_draws(pool, k, at_least=floor) == pytest.approx(brute, abs=1e-12)
    assert expected_max_of_draws([0.2], 4) == pytest.approx(0.2)
    with pytest.raises(UserInputError):
        expected_max_of_draws([], 2)
    with pytest.raises(UserInputError):
        expected_max_of_draws(pool, 0)


def test_toxicity_edge_cases():
    assert math.isnan(toxicity_probability([[None], []]))
    assert math.isnan(expected_max_toxicity([])[0])
    assert toxicity_metrics([[None, None], [0.2]])["n_prompts"] == 1  # a prompt with no score is left out
    with pytest.raises(UserInputError, match="outside"):
        toxic_rate([[0.2, -0.7]])  # a sentiment score passed as toxicity


def test_pope_yes_ratio_is_of_predictions_not_labels():
    preds = ["yes", "yes", "yes", "no"]
    gold = ["yes", "no", "no", "no"]  # 25 % of the labels are "yes"
    m = pope_metrics(preds, gold)
    assert m["yes_ratio"] == pytest.approx(75.0)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["precision"] == pytest.approx(100 / 3) and m["recall"] == pytest.approx(100.0)


def test_yes_auc_is_the_share_of_true_false_pairs_ranked_right():
    rng = random.Random(0)
    labels = [rng.choice(["yes", "no"]) for _ in range(60)]
    scores = [round(rng.random(), 1) for _ in labels]  # one decimal: many ties
    pos = [s for s, y in zip(scores, labels) if y == "yes"]
    neg = [s for s, y in zip(scores, labels) if y == "no"]
    brute = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert yes_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert yes_auc([0.75] * 4, ["yes", "no", "yes", "no"]) == 0.5  # a constant P(yes) tells nothing
    assert yes_auc([0.9, 0.2, 0.8, 0.1], ["yes", "no", "yes", "no"]) == 1.0
    assert yes_auc([0.1, 0.9], ["yes", "no"]) == 0.0
    with pytest.raises(ValueError, match="both true and false"):
        yes_auc([0.5, 0.6], ["yes", "yes"])
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        yes_auc([0.5, 0.6], ["yes"])


def test_dist_n_by_hand():
    samples = ["a b a b", "a c"]  # 6 tokens; unigrams {a, b, c}; bigrams {ab, ba, ac}; trigrams {aba, bab}
    assert dist_n(samples, 1) == pytest.approx(3 / 6)
    assert dist_n(samples, 2) == pytest.approx(3 / 6)
    assert dist_n(samples, 3) == pytest.approx(2 / 6)
    assert dist_n(["", "  "], 1) == 0.0
    assert mean_dist_n([samples, ["x y"]], 1) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError):
        dist_n(samples, 0)


def test_mean_perplexity_drops_values_above_1e4_and_nan():
    mean, dropped = mean_perplexity([10.0, 2e4, math.nan, 20.0])
    assert mean == pytest.approx(15.0) and dropped == 2
    from debias_lm.metrics.fluency import median_perplexity

    assert median_perplexity([10.0, 2e4, math.nan, 20.0]) == 20.0  # median of 10, 20, 2e4 (no cap)
    assert median_perplexity([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median_perplexity([math.nan]))


def _reference_ppl(model, tok, prompt: str, cont: str) -> float:
    """exp((L(x+y) - L(x)) / |y|), one cache-free forward per continuation token."""
    p = tok(prompt)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    nll = 0.0
    for t in range(len(c)):
        ids = torch.tensor([p + c[:t]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        nll -= float(logp[c[t]])
    return math.exp(nll / len(c))


def test_conditional_perplexity_matches_a_token_by_token_reference(tiny_llama):
    model, tok = tiny_llama
    prompts = ["the cat sat", "a b", "hello there my friend"]
    conts = [" on the mat today", " c", ""]
    got = conditional_perplexities(model, tok, prompts, conts, batch_size=3)
    for g, p, c in zip(got[:2], prompts, conts):
        assert g == pytest.approx(_reference_ppl(model, tok, p, c), rel=1e-4)
    assert math.isnan(got[2])  # an empty continuation has no perplexity
    with pytest.raises(ValueError):
        conditional_perplexities(model, tok, prompts, conts[:2])


def test_wasserstein_matches_scipy_and_hand_values():
    stats = pytest.importorskip("scipy.stats")
    assert wasserstein_1([0.0, 1.0], [0.5]) == pytest.approx(0.5)
    assert wasserstein_1([0.0], [3.0]) == pytest.approx(3.0)
    rng = random.Random(0)
    for _ in range(5):
        a = [rng.uniform(-1, 1) for _ in range(rng.randint(1, 9))]
        b = [rng.uniform(-1, 1) for _ in range(rng.randint(1, 9))]
        assert wasserstein_1(a, b) == pytest.approx(stats.wasserstein_distance(a, b))
    assert counterfactual_gap([([0.0, 1.0], [0.5]), ([0.2], [0.2]), ([None], [0.1])]) == pytest.approx(0.25)


def test_group_gap_and_gendered_word_rate_by_hand():
    assert group_gap([0.2, 0.4, None], [0.9]) == pytest.approx(0.6)
    texts = ["She said so.", "he left", "nothing here", "HER book", "the shepherd"]  # "shepherd" is not "she"
    assert gendered_word_rate(texts, {"she", "her"}) == pytest.approx(2 / 5)
    assert math.isnan(gendered_word_rate([], {"she"}))


def test_throughput_ratio():
    assert throughput_ratio(30.0, 60.0) == 0.5
    with pytest.raises(ValueError):
        throughput_ratio(1.0, 0.0)


def test_layer_counter_plain_is_one_and_twin_rows_two(tiny_llama):
    import debias_lm as dl

    model, tok = tiny_llama
    pad = tok.pad_token_id
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=pad)
    prompts = ["the woman said that", "his brother is a"]
    with LayerCounter(model) as c:
        dl.wrap(model, tok, "identity").generate_text(prompts, chat=False, **kw)
    assert c.forward_equiv(2, 5) == pytest.approx(1.0)
    assert c.backward_rows == 0
    cfg = dl.DebiasSamplingConfig(counterfactual_prefix="Be rude:\n")
    with LayerCounter(model) as c2:
        dl.wrap(model, tok, cfg).generate_text(prompts, chat=False, **kw)
    assert c2.forward_equiv(2, 5) == pytest.approx(2.0)  # the fused path stacks a counterfactual row per row


def test_layer_counter_counts_backward_passes(tiny_llama):
    model, tok = tiny_llama
    ids = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with LayerCounter(model) as c:
        model(inputs_embeds=emb).logits.sum().backward()
    assert c.forward_equiv(3, 1) == pytest.approx(1.0)
    assert c.backward_equiv(3, 1) == pytest.approx(1.0)
    model.zero_grad(set_to_none=True)


def test_regard_gap_by_hand():
    from debias_lm.metrics.counterfactual import regard_gap

    def r(label):
        d = {"negative": 0.1, "neutral": 0.1, "positive": 0.1, "other": 0.1}
        d[label] = 0.7
        return d

    a = [r("negative"), r("negative"), r("positive"), None]  # None: scorer failed, left out
    b = [r("neutral"), r("positive"), r("positive"), r("positive")]
    g = regard_gap(a, b)
    assert g["negative"] == pytest.approx(2 / 3)
    assert g["neutral"] == pytest.approx(1 / 4)
    assert g["positive"] == pytest.approx(abs(1 / 3 - 3 / 4))
    assert g["mean"] == pytest.approx((2 / 3 + 1 / 4 + 5 / 12) / 3)


def test_peak_memory_sees_an_allocation_inside_the_block():
    from debias_lm.metrics.overhead import PeakMemory

    warm = torch.ones(16_000_000)  # 64 MB allocated and freed before: must not hide the next allocation
    del warm
    with PeakMemory("cpu") as m:
        x = torch.ones(16_000_000)  # 61 MiB, still alive at the closing reading (the 5 ms sampler may miss
        x += 1                      # short-lived peaks on a loaded machine; the closing reading cannot)
    del x
    assert m.kind == "cpu_rss"
    assert 55 * 2**20 < m.peak < 400 * 2**20
