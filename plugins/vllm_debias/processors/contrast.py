"""``ContrastLogitsProcessor``: the ``pair`` behaviour, debias sampling as twin rows.

For every main request and its counterfactual ("aux") request (``debias_method: debias_sampling``, matched by
``debias_pair`` / ``debias_role``; :mod:`debias_lm.methods.debias_sampling.vllm`) that are both in the batch at
the same generation step, the scores are ``debias_lm.core.contrast(l_main, l_aux, alpha, beta)``; the token is
chosen by :func:`debias_lm.core.sampling.pick_tokens` (argmax, or the request's temperature / min-p / top-k /
top-p with one draw per pair: seeded requests from their seed, others from the engine's generator) for all pairs
at once, and **both** rows are forced to it (one-hot logits), so the aux context follows the main continuation.

A pair seen out of step (partner missing, different step, chunked prefill, resumed after preemption,
speculative decoding) is **broken**: it is never contrasted again, and the processor makes its two outputs
differ for sure (a row about to emit a position its partner already emitted may not emit the same token; two
rows at the same position are forced to two different tokens; under speculative decoding the aux row emits a
marker token the main row may not). So the caller's check "main and aux token ids are identical" holds exactly
when every step of the pair was contrasted: :func:`vllm_debias.generate` labels only those pairs ``applied``.
A pair whose contrast has no usable score (see :func:`debias_lm.core.contrast.contrast`) is handled the same
way: the main row takes its plain choice, the aux row another token.

As vLLM's own processors do, the host bookkeeping happens when the batch changes (V1 ``update_state``, every
step; MRV2 ``add_request`` / ``apply_staged_writes`` and the host arrays of the step's context), per-pair
values live in device tensors rebuilt only when the set of pairs changes, and ``apply`` is batched tensor code:
no Python loop over rows and **no host sync**.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from debias_lm.core.contrast import contrast
from debias_lm.core.sampling import GREEDY_EPS, pick_tokens, seeded_uniform

from .base import NEG_INF, DebiasProcessorBase, Req, log


class PairReq(Req):
    """A main or aux request, and the pair it belongs to."""

    __slots__ = ("pair",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pair: _Pair | None = None


class _Pair:
    """A main request and its counterfactual request, matched by their pair id."""

    __slots__ = ("id", "main", "aux", "outs", "broken", "alpha", "beta", "temperature", "top_k", "top_p",
                 "min_p", "seed")

    def __init__(self, pair_id: str) -> None:
        self.id = pair_id
        self.main: PairReq | None = None
        self.aux: PairReq | None = None
        self.outs: dict[str, list[int]] = {}  # V1: each role's live output list, kept while the pair is known
        self.broken = False
        self.alpha = 1.0
        self.beta = 0.1
        self.temperature = 0.0
        self.top_k = 0
        self.top_p = 1.0
        self.min_p = 0.0
        self.seed: int | None = None

    def take_params(self, req: PairReq) -> None:
        self.alpha, self.beta = req.spec.alpha, req.spec.beta
        if req.spec.sampling is not None:  # carried in the request (the rows themselves are greedy in vLLM)
            self.temperature, self.top_k, self.top_p, self.min_p, self.seed = req.spec.sampling
            self.top_k = max(self.top_k, 0)
            return
        sp = req.params
        self.temperature = float(getattr(sp, "temperature", 0.0) or 0.0)
        self.top_k = int(getattr(sp, "top_k", 0) or 0)
        if self.top_k < 0:  # vLLM's "off" is -1 or 0
            self.top_k = 0
        top_p = getattr(sp, "top_p", 1.0)
        self.top_p = 1.0 if top_p is None else float(top_p)
        self.min_p = float(getattr(sp, "min_p", 0.0) or 0.0)
        seed = getattr(sp, "seed", None)
        self.seed = None if seed is None else int(seed)


class _PairTensors:
    """Device tensors of the pairs a step contrasts, and host flags saying which filters any of them needs."""

    __slots__ = ("n", "alpha", "beta", "temperature", "top_k", "top_k_max", "top_p", "min_p", "seeded", "seed",
                 "all_greedy", "any_greedy", "any_seeded", "any_unseeded")

    @classmethod
    def build(cls, pairs: list[_Pair], to_dev) -> _PairTensors:
        self = cls()
        self.n = len(pairs)
        temp = np.array([p.temperature for p in pairs], dtype=np.float32)
        sampled = temp >= GREEDY_EPS
        self.all_greedy = not sampled.any()
        self.any_greedy = not sampled.all()
        seeded = np.array([p.seed is not None for p in pairs], dtype=bool) & sampled
        self.any_seeded = bool(seeded.any())
        self.any_unseeded = bool((sampled & ~seeded).any())
        alpha = np.array([p.alpha for p in pairs], dtype=np.float32)
        beta = np.array([p.beta for p in pairs], dtype=np.float32)
        # one config per generate call is the usual case: a number is cheaper for the contrast than a tensor
        self.alpha = float(pairs[0].alpha) if (alpha == alpha[0]).all() else to_dev(alpha)
        self.beta = float(pairs[0].beta) if (beta == beta[0]).all() else to_dev(beta)
        self.temperature = to_dev(temp)
        top_k = np.array([p.top_k for p in pairs], dtype=np.int64)
        top_p = np.array([p.top_p for p in pairs], dtype=np.float32)
        min_p = np.array([p.min_p for p in pairs], dtype=np.float32)
        self.top_k = to_dev(top_k) if (top_k[sampled] > 0).any() else None
        self.top_k_max = int(top_k[sampled].max()) if sampled.any() else 0
        self.top_p = to_dev(top_p) if (top_p[sampled] < 1.0).any() else None
        self.min_p = to_dev(min_p) if (min_p[sampled] > 0).any() else None
        self.seeded = to_dev(seeded)
        self.seed = to_dev(np.array([p.seed or 0 for p in pairs], dtype=np.int64) & 0x7FFFFFFFFFFFFFFF)
        return self


def _one_hot(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> None:
    logits.index_fill_(0, rows, NEG_INF)
    logits.index_put_((rows, tokens), torch.zeros_like(tokens, dtype=logits.dtype))


class ContrastLogitsProcessor(DebiasProcessorBase):
    """Debias sampling inside vLLM: twin rows contrasted and forced to one token (see the module docstring).
    Register it with :data:`vllm_debias.LOGITS_PROCESSORS`."""

    BEHAVIOUR = "pair"
    REQ = PairReq
    RETIRED_MAX = 4096

    def __init__(self, vllm_config, *rest) -> None:
        super().__init__(vllm_config, *rest)
        seed = getattr(getattr(vllm_config, "model_config", None), "seed", None)
        # draws of unseeded sampled pairs: one generator per engine (independent of vLLM's own streams)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(seed) if isinstance(seed, int) else int(torch.randint(0, 2**62, ()).item()))
        self._pairs: dict[str, _Pair] = {}
        self._retired: OrderedDict[str, _Pair] = OrderedDict()  # pairs with no row in the batch right now
        self._ok: list[_Pair] = []  # pairs contrasted while in step (device tensors in self._pt)
        self._pt: _PairTensors | None = None
        self._broken: list[_Pair] = []  # broken pairs with a row still in the batch
        # V1 per-step values (set in update_state, used by apply)
        self._steps = None  # device int64 [pairs]: index of the token each ok pair samples now
        self._ban = None  # (rows, tokens) that a broken pair's row may not emit now
        self._same = None  # (main rows, aux rows) of broken pairs at the same position: forced apart
        # MRV2 host mirrors of per-slot state
        self._pos_of_slot = np.full(self.max_reqs, -1, dtype=np.int64)
        self._partner = None  # device int64 [max_reqs]: partner slot of a broken pair's member, -1 otherwise

    def _enter(self, req: PairReq, resumed: bool) -> None:
        """A row resumed after preemption re-joins its pair: if its partner sampled without it meanwhile, the
        pair is already broken; if both come back together, they continue."""
        pair = self._pairs.get(req.spec.pair) or self._retired.pop(req.spec.pair, None)
        if pair is None:
            pair = _Pair(req.spec.pair)
        self._pairs[pair.id] = pair
        req.pair = pair
        role = req.spec.role
        old = getattr(pair, role)
        if old is not None and old is not req:
            if self.v2:  # MRV2 has no removal callback: a resumed request comes back in a new slot
                gone = self._forget_slot(old.key)
                if gone is not None:
                    gone.pair = None
            else:
                self._break(pair, f"two '{role}' requests share the pair id")
        setattr(pair, role, req)
        if req.out is not None:
            pair.outs[role] = req.out
        if role == "main":
            pair.take_params(req)
        if self.spec_decode:
            self._break(pair, "speculative decoding is on (twin rows need one row per request)")

    def _leave(self, req: PairReq) -> None:
        pair = req.pair
        if pair is None:
            return
        if getattr(pair, req.spec.role) is req:
            setattr(pair, req.spec.role, None)
        if pair.main is None and pair.aux is None and self._pairs.get(pair.id) is pair:
            # both rows gone (finished, or preempted together): keep the pair's history a while, so rows that
            # come back still know their partner's tokens
            del self._pairs[pair.id]
            self._retired[pair.id] = pair
            while len(self._retired) > self.RETIRED_MAX:
                self._retired.popitem(last=False)

    def _break(self, pair: _Pair, why: str) -> None:
        if not pair.broken:
            pair.broken = True
            log.warning("vllm_debias: debias_sampling pair %r is out of step (%s); it is not contrasted from now "
                        "on and its two outputs are made to differ, so it is reported as not applied", pair.id, why)
        self._dirty = True

    def _contrast_pairs(self, logits: torch.Tensor, m_rows: torch.Tensor, a_rows: torch.Tensor, pt: _PairTensors,
                        steps: torch.Tensor | None) -> None:
        """Contrast every pair, choose one token per pair, force it into both rows (batched, no host sync)."""
        s, fell_back = contrast(logits.index_select(0, m_rows), logits.index_select(0, a_rows), pt.alpha, pt.beta,
                                return_fallback=True)
        if pt.all_greedy:
            tokens = s.argmax(-1)
        else:
            if pt.any_unseeded:
                u = torch.rand(pt.n, generator=self._gen, device=logits.device, dtype=torch.float64)
            else:
                u = torch.zeros(pt.n, device=logits.device, dtype=torch.float64)
            if pt.any_seeded:
                u = torch.where(pt.seeded, seeded_uniform(pt.seed, steps), u)
            tokens = pick_tokens(s, pt.temperature, u, top_k=pt.top_k, top_p=pt.top_p, min_p=pt.min_p,
                                 any_greedy=pt.any_greedy, top_k_max=pt.top_k_max)
        # a pair without a usable contrast was not debiased at this step: its rows are made to differ
        aux_tokens = torch.where(fell_back, (tokens + 1) % logits.shape[-1], tokens)
        _one_hot(logits, m_rows, tokens)
        _one_hot(logits, a_rows, aux_tokens)

    def _force_apart(self, logits: torch.Tensor, m_rows: torch.Tensor, a_rows: torch.Tensor) -> None:
        """Two rows of a broken pair at the same position: main takes its own argmax, aux any other token."""
        tokens = logits.index_select(0, m_rows).argmax(-1)
        _one_hot(logits, m_rows, tokens)
        _one_hot(logits, a_rows, (tokens + 1) % logits.shape[-1])

    # -- V1 --------------------------------------------------------------------------------------------------
    def _step_v1(self) -> None:
        if self._dirty:
            self._rebuild_v1()
        if not self._reqs:
            return
        if self._ok:  # twin rows must sample the same step
            lens_m = np.fromiter(map(len, (p.main.out for p in self._ok)), dtype=np.int64, count=len(self._ok))
            lens_a = np.fromiter(map(len, (p.aux.out for p in self._ok)), dtype=np.int64, count=len(self._ok))
            for j in np.flatnonzero(lens_m != lens_a):
                p = self._ok[j]
                self._break(p, f"main at step {lens_m[j]}, counterfactual at step {lens_a[j]}")
        if self._dirty:
            self._rebuild_v1()
        pt = self._pt
        if pt is not None and pt.any_seeded:
            self._steps = self._to_dev(np.fromiter(map(len, (p.main.out for p in self._ok)), dtype=np.int64,
                                                   count=len(self._ok)))
        self._ban = self._same = None
        if self._broken:
            self._prepare_broken_v1()

    def _rebuild_v1(self) -> None:
        self._dirty = False
        ok, broken = [], []
        for pair in self._pairs.values():
            m, a = pair.main, pair.aux
            if not pair.broken and (m is None) != (a is None):
                self._break(pair, "its partner is not in the batch (not admitted, finished or preempted)")
            if pair.broken:
                broken.append(pair)
            elif m is not None and a is not None:
                ok.append(pair)
        self._dirty = False
        self._ok, self._broken = ok, broken
        if ok:
            self._pt = _PairTensors.build(ok, self._to_dev)
            self._m_rows = self._to_dev([p.main.key for p in ok], torch.int64)
            self._a_rows = self._to_dev([p.aux.key for p in ok], torch.int64)
        else:
            self._pt = None

    def _prepare_broken_v1(self) -> None:
        """Host side of keeping broken pairs apart (rare): which token each present row may not emit now."""
        ban_rows, ban_toks, same_m, same_a = [], [], [], []
        for pair in self._broken:
            om, oa = pair.outs.get("main"), pair.outs.get("aux")
            for me, mine, other in ((pair.main, om, oa), (pair.aux, oa, om)):
                if me is None or mine is None or other is None:
                    continue
                pos = len(mine)
                if len(other) > pos:  # the partner already emitted this position: emit something else
                    ban_rows.append(me.key)
                    ban_toks.append(int(other[pos]))
            if pair.main is not None and pair.aux is not None and len(om) == len(oa):
                same_m.append(pair.main.key)
                same_a.append(pair.aux.key)
        if ban_rows:
            self._ban = (self._to_dev(ban_rows, torch.int64), self._to_dev(ban_toks, torch.int64))
        if same_m:
            self._same = (self._to_dev(same_m, torch.int64), self._to_dev(same_a, torch.int64))

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:
        if self._pt is not None:
            self._contrast_pairs(logits, self._m_rows, self._a_rows, self._pt, self._steps)
        if self._ban is not None:
            rows, toks = self._ban
            logits.index_put_((rows, toks), torch.full_like(toks, NEG_INF, dtype=logits.dtype))
        if self._same is not None:
            self._force_apart(logits, *self._same)
        return logits

    # -- MRV2 ------------------------------------------------------------------------------------------------
    def _rebuild_v2(self) -> None:
        self._dirty = False
        self._ok = [p for p in self._pairs.values() if not p.broken]
        self._broken = [p for p in self._pairs.values() if p.broken]
        self._pt = _PairTensors.build(self._ok, self._to_dev) if self._ok else None
        self._ok_main = np.array([p.main.key if p.main is not None else -1 for p in self._ok], dtype=np.int64)
        self._ok_aux = np.array([p.aux.key if p.aux is not None else -1 for p in self._ok], dtype=np.int64)
        partner = np.full(len(self._active), -1, dtype=np.int64)
        for p in self._broken:
            if p.main is not None and p.aux is not None:
                partner[p.main.key], partner[p.aux.key] = p.aux.key, p.main.key
        self._partner = self._to_dev(partner) if self._broken else None

    def _apply_v2(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        idx = ctx.idx_mapping_np
        if logits.shape[0] != len(idx):  # speculative decoding: several rows per request
            return self._spec_marker_v2(logits, ctx)
        rs = self.req_states
        seq = ctx.seq_lens_upper_bound_np
        pos_of_slot = self._pos_of_slot
        pos_of_slot[idx] = np.arange(len(idx))
        try:
            if self._ok:
                self._pairs_step_v2(logits, pos_of_slot, seq, rs)
            if self._dirty:  # pairs that broke just now are kept apart from this very step on
                self._rebuild_v2()
            if self._broken:
                self._broken_step_v2(logits, ctx, pos_of_slot, seq, rs)
        finally:
            pos_of_slot[idx] = -1
        return logits

    def _row_state(self, slots: np.ndarray, pos_of_slot: np.ndarray, seq: np.ndarray, rs):
        """(batch row or -1, sampling now?, output index) of each slot (-1 = not registered)."""
        safe = np.maximum(slots, 0)
        row = np.where(slots >= 0, pos_of_slot[safe], -1)
        present = row >= 0
        seq_len = np.where(present, seq[np.maximum(row, 0)], 0)
        sampling = present & (seq_len >= rs.prefill_len.np[safe])
        step = seq_len - rs.prompt_len.np[safe]
        return row, sampling, step

    def _pairs_step_v2(self, logits, pos_of_slot, seq, rs) -> None:
        m_row, m_samp, m_step = self._row_state(self._ok_main, pos_of_slot, seq, rs)
        a_row, a_samp, a_step = self._row_state(self._ok_aux, pos_of_slot, seq, rs)
        valid = m_samp & a_samp & (m_step == a_step)
        for j in np.flatnonzero((m_samp | a_samp) & ~valid):  # a row samples without its partner (rare)
            self._break(self._ok[j], "its partner is not sampling the same step (missing, prefilling or preempted)")
        sel = np.flatnonzero(valid)
        if not len(sel):
            return
        pt = self._pt
        if len(sel) != pt.n:
            pt = _PairTensors.build([self._ok[j] for j in sel], self._to_dev)
        steps = self._to_dev(m_step[sel].astype(np.int64)) if pt.any_seeded else None
        self._contrast_pairs(logits, self._to_dev(m_row[sel], torch.int64), self._to_dev(a_row[sel], torch.int64),
                             pt, steps)

    def _broken_step_v2(self, logits, ctx, pos_of_slot, seq, rs) -> None:
        """Keep broken pairs apart: a row may not emit the token its partner already emitted at that position
        (read on the device from ``all_token_ids``); rows at the same position are forced apart."""
        if self._partner is not None:
            slots = ctx.expanded_idx_mapping.to(torch.int64)
            partner = self._partner.index_select(0, slots)
            has = partner >= 0
            other = partner.clamp_min(0)
            prompt_len = rs.prompt_len.gpu.to(torch.int64)
            my_pos = ctx.pos.to(torch.int64) + 1 - prompt_len.index_select(0, slots)
            col = prompt_len.index_select(0, other) + my_pos
            total = rs.total_len.gpu.to(torch.int64).index_select(0, other)
            known = has & (my_pos >= 0) & (total > col)
            table = rs.all_token_ids.gpu
            col = col.clamp(0, table.shape[1] - 1)
            tok = table[other, col].to(torch.int64).clamp(0, logits.shape[-1] - 1).unsqueeze(-1)
            cur = logits.gather(1, tok)
            logits.scatter_(1, tok, torch.where(known.unsqueeze(-1), torch.full_like(cur, NEG_INF), cur))
        mains = np.array([p.main.key if p.main is not None else -1 for p in self._broken], dtype=np.int64)
        auxs = np.array([p.aux.key if p.aux is not None else -1 for p in self._broken], dtype=np.int64)
        m_row, m_samp, m_step = self._row_state(mains, pos_of_slot, seq, rs)
        a_row, a_samp, a_step = self._row_state(auxs, pos_of_slot, seq, rs)
        same = np.flatnonzero(m_samp & a_samp & (m_step == a_step))
        if len(same):
            self._force_apart(logits, self._to_dev(m_row[same], torch.int64), self._to_dev(a_row[same], torch.int64))

    def _spec_marker_v2(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        """Speculative decoding (several rows per request): twin rows cannot run. Pairs were marked broken when
        they entered; their aux rows emit the marker token (the last id), which main rows may not emit, so the
        two outputs always differ and the pair is reported as not applied."""
        marker = logits.shape[-1] - 1
        slots = ctx.expanded_idx_mapping.to(torch.int64)
        role = self._to_dev(self._spec_roles(), torch.int64).index_select(0, slots)  # 0 none, 1 main, 2 aux
        col = logits[:, marker].clone()
        logits[:, marker] = torch.where(role == 1, torch.full_like(col, NEG_INF), col)
        aux_rows = (role == 2).unsqueeze(-1)
        logits.copy_(torch.where(aux_rows, torch.full_like(logits, NEG_INF), logits))
        logits[:, marker] = torch.where(role == 2, torch.zeros_like(col), logits[:, marker])
        return logits

    def _spec_roles(self) -> np.ndarray:
        roles = np.zeros(len(self._active), dtype=np.int64)
        for r in self._reqs.values():
            roles[r.key] = 1 if r.spec.role == "main" else 2
        return roles
