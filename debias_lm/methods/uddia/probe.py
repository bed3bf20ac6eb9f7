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
import math
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
def mean_pooled_states(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 128,
                       progress: bool = False) -> torch.Tensor:
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
    # batches of similar length (little padding); results put back in the input order
    lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = torch.zeros(len(texts), final.dim)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="probe features", unit="batch")
    with hooks.installed():
        for i in starts:
            idx = order[i : i + batch_size]
            enc = tokenizer([texts[j] for j in idx], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            if device is not None:
                enc = {k: v.to(device) for k, v in enc.items()}
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=False)
            h = hooks.captured.float()
            m = mask.unsqueeze(-1).to(h.dtype)
            out[torch.tensor(idx)] = ((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu()
    return out


def _quantiles(x: torch.Tensor, qs=(0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)) -> dict:
    if x.numel() == 0:
        return {}
    return {f"p{int(q * 100)}": round(float(torch.quantile(x.float(), q)), 3) for q in qs}


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (golden-section search on log T)."""
    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), y))

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def fit_probe(X: torch.Tensor, y: torch.Tensor, *, epochs: int = 300, lr: float = 1e-2, weight_decay: float = 0.1,
              val_fraction: float = 0.1, seed: int = 0, label_smoothing: float = 0.1, calibrate: bool = True,
              splits: list[str] | None = None) -> tuple[ToxicityProbe, dict | None, dict | None]:
    """The optimisation of :func:`train_probe` on precomputed features ``X`` ``[N, d]`` and labels ``y`` ``[N]``
    -> (probe, train report, validation report); the probe's meta has n_train, n_val and the temperature."""
    if splits is not None:
        if len(splits) != len(y) or set(splits) - {"train", "val"}:
            raise UserInputError("train_probe splits must give 'train' or 'val' for every text")
        val = torch.tensor([i for i, s in enumerate(splits) if s == "val"], dtype=torch.long)
        tr = torch.tensor([i for i, s in enumerate(splits) if s == "train"], dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(y), generator=g)
        n_val = int(round(val_fraction * len(y))) if len(y) >= 20 else 0
        val, tr = perm[:n_val], perm[n_val:]
    if len(tr) == 0 or len(set(y[tr].tolist())) < 2:
        raise UserInputError("train_probe needs both labels in the training split")
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
            loss = nn.functional.cross_entropy(lin(Xs[tr]), y[tr], weight=cw, label_smoothing=label_smoothing)
            loss.backward()
            opt.step()
    # fold the standardisation into the linear map: w (x - mu) / sd + b
    w = lin.weight.detach() / sd
    b = lin.bias.detach() - (w * mu).sum(-1)
    temperature = 1.0
    if calibrate and len(val) >= 10 and len(set(y[val].tolist())) == 2:
        temperature = fit_temperature((X[val] @ w.T + b), y[val])
        w, b = w / temperature, b / temperature
    probe = ToxicityProbe(w, b, {"n_train": len(tr), "n_val": len(val), "temperature": temperature})

    def report(idx):
        if len(idx) == 0:
            return None
        lg = probe.logits(X[idx])
        margin = lg[:, 1] - lg[:, 0]
        return {"n": len(idx), "accuracy": round(float((lg.argmax(-1) == y[idx]).float().mean()), 4),
                "loss": round(float(nn.functional.cross_entropy(lg, y[idx])), 4),
                "margin_toxic": _quantiles(margin[y[idx] == 1]), "margin_clean": _quantiles(margin[y[idx] == 0])}

    return probe, report(tr), report(val)


def train_probe(
    model, tokenizer, texts: list[str], labels: list[int], *, epochs: int = 300, lr: float = 1e-2,
    weight_decay: float = 0.1, val_fraction: float = 0.1, seed: int = 0, meta: dict | None = None,
    batch_size: int = 16, label_smoothing: float = 0.1, calibrate: bool = True,
    splits: list[str] | None = None, progress: bool = False,
) -> ToxicityProbe:
    """Train a calibrated logistic-regression probe on mean-pooled final states (frozen model).

    Class-balanced cross-entropy with ``label_smoothing`` (targets 1 - ε/2 and ε/2: the loss has a finite
    minimiser even on separable data, so the weights and logits stay bounded instead of growing with training),
    L2 via Adam's ``weight_decay``, full-batch, on standardised features
    (folded back into the weights). With ``calibrate`` a temperature is then fitted on the validation split by
    NLL and folded into the weights, so ``softmax(logits)`` is a calibrated toxicity probability (no saturated
    logits for UDDIA to push against). The validation split is ``splits`` (``"train"``/``"val"`` per text) or a
    seeded ``val_fraction``. Records losses, accuracies and the logit-margin distribution in the metadata.
    """
    if len(texts) != len(labels) or len(texts) < 4:
        raise UserInputError(f"train_probe needs >= 4 labelled texts (got {len(texts)} texts, {len(labels)} labels)")
    if not 0 <= label_smoothing < 1:
        raise UserInputError(f"label_smoothing={label_smoothing} is invalid: expected a number in [0, 1)")
    y = torch.tensor([int(v) for v in labels])
    if set(y.tolist()) - {0, 1} or y.min() == y.max():
        raise UserInputError("train_probe needs labels 0 (non-toxic) and 1 (toxic), both present")
    X = mean_pooled_states(model, tokenizer, list(texts), batch_size=batch_size, progress=progress)
    probe, tr_rep, val_rep = fit_probe(X, y, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                       val_fraction=val_fraction, seed=seed, label_smoothing=label_smoothing,
                                       calibrate=calibrate, splits=splits)
    tr, val, temperature = probe.meta["n_train"], probe.meta["n_val"], probe.meta["temperature"]

    probe.meta = {
        "format": "debias-lm uddia probe v2",
        "model_name": model_name(model),
        "model_fingerprint": model_fingerprint(model),
        "hidden_size": str(X.shape[1]),
        "classes": "0=non_toxic,1=toxic",
        "features": "mean of final post-norm hidden states over the text's tokens",
        "n_train": str(tr),
        "n_val": str(val),
        "n_toxic": str(int(y.sum())),
        "train_accuracy": json.dumps(tr_rep["accuracy"] if tr_rep else None),
        "val_accuracy": json.dumps(val_rep["accuracy"] if val_rep else None),
        "calibration": json.dumps({"label_smoothing": label_smoothing, "temperature": round(temperature, 4),
                                   "weight_decay": weight_decay, "epochs": epochs}),
        "train_report": json.dumps(tr_rep),
        "val_report": json.dumps(val_rep),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()},
    }
    return probe


def read_labeled_jsonl(path: str | Path, with_splits: bool = False):
    """``{"text": ..., "label": 0|1}`` per line (``"toxic"`` is accepted for ``"label"``; an optional ``"split"``
    of ``"train"``/``"val"``) -> (texts, labels) or, ``with_splits``, (texts, labels, splits or None)."""
    from ...utils.jsonl import read_jsonl_objects

    path = Path(path)
    texts, labels, splits = [], [], []
    for n, row in read_jsonl_objects(path, what="--data"):
        label, text = row.get("label", row.get("toxic")), row.get("text")
        if not isinstance(text, str) or not text.strip() or label not in (0, 1, True, False):
            raise UserInputError(f"{path}:{n}: expected {{\"text\": str, \"label\": 0 or 1}}")
        split = row.get("split")
        if split is not None and split not in ("train", "val"):
            raise UserInputError(f"{path}:{n}: \"split\" must be \"train\" or \"val\", got {split!r}")
        texts.append(text)
        labels.append(int(label))
        splits.append(split)
    if not with_splits:
        return texts, labels
    if all(s is None for s in splits):
        return texts, labels, None
    if any(s is None for s in splits):
        raise UserInputError(f"{path}: some rows have a \"split\" and some do not; give it on every row or none")
    return texts, labels, splits
