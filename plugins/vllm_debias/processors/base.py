"""What every vllm_debias logits processor shares: both vLLM interfaces, admission, request bookkeeping, dedupe.

Interfaces (one class serves both; which one an instance serves is decided by its constructor arguments; the
class derives from both ABCs, the V2 base being ``object`` on a vLLM without it, so both loaders' ``issubclass``
checks pass):

* V1 model runner (``vllm.v1.sample.logits_processor``; the CPU build, and GPU with
  ``VLLM_USE_V2_MODEL_RUNNER=0``): ``__init__(vllm_config, device, is_pin_memory)``, ``update_state``,
  ``apply(logits)``, ``is_argmax_invariant``. State is keyed by the persistent-batch row.
* Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor``; the GPU default in 0.32/0.33):
  ``__init__(vllm_config, req_states)``, ``add_request(slot, params)``, ``apply_staged_writes``,
  ``apply(logits, ctx)``. State is keyed by the request slot.

Each subclass serves one **behaviour** of :class:`debias_lm.registry.VLLMMapping` (``BEHAVIOUR``), as vLLM's
builtins each serve one sampling parameter (``vllm/v1/sample/logits_processor/builtin.py``):

* **admission** (``validate_params``, in the frontend): :func:`vllm_debias.args.validate` with ``only=BEHAVIOUR``:
  the checks every class shares (the method is known and has a per-request vLLM form; ``steer`` needs a
  steering engine) run for every request, so a request no class can serve is refused whichever classes are
  loaded; the fields of a request are judged only by the class of its behaviour. Identity requests
  (``debias_method: identity``, behaviour ``none``) pass every class and no class touches their logits.
* **bookkeeping** (V1): the opted-in requests of this behaviour in a dict ``row -> state``, updated from each
  ``BatchUpdate`` by :func:`update_dict`, the shape of vLLM's ``process_dict_updates`` (MinTokens / LogitBias)
  plus what a stateful processor needs: the states that left (removed, replaced, overwritten by a one-way
  move) and those that entered go to the subclass's ``_leave`` / ``_enter`` hooks, and every state's ``key``
  follows its row. MRV2: ``add_request`` replaces the slot's previous state.
* **dedupe**: vLLM loads the classes of the ``vllm.logits_processors`` entry point into every engine, then the
  ones passed explicitly; a user who does both gets each class twice. Only the first instance serving a
  behaviour in an engine (keyed on the engine's ``vllm_config`` object) works; later ones are inert, so an
  offset or a contrast is never applied twice. (Code that builds processors by hand, a benchmark or a test,
  gives each one its own config object while an earlier one is alive.)

A plain request costs one dict look-up per class when it enters; with no opted-in request in the batch
``apply`` returns at once. ``apply`` is batched tensor code with no host sync (subclasses keep it so).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, ClassVar

import numpy as np
import torch

from ..args import _SEEN_VOCAB, DebiasArgsError, RequestSpec, behaviour_of, parse, validate

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

NEG_INF = float("-inf")
LOGIT_BEHAVIOURS = ("label_bias", "pair")  # what the processors of vllm_debias.LOGITS_PROCESSORS serve


def _bases() -> tuple[type, ...]:
    bases = tuple(b for b in (_V1LogitsProcessor, _V2LogitsProcessor) if b is not object)
    return bases or (object,)


class _Engine:
    """The vllm_debias processors of one engine: the instance serving each behaviour (the first one built)."""

    __slots__ = ("serving", "__weakref__")

    def __init__(self) -> None:
        self.serving: dict[str, DebiasProcessorBase] = {}

    def unserved(self, behaviour: str, asking: DebiasProcessorBase) -> bool:
        """No processor of this engine serves ``behaviour`` (asked by every class: only the first one says yes,
        so the request is reported once)."""
        return behaviour not in self.serving and next(iter(self.serving.values())) is asking


# id(vllm_config) -> its record; a record lives as long as one of its processors (each holds it and the
# vllm_config), so an id is never reused while its record exists
_ENGINES: weakref.WeakValueDictionary[int, _Engine] = weakref.WeakValueDictionary()


class Req:
    """One opted-in request (a row in V1, a slot in MRV2)."""

    __slots__ = ("spec", "params", "out", "prompt_len", "key")

    def __init__(self, spec: RequestSpec, params, out: list[int] | None, prompt_len: int, key: int) -> None:
        self.spec = spec
        self.params = params
        self.out = out  # V1: vLLM's live list of generated ids
        self.prompt_len = prompt_len
        self.key = key


def update_dict(reqs: dict[int, Req], batch_update: BatchUpdate, new_state) -> tuple[list[Req], list[Req], bool]:
    """vLLM's ``process_dict_updates`` (``builtin.py``) with what a stateful processor also needs: the states
    that left (removed, replaced by an add, overwritten by a one-way move) and those that entered, in the order
    ``BatchUpdate`` documents (removed, added, moved), and each state's ``key`` kept equal to its row.
    ``new_state(params, out, prompt_len, row)`` returns a state or None (not ours). Returns (left, entered,
    whether a state changed rows)."""
    left: list[Req] = []
    entered: list[Req] = []
    moved = False
    for index in batch_update.removed:
        req = reqs.pop(index, None)
        if req is not None:
            left.append(req)
    for index, params, prompt_ids, output_ids in batch_update.added:
        old = reqs.pop(index, None)
        if old is not None:
            left.append(old)
        req = new_state(params, output_ids, len(prompt_ids) if prompt_ids is not None else 0, index)
        if req is not None:
            reqs[index] = req
            entered.append(req)
    for a, b, direction in batch_update.moved:
        ra, rb = reqs.pop(a, None), reqs.pop(b, None)
        if ra is not None:
            reqs[b] = ra
            ra.key = b
            moved = True
        if rb is not None:
            if MoveDirectionality is not None and direction == MoveDirectionality.SWAP:
                reqs[a] = rb
                rb.key = a
                moved = True
            else:  # one-way a -> b: b's previous occupant is gone
                left.append(rb)
    return left, entered, moved


class DebiasProcessorBase(*_bases()):  # type: ignore[misc]
    """Base of the vllm_debias processors (see the module docstring); subclasses set ``BEHAVIOUR`` and the hooks."""

    BEHAVIOUR: ClassVar[str] = ""
    REQ: ClassVar[type[Req]] = Req

    # -- admission (frontend) ----------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Frontend check at admission: a ValueError here becomes HTTP 400 carrying the message."""
        spec = validate(sampling_params, only=cls.BEHAVIOUR)
        if spec is not None and spec.behaviour == cls.BEHAVIOUR:
            cls._admit(spec)

    @classmethod
    def _admit(cls, spec: RequestSpec) -> None:
        """Checks of this behaviour that need more than the request (e.g. the engine's steering vectors)."""

    # -- construction ------------------------------------------------------------------------------------
    def __init__(self, vllm_config, *rest) -> None:
        # V1: (vllm_config, device, is_pin_memory); V2: (vllm_config, req_states)
        self.v2 = len(rest) == 1
        self.vllm_config = vllm_config
        if self.v2:
            self.req_states = rest[0]
            self.device = torch.device(self.req_states.device)
            self.pin = self.device.type == "cuda"
            self.max_reqs = int(self.req_states.max_num_reqs)
        else:
            self.req_states = None
            self.device = torch.device(rest[0]) if rest else torch.device("cpu")
            self.pin = bool(rest[1]) if len(rest) > 1 else False
            self.max_reqs = int(getattr(getattr(vllm_config, "scheduler_config", None), "max_num_seqs", 0) or 1024)
        try:
            self.vocab_size = int(vllm_config.model_config.get_vocab_size())
        except Exception:  # noqa: BLE001 - synthetic configs in tests
            self.vocab_size = int(getattr(self.req_states, "vocab_size", 0) or 0) or None
        if self.vocab_size:
            _SEEN_VOCAB.add(self.vocab_size)  # lets an in-process frontend check label ids against it
        self.spec_decode = getattr(vllm_config, "speculative_config", None) is not None
        engine = _ENGINES.get(id(vllm_config))
        if engine is None:
            engine = _ENGINES[id(vllm_config)] = _Engine()
        self._engine = engine
        first = engine.serving.setdefault(self.BEHAVIOUR, self)
        self.inert = first is not self
        if self.inert:
            log.info("vllm_debias: %s is loaded twice in this engine (entry point and explicit); the second "
                     "instance is inert", type(self).__name__)
        self._reqs: dict[int, Req] = {}
        self._active = np.zeros(self.max_reqs, dtype=bool)  # MRV2: slots holding a request of this behaviour
        self._dirty = False

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def _to_dev(self, data, dtype=None) -> torch.Tensor:
        """Host data -> device tensor without blocking (pinned staging on accelerators)."""
        t = torch.as_tensor(data, dtype=dtype)
        if self.device.type == "cpu":
            return t
        return (t.pin_memory() if self.pin else t).to(self.device, non_blocking=True)

    def _state(self, params, out: list[int] | None, prompt_len: int, key: int) -> Req | None:
        """The state of an entering request of this behaviour, or None (plain, another behaviour, or invalid)."""
        extra = getattr(params, "extra_args", None)
        if not extra:
            return None
        behaviour = behaviour_of(extra)
        if behaviour != self.BEHAVIOUR:
            if behaviour in LOGIT_BEHAVIOURS and self._engine.unserved(behaviour, self):
                log.error("vllm_debias: a %r request runs unmodified: this engine loads no processor serving "
                          "that behaviour (register all of vllm_debias.LOGITS_PROCESSORS)", behaviour)
            return None
        try:
            spec = parse(extra, params, vocab_size=self.vocab_size, steer=True, only=self.BEHAVIOUR)
        except DebiasArgsError as e:  # validate_params normally stopped it; never crash the worker
            log.error("vllm_debias: request left unmodified: %s", e)
            return None
        return None if spec is None else self.REQ(spec, params, out, prompt_len, key)

    # -- V1 interface ------------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.inert:
            return
        if batch_update and (self._reqs or batch_update.added):
            left, entered, moved = update_dict(self._reqs, batch_update, self._state)
            for req in left:
                self._leave(req)
            for req in entered:
                self._enter(req, resumed=bool(req.out))
            if left or entered or moved:
                self._dirty = True
        self._step_v1()

    def _step_v1(self) -> None:
        """Per-step host work after the batch changed (or not): stage what ``apply`` needs."""

    # -- Model Runner V2 interface -----------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        """A request enters slot ``req_idx`` (slots are recycled: the previous occupant's state goes)."""
        if self.inert:
            return False
        old = self._reqs.pop(req_idx, None)
        if old is not None:
            self._leave(old)
            self._dirty = True
        rs = self.req_states
        prompt_len = int(rs.prompt_len.np[req_idx]) if rs is not None else 0
        resumed = rs is not None and int(rs.prefill_len.np[req_idx]) > prompt_len
        req = self._state(sampling_params, None, prompt_len, req_idx)
        self._active[req_idx] = req is not None
        if req is None:
            return False
        self._reqs[req_idx] = req
        self._enter(req, resumed=resumed)
        self._dirty = True
        return True

    def apply_staged_writes(self) -> None:
        """Flush the host-side changes of ``add_request`` to the device (once per step)."""
        if self._dirty:
            self._rebuild_v2()

    def _forget_slot(self, slot: int) -> Req | None:
        """MRV2 has no removal callback: a state whose request came back in another slot is dropped."""
        self._active[slot] = False
        return self._reqs.pop(slot, None)

    # -- apply (both) ------------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if not self._reqs:
            return logits
        if ctx is None:
            return self._apply_v1(logits)
        if not np.any(self._active[ctx.idx_mapping_np]):
            return logits
        if self._dirty:  # add_request without apply_staged_writes (not expected from vLLM)
            self._rebuild_v2()
        return self._apply_v2(logits, ctx)

    # -- subclass hooks ----------------------------------------------------------------------------------
    def _enter(self, req: Req, resumed: bool) -> None:
        """A request of this behaviour entered (``resumed``: after preemption, with output already)."""

    def _leave(self, req: Req) -> None:
        """A request of this behaviour left its row or slot (finished, preempted, replaced)."""

    def _rebuild_v2(self) -> None:
        self._dirty = False

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def _apply_v2(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        return logits
