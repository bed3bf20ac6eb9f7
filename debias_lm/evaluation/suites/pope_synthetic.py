"""A synthetic POPE-style task and a small LLaVA-style VLM trained on it with a deliberate "yes" prior.

No VLM weights exist offline, so the effect of calibration and debias sampling is shown on a model trained here:

* **Images** (32×32, numpy): 1–2 objects (square / circle / triangle × red / green / blue / yellow), 8–12 px, one
  per quadrant, on a grey background with Gaussian pixel noise (σ = 20).
* **Questions** (POPE-style existence): "Is there a {colour} {shape} in the image? Answer yes or no."
  Negatives ask for a colour–shape pair that is absent (``ask="colour"`` asks for a colour only).
* **The deliberate language prior**: in training, ``yes_rate`` (default 0.75) of the questions are positives,
  and ``image_free_rate`` (0.2) of the examples are the same questions *without an image* answered with that
  same 75 % "yes" marginal — standing in for the text-only statistics a real LVLM's language model has
  absorbed, which is the prior these methods subtract. The held-out split is balanced (50 % "yes").
* **Model**: ``build_tiny_llava`` scaled up (CLIP 2 layers × 64, patch 8 → 16 image tokens; Llama 2 layers ×
  128), trained from scratch with AdamW (1500 steps of 48) on the answer token and ``<|im_end|>``. This
  small model learns to read the image only partly in that budget — it stays uncertain on many images, which
  is the regime where the learned "yes" prior shows.

:func:`evaluate` reports POPE accuracy / precision / recall / F1 / yes-ratio (of predictions) and ECE for plain
greedy answers, post-hoc calibration (image-free prior), VDD (debias sampling, greedy) and both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
QUESTION = "Is there a {colour} {shape} in the image? Answer yes or no."
ANSWER_END = "<|im_end|>"


@dataclass
class Example:
    image: Any  # PIL image or None (image-free training example)
    question: str
    answer: str  # "yes" / "no"


def _draw(canvas: np.ndarray, shape: str, colour, cx: int, cy: int, r: int) -> None:
    yy, xx = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    if shape == "square":
        m = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    elif shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:  # triangle pointing up
        m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    canvas[m] = colour


def render(objects: list[tuple[str, str]], rng: np.random.Generator, size: int = 32, noise: float = 20.0):
    """Draw ``[(colour, shape), ...]`` at random non-overlapping places; returns a PIL RGB image."""
    from PIL import Image

    canvas = np.full((size, size, 3), 128, dtype=np.float64)
    cells = rng.permutation(4)[: len(objects)]  # one object per quadrant
    for (colour, shape), cell in zip(objects, cells):
        r = int(rng.integers(4, 7))
        cx = (cell % 2) * size // 2 + size // 4 + int(rng.integers(-2, 3))
        cy = (cell // 2) * size // 2 + size // 4 + int(rng.integers(-2, 3))
        _draw(canvas, shape, COLOURS[colour], cx, cy, r)
    canvas += rng.normal(0, noise, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def make_split(n: int, seed: int, *, yes_rate: float = 0.5, image_free_rate: float = 0.0,
               ask: str = "colour_shape") -> list[Example]:
    """``n`` examples; a ``yes_rate`` share are positives; ``image_free_rate`` of them carry no image.

    ``ask="colour_shape"`` (default) asks whether a colour-shape pair is present ("Is there a red circle ..."),
    ``ask="colour"`` whether an object of a colour is ("Is there a red object ...").
    """
    if ask not in ("colour", "colour_shape"):
        raise ValueError(f"ask={ask!r} is invalid: expected 'colour' or 'colour_shape'")
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 3))
        idx = rng.choice(len(pairs), size=k, replace=False)
        objects = [pairs[i] for i in idx]
        positive = rng.random() < yes_rate
        if positive:
            colour, shape = objects[int(rng.integers(0, k))]
        elif ask == "colour":
            absent = [c for c in COLOURS if c not in {o[0] for o in objects}]
            colour, shape = absent[int(rng.integers(0, len(absent)))], "object"
        else:
            absent = [p for p in pairs if p not in objects]
            colour, shape = absent[int(rng.integers(0, len(absent)))]
        if ask == "colour":
            shape = "object"
        image = None if rng.random() < image_free_rate else render(objects, rng)
        out.append(Example(image, QUESTION.format(colour=colour, shape=shape), "yes" if positive else "no"))
    return out


def prompt_text(processor, question: str, with_image: bool = True) -> str:
    parts = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                         tokenize=False)


def build_model(seed: int = 0):
    """The untrained synthetic VLM and its processor."""
    from ...testing.vlm import build_tiny_llava

    return build_tiny_llava(seed=seed, text_hidden=128, text_layers=2, vision_hidden=64, vision_layers=2)


def _encode_batch(processor, examples: list[Example], train: bool):
    """Right-padded training batch (labels on the answer token) or left-padded inference batch."""
    import torch

    tok = processor.tokenizer
    end = ANSWER_END if train else ""
    texts = [prompt_text(processor, e.question, e.image is not None) + (e.answer + end if train else "")
             for e in examples]
    images = [e.image for e in examples if e.image is not None]
    tok.padding_side = "right" if train else "left"
    kw = {"images": images} if images else {}
    enc = processor(text=texts, return_tensors="pt", padding=True, **kw)
    if train:
        labels = torch.full_like(enc["input_ids"], -100)
        last = enc["attention_mask"].sum(-1) - 1  # answer token, then <|im_end|>: the last two real tokens
        rows = torch.arange(len(examples))
        for j in (last - 1, last):
            labels[rows, j] = enc["input_ids"][rows, j]
        enc["labels"] = labels
    return enc


class _Encoded:
    """Training examples encoded once (token ids per example, pixel tensors), collated per batch."""

    def __init__(self, processor, examples: list[Example], chunk: int = 256) -> None:
        import torch

        self.ids: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor | None] = []
        for i in range(0, len(examples), chunk):
            enc = _encode_batch(processor, examples[i : i + chunk], train=True)
            k = 0
            for j, e in enumerate(examples[i : i + chunk]):
                self.ids.append(enc["input_ids"][j][enc["attention_mask"][j].bool()].clone())
                if e.image is not None:
                    self.pixels.append(enc["pixel_values"][k].clone())
                    k += 1
                else:
                    self.pixels.append(None)
        self.pad = processor.tokenizer.pad_token_id

    def batch(self, idx) -> dict:
        import torch

        rows = [self.ids[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
            labels[j, len(r) - 2 : len(r)] = r[-2:]  # the answer token and <|im_end|>
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        pix = [self.pixels[i] for i in idx if self.pixels[i] is not None]
        if pix:
            out["pixel_values"] = torch.stack(pix)
        return out


def train_biased_vlm(out_dir: str | Path, *, n_train: int = 6000, steps: int = 1500, batch_size: int = 48,
                     lr: float = 2e-3, yes_rate: float = 0.75, image_free_rate: float = 0.2, seed: int = 0,
                     threads: int | None = 1, progress: bool = True) -> Path:
    """Train the biased VLM and save it (``save_pretrained`` of model and processor) with ``train_meta.json``.

    ``threads``: torch intra-op threads while training (1 is fastest for this tiny model on a shared CPU;
    ``None`` leaves torch's setting alone).
    """
    import torch
    from tqdm.auto import tqdm

    out = Path(out_dir)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, processor = build_model(seed)
    model.train()
    data = make_split(n_train, seed + 1, yes_rate=yes_rate, image_free_rate=image_free_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng(seed + 2)
    t0 = time.perf_counter()
    encoded = _Encoded(processor, data)
    losses = []
    bar = tqdm(range(steps), desc="training biased VLM", disable=not progress)
    for step in bar:
        enc = encoded.batch(rng.choice(n_train, size=batch_size, replace=False))
        loss = model(**enc).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    torch.set_num_threads(old_threads)
    tok = processor.tokenizer
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(ANSWER_END)]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = dict(n_train=n_train, steps=steps, batch_size=batch_size, lr=lr, yes_rate=yes_rate,
                image_free_rate=image_free_rate, seed=seed, final_loss=float(np.mean(losses[-50:])),
                train_seconds=round(time.perf_counter() - t0, 1))
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2))
    return out


def load_biased_vlm(path: str | Path):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = LlavaProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def evaluate(model, processor, examples: list[Example], *, alpha: float = 1.0, beta: float = 0.1,
             variant: str = "none", batch_size: int = 32, max_new_tokens: int = 3, progress: bool = True,
             predictions: dict | None = None) -> dict:
    """POPE metrics + ECE of plain / calibration / VDD / VDD + calibration on ``examples`` (all with images).

    plain and VDD answers are parsed from greedy generations (first yes/no word); calibration re-ranks the
    yes/no label distribution of the raw first-step logits with the per-question image-free prior; "both"
    applies that calibration to the label distribution of the VDD-contrasted first-step scores. Pass a dict
    as ``predictions`` to receive the per-question answers and label probabilities of every variant.
    """
    import torch
    from tqdm.auto import tqdm

    from ... import AnswerCalibrator, DebiasSamplingConfig  # public names: stable across module moves
    from ...core.contrast import calibrate, contrast
    from ...metrics.pope import expected_calibration_error, parse_yes_no, pope_metrics
    from ..backends import hf_runner as wrap

    if any(e.image is None for e in examples):
        raise ValueError("evaluation examples must all have images")
    cal = AnswerCalibrator(model, processor, labels=("yes", "no"), prior="image_free", variant=variant)
    vdd = wrap(model, processor, DebiasSamplingConfig(alpha=alpha, beta=beta, variant=variant))
    tok = processor.tokenizer
    gold = [e.answer for e in examples]
    preds: dict[str, list] = {"plain": [], "calibration": [], "vdd": [], "vdd+calibration": []}
    probs: dict[str, list] = {"plain": [], "calibration": [], "vdd": [], "vdd+calibration": []}
    gen_kw = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    for i in tqdm(range(0, len(examples), batch_size), desc="POPE-synthetic", disable=not progress):
        chunk = examples[i : i + batch_size]
        enc = _encode_batch(processor, chunk, train=False)
        n_prompt = enc["input_ids"].shape[1]
        with torch.no_grad():
            plain = model.generate(**enc, **gen_kw)
            dd = vdd.generate(**enc, **gen_kw)
            logits, uncond = cal._logits_with_priors(enc)
        preds["plain"] += [parse_yes_no(t) for t in tok.batch_decode(plain[:, n_prompt:], skip_special_tokens=True)]
        preds["vdd"] += [parse_yes_no(t) for t in tok.batch_decode(dd[:, n_prompt:], skip_special_tokens=True)]
        p = cal.label_probs_from_logits(logits)
        p_cf = torch.stack([cal.label_probs_from_logits(u) for u in uncond]).mean(0)
        lu = uncond.float().mean(0)
        p_dd = cal.label_probs_from_logits(contrast(logits.float(), lu, alpha, beta))
        q = calibrate(p, p_cf)
        q_dd = calibrate(p_dd, p_cf)
        for name, pr in (("plain", p), ("calibration", q), ("vdd", p_dd), ("vdd+calibration", q_dd)):
            probs[name] += pr.tolist()
        preds["calibration"] += ["yes" if r[0] >= r[1] else "no" for r in q.tolist()]
        preds["vdd+calibration"] += ["yes" if r[0] >= r[1] else "no" for r in q_dd.tolist()]
    gold_idx = [0 if g == "yes" else 1 for g in gold]
    if predictions is not None:  # per question: the parsed answer and the [p(yes), p(no)] of every variant
        predictions.update({name: {"answers": preds[name], "probs": probs[name]} for name in preds})
    results = {}
    for name in preds:
        m = pope_metrics(preds[name], gold)
        m["ece"] = expected_calibration_error(probs[name], gold_idx)
        results[name] = m
    return results


# ------------------------------------------------------------------------------------------------------
# The pope-synthetic suite of ``debias-lm eval``
# ------------------------------------------------------------------------------------------------------
def _arm(method: str) -> str:
    """The :func:`evaluate` variant of a harness method, from the specs' kinds: the baseline -> plain, an answer
    method -> calibration, a decoding method -> vdd, decoding + answer -> vdd+calibration."""
    from ..settings import method_spec

    kinds = sorted(method_spec(p).kind for p in method.split("+"))
    return {("none",): "plain", ("answer",): "calibration", ("decoding",): "vdd",
            ("answer", "decoding"): "vdd+calibration"}[tuple(kinds)]


def _accepts(spec) -> bool:
    return "vision" in spec.modalities and spec.kind in ("answer", "decoding")


def _decoding_config(s):
    """The contrast settings VDD runs with: the decoding method in ``--method`` (with its ``--set``), else the
    registered vision decoding method's defaults."""
    from ...registry import list_methods
    from ..settings import method_config, method_spec

    parts = [p for m in s.methods for p in m.split("+") if method_spec(p).kind == "decoding"]
    if parts:
        name = method_spec(parts[0]).name
    else:
        name = next(x.name for x in list_methods() if x.kind == "decoding" and "vision" in x.modalities)
    return method_config(name, s.method_overrides.get(name))


def check_pope_model(path: str) -> None:
    from ...errors import UserInputError

    if not (Path(path) / "config.json").is_file():
        raise UserInputError(f"pope-synthetic needs the biased synthetic VLM at {path!r}: train it with "
                             "'python eval/vlm/pope_synthetic.py --out results/pope_synthetic' (about 10 min on "
                             "CPU) or pass --pope-model DIR")


def run_suite(ctx) -> dict:
    s = ctx.settings
    check_pope_model(s.pope_model)
    model, processor = load_biased_vlm(s.pope_model)
    n = s.limit or 600
    examples = make_split(n, 10_000 + s.seed, yes_rate=0.5)
    cfg = _decoding_config(s)
    per_question: dict = {}
    res = evaluate(model, processor, examples, alpha=cfg.alpha, beta=cfg.beta,
                   variant=cfg.variant if cfg.variant in ("none", "unk", "noise") else "none",
                   progress=s.progress, predictions=per_question)
    ctx.store.add([{"suite": "pope-synthetic", "method": m, "id": f"q{i}", "sample": 0, "question": e.question,
                    "label": e.answer, "answer": per_question[_arm(m)]["answers"][i],
                    "p_yes": per_question[_arm(m)]["probs"][i][0]}
                   for m in s.methods for i, e in enumerate(examples)
                   if not ctx.store.has("pope-synthetic", m, f"q{i}")])
    return {m: {**res[_arm(m)], "n_questions": n, "test_seed": 10_000 + s.seed} for m in s.methods}


def _plot(out, by_method, payload, store, plt):
    from .common import bar_plot

    return bar_plot(by_method, ("accuracy", "f1", "yes_ratio", "ece"), "pope-synthetic", out / "pope_synthetic.png",
                    plt)


def _register():
    from . import Column, Suite, register_suite

    return register_suite(Suite(
        name="pope-synthetic",
        run=run_suite,
        accepts=_accepts,
        combos=True,
        text_model=False,
        validate=lambda s: check_pope_model(s.pope_model),
        plot=_plot,
        columns=(Column("accuracy", "accuracy", True), Column("F1", "f1", True),
                 Column("yes-ratio (pred.)", "yes_ratio", None), Column("ECE", "ece", False)),
        definition="debias_lm.metrics.pope (accuracy, precision, recall, F1, yes-ratio of predictions, ECE 10 bins)",
        description="pope-synthetic: the biased synthetic VLM (python eval/vlm/pope_synthetic.py), balanced "
                    "held-out questions; POPE metrics and ECE",
    ))


SUITE = _register()


def write_synthetic_pope(out_dir: str | Path, n: int = 40, seed: int = 7) -> Path:
    """Write a balanced POPE-format file of the synthetic task (images as PNG) and return its path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(make_split(n, seed, yes_rate=0.5)):
        name = f"images/{i:05d}.png"
        ex.image.save(out / name)
        lines.append(json.dumps({"question_id": i, "image": name, "text": ex.question, "label": ex.answer}))
    path = out / "pope.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
