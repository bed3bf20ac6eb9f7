"""Per-model statistics UDDIA needs, measured once per model and kept in memory (``model_stats``).

* **Site activation RMS** (``site_rms``): for every offset site, sqrt(mean(out²)) of its output over the real
  tokens of a few built-in sentences (the first position of each row left out: many decoders park a huge
  "attention sink" activation there). With ``step_scale="rms"`` a site's step is ``lr`` x its RMS, so one step
  moves every site by the same *relative* amount on any decoder (GPT-2 bias sites, Llama RMSNorm outputs
  with RMS ~0.2 alike).
* **Embedding frame** (``frame``): the vocabulary mean and top principal directions of the input embeddings
  (``core.EmbeddingFrame``), for the debias term's cosines.
* **Token prior** (``token_prior``): the model's next-token distribution averaged over the positions of the
  built-in texts, the token frequencies that weight the debias term's group token distributions q_a (the
  reference weights them by OpenWebText counts, which are not available offline).
* **Plain perplexity** (``plain_perplexities``): the conditional perplexity of the model's own plain samples
  on built-in prompts, under the caller's decoding settings (sampling, top-p/k, temperature, length), for the
  derived redo threshold. Kept per settings.

The cache is keyed by the model object (a weak reference: it goes with the model), so a fine-tuned copy that
shares the embedding fingerprint never reuses another model's numbers.
"""

from __future__ import annotations

import math
import weakref

import torch

from ...core import uddia as core

CALIBRATION_TEXTS = (
    "The committee met on Tuesday to review the budget, and most members agreed that the new library should "
    "open before the end of the year.",
    "She packed her bag, checked the train times twice, and called her brother to say she would be late.",
    "Honestly, I was furious when the delivery arrived broken, but the shop replaced it without any fuss.",
    "In 1998 the river flooded the lower town; the old bridge survived, although the mill did not.",
)
# Neutral openings for the plain-perplexity reference (not in the evaluation prompt sets).
REFERENCE_PROMPTS = (
    "The weather this morning was", "After dinner we decided to", "My neighbour told me that",
    "The best part of the trip was", "When the meeting ended, everyone", "I have always wanted to learn",
    "The old house at the end of the street", "Yesterday at the station a man",
)
REFERENCE_SAMPLES = 4  # per prompt
REFERENCE_MAX_TOKENS = 32

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelStats:
    def __init__(self) -> None:
        self.site_rms: dict[str, float] | None = None
        self.frame: core.EmbeddingFrame | None = None
        self.prior: torch.Tensor | None = None
        self.plain: dict[tuple, list[float]] = {}


def model_stats(model) -> ModelStats:
    st = _CACHE.get(model)
    if st is None:
        st = _CACHE[model] = ModelStats()
    return st


def _encode(tokenizer, texts, device, add_special_tokens=True):
    from ...hf.base import encode_left_padded

    return encode_left_padded(tokenizer, list(texts), add_special_tokens=add_special_tokens, device=device)


@torch.no_grad()
def measure_site_rms(model, tokenizer, sites, final) -> dict[str, float]:
    """sqrt(mean(out²)) of every site's output over the calibration tokens (position 0 of each row excluded)."""
    device = getattr(model, "device", None)
    enc = _encode(tokenizer, CALIBRATION_TEXTS, device)
    mask = enc["attention_mask"]
    keep = mask.clone()
    first = mask.float().argmax(-1)  # left padding: the first real position of each row
    keep[torch.arange(mask.shape[0]), first] = 0
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    handles = []

    def make(name):
        def hook(_m, _i, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.dim() != 3 or out.shape[:2] != keep.shape:
                return
            k = keep.to(out.device).unsqueeze(-1).to(torch.float32)
            sums[name] = sums.get(name, 0.0) + float((out.float() ** 2 * k).sum())
            counts[name] = counts.get(name, 0) + int(k.sum()) * out.shape[-1]
        return hook

    try:
        for s in [*sites, final]:
            handles.append(s.module.register_forward_hook(make(s.name)))
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {name: math.sqrt(sums[name] / counts[name]) if counts.get(name) else 1.0 for name in
            [s.name for s in [*sites, final]]}


@torch.no_grad()
def measure_token_prior(model, tokenizer, vocab_size: int) -> torch.Tensor:
    """The model's own token frequencies: its next-token distribution averaged over every real position of the
    calibration texts and reference prompts ``[V]`` (the offline stand-in for the reference's OpenWebText counts)."""
    device = getattr(model, "device", None)
    enc = _encode(tokenizer, [*CALIBRATION_TEXTS, *REFERENCE_PROMPTS], device)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=False).logits
    p = torch.softmax(logits[..., :vocab_size].float(), -1)
    m = mask.unsqueeze(-1).to(p.dtype)
    return ((p * m).sum((0, 1)) / m.sum()).cpu()


def token_prior(model, tokenizer, vocab_size: int) -> torch.Tensor:
    st = model_stats(model)
    if st.prior is None:
        st.prior = measure_token_prior(model, tokenizer, vocab_size)
    return st.prior


def site_rms(model, tokenizer, sites, final) -> dict[str, float]:
    st = model_stats(model)
    if st.site_rms is None:
        st.site_rms = measure_site_rms(model, tokenizer, sites, final)
    return st.site_rms


def embedding_frame(model, vocab_size: int) -> core.EmbeddingFrame:
    st = model_stats(model)
    if st.frame is None:
        st.frame = core.EmbeddingFrame(model.get_input_embeddings().weight.detach()[:vocab_size])
    return st.frame


def plain_perplexities(model, tokenizer, gen: dict, perplexity_fn) -> list[float]:
    """Perplexities of the model's plain samples on ``REFERENCE_PROMPTS`` (``REFERENCE_SAMPLES`` each) under the
    decoding settings ``gen`` (length capped at ``REFERENCE_MAX_TOKENS``); seeded, the caller's RNG untouched."""
    key = (gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"],
           min(gen["max_new_tokens"], REFERENCE_MAX_TOKENS))
    st = model_stats(model)
    if key not in st.plain:
        device = getattr(model, "device", None)
        prompts = [p for p in REFERENCE_PROMPTS for _ in range(REFERENCE_SAMPLES if gen["do_sample"] else 1)]
        enc = _encode(tokenizer, prompts, device)
        kw = {"max_new_tokens": key[4], "do_sample": gen["do_sample"], "pad_token_id": gen["pad"]}
        if gen["do_sample"]:
            kw.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"])
        devices = [device] if device is not None and getattr(device, "type", "cpu") == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            out = model.generate(**enc, **kw)
        new = out[:, enc["input_ids"].shape[1]:]
        eos = set(gen["eos"])
        new_mask = torch.ones_like(new)
        for r in range(new.shape[0]):  # tokens after the first EOS are padding
            for j, t in enumerate(new[r].tolist()):
                if t in eos:
                    new_mask[r, j + 1:] = 0
                    break
        ppl = perplexity_fn(enc["input_ids"], enc["attention_mask"], new, new_mask)
        st.plain[key] = [float(x) for x in ppl]
    return st.plain[key]
