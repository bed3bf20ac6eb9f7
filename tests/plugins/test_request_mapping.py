"""The vLLM plugin learns a method from the registry alone: a method registered with a ``VLLMMapping`` (here a toy
defined in the test) is parsed, refused or built into request args without any edit of ``vllm_debias``.

Reference: the request form written out by hand in each test (no vLLM engine needed: ``vllm_debias.args`` runs
in vLLM's frontend and imports neither vLLM nor the HF adapters)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from debias_lm.config import MethodConfig
from debias_lm.errors import UserInputError
from debias_lm.registry import VLLMMapping, VLLMRequest, register_method, unregister_method


@dataclasses.dataclass(frozen=True)
class ToyConfig(MethodConfig):
    method: ClassVar[str] = "toy_bias"
    offset: float = 1.0
    note: str = ""  # a client-side field: never sent

    def validate(self) -> None:
        self._check_number("offset", lo=0, hi=10)


def _parse(config, keys, *, vocab_size=None, sampling_params=None) -> VLLMRequest:
    ids = keys.get("debias_toy_ids")
    if not isinstance(ids, list) or not ids:
        raise UserInputError("toy needs debias_toy_ids")
    return VLLMRequest(method=config.method, behaviour="label_bias", label_ids=tuple(ids),
                       label_offsets=(config.offset,) * len(ids))


TOY = VLLMMapping(behaviour="label_bias", wire_fields=("offset",), plugin_keys=("debias_toy_ids",), parse=_parse,
                  request_keys=lambda config, tokenizer: {"debias_toy_ids": [3, 4]})


@pytest.fixture
def toy():
    from debias_lm.registry import list_methods

    list_methods()  # built-ins first, so the toy is the only extra
    register_method(ToyConfig, "builtins:object", kind="answer", vllm="yes", vllm_mapping=f"{__name__}:TOY",
                    aliases=("toy",))
    try:
        yield
    finally:
        unregister_method("toy_bias")


def test_a_registered_mapping_is_parsed_without_editing_the_plugin(toy):
    from vllm_debias.args import parse, request_args

    extra = request_args({"method": "toy", "offset": 2.5, "note": "x"})
    assert extra == {"debias_method": "toy_bias", "debias_offset": 2.5, "debias_toy_ids": [3, 4]}
    assert parse(extra) == VLLMRequest(method="toy_bias", behaviour="label_bias", label_ids=(3, 4),
                                       label_offsets=(2.5, 2.5))


def test_the_toy_keys_and_values_are_judged_by_the_toy(toy):
    from vllm_debias.args import DebiasArgsError, parse

    with pytest.raises(DebiasArgsError, match="^vllm_debias: toy needs debias_toy_ids"):
        parse({"debias_method": "toy_bias"})
    with pytest.raises(DebiasArgsError, match=r"ToyConfig.offset=11 is invalid"):
        parse({"debias_method": "toy_bias", "debias_offset": 11, "debias_toy_ids": [1]})
    with pytest.raises(DebiasArgsError, match="debias_pair do not apply to method 'toy_bias'"):
        parse({"debias_method": "toy_bias", "debias_toy_ids": [1], "debias_pair": "p"})
    with pytest.raises(DebiasArgsError, match="debias_toy_ids do not apply to method 'debias_sampling'"):
        parse({"debias_method": "debias_sampling", "debias_pair": "p", "debias_role": "main", "debias_toy_ids": [1]})


def test_a_method_without_a_mapping_is_refused_with_its_registered_reason():
    from vllm_debias.args import DebiasArgsError, parse

    @dataclasses.dataclass(frozen=True)
    class GradConfig(MethodConfig):
        method: ClassVar[str] = "toy_grad"

    register_method(GradConfig, "builtins:object", unsupported={"vllm": "it needs a backward pass per token"})
    try:
        with pytest.raises(DebiasArgsError, match="^vllm_debias: method 'toy_grad' cannot run in vLLM: it needs a "
                                                  "backward pass per token$"):
            parse({"debias_method": "toy_grad"})
    finally:
        unregister_method("toy_grad")
