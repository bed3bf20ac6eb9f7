"""Model Runner V2 (the GPU default in vLLM 0.32/0.33): the per-token fill from request slots.

MRV2 asks the model for its ``ModelState`` class (``resolve_model_state_cls``: ``model.get_model_state_cls()``
first); the steer model returns :func:`steer_model_state_cls` of the class vLLM would have chosen. The runner
calls, per step (``vllm/v1/worker/gpu/model_runner.py``):

* ``add_request(req_index, new_req_data)`` for each request entering slot ``req_index`` (slots are recycled, and
  a preempted request comes back in a new slot): the slot takes the request's setting, or is reset;
* ``remove_request(req_id)`` before its slot is freed;
* ``apply_staged_writes()``: the slot table's host changes go to the device in one copy;
* ``prepare_inputs(input_batch, req_states)`` before the forward — and before a captured CUDA graph is
  replayed: :func:`~vllm_debias.steer.rows.fill_tokens` with ``idx_mapping`` (batch row -> slot), the step's
  ``query_start_loc`` and ``positions``; tokens up to ``num_tokens_after_padding`` are zeroed.

Speculative decoding: ``query_start_loc`` counts the draft tokens, so they take their request's setting.
"""

from __future__ import annotations

import logging

from .rows import SteerRows, fill_tokens

log = logging.getLogger("vllm_debias")


class SteerSlots:
    """Steering settings per MRV2 request slot, and the fill (testable without an engine)."""

    def __init__(self, tables, max_num_reqs: int, tokens, device) -> None:
        self.rows = SteerRows(tables, max_num_reqs, device)
        self.tokens = tokens
        self.slot_of: dict[str, int] = {}

    def add_request(self, slot: int, req_id: str, sampling_params, prompt_len: int) -> None:
        from ..args import DebiasArgsError, parse

        setting = None
        try:
            spec = parse(getattr(sampling_params, "extra_args", None), sampling_params, steer=True)
            if spec is not None and spec.behaviour == "activation":
                setting = spec.steer
        except DebiasArgsError as e:  # validate_params normally refused it; never crash the worker
            log.error("vllm_debias: request runs unsteered: %s", e)
        self.rows.set(slot, setting, prompt_len)  # always: the slot's previous occupant is gone
        self.slot_of[req_id] = slot

    def remove_request(self, req_id: str) -> None:
        slot = self.slot_of.pop(req_id, None)
        if slot is not None:
            self.rows.clear(slot)

    def apply_staged_writes(self) -> None:
        self.rows.flush()

    def prepare(self, input_batch) -> None:
        n, r = int(input_batch.num_tokens), int(input_batch.num_reqs)
        if self.rows.num_active == 0:
            self.tokens.zero()  # graphs replay with coef = 0: plain
            return
        fill_tokens(self.tokens, self.rows, input_batch.query_start_loc[: r + 1], input_batch.positions, n,
                    row_of_batch=input_batch.idx_mapping[:r],
                    padded_tokens=int(input_batch.num_tokens_after_padding))


def steer_model_state_cls(base: type) -> type:
    """A subclass of vLLM's ModelState ``base`` that keeps :class:`SteerSlots` in step with the batch."""

    class SteerModelState(base):
        def __init__(self, vllm_config, model, encoder_cache, device):
            super().__init__(vllm_config, model, encoder_cache, device)
            self.steer = SteerSlots(model._steer.tables, self.max_num_reqs, model.steer_tokens, device)

        def add_request(self, req_index, new_req_data):
            super().add_request(req_index, new_req_data)
            self.steer.add_request(req_index, new_req_data.req_id, new_req_data.sampling_params,
                                   len(new_req_data.prompt_token_ids or ()))

        def remove_request(self, req_id):
            super().remove_request(req_id)
            self.steer.remove_request(req_id)

        def apply_staged_writes(self):
            super().apply_staged_writes()
            self.steer.apply_staged_writes()

        def prepare_inputs(self, input_batch, req_states):
            out = super().prepare_inputs(input_batch, req_states)
            self.steer.prepare(input_batch)
            return out

    SteerModelState.__name__ = SteerModelState.__qualname__ = f"Steer{base.__name__}"
    return SteerModelState
