"""VLM debias sampling (VDD) on tiny random LLaVA / Qwen2-VL / Idefics3 vs a cache-free reference loop."""

from __future__ import annotations

import types
from functools import cache

import pytest
import torch

import debias_lm as dl
from debias_lm.hf.debias_sampling import DebiasSamplingLogitsProcessor
from debias_lm.hf.image_free import image_free_inputs, image_spans
from debias_lm.testing import (
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    tiny_image,
)

BUILDERS = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl, "qwen2_5_vl": build_tiny_qwen2_5_vl,
            "idefics3": build_tiny_idefics3}
N = 10  # new tokens: Qwen2-VL's step-2 position regression is well inside


@cache
def built(name):
    return BUILDERS[name](seed=0)


def prompt(proc, text):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def make_inputs(name, texts, seeds):
    model, proc = built(name)
    proc.tokenizer.padding_side = "left"
    return proc(text=[prompt(proc, t) for t in texts], images=[tiny_image(32, seed=s) for s in seeds],
                return_tensors="pt", padding=True)


def _extend(inputs, new):
    """The model inputs of ``inputs`` with tokens ``new`` appended (batch 1, no padding): no cache is used."""
    out = dict(inputs)
    ids = torch.cat([inputs["input_ids"], torch.tensor([new], dtype=torch.long)], 1)
    out["input_ids"], out["attention_mask"] = ids, torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:
        t = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([t, torch.zeros((1, len(new)), dtype=t.dtype)], 1)
    return out


def reference(model, inputs, branches, alpha, beta, n, eos):
    """Recompute the conditional and every unconditional branch from scratch at each step (no caches, the
    model's own position handling); average the unconditional logits; APC in probability space."""
    new: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            lc = model(**_extend(inputs, new)).logits[0, -1].double()
            lu = torch.stack([model(**_extend(b, new)).logits[0, -1].double() for b in branches]).mean(0)
        lc[eos] = float("-inf")  # min_new_tokens, as generate applies it
        pc = torch.softmax(lc, -1)
        s = (1 + alpha) * lc - alpha * lu
        s[pc < beta * pc.max()] = float("-inf")
        new.append(int(s.argmax()))
    return new


REFERENCE_CASES = [(n, v) for n in ("llava", "qwen2_vl") for v in ("none", "unk", "noise", "none+unk")] + [
    (n, v) for n in ("qwen2_5_vl", "idefics3") for v in ("none", "noise")]


@pytest.mark.parametrize(("name", "variant"), REFERENCE_CASES)
def test_greedy_matches_cache_free_reference(name, variant):
    model, proc = built(name)
    inputs = make_inputs(name, ["Is there a cat in the picture?"], [0])
    alpha, beta = 1.0, 0.01
    proc_ = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=alpha, beta=beta, variant=variant)
    out = model.generate(**inputs, logits_processor=[proc_], do_sample=False, max_new_tokens=N, min_new_tokens=N)
    got = out[0, inputs["input_ids"].shape[1]:].tolist()
    branches = [image_free_inputs(model, proc, inputs, v) for v in variant.split("+")]
    want = reference(model, inputs, branches, alpha, beta, N, model.generation_config.eos_token_id)
    assert got == want
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    if variant != "noise":  # the text-only contrast does change the tiny models' greedy output
        assert plain[0, inputs["input_ids"].shape[1]:].tolist() != got


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_batch_of_two_left_padded_equals_rows_alone(name):
    model, proc = built(name)
    texts = ["Is there a cat?", "Is there a small red square in the upper left part of this picture?"]
    batch = make_inputs(name, texts, [1, 2])
    assert (batch["attention_mask"][0] == 0).any()  # row 0 really is left-padded
    p = DebiasSamplingLogitsProcessor.from_inputs(model, proc, batch, alpha=1.0, beta=0.05, variant="none+unk")
    out = model.generate(**batch, logits_processor=[p], do_sample=False, max_new_tokens=N, min_new_tokens=N)
    for i in range(2):
        alone = make_inputs(name, [texts[i]], [1 + i])
        pa = DebiasSamplingLogitsProcessor.from_inputs(model, proc, alone, alpha=1.0, beta=0.05, variant="none+unk")
        o = model.generate(**alone, logits_processor=[pa], do_sample=False, max_new_tokens=N, min_new_tokens=N)
        assert out[i, -N:].tolist() == o[0, -N:].tolist()


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_alpha_zero_equals_plain_generation_and_wrap_matches_processor(name):
    model, proc = built(name)
    inputs = make_inputs(name, ["What colour is the shape?", "Is there a dog?"], [3, 4])
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    p0 = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=0.0, beta=0.1)
    assert torch.equal(model.generate(**inputs, logits_processor=[p0], do_sample=False, max_new_tokens=N,
                                      min_new_tokens=N), plain)
    cfg = dl.DebiasSamplingConfig(alpha=1.0, beta=0.05, variant="unk")
    wrapped = dl.wrap(model, proc, cfg).generate(**inputs, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    p1 = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=1.0, beta=0.05, variant="unk")
    direct = model.generate(**inputs, logits_processor=[p1], do_sample=False, max_new_tokens=N, min_new_tokens=N)
    assert torch.equal(wrapped, direct)


def test_sampling_runs_and_beta_one_keeps_only_the_argmax():
    model, proc = built("qwen2_vl")
    inputs = make_inputs("qwen2_vl", ["Is there a cat?"], [0])
    p = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=2.0, beta=1.0)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, logits_processor=[p], do_sample=True, max_new_tokens=6, min_new_tokens=6)
    greedy = model.generate(**inputs, do_sample=False, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(sampled, greedy)


def test_bad_input_raises_before_generation(tiny_llama):
    model, proc = built("llava")
    inputs = make_inputs("llava", ["Is there a cat?"], [0])
    text_only = proc(text=["<|im_start|>user\nIs there a cat?<|im_end|>\n"], return_tensors="pt")
    with pytest.raises(ValueError, match="no image tokens"):
        DebiasSamplingLogitsProcessor.from_inputs(model, proc, text_only)
    for kw, msg in [(dict(alpha=-0.5), "alpha=-0.5"), (dict(beta=0.0), "beta=0.0"), (dict(beta=1.5), "beta=1.5")]:
        with pytest.raises(ValueError, match=msg):
            DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, **kw)
    with pytest.raises(ValueError, match="variant='blur'"):
        DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, variant="blur")
    with pytest.raises(ValueError, match="alpha=-1"):
        dl.DebiasSamplingConfig(alpha=-1)
    with pytest.raises(ValueError, match="beta=0"):
        dl.DebiasSamplingConfig(beta=0)
    wrapped = dl.wrap(model, proc, dl.DebiasSamplingConfig())
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="num_beams=1"):
            wrapped.generate(**inputs, num_beams=2, max_new_tokens=4)
        with pytest.raises(ValueError, match="no image tokens"):
            wrapped.generate(**text_only, max_new_tokens=4)
    finally:
        handle.remove()
    assert calls == []  # refused before any forward pass
    right = dict(inputs)
    right["attention_mask"] = torch.cat([inputs["attention_mask"][:, 1:], torch.zeros((1, 1), dtype=torch.long)], 1)
    with pytest.raises(ValueError, match="left-padded"):
        DebiasSamplingLogitsProcessor.from_inputs(model, proc, right)
    # a text-only LLM and an unsupported VLM architecture are named
    llm, tok = tiny_llama
    with pytest.raises(ValueError, match="text-only model"):
        DebiasSamplingLogitsProcessor.from_inputs(llm, tok, tok(["hi"], return_tensors="pt"))
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="paligemma", vision_config=object()))
    with pytest.raises(ValueError, match="model_type='paligemma'.*supported model types"):
        DebiasSamplingLogitsProcessor.from_inputs(fake, proc, inputs)


def _fake(model_type, **ids):
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type, vision_config=object(), **ids))


class _Vocab:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


def test_image_spans_for_other_families():
    # LLaVA-NeXT: expanded image tokens (incl. the image-newline positions) are one run
    m = _fake("llava_next", image_token_index=7)
    assert image_spans(m, _Vocab({}), [1, 2, 7, 7, 7, 7, 3, 7, 7, 4]) == [(2, 6), (7, 9)]
    # Qwen2.5-VL: <|vision_start|> ... <|vision_end|>
    m = _fake("qwen2_5_vl", vision_start_token_id=90, vision_end_token_id=91)
    assert image_spans(m, _Vocab({}), [1, 90, 5, 5, 91, 2, 90, 5, 91]) == [(1, 5), (6, 9)]
    # Gemma3: <start_of_image> ... <end_of_image>
    m = _fake("gemma3", boi_token_index=255999, eoi_token_index=256000)
    assert image_spans(m, _Vocab({}), [2, 10, 255999, 9, 9, 256000, 11]) == [(2, 6)]
    # SmolVLM / Idefics3 with image splitting: tiles separated by newlines are one block
    vocab = {"<fake_token_around_image>": 50, "<row_1_col_1>": 51, "<row_1_col_2>": 52, "<global-img>": 53,
             "Ċ": 10, "<image>": 49}
    m = _fake("smolvlm", image_token_id=49)
    ids = [1, 50, 51, 49, 49, 50, 52, 49, 49, 10, 10, 50, 53, 49, 49, 50, 10, 20, 21]
    assert image_spans(m, _Vocab(vocab), ids) == [(1, 16)]


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("variant", ["none", "none+unk"])
def test_fused_twin_rows_equal_the_two_forward_processor(name, variant):
    model, proc = built(name)
    texts = ["Is there a cat?", "Is there a small red square in the upper left part of this picture?"]
    inputs = make_inputs(name, texts, [5, 6])
    kw = dict(max_new_tokens=N, min_new_tokens=N)
    fused = dl.wrap(model, proc, dl.DebiasSamplingConfig(alpha=1.0, beta=0.05, variant=variant))
    p = DebiasSamplingLogitsProcessor.from_inputs(model, proc, inputs, alpha=1.0, beta=0.05, variant=variant)
    greedy = fused.generate(**inputs, do_sample=False, **kw)
    assert greedy.shape == (2, inputs["input_ids"].shape[1] + N)
    assert torch.equal(greedy, model.generate(**inputs, logits_processor=[p], do_sample=False, **kw))
    # sampling with temperature / top-k / top-p: the same draws as generate's own sampler
    samp = dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    torch.manual_seed(123)
    a = fused.generate(**inputs, **samp, **kw)
    torch.manual_seed(123)
    b = model.generate(**inputs, logits_processor=[p], **samp, **kw)
    assert torch.equal(a, b)
    unfused = dl.wrap(model, proc, dl.DebiasSamplingConfig(alpha=1.0, beta=0.05, variant=variant, fused=False))
    assert torch.equal(unfused.generate(**inputs, do_sample=False, **kw), greedy)


def _early_eos(gen, inputs, kw, n_prompt):
    """A token that row 0 emits at its 4th step: used as EOS, row 0 stops there while the other row goes on."""
    out = gen(**inputs, **kw)
    return int(out[0, n_prompt + 3])


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("variant", ["none", "none+unk"])
def test_fused_equals_processor_with_repetition_controls_and_early_stop(name, variant):
    """repetition_penalty / no_repeat_ngram_size belong to the conditional scores only (the processor path gives
    the image-free branch raw logits); rows that stop early stop at the same step in both paths."""
    model, proc = built(name)
    texts = ["Is there a cat?", "Is there a small red square in the upper left part of this picture?"]
    inputs = make_inputs(name, texts, [5, 6])
    n_prompt = inputs["input_ids"].shape[1]
    cfg = dict(alpha=1.0, beta=0.05, variant=variant)
    fused = dl.wrap(model, proc, dl.DebiasSamplingConfig(**cfg))
    unfused = dl.wrap(model, proc, dl.DebiasSamplingConfig(**cfg, fused=False))
    rep = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, do_sample=False)
    eos = _early_eos(unfused.generate, inputs, dict(**rep, max_new_tokens=N, min_new_tokens=N), n_prompt)
    pad = proc.tokenizer.pad_token_id
    kw = dict(**rep, max_new_tokens=N, min_new_tokens=2, eos_token_id=eos, pad_token_id=pad)
    a = unfused.generate(**inputs, **kw)
    b = fused.generate(**inputs, **kw)
    new0 = a[0, n_prompt:].tolist()
    assert eos in new0 and new0.index(eos) < N - 1  # row 0 really stopped early, then padded
    assert torch.equal(a, b)
    # seeded sampling with the same controls
    samp = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, do_sample=True, temperature=0.8, top_k=20,
                max_new_tokens=N, min_new_tokens=2, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(5)
    a = unfused.generate(**inputs, **samp)
    torch.manual_seed(5)
    assert torch.equal(fused.generate(**inputs, **samp), a)
