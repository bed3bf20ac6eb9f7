"""The ``nbls`` method: ground prompts in U.S. BLS occupation statistics (a prompt transform)."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import ClassVar

from ..config import MethodConfig
from ..errors import UserInputError
from ..hf.base import HFMethod
from ..nbls.grounding import CONTROLS, NBLSGrounding
from ..nbls.table import ATTRIBUTES


@dataclasses.dataclass(frozen=True)
class NBLSConfig(MethodConfig):
    """Config of NBLS grounding (see :class:`debias_lm.NBLSGrounding` for the meaning of each field).

    ``template`` / ``header``: ``""`` keeps the defaults. ``bls_table``: path of an official Table 11
    export to ground on instead of the shipped 2022 table. ``exclude_related`` (default true): also leave out
    every occupation related to an excluded one. ``control``: ``""`` (the method), ``"instructions"`` (the
    grounding's wording without the statistics) or ``"shuffled"`` (the same lines with the figures permuted
    across the occupations): the controls of an evaluation (``debias-lm eval occupational --method
    none,nbls_instructions,nbls_shuffled,nbls``).
    """

    method: ClassVar[str] = "nbls"
    k: int = 32
    attributes: tuple[str, ...] = ATTRIBUTES
    exclude: tuple[str, ...] = ()
    seed: int = 0
    template: str = ""
    header: str = ""
    bls_table: str = ""
    exclude_related: bool = True
    control: str = ""

    def validate(self) -> None:
        self._check_number("k", lo=1, integer=True)
        self._check_number("seed", lo=0, integer=True)
        if not isinstance(self.attributes, tuple) or not self.attributes:
            raise UserInputError(
                f"NBLSConfig.attributes={self.attributes!r} is invalid: expected a non-empty tuple of "
                + ", ".join(ATTRIBUTES)
            )
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad:
            raise UserInputError(f"NBLSConfig.attributes has {bad!r}; allowed values: {', '.join(ATTRIBUTES)}")
        if not isinstance(self.exclude, tuple) or not all(isinstance(x, str) for x in self.exclude):
            raise UserInputError(f"NBLSConfig.exclude={self.exclude!r} is invalid: expected a tuple of occupation names")
        if not isinstance(self.exclude_related, bool):
            raise UserInputError(f"NBLSConfig.exclude_related={self.exclude_related!r} is invalid: expected true or false")
        self._check_choice("control", CONTROLS)

    def preflight(self) -> None:
        self.grounding()  # k too large, unknown exclusions, bad template or table: fail before loading a model

    def grounding(self) -> NBLSGrounding:
        """Build the :class:`NBLSGrounding` this config describes (validates exclusions and k)."""
        from ..nbls.table import load_bls_table

        return NBLSGrounding(
            k=self.k,
            attributes=self.attributes,
            exclude=self.exclude,
            seed=self.seed,
            template=self.template or None,
            header=self.header or None,
            table=load_bls_table(self.bls_table) if self.bls_table else None,
            exclude_related=self.exclude_related,
            control=self.control,
        )


class NBLSHF(HFMethod):
    """Applies the grounding to text prompts, chat messages (system message) or token ids (prefix)."""

    is_prompt_transform = True

    def __init__(self, model, tokenizer_or_processor, config: NBLSConfig) -> None:
        super().__init__(model, tokenizer_or_processor, config)
        self.grounding = config.grounding()  # errors (k too large, unknown exclusion) before any work

    def transform_prompt(self, prompt: str) -> str:
        return self.grounding.apply(prompt)

    def transform_messages(self, messages):
        """The grounding as the system message, in front of the system prompt the model would use anyway: an
        explicit first system message, or else the chat template's default one (e.g. SmolLM2's "You are a
        helpful AI assistant ..."), so grounded and plain chats differ by the grounding alone."""
        from ..hf.base import default_system_prompt

        msgs = list(messages)
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") != "system":
            default = default_system_prompt(self.tokenizer)
            if default:
                msgs = [{"role": "system", "content": default}, *msgs]
        return self.grounding.apply(msgs)

    @cached_property
    def _prefix_ids(self) -> list[int]:
        return self.tokenizer(self.grounding.text + "\n\n", add_special_tokens=False)["input_ids"]

    def transform_input_ids(self, input_ids, attention_mask):
        """Insert the grounding tokens at the start of every row (after BOS), re-padding on the left.

        For chat models prefer ``messages=``, which puts the grounding into the system message.
        """
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bos = self.tokenizer.bos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            real = [t for t, m in zip(ids, mask) if m]
            if real and bos is not None and real[0] == bos:
                rows.append([bos, *self._prefix_ids, *real[1:]])
            else:
                rows.append([*self._prefix_ids, *real])
        width = max(len(r) for r in rows)
        new_ids = torch.full((len(rows), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        new_mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype, device=input_ids.device)
        for i, r in enumerate(rows):
            new_ids[i, width - len(r) :] = torch.tensor(r, dtype=input_ids.dtype)
            new_mask[i, width - len(r) :] = 1
        return new_ids, new_mask

    # -- generation with the grounding prefilled once -------------------------------------------------
    prefix_cache = True  # set False to prefill the grounding for every row (the plain HF path)

    def _generate(self, *args, **kwargs):
        """HF ``generate`` with the prefix shared by every row (the grounding) encoded once per wrapper.

        Rows are run as ``prefix | padding | suffix`` on a copy of the cached prefix and returned in the
        caller's left-padded layout, so the output equals plain ``generate`` on the same input. Falls back
        to plain ``generate`` for beams, a caller-provided cache, ``use_cache=False`` or a short shared prefix.
        """
        import torch

        from ..hf.prefix_cache import MIN_SHARED_PREFIX, common_prefix_length, expand_cache, split_layout

        input_ids = args[0] if args else kwargs.get("input_ids")
        if (not self.prefix_cache or input_ids is None or kwargs.get("past_key_values") is not None
                or kwargs.get("use_cache") is False or (kwargs.get("num_beams") or 1) > 1
                or kwargs.get("inputs_embeds") is not None):
            return self.model.generate(*args, **kwargs)
        kwargs = dict(kwargs)
        kwargs.pop("input_ids", None)
        mask = kwargs.pop("attention_mask", None)
        if mask is None:
            mask = torch.ones_like(input_ids)
        if bool((mask[:, -1] == 0).any()):  # right padding: leave it to HF (which warns)
            return self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        rows = [[t for t, m in zip(ids, ms) if m] for ids, ms in zip(input_ids.tolist(), mask.tolist())]
        shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
        if shared < MIN_SHARED_PREFIX:
            return self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        key = tuple(rows[0][:shared])
        if getattr(self, "_cached_prefix", (None, None))[0] != key:
            from ..hf.prefix_cache import prefix_cache

            self._cached_prefix = (key, prefix_cache(self.model, list(key)))
        if not hasattr(self._cached_prefix[1], "batch_repeat_interleave"):  # a cache type that cannot be copied per row
            return self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        x, m = split_layout(rows, shared, pad)
        out = self.model.generate(input_ids=x.to(input_ids.device), attention_mask=m.to(input_ids.device),
                                  past_key_values=expand_cache(self._cached_prefix[1], len(rows)), **kwargs)
        seqs = out.sequences if hasattr(out, "sequences") else out
        width = input_ids.shape[1]  # == x.shape[1]: the same rows, only laid out differently
        restored = torch.cat([input_ids, seqs[:, width:]], dim=1)
        if hasattr(out, "sequences"):
            out.sequences = restored
            return out
        return restored
