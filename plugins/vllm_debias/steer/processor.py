"""``SteerLogitsProcessor``: :class:`~vllm_debias.DebiasLogitsProcessor` for an engine that serves steering vectors.

It leaves logits to its base class (calibration and debias-sampling requests still work on a steering engine)
and adds what steering needs from a logits processor:

* **admission** (``validate_params``, in the frontend; a ``ValueError`` becomes HTTP 400): a ``steer`` request's
  fields are judged by :class:`~debias_lm.SteerConfig`, its vector name against the engine's vectors
  (:func:`vllm_debias.steer.vectors.frontend_vectors`) and its layers against that file's. The frontend runs in
  another process than the workers, so the worker's check would come too late: it could only log and leave the
  request unsteered. A frontend that does not know the engine's vectors refuses steer requests.
* **rows** (V1 runner): ``update_state`` sees every row the persistent batch adds, removes or moves, before the
  step's forward; it keeps the per-row settings (:class:`~vllm_debias.steer.rows.SteerRows`) the model turns into
  per-token buffers. Under Model Runner V2 the model's ``ModelState`` tracks slots instead and this class only
  validates.

Register it **instead of** ``DebiasLogitsProcessor`` (``vllm_debias.steer_engine_args`` and
``debias-lm serve --steer`` do): the base class refuses steer requests, so an engine without steering never
silently runs one plain.
"""

from __future__ import annotations

from debias_lm.errors import UserInputError
from debias_lm.methods.steer.vllm import check_setting

from ..args import _fail, validate
from ..processor import DebiasLogitsProcessor, MoveDirectionality
from .vectors import ENV, frontend_vectors

UNKNOWN_ENGINE = (
    "this server's frontend does not know which steering vectors its engine serves; start it with "
    f"'debias-lm serve --steer NAME=FILE' (or set {ENV} to the same JSON as hf_overrides['debias_steer_vectors'])"
)


class SteerLogitsProcessor(DebiasLogitsProcessor):
    """The debias-lm processor plus steering admission and V1 row tracking (see the module docstring)."""

    STEER = True

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = validate(sampling_params, steer=True)
        if spec is None or spec.behaviour != "activation":
            return
        known = frontend_vectors()
        if known is None:
            raise _fail(UNKNOWN_ENGINE)
        try:
            check_setting(spec.steer, known)
        except UserInputError as e:
            raise _fail(str(e)) from None

    def __init__(self, vllm_config, *rest) -> None:
        super().__init__(vllm_config, *rest)
        self._steer_rows = None
        if not self.v2:
            from .rows import SteerState

            self._steer_rows = SteerState.of(vllm_config, self.device).rows

    def update_state(self, batch_update) -> None:
        super().update_state(batch_update)
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

    @staticmethod
    def _steer_spec(params):
        from ..args import DebiasArgsError, parse

        try:
            spec = parse(getattr(params, "extra_args", None), params, steer=True)
        except DebiasArgsError:
            return None  # logged by the base class's own parse of the same request
        return spec.steer if spec is not None and spec.behaviour == "activation" else None
