"""The vLLM form of ``nbls``: a prompt transform on the client, or on the server a grounding chat template.

A logits processor cannot change prompts, so server-side NBLS is a chat template (``--chat-template``):
the model's own template, preceded by a Jinja prelude that does what
:meth:`debias_lm.NBLSGrounding.apply` does to chat messages (grounding text as a new first system message,
or merged in front of an existing one). Rendering a chat with it gives the same text as the HF path
(``wrap(model, tok, NBLSConfig(...)).generate(messages=...)``). Plain completions are not grounded by a
chat template; ground those on the client (``NBLSConfig().grounding().apply(prompt)``).
"""

from __future__ import annotations

from pathlib import Path

from ...registry import VLLMMapping

REFUSAL = (
    "method 'nbls' is a prompt transform, not a logits adjustment: ground the prompt on the client "
    "(vllm_debias.generate(llm, prompts, NBLSConfig()) or NBLSConfig().grounding().apply(prompt_or_messages)) "
    "or serve with 'debias-lm serve --model M --nbls' (a grounding chat template), and send the request "
    "without vllm_xargs"
)


def _prelude(text: str) -> str:
    if "{% endraw %}" in text or "{%- endraw" in text:
        raise ValueError("the grounding text contains a Jinja endraw tag")
    return (
        "{%- set _nbls_text %}{% raw %}" + text + "{% endraw %}{% endset -%}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- if messages[0]['content'] is string -%}\n"
        "{%- set _nbls_c = (_nbls_text ~ '\\n\\n' ~ messages[0]['content']) if messages[0]['content'] "
        "else _nbls_text -%}\n"
        "{%- else -%}\n"
        "{%- set _nbls_c = [{'type': 'text', 'text': _nbls_text ~ '\\n\\n'}] + messages[0]['content'] -%}\n"
        "{%- endif -%}\n"
        "{%- set messages = [{'role': 'system', 'content': _nbls_c}] + messages[1:] -%}\n"
        "{%- else -%}\n"
        "{%- set messages = [{'role': 'system', 'content': _nbls_text}] + messages -%}\n"
        "{%- endif -%}\n"
    )


def nbls_chat_template(tokenizer_or_template, config=None) -> str:
    """The grounding chat template for ``config`` (a :class:`debias_lm.NBLSConfig`, default k=32).

    ``tokenizer_or_template``: the model's tokenizer (its ``chat_template`` is wrapped) or a template string.
    """
    from .config import NBLSConfig

    config = config or NBLSConfig()
    base = tokenizer_or_template if isinstance(tokenizer_or_template, str) else getattr(
        tokenizer_or_template, "chat_template", None)
    if not base:
        raise ValueError("the tokenizer has no chat template to wrap; pass one (a Jinja string)")
    if isinstance(base, dict):  # multiple named templates: wrap the default one
        base = base.get("default") or next(iter(base.values()))
    return _prelude(config.grounding().text) + base


def write_nbls_chat_template(model: str, path: str | Path, config=None) -> Path:
    """Write the grounding template for ``model``'s tokenizer to ``path`` (for ``--chat-template``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    path = Path(path)
    path.write_text(nbls_chat_template(tok, config), encoding="utf-8")
    return path


def grounding_transform(config):
    """``vllm_debias.generate``'s client-side transform: the grounding applied to a prompt or a chat."""
    return config.grounding().apply


MAPPING = VLLMMapping(behaviour="prompt", transform=grounding_transform, refusal=REFUSAL)
