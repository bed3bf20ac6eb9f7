"""``SteerLogitsProcessor``: the ``activation`` behaviour, for an engine that serves steering vectors.

Steering changes activations, not logits (:mod:`vllm_debias.steer.model`); what it needs from a logits processor:

* **admission** (``validate_params``, in the frontend; a ``ValueError`` becomes HTTP 400): a ``steer`` request's
  fields are judged by :class:`~debias_lm.SteerConfig`, its vector name against the engine's vectors
  (:func:`vllm_debias.steer.vectors.frontend_vectors`) and its layers against that file's. The frontend runs in
  another process than the workers, so the worker's check would come too late: it could only log and leave the
  request unsteered. A frontend that does not know the engine's vectors refuses steer requests (the check every
  vllm_debias class shares: :func:`vllm_debias.args.validate`).
* **rows** (V1 runner): ``update_state`` sees every row the persistent batch adds, removes or moves, before the
  step's forward; it keeps the per-row settings (:class:`~vllm_debias.steer.rows.SteerRows`) the model turns into
  per-token buffers. Under Model Runner V2 the model's ``ModelState`` tracks slots instead and this class only
  validates.

It is not a ``vllm.logits_processors`` entry point: ``vllm_debias.steer_engine_args`` and
``debias-lm serve --steer`` register it next to :data:`vllm_debias.LOGITS_PROCESSORS` (so calibration and debias
sampling keep working on a steering engine). It never changes logits (``is_argmax_invariant`` is True).
"""

from __future__ import annotations

from debias_lm.errors import UserInputError
from debias_lm.methods.steer.vllm import check_setting

from ..args import DebiasArgsError, _fail, parse
from ..processors.base import DebiasProcessorBase, MoveDirectionality, log
from .vectors import frontend_vectors


class SteerLogitsProcessor(DebiasProcessorBase):
    """Steering admission and V1 row tracking (see the module docstring)."""

    BEHAVIOUR = "activation"

    @classmethod
    def _admit(cls, spec) -> None:
        known = frontend_vectors()  # not None: the check all classes share refused steer requests otherwise
        try:
            check_setting(spec.steer, known or {})
        except UserInputError as e:
            raise _fail(str(e)) from None

    def __init__(self, vllm_config, *rest) -> None:
        super().__init__(vllm_config, *rest)
        self._steer_rows = None
        if not self.v2 and not self.inert:
            from .rows import SteerState

            self._steer_rows = SteerState.of(vllm_config, self.device).rows

    def is_argmax_invariant(self) -> bool:
        return True  # it changes activations (in the model), never the logits

    def update_state(self, batch_update) -> None:
        rows = self._steer_rows
        if batch_update is None or rows is None:
            return
        # vLLM's order: removed, then added (an index re-used by an add is not in removed), then moved
        for index in batch_update.removed:
            rows.clear(index)
        for index, params, prompt_ids, _out in batch_update.added:
            spec = self._steer_spec(params)
            rows.set(index, spec, len(prompt_ids) if prompt_ids is not None else 0)
        for a, b, direction in batch_update.moved:
            rows.move(a, b, MoveDirectionality is not None and direction == MoveDirectionality.SWAP)
        rows.flush()

    def add_request(self, req_idx: int, sampling_params) -> bool:
        return False  # MRV2: the model's ModelState keeps the slots (vllm_debias.steer.mrv2)

    @staticmethod
    def _steer_spec(params):
        try:
            spec = parse(getattr(params, "extra_args", None), params, steer=True, only="activation")
        except DebiasArgsError as e:  # validate_params normally refused it; never crash the worker
            log.error("vllm_debias: request runs unsteered: %s", e)
            return None
        return spec.steer if spec is not None and spec.behaviour == "activation" else None
