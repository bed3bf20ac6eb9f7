"""``steer``: hooked generation against a hand-edited model (a wrapper module written here adds the vector to the
decoder-layer output) decoded by a cache-free greedy loop, on tiny GPT-2 and tiny Llama; plain rows bit-identical to
``model.generate``; ``steer build`` against the mean difference computed here from ``output_hidden_states``; peft
LoRA and bitsandbytes 8-bit models; every bad input refused before generation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import debias_lm as dl
from debias_lm.errors import UserInputError
from debias_lm.utils.fingerprint import model_fingerprint
from debias_lm.utils.steer_file import FORMAT, SteerFile

PROMPTS = ["The nurse said that", "Yesterday the chief executive of the small firm told us", "A pilot"]
NEW = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request):
    from debias_lm.testing import build_tiny_gpt2, build_tiny_llama

    model, tok = (build_tiny_gpt2 if request.param == "gpt2" else build_tiny_llama)(num_layers=4)
    return request.param, model, tok


def _layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def _meta(model, **extra):
    meta = {"format": FORMAT, "site_kind": "residual", "model_name": "tiny", "model_fingerprint": model_fingerprint(model),
            "hidden_size": int(model.config.hidden_size), "num_layers": len(_layers(model)),
            "model_type": model.config.model_type, "recipe": "caa", "attribute": "test",
            "provenance": {"data": "random vectors written by the test"}, "suggested_scale": 1.0}
    meta.update(extra)
    return meta


def _random_vectors(model, layers=(1, 2), seed=0, norm=4.0):
    g = torch.Generator().manual_seed(seed)
    d = int(model.config.hidden_size)
    out = {}
    for layer in layers:
        v = torch.randn(d, generator=g)
        out[layer] = v / v.norm() * norm
    return out


def _save(tmp_path, model, vectors: dict[int, torch.Tensor], name="v.safetensors", **meta) -> str:
    path = tmp_path / name
    SteerFile({f"layers.{k}": v for k, v in vectors.items()}, _meta(model, **meta)).save(path)
    return str(path)


def _enc(tok, prompts=PROMPTS):
    old = tok.padding_side
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    tok.padding_side = old
    assert (enc["attention_mask"] == 0).any()  # really left padded
    return enc


class HandEdited(nn.Module):
    """A decoder layer whose output gets ``s_b * v`` added (row b; absolute columns >= first_col) or, with
    ``ablate``, loses its component along v / |v| — written out per row, independent of the library's code."""

    def __init__(self, layer, v, scales, first_col=0, ablate=False):
        super().__init__()
        self.layer, self.v, self.scales, self.first_col, self.ablate = layer, v, list(scales), first_col, ablate

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h2 = h.clone()
        for b, s in enumerate(self.scales):
            if s == 0:
                continue
            for t in range(self.first_col, h.shape[1]):
                if self.ablate:
                    u = self.v / self.v.norm()
                    x = h[b, t].float()
                    h2[b, t] = (x - torch.dot(x, u) * u).to(h.dtype)
                else:
                    h2[b, t] = h[b, t] + (s * self.v).to(h.dtype)
        return (h2, *out[1:]) if isinstance(out, tuple) else h2


class edited:  # noqa: N801 (a context manager used like a function)
    """Replace decoder layers by :class:`HandEdited` wrappers in place; restored on exit."""

    def __init__(self, model, vectors, scales, first_col=0, ablate=False):
        self.layers, self.vectors, self.args = _layers(model), vectors, (scales, first_col, ablate)

    def __enter__(self):
        self.saved = {k: self.layers[k] for k in self.vectors}
        for k, v in self.vectors.items():
            self.layers[k] = HandEdited(self.layers[k], v, *self.args)

    def __exit__(self, *exc):
        for k, layer in self.saved.items():
            self.layers[k] = layer


@torch.no_grad()
def greedy_no_cache(model, enc, n, ban=None):
    """Greedy decoding by re-running the whole sequence every step (no KV cache); raw logits per step."""
    seq, mask = enc["input_ids"], enc["attention_mask"]
    steps = []
    for _ in range(n):
        pos = mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 1)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()
        steps.append(logits)
        pick = logits.clone()
        if ban is not None:
            pick[:, ban] = -math.inf
        nxt = pick.argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return seq, torch.stack(steps, 1)


def _steered(w, enc, scales, use_cache=True):
    out = w.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                     return_dict_in_generate=True, steer_scales=scales, use_cache=use_cache)
    return out.sequences, torch.stack(out.logits, 1).float()


# -- the equality with a hand-edited model ---------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["all", "generated"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_steered_logits_equal_hand_edited_model(tiny, tmp_path, positions, use_cache):
    _, model, tok = tiny
    vecs = _random_vectors(model)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), scale=1.0, positions=positions))
    enc = _enc(tok)
    scales = [0.0, 2.5, -4.0]
    seqs, logits = _steered(w, enc, scales, use_cache)
    P = enc["input_ids"].shape[1]
    with edited(model, vecs, scales, first_col=P if positions == "generated" else 0):
        ref_seqs, ref_logits = greedy_no_cache(model, enc, NEW, ban=tok.eos_token_id)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)
    # the vectors really change the steered rows
    plain = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    plain_logits = torch.stack(plain.logits, 1).float()
    assert (logits[1:] - plain_logits[1:]).abs().max() > 1e-2
    if positions == "generated":  # the prompt is unsteered, so the first new token's logits are plain ones
        torch.testing.assert_close(logits[:, 0], plain_logits[:, 0], atol=2e-5, rtol=1e-5)
    # the plain row is bit-identical to the model's own generate of the same batch
    assert torch.equal(seqs[0], plain.sequences[0])
    if use_cache:
        assert torch.equal(logits[0], plain_logits[0])


def test_steered_generate_with_cache_equals_hand_edited_generate(tiny, tmp_path):
    """positions=all: the hand-edited model's own cached ``generate`` gives the same tokens and logits."""
    _, model, tok = tiny
    vecs = _random_vectors(model, layers=(0, 3), seed=1)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), scale=3.0))
    enc = _enc(tok)
    seqs, logits = _steered(w, enc, None)
    with edited(model, vecs, [3.0] * len(PROMPTS)):
        ref = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    assert torch.equal(seqs, ref.sequences)
    torch.testing.assert_close(logits, torch.stack(ref.logits, 1).float(), atol=1e-5, rtol=1e-5)


def test_ablate_equals_hand_edited_projection(tiny, tmp_path):
    _, model, tok = tiny
    vecs = _random_vectors(model, layers=(1,), seed=2)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), mode="ablate"))
    enc = _enc(tok)
    scales = [1.0, 0.0, 1.0]
    seqs, logits = _steered(w, enc, scales)
    with edited(model, vecs, scales, ablate=True):
        ref_seqs, ref_logits = greedy_no_cache(model, enc, NEW, ban=tok.eos_token_id)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)


def test_layers_field_selects_a_subset(tiny, tmp_path):
    _, model, tok = tiny
    vecs = _random_vectors(model, layers=(1, 2), seed=3)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), scale=2.0, layers=(2,)))
    enc = _enc(tok)
    seqs, logits = _steered(w, enc, None)
    with edited(model, {2: vecs[2]}, [2.0] * 3):
        ref_seqs, ref_logits = greedy_no_cache(model, enc, NEW, ban=tok.eos_token_id)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)


def test_uddia_site_offsets_equal_hand_edited_site_outputs(tiny, tmp_path):
    """A ``uddia_sites`` file: the offsets go to the named modules' outputs (checked on a bias site of each model)."""
    kind, model, tok = tiny
    names = (["transformer.h.2.attn.c_proj", "transformer.h.3.mlp.c_fc"] if kind == "gpt2"
             else ["model.layers.2.self_attn.o_proj", "model.layers.3.mlp.up_proj"])
    g = torch.Generator().manual_seed(4)
    base = dict(model.named_modules())
    mods = {n: base[n] for n in names}
    width = {n: (m.nf if hasattr(m, "nf") else m.out_features) for n, m in mods.items()}
    vecs = {n: torch.randn(width[n], generator=g) for n in names}
    path = tmp_path / "sites.safetensors"
    SteerFile({f"sites.{n}": v for n, v in vecs.items()}, _meta(model, site_kind="uddia_sites",
                                                               recipe="uddia-distill-mean")).save(path)
    scale = 1.5
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=str(path), scale=scale))
    enc = _enc(tok)
    seqs, logits = _steered(w, enc, [scale, 0.0, scale])

    class AddSite(nn.Module):
        def __init__(self, mod, v):
            super().__init__()
            self.mod, self.v = mod, v

        def forward(self, x):
            y = self.mod(x)
            y2 = y.clone()
            for b, s in enumerate([scale, 0.0, scale]):
                if s:
                    y2[b] = y[b] + s * self.v
            return y2

    parents = {n: model.get_submodule(n.rpartition(".")[0]) for n in names}
    try:
        for n in names:
            setattr(parents[n], n.rpartition(".")[2], AddSite(mods[n], vecs[n]))
        ref_seqs, ref_logits = greedy_no_cache(model, enc, NEW, ban=tok.eos_token_id)
    finally:
        for n in names:
            setattr(parents[n], n.rpartition(".")[2], mods[n])
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)


def test_sampled_plain_rows_and_all_plain_batches_are_bit_identical(tiny, tmp_path):
    _, model, tok = tiny
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, _random_vectors(model)), scale=5.0))
    enc = _enc(tok)
    kw = dict(max_new_tokens=8, do_sample=True, top_k=0, temperature=1.2)
    torch.manual_seed(7)
    plain = model.generate(**enc, **kw)
    torch.manual_seed(7)
    mixed = w.generate(**enc, steer_scales=[0.0, 5.0, 0.0], **kw)
    assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[2], plain[2])
    torch.manual_seed(7)
    assert torch.equal(w.generate(**enc, steer_scales=[0, 0, 0], **kw), plain)
    assert torch.equal(dl.wrap(model, tok, dl.SteerConfig(vectors=w.config.vectors, scale=0.0)).generate(
        **enc, max_new_tokens=5, do_sample=False), model.generate(**enc, max_new_tokens=5, do_sample=False))
    # hooks are gone after generate: a plain forward is the model's own
    x = enc["input_ids"][:1]
    assert all(not _layers(model)[k]._forward_hooks for k in range(len(_layers(model))))
    torch.testing.assert_close(model(x).logits, model(x).logits)


def test_beam_rows_inherit_their_prompt_scale(tiny, tmp_path):
    _, model, tok = tiny
    vecs = _random_vectors(model, seed=5)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), scale=2.0))
    enc = _enc(tok, PROMPTS[:2])
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=2, num_return_sequences=2)
    out = w.generate(**enc, steer_scales=[0.0, 2.0], **kw)  # beams: 4 rows in the model for 2 prompts
    plain = model.generate(**enc, **kw)
    steered = w.generate(**enc, **kw)  # every row at the config's scale 2
    assert torch.equal(out[:2], plain[:2])  # prompt 0's two rows are plain
    assert torch.equal(out[2:], steered[2:]) and not torch.equal(steered[2:], plain[2:])


# -- peft LoRA and bitsandbytes 8-bit --------------------------------------------------------------------------
def test_peft_lora_model_is_steered_like_a_hand_edited_one(tmp_path):
    peft = pytest.importorskip("peft")
    from debias_lm.testing import build_tiny_llama

    base, tok = build_tiny_llama(seed=3, num_layers=4)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False)).eval()
    vecs = _random_vectors(base, seed=6)
    w = dl.wrap(pm, tok, dl.SteerConfig(vectors=_save(tmp_path, base, vecs), scale=3.0))
    enc = _enc(tok)
    seqs, logits = _steered(w, enc, [3.0, 0.0, 3.0])
    with edited(base, vecs, [3.0, 0.0, 3.0]):
        ref_seqs, ref_logits = greedy_no_cache(pm, enc, NEW, ban=tok.eos_token_id)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)
    with pm.disable_adapter():  # the adapter is really active in what was compared
        assert not torch.equal(greedy_no_cache(pm, enc, NEW, ban=tok.eos_token_id)[0], ref_seqs)


def test_bitsandbytes_8bit_model_is_steered_like_a_hand_edited_one(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=BitsAndBytesConfig(
        load_in_8bit=True), device_map="cpu").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert "bitsandbytes" in type(model.model.layers[0].self_attn.q_proj).__module__
    vecs = _random_vectors(model, layers=(0, 1), seed=8)
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, vecs), scale=3.0))
    enc = _enc(tok)
    seqs, logits = _steered(w, enc, [3.0, 0.0, -3.0])
    with edited(model, vecs, [3.0, 0.0, -3.0]):
        ref_seqs, ref_logits = greedy_no_cache(model, enc, NEW, ban=tok.eos_token_id)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    plain = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert torch.equal(seqs[1], plain[1]) and not torch.equal(seqs[0], plain[0])


# -- steer build ---------------------------------------------------------------------------------------------
TOY_PAIRS = [
    {"prompt": "Q: ", "positive": "she said the work was done", "negative": "he said the work was done"},
    {"positive": "my mother and her sister", "negative": "my father and his brother"},
    {"prompt": "The story: ", "positive": "the queen smiled", "negative": "the king smiled at everyone"},
]


def test_build_equals_mean_difference_of_hidden_states(tiny, tmp_path):
    from debias_lm.methods.steer.build import build_file

    _, model, tok = tiny
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in TOY_PAIRS))
    f = build_file(model, tok, pairs, layers="1,2", attribute="gender", batch_size=2)
    path = f.save(tmp_path / "g.safetensors")
    loaded = SteerFile.load(path)
    assert loaded.layers == [1, 2] and loaded.meta["recipe"] == "caa" and loaded.meta["attribute"] == "gender"
    assert loaded.meta["provenance"]["n_pairs"] == 3 and len(loaded.meta["provenance"]["data_sha256"]) == 64

    def last_state(text, layer):  # one text alone, unpadded, via output_hidden_states (index 0 = embeddings)
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        return hs[layer + 1][0, -1].double()

    for layer in (1, 2):
        pos = torch.stack([last_state(p.get("prompt", "") + p["positive"], layer) for p in TOY_PAIRS]).mean(0)
        neg = torch.stack([last_state(p.get("prompt", "") + p["negative"], layer) for p in TOY_PAIRS]).mean(0)
        torch.testing.assert_close(loaded.layer_vectors()[layer].double(), pos - neg, atol=2e-5, rtol=1e-5)


def test_build_cli_writes_a_file_generate_uses(tiny_llama_dir, tmp_path):
    from debias_lm.cli.main import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in TOY_PAIRS))
    out = tmp_path / "v.safetensors"
    assert main(["steer", "build", "--model", str(tiny_llama_dir), "--pairs", str(pairs), "--out", str(out),
                 "--layers", "0,1", "--attribute", "gender", "--ablation", "--no-progress"]) == 0
    f = SteerFile.load(out)
    assert f.layers == [0, 1] and f.meta["recipe"] == "caa-ablation" and f.meta["suggested_mode"] == "ablate"
    assert "steer build" in f.meta["provenance"]["command"]
    assert main(["steer", "info", str(out)]) == 0
    js = tmp_path / "gen.json"
    assert main(["generate", "--method", "steer", "--model", str(tiny_llama_dir), "--no-chat", "--prompt", "The nurse",
                 "--max-new-tokens", "4", "--set", f"vectors={out}", "--set", "scale=4", "--json", str(js)]) == 0
    row = json.loads(js.read_text())["outputs"][0]
    assert row["plain"] != row["debiased"]


# -- bad input: clear errors before any generation ---------------------------------------------------------------
@pytest.fixture()
def no_generate(monkeypatch):
    """Fail the test if any model's generate / forward runs."""
    from transformers import GenerationMixin

    def boom(*a, **k):
        raise AssertionError("generation started")

    monkeypatch.setattr(GenerationMixin, "generate", boom)


def test_vectors_for_another_model_are_refused(tmp_path, no_generate):
    from debias_lm.testing import build_tiny_llama

    model, tok = build_tiny_llama(num_layers=4)
    path = _save(tmp_path, model, _random_vectors(model))
    wider, wtok = build_tiny_llama(num_layers=4, hidden_size=96, num_heads=3)
    with pytest.raises(UserInputError, match="hidden size 64 != 96.*debias-lm steer build"):
        dl.wrap(wider, wtok, dl.SteerConfig(vectors=path))
    shallower, stok = build_tiny_llama(num_layers=2)
    with pytest.raises(UserInputError, match="layer count 4 != 2"):
        dl.wrap(shallower, stok, dl.SteerConfig(vectors=path))
    other, otok = build_tiny_llama(num_layers=4, seed=9)
    with pytest.raises(UserInputError, match="fingerprint differs: another checkpoint"):
        dl.wrap(other, otok, dl.SteerConfig(vectors=path))
    from debias_lm.testing import build_tiny_gpt2

    g, gtok = build_tiny_gpt2(num_layers=4)
    with pytest.raises(UserInputError, match="not for this model"):
        dl.wrap(g, gtok, dl.SteerConfig(vectors=path))


def test_shipped_names_are_for_the_embedded_model_only(tiny_llama, no_generate):
    model, tok = tiny_llama
    for name in ("toxicity", "gender"):
        with pytest.raises(UserInputError, match="SmolLM2|smollm2|hidden size 576"):
            dl.wrap(model, tok, dl.SteerConfig(vectors=name))


def _write_raw(path, tensors, meta):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return str(path)


def test_bad_files_are_refused_before_the_model_loads(tiny_llama, tmp_path):
    model, _ = tiny_llama
    d = int(model.config.hidden_size)
    cases = {
        "nan": ({"layers.1": torch.tensor([math.nan] + [0.0] * (d - 1))}, {}, "1 NaN/inf value"),
        "inf": ({"layers.1": torch.full((d,), math.inf)}, {}, f"{d} NaN/inf value"),
        "layer-out-of-range": ({"layers.7": torch.ones(d)}, {}, r"outside the model's layers 0\.\.1"),
        "wrong-width": ({"layers.1": torch.ones(d + 1)}, {}, f"has {d + 1} values"),
        "mixed-kinds": ({"layers.1": torch.ones(d), "sites.final_norm": torch.ones(d)}, {}, "does not belong"),
        "not-steer": ({"weight": torch.ones(2, d)}, {"format": "debias-lm uddia probe v1"}, "not a debias-lm steering"),
        "no-meta": ({"layers.1": torch.ones(d)}, {"provenance": None}, "provenance must be a JSON object"),
        "bad-kind": ({"layers.1": torch.ones(d)}, {"site_kind": "heads"}, "site_kind='heads' is invalid"),
        "bad-suggested": ({"layers.1": torch.ones(d)}, {"suggested_scale": "NaN"}, "suggested_scale"),
    }
    for name, (tensors, meta, needle) in cases.items():
        path = _write_raw(tmp_path / f"{name}.safetensors", tensors, {**_meta(model), **meta})
        with pytest.raises(UserInputError, match=needle):
            dl.SteerConfig(vectors=path).preflight()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="not a readable safetensors"):
        dl.SteerConfig(vectors=str(junk)).preflight()
    with pytest.raises(UserInputError, match="no such file"):
        dl.SteerConfig(vectors=str(tmp_path / "missing.safetensors")).preflight()
    with pytest.raises(UserInputError, match="neither a file nor a shipped name.*toxicity"):
        dl.SteerConfig(vectors="nonsense").preflight()
    good = _save(tmp_path, model, _random_vectors(model, layers=(1,)))
    with pytest.raises(UserInputError, match=r"layer\(s\) \[2\] are not in"):
        dl.SteerConfig(vectors=good, layers=(1, 2)).preflight()


def test_unknown_sites_are_refused(tiny_llama, tmp_path, no_generate):
    model, tok = tiny_llama
    path = tmp_path / "s.safetensors"
    SteerFile({"sites.model.layers.0.mlp.nonexistent": torch.ones(8)},
              _meta(model, site_kind="uddia_sites", num_layers=2)).save(path)
    with pytest.raises(UserInputError, match="names 1 site.*this model does not have.*nonexistent"):
        dl.wrap(model, tok, dl.SteerConfig(vectors=str(path)))
    with pytest.raises(UserInputError, match="mode='ablate' needs residual"):
        dl.SteerConfig(vectors=str(path), mode="ablate").preflight()


@pytest.mark.parametrize("bad, needle", [
    ({"scale": math.inf}, "SteerConfig.scale=inf is invalid"),
    ({"scale": math.nan}, "SteerConfig.scale=nan is invalid"),
    ({"scale": 1e6}, r"SteerConfig.scale=1000000.0 is invalid: expected a number in \[-1000.0, 1000.0\]"),
    ({"scale": "4"}, "SteerConfig.scale='4' is invalid"),
    ({"layers": (-1,)}, "non-negative layer"),
    ({"layers": (1, 1)}, "listed twice"),
    ({"layers": (True,)}, "non-negative layer"),
    ({"positions": "prompt"}, "SteerConfig.positions='prompt' is invalid"),
    ({"mode": "subtract"}, "SteerConfig.mode='subtract' is invalid"),
    ({"vectors": " "}, "SteerConfig.vectors"),
])
def test_bad_config_values(bad, needle):
    with pytest.raises(UserInputError, match=needle):
        dl.SteerConfig(**bad)


def test_bad_row_scales_are_refused_before_generation(tiny_llama, tmp_path, no_generate):
    model, tok = tiny_llama
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=_save(tmp_path, model, _random_vectors(model, layers=(0,)),
                                                         num_layers=2)))
    enc = _enc(tok, PROMPTS[:2])
    for bad in ([1.0], [1.0, math.nan], [1.0, math.inf], [1.0, 5000.0], [1.0, "2"], "1,2"):
        with pytest.raises(UserInputError, match="steer_scales"):
            w.generate(**enc, max_new_tokens=2, steer_scales=bad)


def test_registry_and_roundtrip():
    spec = dl.get_method("steer")
    assert spec.config_cls is dl.SteerConfig and spec.vllm == "yes" and "vLLM steering plugin" in spec.description
    cfg = dl.SteerConfig(vectors="gender", scale=-2.0, layers=(3, 12), positions="generated", mode="ablate")
    assert dl.config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- the harness and the benchmark ---------------------------------------------------------------------------
def test_eval_harness_runs_steer_beside_plain(tiny_llama, tiny_llama_dir, tmp_path):
    """``debias-lm eval --method none,steer``: same prompts and seeds; the plain rows equal a run without steer."""
    from debias_lm.evaluation.runner import run_eval
    from debias_lm.evaluation.settings import EvalSettings

    model, _ = tiny_llama
    vec = _save(tmp_path, model, _random_vectors(model, layers=(0, 1), seed=10, norm=40.0))
    kw = dict(suites=("toxicity", "fluency"), model=str(tiny_llama_dir), limit=2, n_samples=2, max_new_tokens=4,
              batch_size=4, toxicity_scorers=("profanity-check",), progress=False)
    both = run_eval(EvalSettings(methods=("none", "steer"), out=str(tmp_path / "both"),
                                 method_overrides={"steer": {"vectors": vec, "scale": 1.0}}, **kw))
    run_eval(EvalSettings(methods=("none",), out=str(tmp_path / "alone"), **kw))
    assert both["methods"]["steer"]["vectors"] == vec
    rows = [json.loads(x) for x in (tmp_path / "both" / "samples.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(x) for x in (tmp_path / "alone" / "samples.jsonl").read_text().splitlines()]

    def texts(rs, method):
        return {(r["id"], r["sample"]): r["text"] for r in rs if r.get("method") == method and r["suite"] == "toxicity"}

    assert texts(rows, "none") == texts(plain_rows, "none") and len(texts(rows, "none")) == 4
    assert texts(rows, "steer") != texts(rows, "none")
    assert set(both["results"]["fluency"]) == {"none", "steer"}


def test_bench_runs_steer(tiny_llama, tiny_llama_dir, tmp_path):
    from tests.cli.test_cli import run_cli

    model, _ = tiny_llama
    vec = _save(tmp_path, model, _random_vectors(model, layers=(0,)))
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--model", str(tiny_llama_dir), "--backend", "hf", "--batch", "1,2", "--method", "steer",
                "--set", f"steer.vectors={vec}", "--max-new-tokens", "3", "--repeats", "1", "--out", str(out),
                "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["batch"], x["method"]) for x in rows] == [(1, "none"), (1, "steer"), (2, "none"), (2, "steer")]
    assert all(x["forward_equiv_per_token"] == pytest.approx(1.0) for x in rows)  # no extra forward


# -- the shipped vectors -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_vectors_fit_the_embedded_model_and_record_their_data(embedded):
    """Every shipped name loads on the embedded model (fingerprint, size, sites), records the data it was built
    from (whose sha256 matches the repository's file), a measured scale and the command; steering changes text."""
    import hashlib
    from pathlib import Path

    from debias_lm.methods.steer.config import resolve_vectors, shipped_names

    model, tok = embedded
    assert set(shipped_names()) == {"toxicity", "gender"}
    eval_dir = Path(__file__).resolve().parents[3] / "eval" / "steer"
    enc = _enc(tok, ["The coach called him a", "My neighbour is"])
    plain = model.generate(**enc, max_new_tokens=6, do_sample=False)
    for name in shipped_names():
        f = SteerFile.load(resolve_vectors(name))
        prov = f.meta["provenance"]
        assert f.meta["model_fingerprint"] == model_fingerprint(model)
        assert prov["command"] and prov["debias_lm_version"] and "suggested_scale_selected_by" in prov
        data = eval_dir / prov["data"]
        if data.is_file():  # a checkout (the wheel has no eval/)
            assert hashlib.sha256(data.read_bytes()).hexdigest() == prov["data_sha256"]
        mode = f.meta.get("suggested_mode", "add")
        w = dl.wrap(model, tok, dl.SteerConfig(vectors=name, scale=f.meta["suggested_scale"], mode=mode))
        out = w.generate(**enc, max_new_tokens=6, do_sample=False)
        assert not torch.equal(out, plain), name
