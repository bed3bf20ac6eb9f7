"""Post-hoc calibration of yes/no answers on a POPE-format file.

    python examples/calibrate_pope.py                                    # synthetic biased VLM + synthetic file
    python examples/calibrate_pope.py --model llava-hf/llava-1.5-7b-hf --pope coco_pope_random.jsonl \
        --image-dir val2014/

The POPE file has one {"question_id", "image", "text", "label"} object per line (the official layout). Without
--model the script uses the synthetic biased VLM of eval/vlm/pope_synthetic.py (trained there first) and writes
a synthetic POPE-format file to --work.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

import debias_lm as dl
from debias_lm.evaluation.pope import load_pope_jsonl
from debias_lm.evaluation.suites.pope_synthetic import write_synthetic_pope


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--pope", default="")
    ap.add_argument("--image-dir", default="")
    ap.add_argument("--work", default="results/pope_example")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    if args.model:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(args.model, torch_dtype="auto", device_map="auto").eval()
        processor = AutoProcessor.from_pretrained(args.model)
        suffix = " Please answer this question with one word."
    else:
        from debias_lm.evaluation.suites.pope_synthetic import load_biased_vlm

        path = Path("results/pope_synthetic/model")
        if not (path / "config.json").exists():
            raise SystemExit("train the synthetic VLM first: python eval/vlm/pope_synthetic.py")
        model, processor = load_biased_vlm(path)
        suffix = ""
    pope = args.pope or write_synthetic_pope(args.work)
    rows = load_pope_jsonl(pope, args.image_dir or None)
    rows = rows[: args.limit] if args.limit else rows
    processor.tokenizer.padding_side = "left"
    cal = dl.AnswerCalibrator(model, processor, labels=["yes", "no"], prior="image_free", variant="none")
    batches = []
    for i in range(0, len(rows), args.batch_size):
        chunk = rows[i : i + args.batch_size]
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"] + suffix}]}],
            add_generation_prompt=True, tokenize=False) for r in chunk]
        images = [Image.open(r["image"]).convert("RGB") for r in chunk]
        batches.append(processor(text=texts, images=images, return_tensors="pt", padding=True).to(model.device))
    with torch.no_grad():
        res = cal.score(batches, gold=[r["label"] for r in rows])
    m = res.metrics
    print(f"{len(rows)} questions from {pope}")
    for tag in ("before", "after"):
        print(f"  {tag:6s} calibration: accuracy {m[f'accuracy_{tag}']:.1f}  F1 {m[f'f1_{tag}']:.1f}  "
              f"yes-ratio {m[f'yes_ratio_{tag}']:.1f}  ECE {m[f'ece_{tag}']:.3f}")


if __name__ == "__main__":
    main()
