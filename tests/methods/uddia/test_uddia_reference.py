"""UDDIA against independent references (issue 12):

* one step's offset gradient and tuned logits on tiny GPT-2 equal a computation that writes the offsets into
  a copy of the model's bias parameters in place (no hooks, no row batching, its own caches) and takes the
  gradient with autograd through that copy;
* the debias term reaches the offsets' gradient through the real decoding loop: with ``debias_weight`` λ vs 0 the
  gradients differ by λ times the debias loss's own gradient, computed separately through the copy;
* the step-size rule: every offset element of one step is ``lr`` x its site's activation RMS (measured here
  independently), and the step moves the next-token distribution (KL measured here against a plain forward)
  by at most ``kl_budget`` when one is set;
* on the embedded model: the group token sets are balanced and " the", " and", " of" are neutral; the
  embedding frame's removed directions equal the top singular vectors of the centred vocabulary (SVD).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import debias_lm as dl
from debias_lm.methods.uddia import stats as uddia_stats

PROMPTS = ["The nurse said that", "He and she went to the store and the teacher asked"]


def _enc(tok, prompts=PROMPTS):
    from debias_lm.hf.base import encode_left_padded

    return encode_left_padded(tok, prompts)


def _independent_rms(model, tok, names: list[str]) -> dict[str, float]:
    """sqrt(mean(out^2)) of each named module's output over the calibration texts, one text at a time (no
    padding), the first position of each text left out: the documented rule, computed without the library."""
    mods = dict(model.named_modules())
    sq = {n: 0.0 for n in names}
    cnt = {n: 0 for n in names}
    handles = []
    for n in names:
        def hook(_m, _i, out, n=n):
            o = (out[0] if isinstance(out, tuple) else out)[:, 1:].double()
            sq[n] += float((o ** 2).sum())
            cnt[n] += o.numel()
        handles.append(mods[n].register_forward_hook(hook))
    with torch.no_grad():
        for text in uddia_stats.CALIBRATION_TEXTS:
            model(**tok(text, return_tensors="pt"))
    for h in handles:
        h.remove()
    return {n: math.sqrt(sq[n] / cnt[n]) for n in names}


def _site_names(impl) -> dict[int, str]:
    """id(site module) -> module path in the model (the final norm's real path)."""
    path = {id(m): n for n, m in impl.model.named_modules()}
    return {id(s.module): path[id(s.module)] for s in impl._active_sites(impl.T0)}


def _row_reference(model, tok, prompt: str, impl, bias_delta: dict[str, torch.Tensor] | None, *,
                   want_grad: bool, debias_only: bool = False, soft_constant: bool = False):
    """One UDDIA step for ONE prompt, on a hand-edited copy of GPT-2: the offsets (``bias_delta``, by module
    path) are written into the copy's bias parameters in place; the prefix K/V come from the unedited model.

    Returns (logits of x_t [V], {path: d loss / d bias} or None). The loss is the detox loss on the mean of the
    final hidden states (prefix, x_t detached, soft look-ahead token) or, ``debias_only``, the debias loss of
    p_theta. ``soft_constant``: the look-ahead token's embedding is a constant (p_theta detached).
    """
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    edited = copy.deepcopy(model)
    mods = dict(edited.named_modules())
    params = {}
    for path in _site_names(impl).values():
        b = mods[path].bias
        if bias_delta is not None:
            with torch.no_grad():
                b.add_(bias_delta[path].to(b.dtype))
        params[path] = b
    for p in edited.parameters():
        p.requires_grad_(False)
    for b in params.values():
        b.requires_grad_(want_grad)
    with torch.no_grad():  # base (unedited) prefix: K/V before x_t, final states of the prefix
        pre = model(input_ids=ids[:, :-1], use_cache=True, output_hidden_states=True)
        through = model(input_ids=ids, use_cache=True, output_hidden_states=True)  # base cache through x_t
    with torch.set_grad_enabled(want_grad):
        out = edited(input_ids=ids[:, -1:], past_key_values=copy.deepcopy(pre.past_key_values),
                     output_hidden_states=True)
        logits = out.logits[0, -1].float()
        if not want_grad:
            return logits, None
        p = torch.softmax(logits, -1)
        if debias_only:
            deb = impl.debias
            emb = model.get_input_embeddings().weight.detach().float()
            ctx_mean = emb[ids[0]].mean(0, keepdim=True)
            loss = deb.losses(p.unsqueeze(0), ctx_mean, torch.tensor([float(ids.shape[1])])).sum()
        else:
            W_E = model.get_input_embeddings().weight
            soft = ((p.detach() if soft_constant else p) @ W_E.float()).view(1, 1, -1)
            la = edited(inputs_embeds=soft, past_key_values=copy.deepcopy(through.past_key_values),
                        output_hidden_states=True)
            h_prefix = pre.hidden_states[-1][0].float()  # after the final norm
            h_x = out.hidden_states[-1][0, -1].float().detach()
            h_soft = la.hidden_states[-1][0, -1].float()
            h_mean = (h_prefix.sum(0) + h_x + h_soft) / (h_prefix.shape[0] + 2)
            probe = impl.probe
            z = h_mean @ probe.weight.T.float() + probe.bias.float()
            loss = -torch.log_softmax(z, -1)[0]  # CE against non-toxic
        grads = torch.autograd.grad(loss, list(params.values()))
    return logits, dict(zip(params, grads))


def _assert_step_matches_copy(model, tok, impl, cfg) -> None:
    """The gradient, step and tuned logits of the one-token run ``impl`` just did on :data:`PROMPTS` equal the
    bias-edited copy's (both rows tuned)."""
    names = _site_names(impl)
    assert impl._last_rows.tolist() == [0, 1]  # both rows were tuned (trigger 0)
    rms = _independent_rms(model, tok, list(names.values()))
    tuned, _ = impl._last_logps
    for r, prompt in enumerate(PROMPTS):
        _, ref_grads = _row_reference(model, tok, prompt, impl, None, want_grad=True)
        for key, path in names.items():
            got = impl._last_grads[key][r]
            assert torch.allclose(got, ref_grads[path].float(), rtol=1e-3, atol=1e-6), path
        # the step, by the documented rule (one fresh Adam step == lr * g / (|g| + eps), scaled by RMS)
        step = {path: -cfg.lr * rms[path] * ref_grads[path] / (ref_grads[path].abs() + 1e-8)
                for path in names.values()}
        for key, path in names.items():
            big = ref_grads[path].abs() > 1e-5  # g / (|g| + 1e-8) is ill-conditioned for |g| ~ 1e-8
            assert big.float().mean() > 0.5, path
            assert torch.allclose(impl._last_deltas[key][r][big], step[path][big].float(), rtol=1e-4), path
            assert (impl._last_deltas[key][r].abs() <= cfg.lr * rms[path] * (1 + 1e-4)).all(), path
        ref_logits, _ = _row_reference(model, tok, prompt, impl, step, want_grad=False)
        assert torch.allclose(tuned[r], torch.log_softmax(ref_logits, -1), atol=1e-4)
        assert (tuned[r] - torch.log_softmax(ref_logits, -1)).abs().max() < 1e-4


def _one_step_config(probe, gate="look_ahead"):
    return dl.UDDIAConfig(variant="t", probe=probe, lr=0.5, update="adam", step_scale="rms", kl_budget=0.0,
                          tox_trigger=0.0, fusion=1.0, layer_step=0, num_layers=3, tox_gate=gate)


@pytest.mark.parametrize("gate", ["look_ahead", "last"])
def test_one_step_matches_bias_edited_copy_of_gpt2(gate, tmp_path, tiny_with_probe):
    """Offset gradient == autograd through bias parameters of a copy; tuned logits == forward of the copy with
    lr x RMS x sign(grad) written into its biases (per row, no hooks, no batching). The look-ahead runs through
    the backbone and the perturbed forward replays the block below the tuned three (both shortcuts on). With
    ``tox_gate="last"`` the trial forward runs without a graph and the tuned rows' trial is re-run with
    gradients: the same numbers."""
    model, tok, probe = tiny_with_probe("gpt2", tmp_path)
    cfg = _one_step_config(probe, gate)
    w = dl.wrap(model, tok, cfg)
    w.generate(**_enc(tok), max_new_tokens=1, do_sample=False)
    assert w.impl._shortcut_ok == {"backbone": True, "replay": True}
    _assert_step_matches_copy(model, tok, w.impl, cfg)


def test_broken_shortcuts_are_caught_and_the_step_still_matches_the_copy(tmp_path, tiny_with_probe, monkeypatch,
                                                                         caplog):
    """A decoder on which the shortcuts would be wrong (sabotaged here: the replayed lower blocks return zeros,
    the backbone doubles its input) is caught by the first-use comparison: UDDIA warns, runs full forwards, and
    the step still equals the bias-edited copy's."""
    from debias_lm.methods.uddia import sites

    monkeypatch.setattr(sites._Replayed, "forward", lambda self, *a, **k: torch.zeros_like(self.hidden))
    model, tok, probe = tiny_with_probe("gpt2", tmp_path)
    cfg = _one_step_config(probe)
    w = dl.wrap(model, tok, cfg)

    class Doubled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inputs_embeds=None, **kwargs):
            return self.inner(inputs_embeds=2 * inputs_embeds, **kwargs)

    w.impl.backbone = Doubled(w.impl.backbone)
    with caplog.at_level("WARNING", logger="debias_lm.methods.uddia.hf"):
        w.generate(**_enc(tok), max_new_tokens=1, do_sample=False)
    assert w.impl._shortcut_ok == {"backbone": False, "replay": False}
    assert caplog.text.count("shortcut differs from the full forward") == 2
    _assert_step_matches_copy(model, tok, w.impl, cfg)


def test_look_ahead_gradient_path_matches_copy_with_a_constant_soft_token(tmp_path, tiny_with_probe):
    """``gradient_path="look_ahead"``: the offset gradient == autograd through the bias-edited copy with the
    look-ahead token's embedding held constant, and it differs from the paper's full gradient (through p_theta)."""
    model, tok, probe = tiny_with_probe("gpt2", tmp_path)
    cfg = dl.UDDIAConfig(variant="t", probe=probe, tox_trigger=0.0, layer_step=0, num_layers=3,
                         gradient_path="look_ahead")
    w = dl.wrap(model, tok, cfg)
    w.generate(**_enc(tok), max_new_tokens=1, do_sample=False)
    impl = w.impl
    names = _site_names(impl)
    assert impl._last_rows.tolist() == [0, 1]
    gap = 0.0
    for r, prompt in enumerate(PROMPTS):
        _, ref = _row_reference(model, tok, prompt, impl, None, want_grad=True, soft_constant=True)
        _, full = _row_reference(model, tok, prompt, impl, None, want_grad=True)
        for key, path in names.items():
            assert torch.allclose(impl._last_grads[key][r], ref[path].float(), rtol=1e-3, atol=1e-6), path
            gap = max(gap, float((ref[path] - full[path]).abs().max()))
    assert gap > 1e-5  # the path through p_theta really is left out


def test_last_gate_on_a_single_row_gives_the_reference_gradient(tmp_path, tiny_with_probe):
    """Batch of one with ``tox_gate="last"``: the trial keeps its graph (no re-run); gradient == the copy's."""
    model, tok, probe = tiny_with_probe("gpt2", tmp_path)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, tox_trigger=0.0, layer_step=0, num_layers=3,
                                           tox_gate="last"))
    w.generate(**_enc(tok, PROMPTS[1:]), max_new_tokens=1, do_sample=False)
    names = _site_names(w.impl)
    _, ref = _row_reference(model, tok, PROMPTS[1], w.impl, None, want_grad=True)
    assert w.impl.last_stats["forward"] == 3  # trial, look-ahead, perturbed: no re-run of the trial
    for key, path in names.items():
        assert torch.allclose(w.impl._last_grads[key][0], ref[path].float(), rtol=1e-3, atol=1e-6), path


@pytest.mark.parametrize("gate", ["look_ahead", "last"])
def test_debias_term_reaches_the_offset_gradient_through_hf_loop(gate, tmp_path, tiny_with_probe):
    model, tok, probe = tiny_with_probe("gpt2", tmp_path)
    enc = _enc(tok)
    lam = 0.7
    grads = {}
    for weight in (0.0, lam):
        cfg = dl.UDDIAConfig(variant="u", probe=probe, debias_weight=weight, trigger=0.0, tox_trigger=0.0,
                             layer_step=0, num_layers=3, group_balance=0, tox_gate=gate)
        w = dl.wrap(model, tok, cfg)
        w.generate(**enc, max_new_tokens=1, do_sample=False)
        grads[weight] = {k: g.clone() for k, g in w.impl._last_grads.items()}
    names = _site_names(w.impl)
    differs = 0.0
    for r, prompt in enumerate(PROMPTS):
        _, g_bias = _row_reference(model, tok, prompt, w.impl, None, want_grad=True, debias_only=True)
        for key, path in names.items():
            diff = grads[lam][key][r] - grads[0.0][key][r]
            assert torch.allclose(diff, lam * g_bias[path].float(), rtol=1e-3, atol=1e-7), path
            differs = max(differs, float(diff.abs().max()))
    assert differs > 1e-6  # the term is really there


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_step_rule_rms_and_kl_budget_on_tiny_models(kind, tmp_path, tiny_with_probe):
    model, tok, probe = tiny_with_probe(kind, tmp_path)
    enc = _enc(tok)
    default = dl.UDDIAConfig()
    # (1) RMS rule: every element of one step is lr x its site's RMS (adam: sign steps)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, update="adam", kl_budget=0.0,
                                           tox_trigger=0.0, layer_step=0))
    w.generate(**enc, max_new_tokens=1, do_sample=False)
    names = _site_names(w.impl)
    rms = _independent_rms(model, tok, list(names.values()))
    for key, path in names.items():
        d = w.impl._last_deltas[key]
        g = w.impl._last_grads[key]
        nz = g.abs() > 1e-5  # (g / (|g| + 1e-8) is 1 to 1e-3 there)
        assert torch.allclose(d[nz].abs(), torch.full_like(d[nz], default.lr * rms[path]), rtol=1e-3), path
    # (2) the KL budget: with a large step, the tuned distribution stays within the budget of a plain forward
    budget = 0.05
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, lr=3.0, kl_budget=budget, tox_trigger=0.0,
                                           layer_step=0))
    w.generate(**enc, max_new_tokens=1, do_sample=False)
    tuned, _ = w.impl._last_logps
    with torch.no_grad():
        base = torch.log_softmax(model(**enc).logits[:, -1].float(), -1)[w.impl._last_rows]
    kl = (tuned.exp() * (tuned - base)).sum(-1)
    assert (kl <= budget * (1 + 1e-3)).all()
    assert w.impl.last_stats["kl_shrunk"] > 0  # lr 3 overshoots: the budget did the work


@pytest.mark.slow
def test_embedded_model_groups_balanced_function_words_neutral():
    from debias_lm.core import uddia as core
    from debias_lm.methods.uddia.debias import GroupDebias

    model, tok = dl.load_default_model()
    V = model.get_output_embeddings().weight.shape[0]
    deb = GroupDebias(model, tok, ("gender", "race", "religion"), V, max_ratio=0)
    # the frame removes the top principal directions of the centred vocabulary (independent: SVD)
    E = model.get_input_embeddings().weight.detach().double()[:V]
    C = E - E.mean(0)
    _, _, Vh = torch.linalg.svd(C, full_matrices=False)
    k = deb.frame.P.shape[0]
    assert k == core.n_removed_components(E.shape[1]) == 6
    overlap = torch.linalg.matrix_norm(deb.frame.P.double() @ Vh[:k].T) ** 2 / k  # 1 = same subspace
    assert overlap > 0.999
    fw = [tok(w, add_special_tokens=False)["input_ids"][0] for w in (" the", " and", " of")]
    for g in deb.groups:
        a, b = g.sizes
        # independent count of tokens above the 0.75 mask on the posterior of the processed embeddings
        post = core.token_attribute_posterior(deb.emb, g.direction)
        assert (a, b) == (int((post[:, 0] > 0.75).sum()), int((post[:, 1] > 0.75).sum()))
        assert min(a, b) > 0 and max(a, b) <= 3 * min(a, b), (g.name, a, b)
        assert float(g.posterior[fw].max()) < 0.75, g.name  # neutral: in neither group's token set
