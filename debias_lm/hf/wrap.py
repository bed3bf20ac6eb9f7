"""``debias_lm.wrap``: apply a method to any HF model through its own ``generate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import MethodConfig
from ..errors import UserInputError
from ..registry import get_method, resolve_config
from .base import HFMethod, check_context_length, check_tokenizer_matches, get_tokenizer, new_tokens


class DebiasedModel:
    """A model with a debiasing method applied (see :func:`wrap`).

    ``generate`` takes everything HF ``generate`` takes (plus ``prompt=`` / ``prompts=`` / ``messages=``
    text input, tokenised with left padding after the method's prompt transform) and returns what HF
    ``generate`` returns. ``.model``, ``.tokenizer``, ``.processor`` and ``.config`` stay reachable.
    """

    def __init__(self, model, tokenizer_or_processor, config: MethodConfig, impl: HFMethod) -> None:
        self.model = model
        self.processor = tokenizer_or_processor
        self.tokenizer = get_tokenizer(tokenizer_or_processor)
        self.config = config
        self.impl = impl

    @property
    def method(self) -> str:
        return self.config.method

    def generate(self, *args, **kwargs):
        return self.impl.generate(*args, **kwargs)

    def generate_text(self, prompts: str | list, *, chat: bool | None = None, **gen_kwargs) -> list[str]:
        """Generate from text and return only the new text of each prompt.

        ``prompts``: a string, a list of strings, or chat messages (a list of dicts, or a list of such
        lists). ``chat=None`` uses the chat template for plain strings when the tokenizer has one.
        """
        text_kwargs = self._text_kwargs(prompts, chat)
        enc = self.impl.encode(**text_kwargs)  # the prompt width, to cut the prompt off the output
        self._check_fits(enc, gen_kwargs.get("max_new_tokens"))
        out = self.impl.generate(**text_kwargs, **gen_kwargs)  # the method's own text path
        seqs = out.sequences if hasattr(out, "sequences") else out
        return new_tokens(seqs, enc["input_ids"].shape[1], self.tokenizer)

    def check_length(self, prompts: str | list, *, chat: bool | None = None, max_new_tokens: int | None = None) -> None:
        """Raise a ``UserInputError`` when a prompt (after the method's prompt transform and the chat template)
        plus ``max_new_tokens`` does not fit the model's context length; nothing is generated."""
        self._check_fits(self.impl.encode(**self._text_kwargs(prompts, chat)), max_new_tokens)

    def _text_kwargs(self, prompts, chat) -> dict[str, Any]:
        from .base import has_chat_template

        is_chat = isinstance(prompts, list) and prompts and (
            isinstance(prompts[0], dict) or (isinstance(prompts[0], list) and prompts[0] and isinstance(prompts[0][0], dict))
        )
        if is_chat:
            return {"messages": prompts}
        use_chat = has_chat_template(self.processor) if chat is None else chat
        return {"prompts": [prompts] if isinstance(prompts, str) else prompts, "chat": use_chat}

    def _check_fits(self, enc, max_new_tokens: int | None) -> None:
        mask = enc.get("attention_mask")
        widths = mask.sum(-1).tolist() if mask is not None else [enc["input_ids"].shape[1]] * enc["input_ids"].shape[0]
        new = max_new_tokens if isinstance(max_new_tokens, int) else 0
        for i, w in enumerate(widths):
            check_context_length(
                self.model, int(w) + new, f"prompt {i} ({int(w)} tokens after the {self.method} prompt transform"
                + (f" + {new} new tokens)" if new else ")"),
                "shorten the prompt" + (" or lower max_new_tokens / --max-new-tokens" if new else ""))

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        return f"DebiasedModel(method={self.method!r}, model={type(self.model).__name__}, config={self.config!r})"


def wrap(model, tokenizer_or_processor, config: MethodConfig | str | Mapping[str, Any] | None = None) -> DebiasedModel:
    """Apply a debiasing method to ``model``.

    Args:
        model: any HF ``PreTrainedModel`` with ``generate`` (also ``peft`` models and bitsandbytes-quantised
            models).
        tokenizer_or_processor: its tokenizer, or its multimodal processor.
        config: a method config (``dl.NBLSConfig(k=32)``), a registered method name (``"nbls"``: defaults)
            or a flat dict (``{"method": "nbls", "k": 16}``). ``None`` is the identity method.

    Returns:
        :class:`DebiasedModel` whose ``generate`` applies the method.
    """
    if not hasattr(model, "generate"):
        raise UserInputError(f"wrap() needs a model with .generate(); got {type(model).__name__}")
    if tokenizer_or_processor is None:
        raise UserInputError("wrap() needs the model's tokenizer or processor as its second argument")
    cfg = resolve_config(config)
    check_tokenizer_matches(model, tokenizer_or_processor)
    spec = get_method(cfg.method)
    impl_cls = spec.load_hf_impl()
    impl = impl_cls(model, tokenizer_or_processor, cfg)
    return DebiasedModel(model, tokenizer_or_processor, cfg, impl)
