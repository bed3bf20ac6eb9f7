"""UDDIA on any HF decoder: a custom decoding loop with per-sample offsets, a base KV cache and redo.

Per generated token (``steps = 1``), for the whole batch at once:

1. *trial* forward of the last token x_t on the base cache with offsets δ = 0 (grad enabled): its logits are
   the base logits and its K/V (detached) extend the base cache;
2. *look-ahead* forward of the soft token ē = p_θᵀ W_E on the base cache through x_t (grad enabled; ``t``/``u``);
3. one backward of L = L_tox (+ λ 1[Δ > trigger] L_bias) into δ only, and an Adam step from a fresh state;
4. *perturbed* forward of x_t on the base cache before x_t with the new δ (no grad; its K/V are discarded);
5. fuse p ∝ p_tuned^γ p_base^(1-γ), apply temperature / top-k / top-p, pick the next token.

So 3 single-position forwards + 1 backward per token (``b``: the look-ahead is not needed, and steps where
no row's Hellinger gap exceeds the trigger skip 2-4). Scratch forwards (2, 4) work on the same cache object
and restore its layers' state afterwards, so the base cache only ever holds unperturbed K/V. After a
continuation is done its perplexity under the base model decides, per row, whether to redo it with
T ← T − ΔT; the lowest-perplexity attempt is kept when all fail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch

from ...core import uddia as core
from ...errors import UserInputError
from ...hf.base import HFMethod
from .config import UDDIAConfig
from .sites import OffsetHooks, collect_sites, module_device

log = logging.getLogger(__name__)

_GEN_KEYS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "eos_token_id", "pad_token_id",
             "generation_config", "return_dict_in_generate", "use_cache", "max_length", "min_new_tokens",
             "repetition_penalty", "num_beams", "num_return_sequences", "output_scores", "output_logits"}


def _make_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signatures
        return DynamicCache()


def _cache_layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise UserInputError("UDDIA needs a transformers version whose DynamicCache has .layers (>= 4.56)")
    return layers


@contextlib.contextmanager
def scratch(cache, drop_last: int):
    """Run forwards on ``cache`` without the last ``drop_last`` positions, then restore it exactly."""
    layers = _cache_layers(cache)
    saved = [dict(layer.__dict__) for layer in layers]
    try:
        if drop_last:
            for layer in layers:
                layer.crop(-drop_last)
        yield cache
    finally:
        for layer, state in zip(layers, saved):
            layer.__dict__.clear()
            layer.__dict__.update(state)


def detach_cache(cache) -> None:
    for layer in _cache_layers(cache):
        for attr in ("keys", "values"):
            t = getattr(layer, attr, None)
            if isinstance(t, torch.Tensor) and t.requires_grad:
                setattr(layer, attr, t.detach())


@torch.no_grad()
def _embedding_scale(model) -> float:
    """The factor the input-embedding module applies to its weight rows (Gemma scales by sqrt(d); most: 1)."""
    emb = model.get_input_embeddings()
    w = emb.weight
    norms = w.float().norm(dim=-1)
    i = int(norms.argmax())
    e = emb(torch.tensor([[i]], device=w.device))[0, 0].float()
    return float((e @ w[i].float()) / (w[i].float() @ w[i].float()))


class UDDIAHF(HFMethod):
    """HF implementation of :class:`UDDIAConfig` (see the module docstring). Model weights are never changed."""

    def __init__(self, model, tokenizer_or_processor, config: UDDIAConfig) -> None:
        super().__init__(model, tokenizer_or_processor, config)
        self.sites, self.final_site, self.depth = collect_sites(model)
        self.T0 = core.resolve_depth(config.num_layers, self.depth)
        if self.T0 > self.depth:
            raise UserInputError(f"UDDIAConfig.num_layers={config.num_layers!r} is invalid for this model: it has "
                                 f"{self.depth} layers (use at most {self.depth}, or a fraction in (0, 1])")
        self.dT = core.resolve_depth(config.layer_step, self.depth) if config.layer_step else 0
        self.hooks = OffsetHooks(self.sites, self.final_site)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() \
            is not None else int(model.config.vocab_size)
        self.probe = None
        if config.variant in ("t", "u"):
            from .probe import resolve_probe

            self.probe = resolve_probe(model, config.probe)
        self.debias = None
        if config.variant in ("b", "u"):
            from .debias import GroupDebias

            self.debias = GroupDebias(model, self.tokenizer, config.groups, self.vocab_size)
        self.last_stats: dict[str, Any] | None = None
        self._last_grads: dict | None = None
        self._last_deltas: dict | None = None
        self._warned_no_grad = False
        self.embed_scale = _embedding_scale(model)

    # -- public -------------------------------------------------------------------------------------------
    def _generate(self, input_ids=None, attention_mask=None, **kwargs):
        if input_ids is None:
            raise UserInputError("UDDIA generate needs input_ids (or prompt=/prompts=/messages=)")
        gen = self._generation_args(kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[1] == 0:
            raise UserInputError("UDDIA generate got an empty prompt")
        if (attention_mask[:, -1] == 0).any():
            raise UserInputError("UDDIA needs left-padded prompts (the last column must be real tokens for every row)")
        seqs = self.generate_with_redo(input_ids, attention_mask, gen)
        if gen["return_dict_in_generate"]:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            return GenerateDecoderOnlyOutput(sequences=seqs)
        return seqs

    def _generation_args(self, kwargs: dict) -> dict:
        unknown = sorted(set(kwargs) - _GEN_KEYS)
        if unknown:
            raise UserInputError(f"UDDIA generate does not support {', '.join(unknown)}; supported: max_new_tokens, "
                                 "do_sample, temperature, top_p, top_k, eos_token_id, pad_token_id, generation_config")
        gc = kwargs.pop("generation_config", None) or self.model.generation_config

        def get(name, default=None):
            v = kwargs.get(name)
            if v is None:
                v = getattr(gc, name, None)
            return default if v is None else v

        for name, ok in (("num_beams", 1), ("num_return_sequences", 1), ("repetition_penalty", 1.0)):
            if get(name, ok) != ok:
                raise UserInputError(f"UDDIA generate does not support {name}={get(name)!r} (only {ok})")
        max_new = kwargs.get("max_new_tokens") or getattr(gc, "max_new_tokens", None) or 20
        if not isinstance(max_new, int) or max_new < 1:
            raise UserInputError(f"max_new_tokens={max_new!r} is invalid: expected an integer >= 1")
        do_sample = bool(get("do_sample", False))
        temperature = float(get("temperature", 1.0)) if do_sample else 1.0
        top_p = float(get("top_p", 1.0)) if do_sample else 1.0
        top_k = int(get("top_k", 50) or 0) if do_sample else 0  # HF generate's default: 50
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
            raise UserInputError(f"invalid sampling settings temperature={temperature}, top_p={top_p}, top_k={top_k}")
        eos = get("eos_token_id", self.tokenizer.eos_token_id)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        pad = get("pad_token_id", None)
        if pad is None:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
        return {"max_new_tokens": max_new, "do_sample": do_sample, "temperature": temperature, "top_p": top_p,
                "top_k": top_k, "eos": eos, "pad": int(pad), "min_new_tokens": int(get("min_new_tokens", 0) or 0),
                "return_dict_in_generate": bool(kwargs.get("return_dict_in_generate", False))}

    # -- redo ---------------------------------------------------------------------------------------------
    def generate_with_redo(self, input_ids, attention_mask, gen: dict) -> torch.Tensor:
        cfg = self.config
        B = input_ids.shape[0]
        best_new: list[torch.Tensor | None] = [None] * B
        best_ppl = torch.full((B,), math.inf, dtype=torch.float64)
        attempts = [[] for _ in range(B)]
        rows = torch.arange(B)
        T = self.T0
        counts = {"forward": 0, "backward": 0, "rows_forward": 0, "rows_backward": 0, "tokens": 0,
                  "ppl_passes": 0, "attempts": 0}
        t0 = time.perf_counter()
        with self.hooks.installed():
            while True:
                ids, mask = input_ids[rows], attention_mask[rows]
                new, new_mask, c = self._decode(ids, mask, T, gen)
                for k in c:
                    counts[k] += c[k]
                counts["attempts"] += 1
                ppl = self._perplexity(ids, mask, new, new_mask).double().cpu()
                counts["ppl_passes"] += 1
                accepted = []
                for j, r in enumerate(rows.tolist()):
                    attempts[r].append({"T": T, "ppl": float(ppl[j])})
                    if best_new[r] is None or ppl[j] < best_ppl[r]:
                        best_ppl[r] = ppl[j]
                        best_new[r] = new[j][new_mask[j].bool()].cpu()
                    accepted.append(bool(ppl[j] <= cfg.ppl_threshold))
                keep = ~torch.tensor(accepted)
                rows = rows[keep]
                T -= self.dT
                if len(rows) == 0 or self.dT == 0 or T < 1 or cfg.lr == 0:  # lr 0: every attempt is plain
                    break
        width = max(len(t) for t in best_new)
        out = torch.full((B, input_ids.shape[1] + width), gen["pad"], dtype=input_ids.dtype, device=input_ids.device)
        out[:, : input_ids.shape[1]] = input_ids
        kept_tokens = 0
        for r, t in enumerate(best_new):
            out[r, input_ids.shape[1] : input_ids.shape[1] + len(t)] = t.to(out.device)
            kept_tokens += len(t)
        self.last_stats = {
            "T0": self.T0, "layer_step": self.dT, "attempt_log": attempts, "perplexity": best_ppl.tolist(),
            "kept_tokens": kept_tokens, "seconds": time.perf_counter() - t0, **counts,
            "redo_scorer": "generator (base weights)",
        }
        return out

    @torch.no_grad()
    def _perplexity(self, ids, mask, new, new_mask) -> torch.Tensor:
        """Conditional perplexity of each row's continuation under the base model (offsets off)."""
        full = torch.cat([ids, new], 1)
        fmask = torch.cat([mask, new_mask], 1)
        pos = (fmask.cumsum(-1) - 1).clamp_min(0)
        logits = self.model(input_ids=full, attention_mask=fmask, position_ids=pos, use_cache=False).logits
        P = ids.shape[1]
        lp = torch.log_softmax(logits[:, P - 1 : -1].float(), -1)
        nll = -lp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        return core.conditional_perplexity(nll, new_mask.to(nll.dtype))

    # -- one attempt --------------------------------------------------------------------------------------
    def _active_sites(self, T: int):
        lo = self.depth - T
        return [s for s in self.sites if s.layer >= lo] + [self.final_site]

    def _zero_deltas(self, B: int, T: int) -> dict[int, torch.Tensor]:
        return {id(s.module): torch.zeros(B, s.dim, device=module_device(s.module), dtype=torch.float32,
                                           requires_grad=True) for s in self._active_sites(T)}

    def _decode(self, input_ids, attention_mask, T: int, gen: dict, return_cache: bool = False):
        """Decode one continuation per row with T tuned layers -> (new ids [B, n], their mask [B, n], counts)."""
        cfg = self.config
        model = self.model
        B, P = input_ids.shape
        device = input_ids.device
        emb_layer = model.get_input_embeddings()
        W_E = emb_layer.weight
        counts = {"forward": 0, "backward": 0, "rows_forward": 0, "rows_backward": 0, "tokens": 0}
        cache = _make_cache(model)
        mask = attention_mask.clone()
        pos_all = (mask.cumsum(-1) - 1).clamp_min(0)
        hooks = self.hooks
        d_model = self.final_site.dim
        prefix_sum = torch.zeros(B, d_model, device=device, dtype=torch.float32)
        prefix_cnt = torch.zeros(B, device=device, dtype=torch.float32)
        if P > 1:
            with torch.no_grad(), hooks.use(None):
                model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos_all[:, :-1],
                      past_key_values=cache, use_cache=True)
                h = hooks.captured.float()
                m = mask[:, :-1].unsqueeze(-1).to(h.dtype)
                prefix_sum += (h.to(device) * m.to(device)).sum(1)
                prefix_cnt += mask[:, :-1].sum(1).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            ctx_sum = (W_E[input_ids.to(W_E.device)].float().to(device) * mask.unsqueeze(-1)).sum(1)
        ctx_len = mask.sum(1).float()
        cur = input_ids[:, -1:]
        cur_pos = pos_all[:, -1:]
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        new_ids, new_mask = [], []
        eos = torch.tensor(gen["eos"], device=device) if gen["eos"] else None
        lr = cfg.lr
        use_probe = cfg.variant in ("t", "u")
        for step in range(gen["max_new_tokens"]):
            deltas = self._zero_deltas(B, T)
            # (1) trial forward of x_t, delta = 0: the base logits; its K/V extend the base cache
            with torch.enable_grad(), hooks.use(deltas):
                out = model(input_ids=cur, attention_mask=mask, position_ids=cur_pos, past_key_values=cache,
                            use_cache=True)
                logits = out.logits[:, -1, : self.vocab_size].float()
                h_x = hooks.captured[:, -1].float().to(device)
            counts["forward"] += 1
            counts["rows_forward"] += B
            detach_cache(cache)
            base_logp = torch.log_softmax(logits.detach(), -1)
            h_x_base = h_x.detach()
            tuned_logp = base_logp
            # which rows need a gradient step at all
            need = torch.ones(B, dtype=torch.bool, device=device) if use_probe else \
                torch.zeros(B, dtype=torch.bool, device=device)
            triggered = None
            if self.debias is not None:
                gaps = self.debias.gaps(base_logp.exp())  # [G, B]
                triggered = gaps > cfg.trigger
                if cfg.variant == "b":
                    need = triggered.any(0)
            if lr > 0 and bool(need.any()):
                m_state = {k: torch.zeros_like(d) for k, d in deltas.items()}
                v_state = {k: torch.zeros_like(d) for k, d in deltas.items()}
                for it in range(cfg.steps):
                    if it > 0:  # re-run the trial forward with the current offsets on the cache before x_t
                        with torch.enable_grad(), hooks.use(deltas), scratch(cache, 1):
                            out = model(input_ids=cur, attention_mask=mask, position_ids=cur_pos,
                                        past_key_values=cache, use_cache=True)
                            logits = out.logits[:, -1, : self.vocab_size].float()
                        counts["forward"] += 1
                        counts["rows_forward"] += B
                    with torch.enable_grad():
                        p_theta = torch.softmax(logits, -1)
                        tox = bias = None
                        if use_probe:
                            soft = (p_theta.to(device=W_E.device, dtype=W_E.dtype) @ W_E[: self.vocab_size])
                            soft = (soft * self.embed_scale).unsqueeze(1)
                            soft_mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
                            with hooks.use(deltas), scratch(cache, 0):
                                model(inputs_embeds=soft, attention_mask=soft_mask, position_ids=cur_pos + 1,
                                      past_key_values=cache, use_cache=True)
                                h_soft = hooks.captured[:, -1].float().to(device)
                            counts["forward"] += 1
                            counts["rows_forward"] += B
                            h_mean = core.mean_hidden(prefix_sum, prefix_cnt, h_x_base, h_soft)
                            tox = core.toxicity_loss(self.probe.logits(h_mean))
                        if self.debias is not None:
                            per_group = self.debias.losses(p_theta, ctx_sum / ctx_len.unsqueeze(1), ctx_len)
                            bias = (per_group * triggered.to(per_group.dtype)).sum(0)
                            loss = core.combined_loss(cfg.variant, tox, bias, torch.ones_like(bias, dtype=torch.bool),
                                                      cfg.debias_weight)
                        else:
                            loss = tox
                        keys = list(deltas)
                        grads = torch.autograd.grad(loss.sum(), [deltas[k] for k in keys], allow_unused=True)
                    counts["backward"] += 1
                    counts["rows_backward"] += B
                    new_deltas = {}
                    for k, g in zip(keys, grads):
                        if g is None:
                            g = torch.zeros_like(deltas[k])
                        upd, m_state[k], v_state[k] = core.adam_step(g, m_state[k], v_state[k], it + 1, lr)
                        new_deltas[k] = (deltas[k].detach() - upd).requires_grad_(True)
                    self._last_grads = {k: (g.detach() if g is not None else None) for k, g in zip(keys, grads)}
                    if not self._warned_no_grad and any(g is None for g in grads):
                        self._warned_no_grad = True
                        log.warning("UDDIA: %d of %d offsets received no gradient (e.g. bitsandbytes 4-bit layers on "
                                    "CPU do not backpropagate to their inputs); they stay at zero",
                                    sum(g is None for g in grads), len(grads))
                    deltas = new_deltas
                # (4) perturbed forward of x_t with the tuned offsets (K/V discarded)
                with torch.no_grad(), hooks.use(deltas), scratch(cache, 1):
                    out = model(input_ids=cur, attention_mask=mask, position_ids=cur_pos, past_key_values=cache,
                                use_cache=True)
                    tuned_logp = torch.log_softmax(out.logits[:, -1, : self.vocab_size].float(), -1)
                counts["forward"] += 1
                counts["rows_forward"] += B
                if cfg.variant == "b":  # rows without a triggered group keep the untuned distribution
                    tuned_logp = torch.where(need.unsqueeze(1), tuned_logp, base_logp)
                self._last_deltas = {k: d.detach() for k, d in deltas.items()}
            with torch.no_grad():
                fused = core.fuse_log_probs(tuned_logp, base_logp, cfg.fusion)
                if step < gen["min_new_tokens"] and eos is not None:
                    fused[:, eos] = -math.inf
                nxt = self._pick(fused, gen)
                nxt = torch.where(finished, torch.full_like(nxt, gen["pad"]), nxt)
                new_ids.append(nxt)
                new_mask.append((~finished).long())
                counts["tokens"] += int((~finished).sum())
                if eos is not None:
                    finished = finished | torch.isin(nxt, eos)
                # bookkeeping for the next step
                prefix_sum = prefix_sum + h_x_base
                prefix_cnt = prefix_cnt + 1
                ctx_sum = ctx_sum + W_E[nxt.to(W_E.device)].float().to(device)
                ctx_len = ctx_len + 1
                mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
                cur = nxt.unsqueeze(1)
                cur_pos = cur_pos + 1
            if bool(finished.all()):
                break
        new = torch.stack(new_ids, 1)
        nmask = torch.stack(new_mask, 1)
        if return_cache:
            return new, nmask, counts, cache
        return new, nmask, counts

    @staticmethod
    def _pick(logp: torch.Tensor, gen: dict) -> torch.Tensor:
        if not gen["do_sample"]:
            return logp.argmax(-1)
        scores = logp / gen["temperature"]
        if gen["top_k"] and gen["top_k"] < scores.shape[-1]:
            kth = torch.topk(scores, gen["top_k"], dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        scores = core.top_p_mask(scores, gen["top_p"])
        return torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)
