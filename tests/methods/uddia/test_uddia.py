"""UDDIA: core math vs independent computations; the HF loop on tiny GPT-2 (biases) and tiny Llama (no biases)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import debias_lm as dl
from debias_lm.core import uddia as core
from debias_lm.core.sampling import top_p_mask
from debias_lm.errors import UserInputError

PROMPTS = ["The nurse said that", "He and she went to the store and the teacher asked"]


def _enc(tok, prompts=PROMPTS):
    old = tok.padding_side
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    tok.padding_side = old
    return enc


# -- core math ------------------------------------------------------------------------------------------
def test_group_direction_equals_supervised_pca():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    mid = (a + b) / 2
    X = torch.cat([a - mid, b - mid])  # pair-centred words
    y = torch.tensor([0] * 7 + [1] * 7)
    L = (y[:, None] == y[None, :]).double()  # delta kernel
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    Q = X.T @ H @ L @ H @ X
    vals, vecs = torch.linalg.eigh(Q)
    top = vecs[:, -1]
    v = core.group_direction(a, b)
    assert abs(abs(float(top @ v)) - 1.0) < 1e-9
    assert float(v @ (a - b).sum(0)) > 0  # points toward group a


def test_hellinger_and_kl_closed_forms():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([0.0, 0.5, 0.5])
    assert torch.allclose(core.hellinger(p, q), torch.tensor([math.sqrt(0.5)]))
    assert torch.allclose(core.hellinger(p, p[0]), torch.zeros(1), atol=1e-6)
    pk, qk = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    ref = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert abs(float(core.kl_div(pk, qk)) - ref) < 1e-6


def test_context_posterior_matches_explicit_r():
    g = torch.Generator().manual_seed(1)
    E, v = torch.randn(11, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    ctx, L = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    got = core.context_attribute_posterior(E, v, ctx, L)
    for b in range(3):
        for x in range(11):
            r = (L[b] * ctx[b] + E[x]) / (L[b] + 1)
            s = (1 + torch.dot(r, v) / (r.norm() * v.norm())) / 2
            ref = torch.softmax(torch.stack([s, 1 - s]) / core.TAU, 0)
            assert torch.allclose(got[b, x], ref, atol=1e-10)


def test_debias_loss_matches_formula_written_as_loops():
    g = torch.Generator().manual_seed(2)
    V = 9
    p = torch.softmax(torch.randn(2, V, generator=g, dtype=torch.float64), -1)
    post = torch.softmax(torch.randn(V, 2, generator=g, dtype=torch.float64), -1)
    post_ctx = torch.softmax(torch.randn(2, V, 2, generator=g, dtype=torch.float64), -1)
    got = core.debias_loss(p, post_ctx, post)
    for b in range(2):
        ref = 0.0
        for x in range(V):
            kl_c = sum(float(post_ctx[b, x, a]) * math.log(float(post_ctx[b, x, a]) / float(post[x, a])) for a in range(2))
            kl_u = sum(float(post[x, a]) * math.log(float(post[x, a]) / 0.5) for a in range(2))
            ref += float(p[b, x]) * (kl_c + 0.5 * kl_u)
        assert abs(float(got[b]) - ref) < 1e-9


def test_debias_term_changes_the_gradient():
    """The official code overwrote the debias loss with the detox loss; here λ L_bias adds its own gradient."""
    g = torch.Generator().manual_seed(3)
    V = 8
    z = torch.randn(1, V, generator=g, dtype=torch.float64, requires_grad=True)
    post = torch.softmax(torch.randn(V, 2, generator=g, dtype=torch.float64), -1)
    post_ctx = torch.softmax(torch.randn(1, V, 2, generator=g, dtype=torch.float64), -1)
    tox = (z.softmax(-1) * torch.arange(V, dtype=torch.float64)).sum(-1)  # any detox-like term of p_theta
    p = z.softmax(-1)
    bias = core.debias_loss(p, post_ctx, post)
    on = torch.tensor([True])
    g_t = torch.autograd.grad(core.combined_loss("t", tox, None, None, 0.05).sum(), z, retain_graph=True)[0]
    g_u = torch.autograd.grad(core.combined_loss("u", tox, bias, on, 0.05).sum(), z, retain_graph=True)[0]
    g_b = torch.autograd.grad(bias.sum(), z, retain_graph=True)[0]
    assert torch.allclose(g_u, g_t + 0.05 * g_b)
    assert (g_u - g_t).abs().max() > 1e-6
    g_off = torch.autograd.grad(core.combined_loss("u", tox, bias, torch.tensor([False]), 0.05).sum(), z)[0]
    assert torch.allclose(g_off, g_t)  # not triggered: detox only


def test_adam_first_step_is_sign_and_fusion_normalised():
    grad = torch.tensor([3.0, -0.5, 0.0])
    upd, m, v = core.adam_step(grad, torch.zeros(3), torch.zeros(3), 1, 0.06)
    opt_p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([opt_p], lr=0.06)
    opt_p.grad = grad.clone()
    opt.step()
    assert torch.allclose(-upd, opt_p.detach(), atol=1e-7)
    a, b = torch.log_softmax(torch.randn(2, 5), -1), torch.log_softmax(torch.randn(2, 5), -1)
    fused = core.fuse_log_probs(a, b, 0.9)
    ref = a.exp() ** 0.9 * b.exp() ** 0.1
    assert torch.allclose(fused.exp(), ref / ref.sum(-1, keepdim=True), atol=1e-6)


def test_top_p_matches_hf_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(4))
    ref = TopPLogitsWarper(0.7)(None, logits.clone())
    assert torch.equal(top_p_mask(logits, 0.7), ref)


def test_conditional_perplexity_and_depth():
    nll = torch.tensor([[1.0, 2.0, 9.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    ppl = core.conditional_perplexity(nll, mask)
    assert abs(float(ppl[0]) - math.exp(1.5)) < 1e-5 and math.isinf(float(ppl[1]))
    assert core.resolve_depth(0.5, 36) == 18 and core.resolve_depth(0.5, 30) == 15
    assert core.resolve_depth(1 / 12, 36) == 3 and core.resolve_depth(1 / 12, 30) == 3 and core.resolve_depth(4, 30) == 4


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [{"lr": -0.1}, {"variant": "x"}, {"groups": ("caste",)}, {"steps": 0},
                                 {"num_layers": 0}, {"fusion": 1.5}, {"num_layers": 2.5}, {"groups": ()}])
def test_bad_config_is_value_error(bad):
    with pytest.raises(ValueError):
        dl.UDDIAConfig(**bad)


def test_config_roundtrip_and_registry():
    cfg = dl.UDDIAConfig(variant="b", groups=("gender", "religion"))
    assert dl.config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    spec = dl.get_method("uddia")
    assert spec.vllm == "no" and spec.config_cls is dl.UDDIAConfig


def test_group_losses_with_cached_terms_equal_the_loss_with_r_materialised(tiny):
    """GroupDebias.losses (E v and |e_x|^2 cached at wrap, ctx E^T shared by the groups) == L_bias written with
    r(x, c) built explicitly for every token, cosines by F.cosine_similarity, both KL terms summed by hand."""
    name, model, tok, probe = tiny
    deb = dl.wrap(model, tok, dl.UDDIAConfig(variant="b", groups=("gender", "religion"), group_balance=0)).impl.debias
    V = deb.emb.shape[0]
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(2, V, generator=g) * 3, -1)
    raw = model.get_input_embeddings().weight.detach().float()[:V]
    ctx_raw, L = raw[[5, 9]] * 0.7, torch.tensor([4.0, 11.0])
    got = deb.losses(p, ctx_raw, L)
    ctx = deb.frame(ctx_raw)
    for gi, grp in enumerate(deb.groups):
        s0 = (1 + torch.nn.functional.cosine_similarity(deb.emb, grp.direction.unsqueeze(0), dim=-1)) / 2
        post = torch.softmax(torch.stack([s0, 1 - s0], -1) / core.TAU, -1)  # p(a|x)
        for b in range(2):
            r = (L[b] * ctx[b] + deb.emb) / (L[b] + 1)  # [V, d], materialised
            s = (1 + torch.nn.functional.cosine_similarity(r, grp.direction.unsqueeze(0), dim=-1)) / 2
            pc = torch.softmax(torch.stack([s, 1 - s], -1) / core.TAU, -1)  # p(a|x, c)
            kl_ctx = (pc * (pc.log() - post.log())).sum(-1)
            kl_uni = (post * (post.log() - math.log(0.5))).sum(-1)
            ref = float((p[b] * kl_ctx).sum() + 0.5 * (p[b] * kl_uni).sum())
            assert abs(float(got[gi, b]) - ref) < 1e-4 * max(1.0, abs(ref)), (grp.name, b, float(got[gi, b]), ref)


def test_model_dependent_errors_before_decoding(tiny, tmp_path):
    name, model, tok, probe = tiny
    with pytest.raises(UserInputError, match="layers"):
        dl.wrap(model, tok, dl.UDDIAConfig(num_layers=5, probe=probe))
    with pytest.raises(ValueError, match="probe"):  # the shipped probe is for the embedded model only
        dl.wrap(model, tok, dl.UDDIAConfig(variant="t"))
    from debias_lm.methods.uddia.probe import ToxicityProbe

    other = ToxicityProbe.load(probe)
    other.meta["model_fingerprint"] = "0" * 16
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="trained for model"):
        dl.wrap(model, tok, dl.UDDIAConfig(probe=str(tmp_path / "other.safetensors")))
    dl.wrap(model, tok, dl.UDDIAConfig(variant="b"))  # b needs no probe


# -- the HF loop ----------------------------------------------------------------------------------------
def test_weights_untouched_grads_only_into_offsets(tiny):
    name, model, tok, probe = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="u", probe=probe, lr=0.5, trigger=0.0, layer_step=0))
    with torch.no_grad():  # works under no_grad callers
        out = w.generate(**_enc(tok), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    grads = w.impl._last_grads
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    deltas = w.impl._last_deltas
    assert all(d.shape[0] == 2 for d in deltas.values())
    n_sites = 6 if name == "gpt2" else 9  # GPT-2: ln_1 c_attn c_proj ln_2 c_fc c_proj; Llama: 2 norms + 7 proj
    assert len(deltas) == w.impl.T0 * n_sites + 1  # + final norm
    assert not any(h for s in w.impl.sites for h in s.module._forward_hooks.values())  # hooks removed


def test_batched_equals_per_sample_greedy(tiny):
    name, model, tok, probe = tiny
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="u", probe=probe, lr=0.3, layer_step=0))
    batched = w.generate(**_enc(tok), max_new_tokens=6, do_sample=False)
    width = _enc(tok)["input_ids"].shape[1]
    for i, p in enumerate(PROMPTS):
        single = w.generate(**_enc(tok, [p]), max_new_tokens=6, do_sample=False)
        n_new = single.shape[1] - _enc(tok, [p])["input_ids"].shape[1]
        assert n_new >= 1
        assert torch.equal(batched[i, width : width + n_new], single[0, -n_new:])


def test_lr_zero_equals_plain_decoding(tiny):
    name, model, tok, probe = tiny
    enc = _enc(tok)
    plain = model.generate(**enc, max_new_tokens=6, do_sample=False)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="u", probe=probe, lr=0.0))
    out = w.generate(**enc, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[:, : plain.shape[1]], plain)
    torch.manual_seed(7)
    ps = model.generate(**enc, max_new_tokens=6, do_sample=True, top_p=0.8, temperature=0.7)
    torch.manual_seed(7)
    us = w.generate(**enc, max_new_tokens=6, do_sample=True, top_p=0.8, temperature=0.7)
    assert torch.equal(us[:, : ps.shape[1]], ps)


def test_tuning_changes_output_and_base_cache_is_unperturbed(tiny):
    name, model, tok, probe = tiny
    enc = _enc(tok)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, lr=2.0, fusion=1.0, layer_step=0,
                                           tox_trigger=0.0))
    impl = w.impl
    gen = impl._generation_args({"max_new_tokens": 5, "do_sample": False})
    with impl.hooks.installed():
        new, nmask, counts, tuned, _, cache = impl._decode(enc["input_ids"], enc["attention_mask"], impl.T0, gen,
                                                        return_cache=True)
    # every row triggered at every token: trial, look-ahead (with grad: it serves the trigger and the step),
    # perturbed forward; one backward
    assert counts["forward"] == 3 * new.shape[1] and counts["backward"] == new.shape[1]
    assert tuned.tolist() == [new.shape[1]] * 2
    # the cache holds exactly the plain model's K/V of prompt + all generated tokens but the last
    full = torch.cat([enc["input_ids"], new], 1)[:, :-1]
    fmask = torch.cat([enc["attention_mask"], torch.ones_like(nmask)], 1)[:, :-1]  # the loop attends to every new slot
    pos = (fmask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=fmask, position_ids=pos, use_cache=True).past_key_values
    for got_layer, ref_layer in zip(cache.layers, ref.layers):
        assert torch.allclose(got_layer.keys, ref_layer.keys, atol=1e-5)
        assert torch.allclose(got_layer.values, ref_layer.values, atol=1e-5)
    plain = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert not torch.equal(torch.cat([enc["input_ids"], new], 1), plain)  # lr 2 moves the greedy path


def test_look_ahead_runs_once_without_logits_and_the_perturbed_forward_only_through_the_tuned_blocks(tiny):
    """Counted with hooks on the model's own blocks and LM head, every row triggered at every token: blocks below
    the tuned ones see each row twice per token (trial, look-ahead), the tuned blocks three times (+ the
    perturbed forward); the LM head runs for the trial and the perturbed forward only (+ once for the prefill)."""
    name, model, tok, probe = tiny
    from debias_lm.hf.sites import find_blocks

    enc = _enc(tok)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, tox_trigger=0.0, layer_step=0, num_layers=2))
    w.generate(**enc, max_new_tokens=1, do_sample=False)  # first use: the shortcuts are compared, once
    assert w.impl._shortcut_ok == {"backbone": True, "replay": True} and w.impl.last_stats["check_forwards"] == 2
    _, blocks, _ = find_blocks(model)
    rows = [0] * len(blocks)
    head_calls = []

    def count(i):
        def pre(_m, args, kwargs):
            rows[i] += (args[0] if args else kwargs["hidden_states"]).shape[0]
        return pre

    handles = [b.register_forward_pre_hook(count(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda m, a, o: head_calls.append(1)))
    try:
        n, B = 4, enc["input_ids"].shape[0]
        w.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    st = w.impl.last_stats
    assert st["tuned_row_tokens"] == B * n and st["check_forwards"] == 0
    lo = len(blocks) - 2
    assert rows[:lo] == [B + 2 * B * n] * lo  # prefill, then trial + look-ahead per token
    assert rows[lo:] == [B + 3 * B * n] * 2  # + the perturbed forward
    assert len(head_calls) == 1 + 2 * n


def test_redo_lowers_T_per_sample(tiny):
    name, model, tok, probe = tiny
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, num_layers=4, layer_step=1,
                                           ppl_threshold=1.0001, tox_trigger=0.0))
    out = w.generate(**_enc(tok), max_new_tokens=3, do_sample=False)
    st = w.impl.last_stats
    for log in st["attempt_log"]:
        assert [a["T"] for a in log] == [4, 3, 2, 1]  # threshold never met: every pass, T0 down by ΔT
    # the kept continuation is the lowest-perplexity attempt
    for r, log in enumerate(st["attempt_log"]):
        assert abs(st["perplexity"][r] - min(a["ppl"] for a in log)) < 1e-9
    assert out.shape[0] == 2
    # a threshold that the first pass meets: no redo
    w2 = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, num_layers=4, layer_step=1, ppl_threshold=1e9,
                                            tox_trigger=0.0))
    w2.generate(**_enc(tok), max_new_tokens=3, do_sample=False)
    assert all(len(log) == 1 for log in w2.impl.last_stats["attempt_log"])


def test_redo_scores_each_row_by_its_perplexity_under_the_plain_model(tiny):
    """The redo's score, kept from the base log-probs while decoding (no extra pass), equals the conditional
    perplexity of the continuation computed here with one plain HF forward over prompt + continuation, per row
    (unpadded prompt), for tuned rows decoded with sampling."""
    name, model, tok, probe = tiny
    prompts = ["The nurse said that", "He and she went to the store and the teacher asked"]
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, tox_trigger=0.0, lr=0.5, ppl_threshold=1e9))
    torch.manual_seed(3)
    out = w.generate(**_enc(tok, prompts), max_new_tokens=6, min_new_tokens=6, do_sample=True, top_p=0.9)
    st = w.impl.last_stats
    assert all(a[0]["tuned_tokens"] > 0 for a in st["attempt_log"])  # tuned rows: the redo would consider them
    for r, prompt in enumerate(prompts):
        ids = tok(prompt, return_tensors="pt")["input_ids"][0]
        new = out[r, -6:]
        with torch.no_grad():
            logits = model(input_ids=torch.cat([ids, new]).unsqueeze(0)).logits[0].double()
        lp = torch.log_softmax(logits[len(ids) - 1 : -1], -1)
        ref = math.exp(-float(lp.gather(1, new.unsqueeze(1)).mean()))
        assert st["perplexity"][r] == pytest.approx(ref, rel=1e-4)
        assert st["attempt_log"][r][0]["ppl"] == pytest.approx(ref, rel=1e-4)


def test_eos_stops_and_pads(tiny):
    name, model, tok, probe = tiny
    enc = _enc(tok)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="b", layer_step=0))
    first = w.generate(**enc, max_new_tokens=1, do_sample=False)[:, -1]
    out = w.generate(**enc, max_new_tokens=4, do_sample=False, eos_token_id=int(first[0]))
    assert out.shape[1] <= enc["input_ids"].shape[1] + 4
    assert (out[0, enc["input_ids"].shape[1] + 1 :] == tok.pad_token_id).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_model(tiny_llama_dir, tmp_path, bits, labeled_texts):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from debias_lm.methods.uddia.probe import train_probe

    q = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=q, device_map="cpu").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    probe = train_probe(model, tok, *labeled_texts, epochs=10).save(tmp_path / "q.safetensors")
    w = dl.wrap(model, tok, {"method": "uddia", "variant": "u", "lr": 0.5, "layer_step": 0, "probe": str(probe),
                             "tox_trigger": 0.0, "trigger": 0.0})
    # bitsandbytes' CPU backend rewrites some of its own quant-state tensors (``*.absmax`` of down_proj) on
    # every forward, plain ``model.generate`` included; every other tensor (the packed 4-bit weights, norms,
    # embeddings) must stay bitwise identical.
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and "absmax" not in k}
    out = w.generate(**_enc(tok), max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    names = {id(s.module): s.name.rsplit(".", 1)[-1] for s in w.impl.sites + [w.impl.final_site]}
    grads = {names[k]: g for k, g in w.impl._last_grads.items()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    if bits == 8:
        assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    else:  # CPU 4-bit matmuls pass no gradient to their inputs (bnb 0.50); the residual-stream sites still learn
        for site in ("final_norm", "o_proj", "down_proj"):
            assert grads[site] is not None and float(grads[site].abs().sum()) > 0


def test_cli_generate_and_train_probe(tiny_llama_dir, tmp_path, capsys, labeled_texts):
    from debias_lm.cli.main import main

    data = tmp_path / "labeled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(*labeled_texts)))
    out = tmp_path / "p.safetensors"
    assert main(["uddia", "train-probe", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
                 "--epochs", "5"]) == 0
    assert out.is_file()
    assert main(["generate", "--method", "uddia", "--model", str(tiny_llama_dir), "--no-chat", "--prompt",
                 "The nurse said", "--max-new-tokens", "3", "--set", f"probe={json.dumps(str(out))}",
                 "--set", "layer_step=0"]) == 0
    assert "--- uddia:" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert main(["uddia", "train-probe", "--model", str(tiny_llama_dir), "--data", str(bad), "--out", str(out)]) == 2
    assert main(["generate", "--method", "uddia", "--model", str(tiny_llama_dir), "--prompt", "x",
                 "--set", "lr=-1"]) == 2


# -- per-model statistics, triggers, redo rule, group balance (issue 12) ---------------------------------
@pytest.mark.parametrize("bad", [{"step_scale": "log"}, {"update": "sgd"}, {"kl_budget": -1.0},
                                 {"tox_trigger": 1.5}, {"ppl_factor": 0.0}, {"group_balance": 0.5},
                                 {"ppl_threshold": -1.0}, {"tox_gate": "prefix"},
                                 {"gradient_path": "soft"}])
def test_new_fields_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        dl.UDDIAConfig(**bad)


def test_model_stats_measured_once_per_model(tiny, monkeypatch):
    from debias_lm.methods.uddia import stats

    name, model, tok, probe = tiny
    calls = []
    real = stats.measure_site_rms
    monkeypatch.setattr(stats, "measure_site_rms", lambda *a: calls.append(1) or real(*a))
    stats._CACHE.pop(model, None)
    w1 = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe))
    w2 = dl.wrap(model, tok, dl.UDDIAConfig(variant="b", lr=0.01))
    assert len(calls) == 1 and w1.impl.site_rms == w2.impl.site_rms
    assert all(v > 0 for v in w1.impl.site_rms.values())
    d = w1.impl.describe()
    assert d["T0"] == w1.impl.T0 and d["step"]["rule"] == "rms" and "probe" in d


def test_untriggered_rows_are_plain_decoding_and_never_redone(tiny):
    """A trigger no row can exceed: every token is plain decoding (same tokens as HF generate), no offsets,
    one forward per token, and no row is redone even with a threshold every continuation fails."""
    name, model, tok, probe = tiny
    enc = _enc(tok)
    plain = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="u", probe=probe, tox_trigger=1.0, trigger=1.0,
                                           ppl_threshold=1.0001, layer_step=1))
    out = w.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(out[:, : plain.shape[1]], plain)
    st = w.impl.last_stats
    assert st["tuned_row_tokens"] == 0 and st["backward"] == 0
    assert all(len(a) == 1 and a[0]["tuned_tokens"] == 0 for a in st["attempt_log"])


def test_last_token_gate_spends_no_forward_on_untriggered_tokens(tiny):
    """``tox_gate="last"`` with a trigger no row can exceed: plain decoding (HF generate's tokens) at exactly one
    forward per row-token; the default gate spends a look-ahead forward on every live row-token too."""
    name, model, tok, probe = tiny
    enc = _enc(tok)
    plain = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    for gate, per_token in (("last", 1), ("look_ahead", 2)):
        w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, tox_trigger=1.0, tox_gate=gate,
                                               layer_step=0))
        out = w.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert torch.equal(out[:, : plain.shape[1]], plain)
        st = w.impl.last_stats
        assert st["row_tokens"] == 2 * 5 and st["backward"] == 0
        assert st["rows_forward"] == per_token * st["row_tokens"], gate


def test_last_token_gate_tunes_exactly_the_rows_both_checks_pass(tiny):
    """``tox_gate="last"``: a row is tuned at a token iff the probe scores x_t's own final hidden state above the
    trigger (the pre-check) and then its look-ahead token above it too (the recomputed trigger); both scores are
    computed here with plain HF forwards (output_hidden_states, the soft token as inputs_embeds)."""
    name, model, tok, probe_path = tiny
    from debias_lm.methods.uddia.probe import ToxicityProbe

    probe = ToxicityProbe.load(probe_path)
    prompts = ["you are a stupid idiot and", "have a nice day, said the", "shut up you fool, he said",
               "the teacher asked the student", "damn idiot, go away from the", "the nurse said that she"]
    x_scores, soft_scores = [], []
    W_E = model.get_input_embeddings().weight
    with torch.no_grad():
        for text in prompts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            out = model(input_ids=ids, use_cache=True, output_hidden_states=True)
            x_scores.append(float(probe.toxic_prob(out.hidden_states[-1][0, -1].float())))
            p = torch.softmax(out.logits[0, -1].float(), -1)
            soft = (p @ W_E.float()).view(1, 1, -1).to(W_E.dtype)
            la = model(inputs_embeds=soft, past_key_values=out.past_key_values, output_hidden_states=True)
            soft_scores.append(float(probe.toxic_prob(la.hidden_states[-1][0, -1].float())))
    # a trigger between two scores such that the pre-check drops some rows and some rows pass both checks
    order = sorted(x_scores + soft_scores)
    for trig in [(a + b) / 2 for a, b in zip(order, order[1:])]:
        expect = [r for r in range(len(prompts)) if x_scores[r] > trig and soft_scores[r] > trig]
        dropped = [r for r in range(len(prompts)) if x_scores[r] <= trig]
        if expect and dropped:
            break
    assert expect and dropped, (x_scores, soft_scores)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe_path, tox_trigger=trig, tox_gate="last",
                                           layer_step=0))
    w.generate(**_enc(tok, prompts), max_new_tokens=1, do_sample=False)
    got = [] if w.impl.last_stats["tuned_row_tokens"] == 0 else w.impl._last_rows.tolist()
    assert sorted(got) == expect, (x_scores, soft_scores, trig)
    assert w.impl.last_stats["gated_row_tokens"] == len(prompts) - len(dropped)


def test_redo_threshold_derived_from_plain_perplexity(tiny):
    """ppl_threshold=0: the threshold is ppl_factor x the median perplexity of the model's own plain samples on
    the built-in prompts, recomputed here with plain generate and an explicit log-likelihood loop."""
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.methods.uddia import stats

    name, model, tok, probe = tiny
    stats._CACHE.pop(model, None)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, ppl_factor=1.5))
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    w.generate(**_enc(tok), max_new_tokens=4, do_sample=True, top_p=0.9, top_k=0)
    thr = w.impl.last_stats["redo_threshold"]
    assert w.impl.redo_threshold == thr
    # the reference: the same seeded samples, perplexity by hand
    prompts = [p for p in stats.REFERENCE_PROMPTS for _ in range(stats.REFERENCE_SAMPLES)]
    enc = encode_left_padded(tok, prompts)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        seqs = model.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=4,
                              pad_token_id=tok.pad_token_id)
    ppls = []
    for r in range(len(prompts)):
        ids = seqs[r][enc["attention_mask"][r].bool().tolist() + [True] * 4]
        n_prompt = int(enc["attention_mask"][r].sum())
        with torch.no_grad():
            lp = torch.log_softmax(model(ids.unsqueeze(0)).logits[0].float(), -1)
        nll = [-float(lp[j - 1, ids[j]]) for j in range(n_prompt, len(ids))]
        ppls.append(math.exp(sum(nll) / len(nll)))
    ppls.sort()
    med = (ppls[len(ppls) // 2 - 1] + ppls[len(ppls) // 2]) / 2
    assert thr == pytest.approx(1.5 * med, rel=1e-3)
    assert not torch.equal(rng_before, torch.random.get_rng_state())  # the caller's sampling went on as usual


def test_unbalanced_group_is_refused_with_the_numbers(tiny):
    name, model, tok, probe = tiny
    with pytest.raises(UserInputError, match=r"unbalanced.*tokens.*group_balance"):
        dl.wrap(model, tok, dl.UDDIAConfig(variant="b", group_balance=1.0))
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="b", group_balance=0))  # 0: accepted
    sizes = w.impl.describe()["groups"][0]["tokens_per_side"]
    assert min(sizes) > 0 and sizes[0] != sizes[1]


def test_probe_label_smoothing_bounds_margins_and_temperature_minimises_nll():
    """On separable data plain CE has no finite minimiser (the weights, hence the margins, keep growing with
    training); ε-smoothed CE has one (the weights stop growing); the fitted temperature is the NLL minimiser of a
    brute-force grid."""
    from debias_lm.methods.uddia.probe import fit_probe, fit_temperature

    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 6, generator=g)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long()  # linearly separable

    def weight_norm(eps, epochs):
        p, _, _ = fit_probe(X, y, label_smoothing=eps, weight_decay=0.0, calibrate=False, epochs=epochs,
                            val_fraction=0, lr=0.05)
        return float(p.weight.norm())

    s1, s2 = weight_norm(0.2, 1500), weight_norm(0.2, 3000)
    p1, p2 = weight_norm(0.0, 1500), weight_norm(0.0, 3000)
    assert abs(s2 - s1) / s1 < 0.02  # converged
    assert p2 > 1.1 * p1 and p2 > 2 * s2  # still growing, and far larger
    z = torch.randn(50, 2, generator=g) * 4
    t = (torch.rand(50, generator=g) < torch.softmax(z / 3.0, -1)[:, 1]).long()
    T = fit_temperature(z, t)
    grid = torch.exp(torch.linspace(math.log(0.05), math.log(20), 4000))
    nll = torch.stack([torch.nn.functional.cross_entropy(z / s, t) for s in grid])
    assert T == pytest.approx(float(grid[nll.argmin()]), rel=0.01)


def test_train_probe_cli_uses_the_data_split_and_reports_calibration(tiny_llama_dir, tmp_path, capsys, labeled_texts):
    from debias_lm.cli.main import main
    from debias_lm.methods.uddia.probe import ToxicityProbe

    texts, labels = labeled_texts
    rows = [{"text": t + f" {i}", "label": y, "split": "val" if i % 4 == 0 else "train"}
            for i, (t, y) in enumerate(zip(texts * 4, labels * 4))]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.safetensors"
    assert main(["uddia", "train-probe", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
                 "--epochs", "20", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n_val"] == str(sum(r["split"] == "val" for r in rows))
    assert printed["calibration"]["label_smoothing"] == 0.1 and printed["val_report"]["margin_toxic"]
    meta = ToxicityProbe.load(out).meta
    assert json.loads(meta["calibration"])["temperature"] > 0 and "/" not in meta["data"]
    rows[0].pop("split")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["uddia", "train-probe", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out)]) == 2
