"""UDDIA's detox probe: a linear classifier (non-toxic = 0, toxic = 1) on mean-pooled final hidden states.

A probe file is a safetensors file with tensors ``weight`` ``[2, d]`` and ``bias`` ``[2]`` and metadata naming
the model it was trained on (``model_name``, ``model_fingerprint``, ``hidden_size``) plus how it was trained.
Loading a probe for a model with another fingerprint is an error: a probe only means something on the
hidden states of the model that produced its training features.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ...errors import UserInputError
from ...utils.fingerprint import model_fingerprint, model_name
from .sites import collect_sites

log = logging.getLogger(__name__)

EMBEDDED_PROBE = "smollm2-135m-instruct.probe.safetensors"


@dataclasses.dataclass
class ToxicityProbe:
    weight: torch.Tensor  # [2, d]
    bias: torch.Tensor  # [2]
    meta: dict

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=h.device)
        return h.float() @ w.T + self.bias.to(h.device)

    def toxic_prob(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(h), -1)[..., 1]

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.meta.items()}
        save_file({"weight": self.weight.float().contiguous(), "bias": self.bias.float().contiguous()}, str(path),
                  metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ToxicityProbe:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"UDDIA probe file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except Exception as e:  # not a safetensors probe
            raise UserInputError(f"{str(path)!r} is not a UDDIA probe file: {e}") from None
        if weight.dim() != 2 or weight.shape[0] != 2 or bias.shape != (2,) or "model_fingerprint" not in meta:
            raise UserInputError(f"{str(path)!r} is not a UDDIA probe file (expected weight [2, d], bias [2] and "
                                 "model metadata)")
        return cls(weight, bias, meta)

    def check_model(self, model: nn.Module, path: str = "") -> None:
        fp = model_fingerprint(model)
        hidden = model.get_input_embeddings().weight.shape[1]
        if self.meta.get("model_fingerprint") != fp or self.hidden_size != hidden:
            raise UserInputError(
                f"UDDIA probe {path or '(given)'} was trained for model {self.meta.get('model_name', '?')!r} "
                f"(fingerprint {self.meta.get('model_fingerprint')}, hidden {self.hidden_size}); this model is "
                f"{model_name(model)!r} (fingerprint {fp}, hidden {hidden}). Train a probe for it with "
                "'debias-lm uddia train-probe --model M --data labeled.jsonl --out P' and pass probe=P")


def embedded_probe_path() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "uddia" / EMBEDDED_PROBE


def resolve_probe(model: nn.Module, path: str) -> ToxicityProbe:
    """The probe at ``path`` (or the shipped one when empty), checked against ``model``."""
    if path:
        probe = ToxicityProbe.load(path)
        probe.check_model(model, path)
        return probe
    shipped = embedded_probe_path()
    if shipped.is_file():
        probe = ToxicityProbe.load(shipped)
        if probe.meta.get("model_fingerprint") == model_fingerprint(model):
            return probe
    raise UserInputError(
        f"UDDIA variants 't'/'u' need a toxicity probe for this model ({model_name(model)!r}); the shipped probe is "
        "for the embedded SmolLM2-135M-Instruct only. Train one with 'debias-lm uddia train-probe --model M "
        "--data labeled.jsonl --out P' and pass UDDIAConfig(probe=P), or use variant='b'")


@torch.no_grad()
def mean_pooled_states(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 128) -> torch.Tensor:
    """Mean of the final (post-norm) hidden states over each text's tokens -> ``[N, d]`` float32.

    Captured at the final norm with the same hook UDDIA decodes with, so training and decoding see the same
    features.
    """
    from .sites import OffsetHooks

    sites, final, _ = collect_sites(model)
    hooks = OffsetHooks([], final)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = getattr(model, "device", None)
    out = []
    with hooks.installed():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            if device is not None:
                enc = {k: v.to(device) for k, v in enc.items()}
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=False)
            h = hooks.captured.float()
            m = mask.unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
    return torch.cat(out)


def train_probe(
    model, tokenizer, texts: list[str], labels: list[int], *, epochs: int = 300, lr: float = 1e-2,
    weight_decay: float = 1e-3, val_fraction: float = 0.1, seed: int = 0, meta: dict | None = None,
    batch_size: int = 16,
) -> ToxicityProbe:
    """Train a logistic-regression probe (frozen model, class-balanced CE, full-batch Adam) on mean-pooled final
    states. Records train/validation accuracy in the metadata."""
    if len(texts) != len(labels) or len(texts) < 4:
        raise UserInputError(f"train_probe needs >= 4 labelled texts (got {len(texts)} texts, {len(labels)} labels)")
    y = torch.tensor([int(v) for v in labels])
    if set(y.tolist()) - {0, 1} or y.min() == y.max():
        raise UserInputError("train_probe needs labels 0 (non-toxic) and 1 (toxic), both present")
    X = mean_pooled_states(model, tokenizer, list(texts), batch_size=batch_size)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(round(val_fraction * len(y))) if len(y) >= 20 else 0
    val, tr = perm[:n_val], perm[n_val:]
    mu, sd = X[tr].mean(0), X[tr].std(0).clamp_min(1e-6)
    lin = nn.Linear(X.shape[1], 2)
    torch.manual_seed(seed)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    counts = torch.bincount(y[tr], minlength=2).float().clamp_min(1)
    cw = counts.sum() / (2 * counts)
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
    Xs = (X - mu) / sd
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(lin(Xs[tr]), y[tr], weight=cw)
            loss.backward()
            opt.step()
    # fold the standardisation into the linear map: w (x - mu) / sd + b
    w = lin.weight.detach() / sd
    b = lin.bias.detach() - (w * mu).sum(-1)
    probe = ToxicityProbe(w, b, {})

    def acc(idx):
        if len(idx) == 0:
            return None
        return float(((probe.logits(X[idx]).argmax(-1)) == y[idx]).float().mean())

    probe.meta = {
        "format": "debias-lm uddia probe v1",
        "model_name": model_name(model),
        "model_fingerprint": model_fingerprint(model),
        "hidden_size": str(X.shape[1]),
        "classes": "0=non_toxic,1=toxic",
        "features": "mean of final post-norm hidden states over the text's tokens",
        "n_train": str(len(tr)),
        "n_val": str(len(val)),
        "n_toxic": str(int(y.sum())),
        "train_accuracy": json.dumps(acc(tr)),
        "val_accuracy": json.dumps(acc(val)),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()},
    }
    return probe


def read_labeled_jsonl(path: str | Path) -> tuple[list[str], list[int]]:
    """``{"text": ..., "label": 0|1}`` per line (``"toxic"`` is accepted for ``"label"``)."""
    from ...utils.jsonl import read_jsonl_objects

    path = Path(path)
    texts, labels = [], []
    for n, row in read_jsonl_objects(path, what="--data"):
        label, text = row.get("label", row.get("toxic")), row.get("text")
        if not isinstance(text, str) or not text.strip() or label not in (0, 1, True, False):
            raise UserInputError(f"{path}:{n}: expected {{\"text\": str, \"label\": 0 or 1}}")
        texts.append(text)
        labels.append(int(label))
    return texts, labels
