"""Tiny text models (Llama without biases, GPT-2 with biases) and a tokenizer trained offline."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The nurse said that she would be late. The engineer said that he was busy.",
    "The doctor told me that they had finished the work because it was urgent.",
    "He and she went to the store. His book and her pen are on the table.",
    "The teacher asked the student a question and the student answered it.",
    "Women and men work in every occupation: carpenters, cashiers, surgeons, pilots.",
    "Describe the picture. Is there a cat in the image? Yes. No. Answer with yes or no.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful assistant. Write a short story about a software developer.",
    "Occupation: Registered nurses - women 87.9%, White 73.6%, Black 14.5% (BLS CPS, 2022)",
    "the a an of to in and is was for on with as by at from that this it be are",
    "0 1 2 3 4 5 6 7 8 9 10 100 % . , ; : ! ? ' \" ( ) [ ] - _ / \\ \n",
]

DEFAULT_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<unk>")


@lru_cache(maxsize=8)
def _train_tokenizer(vocab_size: int, extra_special: tuple[str, ...]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(DEFAULT_SPECIAL) + [t for t in extra_special if t not in DEFAULT_SPECIAL]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    from debias_lm.methods.nbls import load_bls_table

    corpus = list(_CORPUS) * 4 + [f"The {r.surface} said that he or she" for r in load_bls_table()]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 512, extra_special_tokens: Sequence[str] = ()):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained in-process (deterministic), ChatML template.

    Token ids: ``<|endoftext|>`` = 0 (BOS/EOS), ``<|im_start|>`` = 1, ``<|im_end|>`` = 2, ``<pad>`` = 3,
    ``<unk>`` = 4, then ``extra_special_tokens`` in order, then the learned vocabulary. Left padding.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_train_tokenizer(vocab_size, tuple(extra_special_tokens)))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    extras = [t for t in extra_special_tokens if t not in DEFAULT_SPECIAL]
    if extras:
        tok.add_special_tokens({"additional_special_tokens": extras})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_llama(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    dtype=None,
    tie_word_embeddings: bool = False,
):
    """A random ``LlamaForCausalLM`` (no bias terms) and its tokenizer. head_dim = hidden/heads (>= 32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    _set_generation_defaults(model, tok)
    return model, tok


def build_tiny_gpt2(hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2, vocab_size: int = 512, seed: int = 0):
    """A random ``GPT2LMHeadModel`` (has bias terms everywhere) and its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tiny_tokenizer(vocab_size)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    _set_generation_defaults(model, tok)
    return model, tok


def _set_generation_defaults(model, tok) -> None:
    gc = model.generation_config
    gc.pad_token_id = tok.pad_token_id
    gc.eos_token_id = tok.eos_token_id
    gc.bos_token_id = tok.bos_token_id


def save_tiny(model, tokenizer_or_processor, path: str | Path) -> Path:
    """``save_pretrained`` both parts into ``path`` and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer_or_processor.save_pretrained(path)
    return path
