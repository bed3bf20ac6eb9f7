"""Post-hoc answer calibration: AnswerCalibrator, the in-generate calibration processor, POPE metrics, ECE."""

from __future__ import annotations

import math

import pytest
import torch

import debias_lm as dl
from debias_lm.core import calibrate, calibration_offsets
from debias_lm.hf.image_free import image_free_inputs
from debias_lm.labels import label_token_ids
from debias_lm.metrics.pope import expected_calibration_error, parse_yes_no, pope_metrics
from tests.test_vlm_debias import built, make_inputs


def test_calibration_offsets_equal_diagonal_calibration():
    p, p_cf = torch.tensor([0.6, 0.4]), torch.tensor([0.8, 0.2])
    # closed form: q ∝ (0.6/0.8001, 0.4/0.2001) -> "no" wins although p prefers "yes"
    q = calibrate(p, p_cf)
    a, b = 0.6 / (0.8 + 1e-4), 0.4 / (0.2 + 1e-4)
    assert torch.allclose(q, torch.tensor([a / (a + b), b / (a + b)], dtype=torch.float64))
    # as logit offsets on two variant tokens per label (+ unrelated tokens), renormalised over the labels
    logits = torch.tensor([math.log(0.35), math.log(0.25), math.log(0.3), math.log(0.1), 0.0, -1.0])
    ids = [[0, 1], [2, 3]]
    off = calibration_offsets(p_cf)
    adj = logits.clone().double()
    for j, t in enumerate(ids):
        adj[t] += off[j]
    pr = torch.softmax(adj, -1)
    lab = torch.stack([pr[t].sum() for t in ids])
    assert torch.allclose(lab / lab.sum(), q, atol=1e-12)
    assert torch.equal(adj[4:], logits[4:].double())  # other tokens untouched


def test_label_token_ids_sum_every_variant():
    tok = built("llava")[1].tokenizer
    ids = label_token_ids(tok, ["yes", "no"])
    vocab = tok.get_vocab()
    for label, got in zip(["yes", "no"], ids):
        # independent: every vocabulary entry that spells the label, case-insensitive, with or without the
        # word-start marker, is a variant
        want = {i for t, i in vocab.items() if t.replace("Ġ", "").replace("▁", "").lower() == label}
        assert set(got) == want and len(want) >= 2
    with pytest.raises(ValueError, match="not a single token"):
        label_token_ids(tok, ["yes", "antidisestablishmentarianism"])
    with pytest.raises(ValueError, match="duplicates"):
        dl.CalibrationConfig(labels=("yes", "Yes"))


def _manual_label_probs(logits, ids):
    pr = torch.softmax(logits.double(), -1)
    lab = torch.stack([pr[..., t].sum(-1) for t in ids], -1)
    return lab / lab.sum(-1, keepdim=True)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "idefics3"])
def test_image_free_prior_matches_separate_forwards(name):
    model, proc = built(name)
    inputs = make_inputs(name, ["Is there a cat?", "Is there a red square in this picture?"], [0, 1])
    cal = dl.AnswerCalibrator(model, proc, labels=["yes", "no"], prior="image_free", variant="none+unk")
    res = cal.score(inputs)
    ids = label_token_ids(proc.tokenizer, ["yes", "no"])
    with torch.no_grad():
        p = _manual_label_probs(model(**inputs).logits[:, -1], ids)
        pu = []
        for b in range(2):  # one row at a time, unpadded: independent of the joint left-padded batch
            one = make_inputs(name, [["Is there a cat?", "Is there a red square in this picture?"][b]], [b])
            pv = [_manual_label_probs(model(**image_free_inputs(model, proc, one, v)).logits[0, -1], ids)
                  for v in ("none", "unk")]
            pu.append(torch.stack(pv).mean(0))
        pu = torch.stack(pu)
    assert torch.allclose(res.probs, p, atol=1e-5)
    assert torch.allclose(res.prior, pu, atol=1e-5)
    assert torch.allclose(res.calibrated, calibrate(p, pu), atol=1e-5)
    # dataset prior: the mean image-free prior over everything scored
    res_d = dl.AnswerCalibrator(model, proc, prior="dataset", variant="none+unk").score(
        [make_inputs(name, ["Is there a cat?"], [0]), make_inputs(name, ["Is there a red square in this picture?"], [1])])
    assert torch.allclose(res_d.prior[0], pu.mean(0), atol=1e-5)


def test_batch_and_given_priors_and_metrics():
    model, proc = built("llava")
    inputs = make_inputs("llava", ["Is there a cat?", "Is there a dog?", "Is it blue?"], [0, 1, 2])
    res_b = dl.AnswerCalibrator(model, proc, prior="batch", mode="batch").score(inputs, gold=["yes", "no", "no"])
    assert torch.allclose(res_b.prior[0], res_b.probs.mean(0))
    assert torch.allclose(res_b.calibrated, calibrate(res_b.probs, None, mode="batch"))
    assert set(res_b.metrics) >= {"ece_before", "ece_after", "accuracy_before", "f1_after", "yes_ratio_after"}
    res_g = dl.AnswerCalibrator(model, proc, prior="given", prior_probs=(0.9, 0.1)).score(inputs)
    assert torch.allclose(res_g.calibrated, calibrate(res_g.probs, torch.tensor([0.9, 0.1])))
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="gold label 'maybe'"):
            dl.AnswerCalibrator(model, proc, prior="batch", mode="batch").score(inputs, gold=["yes", "maybe", "no"])
        with pytest.raises(ValueError, match="2 gold labels for 3 rows"):
            dl.AnswerCalibrator(model, proc, prior="batch", mode="batch").score(inputs, gold=["yes", "no"])
    finally:
        handle.remove()
    assert calls == []  # refused before any forward pass


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_wrap_generate_first_step_is_calibrated(name):
    model, proc = built(name)
    inputs = make_inputs(name, ["Is there a cat?", "Is there a red square in this picture?"], [0, 1])
    cfg = dl.CalibrationConfig(prior="image_free", variant="none")
    out = dl.wrap(model, proc, cfg).generate(**inputs, do_sample=False, max_new_tokens=3, output_scores=True,
                                             return_dict_in_generate=True)
    ref = dl.AnswerCalibrator(model, proc, config=cfg).score(inputs)
    ids = label_token_ids(proc.tokenizer, ["yes", "no"])
    assert torch.allclose(_manual_label_probs(out.scores[0], ids), ref.calibrated, atol=1e-5)
    # later steps are untouched: step 2's scores are the model's own logits after the (calibrated) first token
    n = inputs["input_ids"].shape[1]
    ext = _append_tokens(inputs, out.sequences[:, n : n + 1])
    with torch.no_grad():
        own = model(**ext).logits[:, -1]
    assert torch.allclose(out.scores[1], own, atol=1e-4)


def _append_tokens(inputs, new):
    """``inputs`` (left-padded) with the token columns ``new`` [B, k] appended: a cache-free forward input."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], new], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
    if "mm_token_type_ids" in inputs:
        t = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([t, torch.zeros_like(new, dtype=t.dtype)], 1)
    return out


@pytest.mark.parametrize("temperature", [0.7, 1.5])
@pytest.mark.parametrize("reduce", ["sum", "max"])
def test_calibration_processor_is_exact_after_the_temperature_warper(temperature, reduce):
    from debias_lm.hf.calibration import CalibrationLogitsProcessor

    torch.manual_seed(0)
    scores = torch.randn(3, 10) * 2
    ids = [[0, 1], [2, 3, 4]]
    p_cf = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)
    proc = CalibrationLogitsProcessor(ids, p_cf, reduce=reduce, temperature=temperature)
    out = proc(torch.zeros(3, 4, dtype=torch.long), scores)
    # by hand: p read from the logits at T = 1, then q ∝ p / (p_cf + 1e-4)
    pr = torch.softmax(scores.double(), -1)
    agg = (lambda x: x.sum(-1)) if reduce == "sum" else (lambda x: x.amax(-1))
    p = torch.stack([agg(pr[:, t]) for t in ids], -1)
    p = p / p.sum(-1, keepdim=True)
    q = p / (p_cf + 1e-4)
    q = q / q.sum(-1, keepdim=True)
    tempered = torch.softmax(out.double() / temperature, -1)  # what the sampler draws from
    got = torch.stack([agg(tempered[:, t]) for t in ids], -1)
    torch.testing.assert_close(got / got.sum(-1, keepdim=True), q, atol=1e-6, rtol=1e-6)  # float32 logits
    assert torch.equal(out[:, 5:], scores[:, 5:])  # other tokens untouched
    # the labels' total mass against other tokens is what the plain offsets give after the warper
    if reduce == "sum":
        plain = scores.double().clone()
        for j, t in enumerate(ids):
            plain[:, t] += -torch.log(p_cf[:, j : j + 1] + 1e-4)
        plain_t = torch.softmax(plain / temperature, -1)
        lab = [i for t in ids for i in t]
        torch.testing.assert_close(tempered[:, lab].sum(-1), plain_t[:, lab].sum(-1), atol=1e-6, rtol=1e-6)
    # the old behaviour (offsets before the warper) is not calibrate(p, p_cf) at this temperature
    naive = scores.double().clone()
    for j, t in enumerate(ids):
        naive[:, t] += -torch.log(p_cf[:, j : j + 1] + 1e-4)
    nt = torch.softmax(naive / temperature, -1)
    nl = torch.stack([agg(nt[:, t]) for t in ids], -1)
    assert not torch.allclose(nl / nl.sum(-1, keepdim=True), q, atol=1e-3)


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_wrap_generate_samples_the_calibrated_distribution_at_any_temperature(temperature):
    name = "llava"
    model, proc = built(name)
    inputs = make_inputs(name, ["Is there a cat?", "Is there a red square in this picture?"], [0, 1])
    cfg = dl.CalibrationConfig(prior="image_free", variant="none")
    torch.manual_seed(0)
    out = dl.wrap(model, proc, cfg).generate(**inputs, do_sample=True, temperature=temperature, top_k=0,
                                             top_p=1.0, max_new_tokens=1, output_scores=True,
                                             return_dict_in_generate=True)
    ids = label_token_ids(proc.tokenizer, ["yes", "no"])
    with torch.no_grad():  # by hand: p with the image, p_cf without it, both at T = 1
        p = _manual_label_probs(model(**inputs).logits[:, -1], ids)
        p_cf = _manual_label_probs(model(**image_free_inputs(model, proc, inputs, "none")).logits[:, -1], ids)
    q = p / (p_cf + 1e-4)
    q = q / q.sum(-1, keepdim=True)
    # generate's scores are after every processor and warper: the distribution it sampled the first token from
    torch.testing.assert_close(_manual_label_probs(out.scores[0], ids), q, atol=1e-5, rtol=1e-5)


def test_calibration_processor_reused_on_a_longer_prompt_still_calibrates():
    from debias_lm.hf.calibration import CalibrationLogitsProcessor

    name = "llava"
    model, proc = built(name)
    ids = label_token_ids(proc.tokenizer, ["yes", "no"])
    prior = torch.tensor([0.85, 0.15])
    cal = CalibrationLogitsProcessor(ids, prior)
    kw = dict(do_sample=False, max_new_tokens=2, output_scores=True, return_dict_in_generate=True)
    for text in ("Is it red?", "Is there a small red square in the upper left part of this picture?"):
        inputs = make_inputs(name, [text], [3])
        out = model.generate(**inputs, logits_processor=[cal], **kw)
        with torch.no_grad():
            p = _manual_label_probs(model(**inputs).logits[:, -1], ids)
        q = p / (prior.double() + 1e-4)
        q = q / q.sum(-1, keepdim=True)
        torch.testing.assert_close(_manual_label_probs(out.scores[0], ids), q, atol=1e-5, rtol=1e-5)


def test_wrap_rejects_identity_and_text_only_image_free(tiny_llama):
    model, proc = built("llava")
    with pytest.raises(ValueError, match="mode='identity'"):
        dl.wrap(model, proc, dl.CalibrationConfig(mode="identity"))
    llm, tok = tiny_llama
    with pytest.raises(ValueError, match="text-only model"):
        dl.wrap(llm, tok, dl.CalibrationConfig(prior="image_free"))
    with pytest.raises(ValueError, match="prior_probs"):
        dl.CalibrationConfig(prior="given", prior_probs=(1.0,))


def test_pope_metrics_and_ece_by_hand():
    assert parse_yes_no("Yes, there is.") == "yes" and parse_yes_no("no") == "no"
    assert parse_yes_no("There is nobody") is None and parse_yes_no("I think so... NO.") == "no"
    m = pope_metrics(["yes", "yes", "no", None, "yes", "no"], ["yes", "no", "no", "yes", "yes", "yes"])
    # parsed: (y,y) TP, (y,n) FP, (n,n) TN, (y,y) TP, (n,y) FN -> n=5
    assert m["unparsed"] == 1 and m["n"] == 6
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["precision"] == pytest.approx(200 / 3)
    assert m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(60.0)  # 3 of 5 *predictions* are yes (labels: 3 of 5 too, by chance)
    m2 = pope_metrics(["yes", "yes", "yes", "yes"], ["no", "no", "no", "yes"])
    assert m2["yes_ratio"] == 100.0 and m2["accuracy"] == 25.0
    # ECE: confidences 0.95 (right), 0.85 (wrong), 0.55, 0.52 (right, wrong) -> bins 9, 8, 5, 5
    probs = [[0.95, 0.05], [0.15, 0.85], [0.55, 0.45], [0.48, 0.52]]
    gold = [0, 0, 0, 0]
    want = (1 * abs(1 - 0.95) + 1 * abs(0 - 0.85) + 2 * abs(0.5 - (0.55 + 0.52) / 2)) / 4
    assert expected_calibration_error(probs, gold) == pytest.approx(want)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("prior", ["batch", "given"])
def test_right_padded_batch_scores_like_left_padded_and_unpadded(name, prior):
    """batch / given priors need no image-free branch, so right padding reaches them: each row's label scores
    must come from its last real token, not from a pad position."""
    from debias_lm.testing import tiny_image
    from tests.test_vlm_debias import prompt

    model, proc = built(name)
    texts = ["Is there a cat?", "Is there a small red square in the upper left part of this picture?"]
    kw = dict(prior=prior, mode="batch" if prior == "batch" else "diagonal",
              prior_probs=(0.7, 0.3) if prior == "given" else ())
    ids = label_token_ids(proc.tokenizer, ["yes", "no"])
    res = {}
    try:
        for side in ("left", "right"):
            proc.tokenizer.padding_side = side
            enc = proc(text=[prompt(proc, t) for t in texts], images=[tiny_image(32, seed=s) for s in (1, 2)],
                       return_tensors="pt", padding=True)
            assert (enc["attention_mask"] == 0).any()  # one row really is padded
            res[side] = dl.AnswerCalibrator(model, proc, **kw).score(enc)
    finally:
        proc.tokenizer.padding_side = "left"
    # reference: each row alone, unpadded, its last position
    alone = []
    for i, t in enumerate(texts):
        one = make_inputs(name, [t], [1 + i])
        with torch.no_grad():
            alone.append(_manual_label_probs(model(**one).logits[0, -1], ids))
    alone = torch.stack(alone)
    for side in ("left", "right"):
        assert torch.allclose(res[side].probs, alone, atol=1e-5), side
    assert torch.allclose(res["right"].calibrated, res["left"].calibrated, atol=1e-5)
