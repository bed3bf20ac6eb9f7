"""``DebiasLogitsProcessor``: one class for both vLLM logits-processor interfaces.

* V1 model runner (``vllm.v1.sample.logits_processor``; the CPU build, and GPU with
  ``VLLM_USE_V2_MODEL_RUNNER=0``): ``__init__(vllm_config, device, is_pin_memory)``, ``update_state``,
  ``apply(logits)``, ``is_argmax_invariant``. State is keyed by the persistent-batch row.
* Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor``; the GPU default in 0.32/0.33):
  ``__init__(vllm_config, req_states)``, ``add_request(slot, params)``, ``apply_staged_writes``,
  ``apply(logits, ctx)``. State is keyed by the request slot.

Which interface an instance serves is decided by its constructor arguments; the class derives from both
ABCs (the V2 base is ``object`` on a vLLM without it), so both loaders' ``issubclass`` checks pass.

The processor is **inert** unless a request carries a debias config in ``extra_args`` / ``vllm_xargs``
(see :mod:`vllm_debias.args`); with no opted-in request in the batch ``apply`` returns at once.

Methods:

* ``calibration``: at the first generated token only, add ``-log(p_cf[label] + eps)`` (the carried prior,
  :func:`debias_lm.core.contrast.calibration_offsets`) to the logits of every token variant of each label.
* ``debias_sampling`` (twin rows): for a main row and its counterfactual ("aux") row that are both in the
  batch at the same generation step, the scores are ``debias_lm.core.contrast(l_main, l_aux, alpha, beta)``;
  the processor picks the token (argmax when the main request is greedy, else a seeded draw applying its
  temperature / top-k / top-p / min-p) and forces **both** rows to it (one-hot logits), so the aux context
  follows the main continuation. A pair seen out of step (partner missing, different step, chunked prefill)
  is marked broken and left unmodified from then on; :func:`vllm_debias.generate` detects it (the two
  outputs differ) and re-runs the pair.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from debias_lm.core.contrast import contrast

from .args import DebiasArgsError, RequestSpec, parse, validate

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
except ImportError:  # pragma: no cover - vLLM without the V1 interface
    _V1LogitsProcessor = object  # type: ignore[assignment,misc]
    BatchUpdate = Any  # type: ignore[assignment,misc]
    MoveDirectionality = None  # type: ignore[assignment]

try:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2LogitsProcessor
except ImportError:  # pragma: no cover - vLLM before Model Runner V2 custom logits processors
    _V2LogitsProcessor = object  # type: ignore[assignment,misc]

HAS_V1 = _V1LogitsProcessor is not object
HAS_V2 = _V2LogitsProcessor is not object

log = logging.getLogger("vllm_debias")

_SAMPLING_EPS = 1e-5  # vLLM's threshold below which temperature means greedy


class _Req:
    """Per-request state (one row / slot)."""

    __slots__ = ("spec", "params", "output_ids", "prompt_len", "broken", "ids", "offsets", "generator")

    def __init__(self, spec: RequestSpec, params, output_ids: list[int] | None, prompt_len: int) -> None:
        self.spec = spec
        self.params = params
        self.output_ids = output_ids  # V1: live list of generated ids
        self.prompt_len = prompt_len
        self.broken = False
        self.ids: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        self.generator: torch.Generator | None = None


def _bases() -> tuple[type, ...]:
    bases = tuple(b for b in (_V1LogitsProcessor, _V2LogitsProcessor) if b is not object)
    return bases or (object,)


class DebiasLogitsProcessor(*_bases()):  # type: ignore[misc]
    """Debiasing inside vLLM, per request: calibration offsets and debias-sampling twin rows.

    Register it with ``LLM(..., logits_processors=[DebiasLogitsProcessor])`` (or the string
    ``"vllm_debias:DebiasLogitsProcessor"``) or ``--logits-processors vllm_debias:DebiasLogitsProcessor``;
    requests opt in through ``SamplingParams(extra_args=vllm_debias.request_args(config, ...))`` /
    ``vllm_xargs``. Requests without debias args are never modified.
    """

    def __init__(self, vllm_config, *rest) -> None:
        # V1: (vllm_config, device, is_pin_memory); V2: (vllm_config, req_states)
        self.v2 = len(rest) == 1
        self.vllm_config = vllm_config
        self._rows: dict[int, _Req] = {}
        if self.v2:
            self.req_states = rest[0]
            self.device = self.req_states.device
            import numpy as np

            self._active = np.zeros(int(self.req_states.max_num_reqs), dtype=bool)
        else:
            self.req_states = None
            self.device = rest[0] if rest else torch.device("cpu")
            self._active = None
        try:
            self.vocab_size = int(vllm_config.model_config.get_vocab_size())
        except Exception:  # noqa: BLE001 - synthetic configs in tests
            self.vocab_size = int(getattr(self.req_states, "vocab_size", 0) or 0) or None

    # -- both interfaces ---------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Frontend check at admission: a ValueError here becomes HTTP 400 carrying the message."""
        validate(sampling_params)

    def _make(self, params, output_ids, prompt_len) -> _Req | None:
        try:
            spec = parse(getattr(params, "extra_args", None), params)
        except DebiasArgsError as e:  # validate_params normally stopped it; never crash the worker
            log.error("vllm_debias: request left unmodified: %s", e)
            return None
        if spec is None:
            return None
        req = _Req(spec, params, output_ids, prompt_len)
        if spec.method == "calibration":
            ids = list(spec.label_ids)
            offs = list(spec.label_offsets)
            if self.vocab_size:
                keep = [i for i, t in enumerate(ids) if t < self.vocab_size]
                if len(keep) != len(ids):
                    log.error("vllm_debias: calibration label ids beyond the vocabulary (%d) ignored", self.vocab_size)
                ids, offs = [ids[i] for i in keep], [offs[i] for i in keep]
            req.ids = torch.tensor(ids, dtype=torch.long, device=self.device)
            req.offsets = torch.tensor(offs, dtype=torch.float32, device=self.device)
        elif spec.method == "debias_sampling" and spec.role == "main":
            temp = getattr(params, "temperature", 0.0) or 0.0
            if temp >= _SAMPLING_EPS:
                seed = params.seed if getattr(params, "seed", None) is not None else spec.seed
                g = torch.Generator(device=self.device)
                g.manual_seed(int(seed))
                req.generator = g
        return req

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    # -- V1 interface ------------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self._rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            req = self._make(params, output_ids, len(prompt_ids) if prompt_ids is not None else 0)
            if req is None:
                rows.pop(index, None)
            else:
                rows[index] = req
        for a, b, direction in batch_update.moved:
            ra, rb = rows.pop(a, None), rows.pop(b, None)
            if MoveDirectionality is not None and direction == MoveDirectionality.SWAP:
                if ra is not None:
                    rows[b] = ra
                if rb is not None:
                    rows[a] = rb
            elif ra is not None:  # one-way a -> b (b's previous occupant is gone)
                rows[b] = ra

    # -- Model Runner V2 interface -----------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        """A request enters slot ``req_idx`` (slots are recycled: the previous occupant's state goes)."""
        self._rows.pop(req_idx, None)
        prompt_len = 0
        if self.req_states is not None:
            try:
                prompt_len = int(self.req_states.prompt_len.np[req_idx])
            except Exception:  # noqa: BLE001
                prompt_len = 0
        req = self._make(sampling_params, None, prompt_len)
        if self._active is not None:
            self._active[req_idx] = req is not None
        if req is None:
            return False
        self._rows[req_idx] = req
        return True

    def apply_staged_writes(self) -> None:
        """Nothing staged: the per-request state lives on the host and is applied in ``apply``."""

    # -- apply (both) ------------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if not self._rows:
            return logits
        if ctx is None:
            entries = self._entries_v1(logits)
        else:
            entries = self._entries_v2(logits, ctx)
        if not entries:
            return logits
        pairs: dict[str, list[tuple[int, _Req, int]]] = {}
        cal_rows: list[int] = []
        cal_ids: list[torch.Tensor] = []
        cal_offs: list[torch.Tensor] = []
        for row, req, step in entries:
            if req.spec.method == "calibration":
                if step == 0:
                    cal_rows.append(row)
                    cal_ids.append(req.ids)
                    cal_offs.append(req.offsets)
            else:
                pairs.setdefault(req.spec.pair, []).append((row, req, step))
        if cal_rows:
            self._apply_calibration(logits, cal_rows, cal_ids, cal_offs)
        if pairs:
            self._apply_pairs(logits, pairs)
        return logits

    def _entries_v1(self, logits: torch.Tensor) -> list[tuple[int, _Req, int]]:
        n = logits.shape[0]
        return [(row, req, len(req.output_ids)) for row, req in self._rows.items() if row < n]

    def _entries_v2(self, logits: torch.Tensor, ctx) -> list[tuple[int, _Req, int]]:
        import numpy as np

        idx = ctx.idx_mapping_np
        if self._active is not None and not np.any(self._active[idx]):
            return []
        out: list[tuple[int, _Req, int]] = []
        rows = self._rows
        if logits.shape[0] != len(idx):
            # speculative decoding: one row per draft token. Calibration applies to the row that samples the
            # first output token; twin rows are not supported (marked broken, left unmodified).
            slots = ctx.expanded_idx_mapping.cpu().tolist()
            pos = ctx.pos.cpu().tolist()
            for row, slot in enumerate(slots):
                req = rows.get(int(slot))
                if req is None:
                    continue
                if req.spec.method == "calibration":
                    if pos[row] + 1 == req.prompt_len:
                        out.append((row, req, 0))
                elif not req.broken:
                    req.broken = True
                    log.warning("vllm_debias: debias_sampling twin rows do not work with speculative decoding")
            return out
        seq_lens = ctx.seq_lens_upper_bound_np
        prefill = self.req_states.prefill_len.np if self.req_states is not None else None
        for b, slot in enumerate(idx):
            req = rows.get(int(slot))
            if req is None:
                continue
            seq_len = int(seq_lens[b])
            if prefill is not None and seq_len < int(prefill[int(slot)]):
                step = -1  # still (re)prefilling: this row's sample is discarded
            else:
                step = seq_len - req.prompt_len
            out.append((b, req, step))
        return out

    @staticmethod
    def _apply_calibration(logits, rows, ids, offs) -> None:
        r = torch.cat([torch.full_like(i, row) for row, i in zip(rows, ids)])
        c = torch.cat(ids)
        o = torch.cat(offs).to(logits.dtype)
        logits.index_put_((r, c), o, accumulate=True)

    def _apply_pairs(self, logits: torch.Tensor, pairs: dict[str, list[tuple[int, _Req, int]]]) -> None:
        # which pairs can be combined this step
        groups: dict[tuple[float, float], list[tuple[int, int, _Req]]] = {}
        for pair_id, members in pairs.items():
            if any(req.broken for _, req, _ in members):
                for _, req, _ in members:
                    req.broken = True
                continue
            mains = [m for m in members if m[1].spec.role == "main"]
            auxs = [m for m in members if m[1].spec.role == "aux"]
            ok = len(mains) == 1 and len(auxs) == 1 and mains[0][2] == auxs[0][2] and mains[0][2] >= 0
            if not ok:
                if all(step < 0 for _, _, step in members):
                    continue  # both (or the only present one) still prefilling: nothing sampled yet
                for _, req, _ in members:
                    req.broken = True
                log.warning("vllm_debias: debias_sampling pair %r is out of step (rows as (role, step): %s; "
                            "partner missing, chunked prefill or preemption); it is left unmodified from now on",
                            pair_id, [(req.spec.role, step) for _, req, step in members])
                continue
            m_row, m_req, _ = mains[0]
            a_row = auxs[0][0]
            key = (m_req.spec.alpha, m_req.spec.beta)
            groups.setdefault(key, []).append((m_row, a_row, m_req))
        for (alpha, beta), items in groups.items():
            m_idx = torch.tensor([m for m, _, _ in items], device=logits.device)
            a_idx = torch.tensor([a for _, a, _ in items], device=logits.device)
            scores = contrast(logits[m_idx], logits[a_idx], alpha, beta)
            tokens = scores.argmax(-1)
            for j, (_, _, req) in enumerate(items):
                if req.generator is not None:
                    tokens[j] = _sample(scores[j], req.params, req.generator)
            rows = torch.cat([m_idx, a_idx])
            toks = torch.cat([tokens, tokens])
            logits[rows] = float("-inf")
            logits[rows, toks] = 0.0


def _sample(scores: torch.Tensor, params, generator: torch.Generator) -> int:
    """One draw from contrasted ``scores`` with the request's temperature / top-k / top-p / min-p."""
    s = scores.float() / float(params.temperature)
    top_k = getattr(params, "top_k", 0) or 0
    if 0 < top_k < s.numel():
        kth = torch.topk(s, top_k).values[-1]
        s = s.masked_fill(s < kth, float("-inf"))
    p = torch.softmax(s, -1)
    min_p = getattr(params, "min_p", 0.0) or 0.0
    if min_p > 0:
        p = p.masked_fill(p < min_p * p.max(), 0.0)
    top_p = getattr(params, "top_p", 1.0)
    if top_p is not None and top_p < 1.0:
        sp, order = torch.sort(p, descending=True)
        cum = sp.cumsum(-1)
        drop = cum - sp > top_p  # keep the smallest prefix with mass >= top_p
        sp = sp.masked_fill(drop, 0.0)
        p = torch.zeros_like(p).scatter_(0, order, sp)
    p = p / p.sum()
    return int(torch.multinomial(p.to(generator.device), 1, generator=generator).item())
