"""Base class of the HF implementations of methods, and prompt encoding helpers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..config import MethodConfig
from ..errors import UserInputError
from ..utils.files import check_utf8_text

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
PROMPT_KWARGS = ("prompt", "prompts", "messages")


def get_tokenizer(tokenizer_or_processor):
    """The text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(model) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings`` and its aliases; the text
    config of a multimodal model), or None when its config does not say."""
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        for attr in _CONTEXT_ATTRS:
            v = getattr(c, attr, None) if c is not None else None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def check_context_length(model, n_tokens: int, what: str, fix: str) -> None:
    """A clear error before any work when ``n_tokens`` positions do not fit the model's context length."""
    ctx = context_length(model)
    if ctx is not None and n_tokens > ctx:
        raise UserInputError(f"{what} is {n_tokens} tokens, more than the model's context length {ctx}; {fix}")


def check_tokenizer_matches(model, tokenizer_or_processor) -> None:
    """Fail before any generation when the tokenizer cannot belong to the model: it has more tokens than the
    model's input embedding has rows, or a special-token id (its own or the generation config's) is out of
    range. Either one gives an ``IndexError`` mid-generation or silent garbage. A tokenizer much smaller than
    the embedding is only logged (embeddings are often padded to a round size)."""
    tok = get_tokenizer(tokenizer_or_processor)
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    rows = getattr(emb, "num_embeddings", None) or getattr(getattr(emb, "weight", None), "shape", [None])[0]
    if not isinstance(rows, int) or not hasattr(tok, "__len__"):
        return
    n_tok = len(tok)
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or "the model's checkpoint"
    if n_tok > rows:
        raise UserInputError(
            f"the tokenizer has {n_tok} tokens but the model's input embedding has {rows} rows: they do not belong "
            f"together (ids >= {rows} would crash generation). Load the tokenizer from the same checkpoint as the "
            f"model ({source})")
    ids: dict[str, Any] = {f"tokenizer {name}": getattr(tok, f"{name}_id", None)
                           for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    gc = getattr(model, "generation_config", None)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids[f"generation_config.{name}"] = getattr(gc, name, None)
    for name, value in ids.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and v >= rows:  # (negative: "unset" in old configs)
                raise UserInputError(
                    f"{name} id {v} is outside the model's vocabulary (input embedding rows 0..{rows - 1}): the "
                    f"tokenizer or generation config does not belong to this model; load both from {source}")
    if rows - n_tok > max(1024, rows // 4):
        log.warning("the tokenizer has %d tokens but the model's embedding %d rows: check they belong together",
                    n_tok, rows)


def has_chat_template(tokenizer_or_processor) -> bool:
    tp = tokenizer_or_processor
    return bool(getattr(tp, "chat_template", None) or getattr(get_tokenizer(tp), "chat_template", None))


def default_system_prompt(tokenizer_or_processor) -> str:
    """The system message a chat template inserts when the chat has none ("" when it inserts none).

    Found by rendering a user turn with and without an explicit system message holding a sentinel: what the
    template writes where the sentinel would go is its default. Templates that cannot render a system
    message, or place it unpredictably, give "".
    """
    tok = get_tokenizer(tokenizer_or_processor)
    if not has_chat_template(tokenizer_or_processor):
        return ""
    sentinel, user = "\u2063SYSTEM\u2063", "\u2063USER\u2063"
    try:
        plain = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False)
        with_sys = tok.apply_chat_template([{"role": "system", "content": sentinel},
                                            {"role": "user", "content": user}], tokenize=False)
    except Exception:  # noqa: BLE001 - templates that reject system messages have no default to keep
        return ""
    if not isinstance(plain, str) or not isinstance(with_sys, str) or with_sys.count(sentinel) != 1:
        return ""
    before, after = with_sys.split(sentinel)
    if plain.startswith(before) and plain.endswith(after) and len(plain) > len(before) + len(after):
        return plain[len(before) : len(plain) - len(after)]
    return ""


class HFMethod:
    """An HF implementation of a method: ``HFMethod(model, tokenizer_or_processor, config)``.

    Subclasses override :meth:`generate` (full control) or the text hooks :meth:`transform_prompt` /
    :meth:`transform_messages` / :meth:`transform_input_ids` (prompt-transform methods such as NBLS).
    ``is_prompt_transform`` is true for methods that only change the prompt (the decoding itself is the
    model's own), which lets evaluations score them with plain forward passes.
    """

    is_prompt_transform: bool = False

    def __init__(self, model, tokenizer_or_processor, config: MethodConfig) -> None:
        self.model = model
        self.processor = tokenizer_or_processor
        self.tokenizer = get_tokenizer(tokenizer_or_processor)
        self.config = config

    def check_prompts(self, prompts: list) -> None:
        """Raise a ``UserInputError`` if the method cannot run on these text prompts (called before any work)."""

    # -- text hooks ---------------------------------------------------------------------------------
    def transform_prompt(self, prompt: str) -> str:
        return prompt

    def transform_messages(self, messages: Messages) -> Messages:
        return messages

    def transform_input_ids(self, input_ids, attention_mask):
        return input_ids, attention_mask

    # -- encoding -----------------------------------------------------------------------------------
    def encode(self, *, prompt=None, prompts=None, messages=None, chat: bool | None = None):
        """Tokenise text prompts (``prompt``/``prompts``: str or list of str; ``messages``: one chat or a
        list of chats) after applying the method's text transform. Left padding, ``return_tensors="pt"``.

        Plain prompts go through the chat template when ``chat`` is true (default: no).
        """
        given = [n for n, v in (("prompt", prompt), ("prompts", prompts), ("messages", messages)) if v is not None]
        if len(given) != 1:
            raise UserInputError(f"pass exactly one of prompt=, prompts=, messages= (got {given or 'none'})")
        tok = self.tokenizer
        if messages is not None:
            chats = [messages] if messages and isinstance(messages[0], dict) else list(messages)
            if not chats or any(not c for c in chats):
                raise UserInputError("messages= is empty; pass a list of {'role', 'content'} dicts")
            if not has_chat_template(self.processor):
                raise UserInputError("messages= needs a tokenizer with a chat template; pass prompt= instead")
            for i, chat in enumerate(chats):
                for m in chat if isinstance(chat, list) else []:
                    content = m.get("content") if isinstance(m, dict) else None
                    if isinstance(content, str):
                        check_utf8_text(content, f"messages[{i}] content")
            texts = [
                tok.apply_chat_template(self.transform_messages(c), add_generation_prompt=True, tokenize=False)
                for c in chats
            ]
            add_special = False
        else:
            items = prompt if prompt is not None else prompts
            texts_in = [items] if isinstance(items, str) else list(items)
            for i, t in enumerate(texts_in):
                if not isinstance(t, str) or not t.strip():
                    raise UserInputError(f"prompt {i} is empty; pass non-empty text")
                check_utf8_text(t, f"prompt {i}")
            if chat:
                if not has_chat_template(self.processor):
                    raise UserInputError("chat=True needs a tokenizer with a chat template")
                texts = [
                    tok.apply_chat_template(
                        self.transform_messages([{"role": "user", "content": t}]),
                        add_generation_prompt=True,
                        tokenize=False,
                    )
                    for t in texts_in
                ]
                add_special = False
            else:
                texts = [self.transform_prompt(t) for t in texts_in]
                add_special = True
        return encode_left_padded(tok, texts, add_special_tokens=add_special, device=getattr(self.model, "device", None))

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, *args, chat: bool | None = None, **kwargs):
        """Like HF ``generate``; also accepts ``prompt=`` / ``prompts=`` / ``messages=`` text input."""
        text_args = {k: kwargs.pop(k) for k in PROMPT_KWARGS if k in kwargs}
        if text_args:
            if args:
                raise UserInputError("pass either input_ids or prompt=/prompts=/messages=, not both")
            kwargs.update(self.encode(chat=chat, **text_args))
        elif args or "input_ids" in kwargs:
            input_ids = args[0] if args else kwargs.pop("input_ids")
            args = ()
            attention_mask = kwargs.pop("attention_mask", None)
            input_ids, attention_mask = self.transform_input_ids(input_ids, attention_mask)
            kwargs["input_ids"] = input_ids
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
        return self._generate(*args, **kwargs)

    def _generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)


def encode_left_padded(tokenizer, texts: list[str], *, add_special_tokens: bool = True, device=None) -> dict:
    """Tokenise a batch with left padding (what decoder-only generation needs), leaving the tokenizer as it was."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = old_side
    return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)


def new_tokens(sequences, prompt_length: int, tokenizer, skip_special_tokens: bool = True) -> list[str]:
    """Decode the part of each generated row after the (left-padded) prompt."""
    return [tokenizer.decode(row[prompt_length:], skip_special_tokens=skip_special_tokens) for row in sequences]


def as_list(x: Any) -> Sequence[Any]:
    return x if isinstance(x, (list, tuple)) else [x]
