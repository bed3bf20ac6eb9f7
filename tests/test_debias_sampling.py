"""Debias sampling processor (text LLM path) vs an independent cache-free reference loop."""

import pytest
import torch

from debias_lm.hf.debias_sampling import DebiasSamplingLogitsProcessor


def _reference(model, cond, uncond, alpha, beta, n, eos=None, penalty=1.0, ngram=0):
    """Recompute both branches from scratch every step; plausibility rule in probability space. ``eos`` banned
    (min_new_tokens), the repetition ``penalty`` and the ``ngram`` ban act on the conditional scores (of the
    conditional sequence) only; the counterfactual branch gives raw logits."""
    c, u = list(cond), list(uncond)
    for _ in range(n):
        with torch.no_grad():
            lc = model(input_ids=torch.tensor([c])).logits[0, -1].double()
            lu = model(input_ids=torch.tensor([u])).logits[0, -1].double()
        if eos is not None:
            lc[eos] = float("-inf")  # min_new_tokens, applied by generate to the conditional scores
        if penalty != 1.0:
            for t in set(c):  # HF's repetition penalty: divide positive logits, multiply negative ones
                lc[t] = lc[t] / penalty if lc[t] > 0 else lc[t] * penalty
        if ngram:
            for i in range(len(c) - ngram + 1):  # no n-gram of the sequence may occur twice
                g = c[i : i + ngram]
                if g[:-1] == c[len(c) - ngram + 1 :]:
                    lc[g[-1]] = float("-inf")
        pc = torch.softmax(lc, -1)
        s = (1 + alpha) * lc - alpha * lu
        s[pc < beta * pc.max()] = float("-inf")
        t = int(s.argmax())
        c.append(t)
        u.append(t)
    return c[len(cond):]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_greedy_matches_cache_free_reference(request, which):
    model, tok = request.getfixturevalue(which)
    cond = tok("The nurse said that")["input_ids"]
    uncond = tok("Men are better. The nurse said that")["input_ids"]
    n = 10
    proc = DebiasSamplingLogitsProcessor(model, torch.tensor([uncond]), alpha=1.5, beta=0.05)
    x = torch.tensor([cond])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), logits_processor=[proc], do_sample=False,
                         max_new_tokens=n, min_new_tokens=n)
    assert out[0, len(cond):].tolist() == _reference(model, cond, uncond, 1.5, 0.05, n, tok.eos_token_id)


def test_batch_with_left_padding_equals_rows_alone(tiny_llama):
    model, tok = tiny_llama
    conds = ["The nurse said that", "Yesterday the chief executive of the firm said that"]
    unconds = ["He is a man. The nurse said that", "She is a woman. Yesterday the chief executive said that"]
    enc = tok(conds, return_tensors="pt", padding=True)
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, unconds, alpha=1.0, beta=0.1)
    batched = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=8, min_new_tokens=8)
    for i in range(2):
        e = tok([conds[i]], return_tensors="pt")
        p = DebiasSamplingLogitsProcessor.from_texts(model, tok, [unconds[i]], alpha=1.0, beta=0.1)
        alone = model.generate(**e, logits_processor=[p], do_sample=False, max_new_tokens=8, min_new_tokens=8)
        assert batched[i, -8:].tolist() == alone[0, -8:].tolist()
    # the same processor object is reusable: a second generate() call resets its state
    again = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(again, batched)


def test_alpha_zero_is_plain_greedy_and_alpha_changes_output(tiny_llama):
    model, tok = tiny_llama
    enc = tok(["The nurse said that", "A pilot"], return_tensors="pt", padding=True)
    plain = model.generate(**enc, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    p0 = DebiasSamplingLogitsProcessor.from_texts(model, tok, ["x y z", "q"], alpha=0.0, beta=0.1)
    assert torch.equal(model.generate(**enc, logits_processor=[p0], do_sample=False, max_new_tokens=8,
                                      min_new_tokens=8), plain)
    p3 = DebiasSamplingLogitsProcessor.from_texts(model, tok, ["x y z", "q"], alpha=3.0, beta=1e-4)
    strong = model.generate(**enc, logits_processor=[p3], do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert not torch.equal(strong, plain)


def test_sampling_runs_and_respects_cutoff(tiny_llama):
    model, tok = tiny_llama
    enc = tok(["The nurse said that"], return_tensors="pt")
    proc = DebiasSamplingLogitsProcessor.from_texts(model, tok, ["The man said that"], alpha=1.0, beta=1.0)
    torch.manual_seed(0)
    sampled = model.generate(**enc, logits_processor=[proc], do_sample=True, max_new_tokens=6, min_new_tokens=6)
    greedy = model.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(sampled, greedy)  # beta = 1 leaves only the conditional argmax, even when sampling


def test_bad_input(tiny_llama):
    model, tok = tiny_llama
    ids = torch.tensor([[5, 6, 7]])
    for kw, msg in [(dict(alpha=-1.0), "alpha=-1.0"), (dict(beta=0.0), "beta=0.0"), (dict(beta=2), "beta=2")]:
        with pytest.raises(ValueError, match=msg):
            DebiasSamplingLogitsProcessor(model, ids, **kw)
    with pytest.raises(ValueError, match="left-padded"):
        DebiasSamplingLogitsProcessor(model, torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="non-empty"):
        DebiasSamplingLogitsProcessor.from_texts(model, tok, [" "])
    proc = DebiasSamplingLogitsProcessor(model, ids)
    enc = tok(["hello"], return_tensors="pt")
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**enc, logits_processor=[proc], num_beams=2, do_sample=False, max_new_tokens=2)


def test_wrap_text_paths_equal_the_processor(tiny_llama):
    import debias_lm as dl
    from debias_lm.words import swap_terms

    model, tok = tiny_llama
    prompts = ["The nurse said that she", "He is a pilot and his"]
    kw = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6)
    enc = tok(prompts, return_tensors="pt", padding=True)

    def direct(cf_texts):
        p = DebiasSamplingLogitsProcessor.from_texts(model, tok, cf_texts, alpha=1.0, beta=0.1)
        return model.generate(**enc, logits_processor=[p], **kw)

    prefix = "Women are weak. "
    w = dl.wrap(model, tok, dl.DebiasSamplingConfig(counterfactual_prefix=prefix))
    assert torch.equal(w.generate(prompts=prompts, **kw), direct([prefix + p for p in prompts]))
    w = dl.wrap(model, tok, dl.DebiasSamplingConfig(counterfactual_swap="gender"))
    swapped = [swap_terms(p) for p in prompts]
    assert swapped == ["The nurse said that he", "She is a pilot and her"]
    assert torch.equal(w.generate(prompts=prompts, **kw), direct(swapped))
    # token-id input: the swap is done on the decoded rows
    assert torch.equal(w.generate(**enc, **kw), direct(swapped))
    # explicit counterfactual contexts
    w = dl.wrap(model, tok, dl.DebiasSamplingConfig())
    assert torch.equal(w.generate(prompts=prompts, counterfactual=["x y", "q"], **kw), direct(["x y", "q"]))
    with pytest.raises(ValueError, match="needs a counterfactual context"):
        w.generate(prompts=prompts, **kw)
    with pytest.raises(ValueError, match="left prompt"):
        dl.wrap(model, tok, dl.DebiasSamplingConfig(counterfactual_swap="gender")).generate(prompts=["A pilot"], **kw)


def test_fused_and_processor_paths_apply_repetition_controls_to_the_conditional_rows_only(tiny_llama):
    import debias_lm as dl

    model, tok = tiny_llama
    prompts = ["The nurse said that the", "The engineer"]
    cfg = dict(alpha=1.0, beta=0.05, counterfactual_prefix="Men are better. ")
    kw = dict(do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=2, max_new_tokens=12,
              min_new_tokens=12, pad_token_id=tok.pad_token_id)
    fused = dl.wrap(model, tok, dl.DebiasSamplingConfig(**cfg)).generate(prompts=prompts, chat=False, **kw)
    unfused = dl.wrap(model, tok, dl.DebiasSamplingConfig(**cfg, fused=False)).generate(prompts=prompts, chat=False,
                                                                                        **kw)
    assert torch.equal(fused, unfused)
    for i, p in enumerate(prompts):
        cond = tok(p)["input_ids"]
        uncond = tok("Men are better. " + p)["input_ids"]
        want = _reference(model, cond, uncond, 1.0, 0.05, 12, penalty=1.3, ngram=2)
        assert fused[i, -12:].tolist() == want
