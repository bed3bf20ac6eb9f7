"""UDDIA on any HF decoder: a custom decoding loop with per-sample offsets, a base KV cache and redo.

Per generated token (``steps = 1``):

1. *trial* forward of the last token x_t of every row on the base cache with offsets δ = 0 (grad enabled):
   its logits are the base logits and its K/V (detached) extend the base cache;
2. *trigger*: a row is tuned only if the probe's toxicity of its look-ahead token exceeds ``tox_trigger``
   (``t``/``u``) or the Hellinger gap of its next-token distribution exceeds ``trigger`` (``b``/``u``). The
   look-ahead is the forward of the soft token ē = p_θᵀ W_E (the expected next token) on the base cache through
   x_t, with gradients and the (zero) offsets, for every live row: for a gated row it *is* step 3 at δ = 0, so
   one pass over the weights serves both. ``tox_gate="last"`` pre-checks x_t's own final hidden state instead
   (no extra forward) and runs the look-ahead for the rows above it only. The rest of the step runs on the
   triggered rows (the cache is row-selected in a scratch view);
3. *look-ahead* with gradients (``t``/``u``; with ``gradient_path="look_ahead"`` ē is held constant and the
   gradient flows only through the look-ahead's tuned layers); the trigger is recomputed on the loss's own
   quantities (the probe on the look-ahead, the gap of p_θ) before every step and rows below it take no step.
   Only its final hidden state is used, so it runs through the backbone (no LM-head logits);
4. one backward of L = 1[tox] L_tox + λ 1[Δ > trigger] L_bias into δ only, and an Adam step from a fresh state
   scaled per site (``step_scale="rms"``: ``lr`` x the site's activation RMS);
5. *perturbed* forward of x_t on the base cache before x_t with the new δ (no grad; its K/V are discarded)
   for the rows that moved, through the tuned blocks only: the blocks below carry no offsets, so x_t's state
   entering the first tuned block is replayed from the trial forward; with ``kl_budget`` > 0 rows whose
   KL(tuned || base) exceeds it are shrunk and re-run (at most twice, then left untuned);
6. fuse p ∝ p_tuned^γ p_base^(1-γ), apply temperature / top-k / top-p, pick the next token.

So with the default gate every live row costs the trial and the look-ahead forwards per token, and a triggered
one the perturbed forward of the top T blocks and its share of one backward on top; with ``tox_gate="last"`` an
untriggered row costs one forward (plain decoding). The two shortcuts (backbone look-ahead, replayed lower blocks)
are compared once with the full forward at their first use and dropped, with a warning, on a decoder where they
differ.

Scratch forwards work on the same cache object and restore its layers' state afterwards, so the base cache
only ever holds unperturbed K/V. After a continuation is done its perplexity under the base model decides,
per row, whether to redo it with T ← T − ΔT: only rows that were tuned at least once are redone (an untuned
row *is* plain decoding), and the lowest-perplexity attempt is kept when all fail.
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
from .sites import LowerBlocks, OffsetHooks, backbone, collect_sites, find_blocks, module_device

log = logging.getLogger(__name__)

_GEN_KEYS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "eos_token_id", "pad_token_id",
             "generation_config", "return_dict_in_generate", "use_cache", "max_length", "min_new_tokens",
             "repetition_penalty", "num_beams", "num_return_sequences", "output_scores", "output_logits"}
KL_RETRIES = 2


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
def scratch(cache, drop_last: int, rows: torch.Tensor | None = None):
    """Run forwards on ``cache`` restricted to ``rows`` (all when None) and without its last ``drop_last``
    positions, then restore it exactly."""
    layers = _cache_layers(cache)
    saved = [dict(layer.__dict__) for layer in layers]
    try:
        for layer in layers:
            if rows is not None:
                layer.batch_select_indices(rows)
            if drop_last:
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
        from . import stats

        self.sites, self.final_site, self.depth = collect_sites(model)
        self.T0 = core.resolve_depth(config.num_layers, self.depth)
        if self.T0 > self.depth:
            raise UserInputError(f"UDDIAConfig.num_layers={config.num_layers!r} is invalid for this model: it has "
                                 f"{self.depth} layers (use at most {self.depth}, or a fraction in (0, 1])")
        self.dT = core.resolve_depth(config.layer_step, self.depth) if config.layer_step else 0
        self.hooks = OffsetHooks(self.sites, self.final_site)
        # shortcuts, each compared once with the full forward at its first use (None = not yet; False = off):
        # the look-ahead needs only final hidden states (the backbone: no LM-head logits), and the perturbed
        # forward only the tuned blocks (the ones below replay the trial forward's state)
        self.lower = LowerBlocks(find_blocks(model)[1])
        self.backbone = backbone(model)
        self._shortcut_ok: dict[str, bool | None] = {"backbone": None if self.backbone is not model else False,
                                                     "replay": None}
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() \
            is not None else int(model.config.vocab_size)
        self.probe = None
        if config.variant in ("t", "u"):
            from .probe import resolve_probe

            self.probe = resolve_probe(model, config.probe)
        self.debias = None
        if config.variant in ("b", "u"):
            from .debias import GroupDebias

            self.debias = GroupDebias(model, self.tokenizer, config.groups, self.vocab_size,
                                      max_ratio=config.group_balance, frame=stats.embedding_frame(model, self.vocab_size),
                                      freq=stats.token_prior(model, self.tokenizer, self.vocab_size))
        rms = stats.site_rms(model, self.tokenizer, self.sites, self.final_site)
        self.site_rms = {id(s.module): rms[s.name] for s in [*self.sites, self.final_site]}
        self.site_scale = (dict(self.site_rms) if config.step_scale == "rms"
                           else {k: 1.0 for k in self.site_rms})
        self.last_stats: dict[str, Any] | None = None
        self.redo_threshold: float | None = float(config.ppl_threshold) if config.ppl_threshold else None
        self._last_grads: dict | None = None
        self._last_deltas: dict | None = None
        self._last_rows: torch.Tensor | None = None
        self._last_logps: tuple | None = None
        self._warned_no_grad = False
        self._offsets_in_look_ahead = True  # the paper's: the look-ahead runs with the offsets too
        self.embed_scale = _embedding_scale(model)
        # an observer of the offsets UDDIA applies (``distill.OffsetAccumulator``; None = nothing recorded)
        self.offset_observer = None

    def describe(self) -> dict:
        """What this wrapper does on this model: depth, sites, step rule, triggers, redo threshold, probe, groups."""
        cfg = self.config
        rms = sorted(self.site_rms.values())
        out = {
            "variant": cfg.variant, "depth": self.depth, "T0": self.T0, "layer_step": self.dT,
            "sites_per_pass": len(self._active_sites(self.T0)),
            "step": {"rule": cfg.step_scale, "lr": cfg.lr, "kl_budget": cfg.kl_budget or None,
                     "site_rms_min": rms[0], "site_rms_median": rms[len(rms) // 2], "site_rms_max": rms[-1]},
            "tox_trigger": cfg.tox_trigger if self.probe is not None else None,
            "tox_gate": cfg.tox_gate if self.probe is not None else None,
            "gradient_path": cfg.gradient_path,
            "trigger": cfg.trigger if self.debias is not None else None,
            "redo_threshold": self.redo_threshold,
            "redo_rule": (f"fixed {cfg.ppl_threshold:g}" if cfg.ppl_threshold else
                          f"{cfg.ppl_factor:g} x median plain perplexity (measured at the first generate)")
            if self.dT else "off",
        }
        if self.probe is not None:
            out["probe"] = {k: self.probe.meta.get(k) for k in ("model_name", "labeller", "n_train", "val_accuracy",
                                                                  "calibration") if k in self.probe.meta}
        if self.debias is not None:
            out["groups"] = self.debias.describe()
        return out

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
    def _threshold(self, gen: dict) -> float:
        if self.config.ppl_threshold:
            return float(self.config.ppl_threshold)
        from .stats import plain_perplexities

        ppls = plain_perplexities(self.model, self.tokenizer, gen, self._perplexity)
        self.redo_threshold = core.redo_threshold(ppls, self.config.ppl_factor)
        return self.redo_threshold

    def generate_with_redo(self, input_ids, attention_mask, gen: dict) -> torch.Tensor:
        cfg = self.config
        B = input_ids.shape[0]
        redo = self.dT > 0 and cfg.lr > 0
        threshold = self._threshold(gen) if redo else math.inf
        best_new: list[torch.Tensor | None] = [None] * B
        best_ppl = torch.full((B,), math.inf, dtype=torch.float64)
        attempts = [[] for _ in range(B)]
        rows = torch.arange(B)
        T = self.T0
        counts = {"forward": 0, "backward": 0, "rows_forward": 0, "rows_backward": 0, "tokens": 0,
                  "row_tokens": 0, "tuned_row_tokens": 0, "gated_row_tokens": 0, "kl_sum": 0.0, "kl_max": 0.0,
                  "kl_shrunk": 0, "kl_dropped": 0, "kl_values": [], "attempts": 0, "check_forwards": 0}
        t0 = time.perf_counter()
        with self.hooks.installed():
            while True:
                ids, mask = input_ids[rows], attention_mask[rows]
                if self.offset_observer is not None:
                    self.offset_observer.begin_attempt(rows)
                new, new_mask, c, tuned, nll = self._decode(ids, mask, T, gen)
                for k in c:
                    counts[k] = max(counts[k], c[k]) if k == "kl_max" else counts[k] + c[k]
                counts["attempts"] += 1
                if redo:  # the base model's log-probs of the chosen tokens, kept while decoding: no extra pass
                    ppl = core.conditional_perplexity(nll.double(), new_mask.double()).cpu()
                else:  # nothing to decide
                    ppl = torch.full((len(rows),), math.nan, dtype=torch.float64)
                accepted, kept = [], []
                for j, r in enumerate(rows.tolist()):
                    attempts[r].append({"T": T, "ppl": float(ppl[j]), "tuned_tokens": int(tuned[j])})
                    kept.append(best_new[r] is None or bool(ppl[j] < best_ppl[r]))
                    if kept[-1]:
                        best_ppl[r] = ppl[j]
                        best_new[r] = new[j][new_mask[j].bool()].cpu()
                    # an untuned row is plain decoding: redoing it would only resample it
                    accepted.append(bool(ppl[j] <= threshold) or int(tuned[j]) == 0)
                if self.offset_observer is not None:
                    self.offset_observer.end_attempt(kept)
                rows = rows[~torch.tensor(accepted)]
                T -= self.dT
                if len(rows) == 0 or not redo or T < 1:
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
            "redo_threshold": threshold if redo else None, "redo_scorer": "generator (base weights)",
            "trigger_rate": counts["tuned_row_tokens"] / max(counts["row_tokens"], 1),
            "mean_kl_tuned": counts["kl_sum"] / max(counts["tuned_row_tokens"], 1),
        }
        return out

    @torch.no_grad()
    def _perplexity(self, ids, mask, new, new_mask) -> torch.Tensor:
        """Conditional perplexity of each row's continuation under the base model (offsets off)."""
        full = torch.cat([ids, new], 1)
        fmask = torch.cat([mask, new_mask], 1)
        pos = (fmask.cumsum(-1) - 1).clamp_min(0)
        with self.hooks.use(None):
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
        """Decode one continuation per row with T tuned layers -> (new ids [B, n], their mask [B, n], counts,
        tuned tokens per row [B], each new token's NLL under the base model [B, n]: the redo's score)."""
        cfg = self.config
        model = self.model
        B, P = input_ids.shape
        device = input_ids.device
        W_E = model.get_input_embeddings().weight
        counts = {"forward": 0, "backward": 0, "rows_forward": 0, "rows_backward": 0, "tokens": 0, "row_tokens": 0,
                  "tuned_row_tokens": 0, "gated_row_tokens": 0, "kl_sum": 0.0, "kl_max": 0.0, "kl_shrunk": 0,
                  "kl_dropped": 0, "kl_values": []}
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
        tuned_per_row = torch.zeros(B, dtype=torch.long)
        new_ids, new_mask, new_nll = [], [], []
        eos = torch.tensor(gen["eos"], device=device) if gen["eos"] else None
        tune = cfg.lr > 0
        # Where a gradient flows through p_theta (the paper's path, or the debias term, a function of p_theta) the
        # trial forward carries a graph for the whole batch; with the free gate (tox_gate="last") few rows of a
        # batch are tuned, so the trial runs without one and the tuned rows' trial is re-run with gradients
        # instead (the same function at delta = 0: same logits, same gradient; a backward through those rows
        # only, for one more forward of them: cheaper unless the batch is a single row).
        lo = self.depth - T  # the blocks below lo carry no offsets
        through_p = tune and (cfg.gradient_path == "full" or self.debias is not None)
        trial_grad = through_p and (cfg.tox_gate == "look_ahead" or B == 1)
        retrial = through_p and not trial_grad
        for step in range(gen["max_new_tokens"]):
            deltas0 = self._zero_deltas(B, T) if tune else None
            # (1) trial forward of x_t, delta = 0: the base logits; its K/V extend the base cache
            with torch.set_grad_enabled(trial_grad), hooks.use(deltas0), self.lower.record(lo if tune else 0):
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
            live = ~finished
            counts["row_tokens"] += int(live.sum())
            if self.offset_observer is not None:
                self.offset_observer.step(live)
            if tune:
                # (2) trigger on the untuned context; later checks use the loss's own quantities
                gate = torch.zeros(B, dtype=torch.bool, device=device)
                look = None  # (rows, their look-ahead states at delta = 0, with the graph) when computed here
                if self.probe is not None and cfg.tox_gate == "last":  # free pre-check: x_t's own final state
                    gate = self.probe.toxic_prob(h_x_base) > cfg.tox_trigger
                elif self.probe is not None and bool(live.any()):
                    # the trigger: the probe on the expected next token. That look-ahead at delta = 0 is step 3's
                    # for a gated row, so it runs once, with gradients, for every live row: one pass over the
                    # weights instead of a no-grad pass for all and a second one for the gated rows
                    lrows = live.nonzero().squeeze(1)
                    with torch.enable_grad():
                        p_l = torch.softmax(logits[lrows], -1)
                        p_soft = p_l if cfg.gradient_path == "full" else p_l.detach()
                        with hooks.use({k: d[lrows] for k, d in deltas0.items()}
                                       if self._offsets_in_look_ahead else None):
                            h_soft = self._look_ahead(p_soft, lrows, cache, mask, cur_pos, counts)
                    look = (lrows, h_soft)
                    gate[lrows] = self.probe.toxic_prob(h_soft.detach()) > cfg.tox_trigger
                if self.debias is not None:
                    gate |= (self.debias.gaps(base_logp.exp()) > cfg.trigger).any(0)
                gate &= live
                rows = gate.nonzero().squeeze(1)
                counts["gated_row_tokens"] += len(rows)
                if len(rows):
                    ctx = {"cache": cache, "cur": cur, "cur_pos": cur_pos, "mask": mask, "prefix_sum": prefix_sum,
                           "prefix_cnt": prefix_cnt, "h_x": h_x_base, "ctx_mean": ctx_sum / ctx_len.unsqueeze(1),
                           "ctx_len": ctx_len, "retrial": retrial, "lo": lo,
                           "look": look}
                    moved, moved_logp = self._tune(rows, deltas0, logits, base_logp, ctx, counts)
                    if len(moved):
                        tuned_logp = base_logp.clone()
                        tuned_logp[moved] = moved_logp
                        tuned_per_row[moved.cpu()] += 1
                        counts["tuned_row_tokens"] += len(moved)
            del deltas0, logits, out
            with torch.no_grad():
                fused = core.fuse_log_probs(tuned_logp, base_logp, cfg.fusion)
                if step < gen["min_new_tokens"] and eos is not None:
                    fused[:, eos] = -math.inf
                nxt = self._pick(fused, gen)
                nxt = torch.where(finished, torch.full_like(nxt, gen["pad"]), nxt)
                new_ids.append(nxt)
                new_nll.append(-base_logp.gather(1, nxt.unsqueeze(1)).squeeze(1))  # offsets off: the base model
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
        nll = torch.stack(new_nll, 1)
        if return_cache:
            return new, nmask, counts, tuned_per_row, nll, cache
        return new, nmask, counts, tuned_per_row, nll

    def _tune(self, rows, deltas0, logits, base_logp, ctx, counts):
        """Steps 3-5 for the triggered ``rows``: -> (rows that moved, their tuned log-probs)."""
        cfg = self.config
        hooks = self.hooks
        cache = ctx["cache"]
        n = len(rows)
        sel = None if n == ctx["cur"].shape[0] else rows
        cur, cur_pos, mask = ctx["cur"][rows], ctx["cur_pos"][rows], ctx["mask"][rows]
        prefix_sum, prefix_cnt, h_x = ctx["prefix_sum"][rows], ctx["prefix_cnt"][rows], ctx["h_x"][rows]
        ctx_mean, ctx_len = ctx["ctx_mean"][rows], ctx["ctx_len"][rows]
        keys = list(deltas0)
        with torch.enable_grad():  # (the caller may be under no_grad)
            deltas = {k: d[rows] for k, d in deltas0.items()}  # step 0: views of the trial graph's leaves
            logits_k = logits[rows]
        m_state = {k: torch.zeros(n, d.shape[-1], device=d.device) for k, d in deltas0.items()}
        v_state = {k: torch.zeros_like(m_state[k]) for k in keys}
        moved = torch.zeros(n, dtype=torch.bool, device=rows.device)  # took at least one step
        active = torch.ones(n, dtype=torch.bool, device=rows.device)  # above the trigger at every step so far
        for it in range(cfg.steps):
            with torch.enable_grad():
                if it > 0 or ctx["retrial"]:  # the trial forward (again), current offsets, cache before x_t
                    with hooks.use(deltas), scratch(cache, 1, sel):
                        out = self.model(input_ids=cur, attention_mask=mask, position_ids=cur_pos,
                                         past_key_values=cache, use_cache=True)
                        logits_k = out.logits[:, -1, : self.vocab_size].float()
                    counts["forward"] += 1
                    counts["rows_forward"] += n
                p_theta = torch.softmax(logits_k, -1)
                loss = torch.zeros(n, device=p_theta.device)
                on = torch.zeros(n, dtype=torch.bool, device=p_theta.device)
                if self.probe is not None:
                    if it == 0 and ctx["look"] is not None:  # computed with the trigger, for every live row
                        lrows, h_live = ctx["look"]
                        h_soft = h_live[torch.searchsorted(lrows, rows)]
                    else:
                        p_soft = p_theta if cfg.gradient_path == "full" else p_theta.detach()
                        with hooks.use(deltas if self._offsets_in_look_ahead else None):
                            h_soft = self._look_ahead(p_soft, rows, cache, ctx["mask"], ctx["cur_pos"], counts)
                    probe_logits = self.probe.logits(core.mean_hidden(prefix_sum, prefix_cnt, h_x, h_soft))
                    tox_on = self.probe.toxic_prob(h_soft.detach()) > cfg.tox_trigger
                    loss = loss + core.toxicity_loss(probe_logits) * tox_on
                    on |= tox_on
                if self.debias is not None:
                    bias_on = self.debias.gaps(p_theta.detach()) > cfg.trigger  # [G, n]
                    per_group = self.debias.losses(p_theta, ctx_mean, ctx_len)
                    weight = 1.0 if cfg.variant == "b" else cfg.debias_weight
                    loss = loss + weight * (per_group * bias_on.to(per_group.dtype)).sum(0)
                    on |= bias_on.any(0)
                on &= active.to(on.device)  # a row that fell below the trigger stops
                if not bool(on.any()):
                    break
                wrt = [deltas0[k] for k in keys] if it == 0 else [deltas[k] for k in keys]
                grads = torch.autograd.grad(loss.sum(), wrt, allow_unused=True)
            counts["backward"] += 1
            # the backward runs through the graph the loss hangs on: the look-ahead of every live row when the
            # trigger's look-ahead was reused
            counts["rows_backward"] += len(ctx["look"][0]) if it == 0 and ctx["look"] is not None else n
            if it == 0:
                grads = [g[rows] if g is not None else None for g in grads]
                self._last_grads = {k: (g.detach() if g is not None else None) for k, g in zip(keys, grads)}
            if not self._warned_no_grad and any(g is None for g in grads):
                self._warned_no_grad = True
                log.warning("UDDIA: %d of %d offsets received no gradient (e.g. bitsandbytes 4-bit layers on "
                            "CPU do not backpropagate to their inputs); they stay at zero",
                            sum(g is None for g in grads), len(grads))
            step_on = on.unsqueeze(1).float()
            grads = [torch.zeros_like(m_state[k]) if g is None else g for k, g in zip(keys, grads)]
            if cfg.update == "gradient":  # steepest descent in RMS units, normalised per row
                scaled = [g * self.site_scale[k] for k, g in zip(keys, grads)]
                norm = core.rows_rms(scaled).clamp_min(1e-30).unsqueeze(1)
                upds = [cfg.lr * sg / norm for sg in scaled]
            else:  # Adam from a fresh state (one step: lr * sign(g))
                upds = []
                for k, g in zip(keys, grads):
                    upd, m_state[k], v_state[k] = core.adam_step(g, m_state[k], v_state[k], it + 1, cfg.lr)
                    upds.append(upd)
            deltas = {k: (deltas[k].detach() - upd * self.site_scale[k] * step_on).requires_grad_(True)
                      for k, upd in zip(keys, upds)}
            active = on.to(rows.device)
            moved |= active
        idx = moved.nonzero().squeeze(1)
        if len(idx) == 0:
            return rows[:0], None
        final = {k: d.detach()[idx] for k, d in deltas.items()}
        rows_m = rows[idx]
        base_m = base_logp[rows_m]
        tuned = self._perturbed(final, rows_m, ctx, counts)
        if cfg.kl_budget > 0:
            kl = core.kl_rows(tuned, base_m)
            for _ in range(KL_RETRIES):
                over = (kl > cfg.kl_budget).nonzero().squeeze(1)
                if len(over) == 0:
                    break
                counts["kl_shrunk"] += len(over)
                factor = core.kl_budget_scale(kl[over], cfg.kl_budget).unsqueeze(1)
                for k in final:
                    final[k][over] = final[k][over] * factor.to(final[k].device)
                tuned[over] = self._perturbed({k: d[over] for k, d in final.items()}, rows_m[over], ctx, counts)
                kl[over] = core.kl_rows(tuned[over], base_m[over])
            over = kl > cfg.kl_budget
            if bool(over.any()):  # still over after the retries: this row is not tuned at this token
                counts["kl_dropped"] += int(over.sum())
                tuned[over] = base_m[over]
                for k in final:
                    final[k][over] = 0
            kl = kl[~over]
        else:
            kl = core.kl_rows(tuned, base_m)
        counts["kl_sum"] += float(kl.sum())
        counts["kl_max"] = max(counts["kl_max"], float(kl.max()) if len(kl) else 0.0)
        counts["kl_values"].extend(kl.tolist())
        self._last_rows, self._last_deltas = rows_m, final
        if self.offset_observer is not None:  # the offsets x_t's distribution was computed with (after KL shrink)
            self.offset_observer.offsets(rows_m, final)
        self._last_logps = (tuned, base_m)
        return rows_m, tuned

    def _look_ahead(self, p, rows, cache, mask, cur_pos, counts) -> torch.Tensor:
        """Final hidden state of the soft token ē = pᵀ W_E (the expected next token) on the base cache through x_t,
        for ``rows`` (offsets: whatever the hooks hold; differentiable when grad is on). Only the final hidden
        state is used, so the forward runs through the backbone (no LM-head logits, none in the backward)."""
        W_E = self.model.get_input_embeddings().weight
        n = len(rows)
        sel = None if n == mask.shape[0] else rows
        soft = (p.to(device=W_E.device, dtype=W_E.dtype) @ W_E[: self.vocab_size]) * self.embed_scale
        kwargs = {"inputs_embeds": soft.unsqueeze(1), "attention_mask": torch.cat([mask[rows], mask.new_ones(n, 1)], 1),
                  "position_ids": cur_pos[rows] + 1, "past_key_values": cache, "use_cache": True}
        ok = self._shortcut_ok["backbone"]
        with scratch(cache, 0, sel):
            (self.backbone if ok is not False else self.model)(**kwargs)
            h = self.hooks.captured[:, -1].float()
        counts["forward"] += 1
        counts["rows_forward"] += n
        if ok is None:  # first use: the backbone's final state must be the full model's (same grad mode: on a
            with scratch(cache, 0, sel):  # mismatch the full forward's result, graph included, is used)
                self.model(**kwargs)
                full = self.hooks.captured[:, -1].float()
            self._confirm_shortcut("backbone", h.detach(), full, counts)
            if not self._shortcut_ok["backbone"]:
                h = full
        return h.to(p.device)

    def _confirm_shortcut(self, name: str, got: torch.Tensor, full: torch.Tensor, counts: dict) -> None:
        """Keep a shortcut only if its first result equals the full forward's (else warn and stop using it). The
        comparison forward is counted apart (``check_forwards``), not as decoding work."""
        counts["check_forwards"] = counts.get("check_forwards", 0) + 1
        err = float((got.detach().float() - full.detach().float()).abs().max())
        scale = float(full.detach().float().abs().max()) + 1e-6
        ok = err <= 1e-3 * scale
        self._shortcut_ok[name] = ok
        if not ok:
            log.warning("UDDIA: the %s shortcut differs from the full forward on %s (max |diff| %.3g of %.3g); "
                        "running full forwards instead", name, type(self.model).__name__, err, scale)

    @torch.no_grad()
    def _perturbed(self, deltas, rows, ctx, counts) -> torch.Tensor:
        """Step 5: x_t's next-token log-probs with offsets ``deltas`` (rows ``rows``), on the cache before x_t.
        Only the tuned blocks run: the ones below replay x_t's state from the trial forward (the offsets cannot
        change it)."""
        n = len(rows)
        sel = None if n == ctx["cur"].shape[0] else rows
        kwargs = {"input_ids": ctx["cur"][rows], "attention_mask": ctx["mask"][rows],
                  "position_ids": ctx["cur_pos"][rows], "past_key_values": ctx["cache"], "use_cache": True}
        ok = self._shortcut_ok["replay"]
        with self.hooks.use(deltas), scratch(ctx["cache"], 1, sel):
            with self.lower.replay(ctx["lo"], sel) if ok is not False else contextlib.nullcontext():
                logits = self.model(**kwargs).logits[:, -1, : self.vocab_size].float()
        counts["forward"] += 1
        counts["rows_forward"] += n
        if ok is None:  # first use: replaying the lower blocks must give the full forward's logits
            with self.hooks.use(deltas), scratch(ctx["cache"], 1, sel):
                full = self.model(**kwargs).logits[:, -1, : self.vocab_size].float()
            self._confirm_shortcut("replay", logits, full, counts)
            if not self._shortcut_ok["replay"]:
                logits = full
        return torch.log_softmax(logits, -1)

    @staticmethod
    def _pick(logp: torch.Tensor, gen: dict) -> torch.Tensor:
        if not gen["do_sample"]:
            return logp.argmax(-1)
        from ...core.sampling import draw, filter_scores

        return draw(filter_scores(logp / gen["temperature"], 1.0, gen["top_k"], gen["top_p"]))
