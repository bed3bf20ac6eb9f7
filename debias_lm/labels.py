"""Answer labels -> token ids (every single-token surface variant of each label), for any HF tokenizer."""

from __future__ import annotations

from .errors import UserInputError


def _variants(label: str) -> list[str]:
    base = label.strip()
    forms = {base, base.lower(), base.capitalize(), base.upper()}
    return sorted(forms) + sorted(" " + f for f in forms)


def label_token_ids(tokenizer, labels) -> list[list[int]]:
    """For each label, the ids of its single-token variants ("yes", "Yes", "YES", " yes", "▁Yes", "Ġyes", ...).

    A variant counts when the tokenizer encodes it (without special tokens) as exactly one token, or when the
    spelled token exists in the vocabulary with the word-start markers "▁" (SentencePiece) / "Ġ" (byte BPE).
    Raises when a label has no single-token variant or two labels share a token.
    """
    labels = list(labels)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[list[int]] = []
    owner: dict[int, str] = {}
    for label in labels:
        ids: set[int] = set()
        for v in _variants(label):
            enc = tokenizer.encode(v, add_special_tokens=False)
            if len(enc) == 1 and enc[0] != unk:
                ids.add(int(enc[0]))
            if v.startswith(" "):
                for marker in ("▁", "Ġ"):
                    tid = vocab.get(marker + v[1:])
                    if tid is not None and tid != unk:
                        ids.add(int(tid))
        if not ids:
            raise UserInputError(
                f"label {label!r} is not a single token in any case/space variant for this tokenizer; use labels "
                "that are (e.g. 'yes'/'no' or option letters 'A'/'B')"
            )
        for tid in ids:
            if tid in owner and owner[tid] != label:
                raise UserInputError(f"labels {owner[tid]!r} and {label!r} share token id {tid}; use distinct labels")
            owner[tid] = label
        out.append(sorted(ids))
    return out
