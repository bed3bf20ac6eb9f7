"""Report on a UDDIA detox probe: held-out accuracy against its own labels and against hatesonar's, loss and logit
margins, and the loss UDDIA would start from on plain generations.

    python eval/uddia/probe_report.py --data eval/uddia/results/probe_data.jsonl \
        --out eval/uddia/measured/probe_report.json

* held-out = the rows of --data with ``"split": "val"`` (never trained on; the temperature was fitted there);
* "against hatesonar labels": hatesonar 0.1.0, tox = 1 - P(neither) >= 0.5. hatesonar is the evaluation's judge;
  it labelled no training text and chose no hyperparameter: this is only a report of agreement;
* margins: logit(toxic) - logit(clean) quantiles per class (a saturated probe has margins of tens);
* the starting loss: CE(probe(h_mean), non-toxic) on plain continuations (top-p 0.9, 20 tokens, seed 1) of the
  odd-indexed toxicity prompts (unseen by the data generator), h_mean = mean final state over prompt +
  continuation, the quantity UDDIA's first step differentiates; with the share above the default trigger.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def quantiles(x, qs=(0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)):
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    return {f"p{int(q * 100)}": round(float(torch.quantile(x, q)), 3) for q in qs} if x.numel() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE / "results" / "probe_data.jsonl"))
    ap.add_argument("--probe", default="", help="probe file (default: the shipped one)")
    ap.add_argument("--out", default=str(HERE / "measured" / "probe_report.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import debias_lm as dl
    from debias_lm.eval.scorers import get_scorer
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.methods.uddia.probe import ToxicityProbe, embedded_probe_path, mean_pooled_states

    probe = ToxicityProbe.load(args.probe or embedded_probe_path())
    model, tok = dl.load_default_model()
    probe.check_model(model)
    rows = [json.loads(x) for x in Path(args.data).open(encoding="utf-8") if x.strip()]
    val = [r for r in rows if r.get("split") == "val"]
    texts = [r["text"] for r in val]
    y = torch.tensor([r["label"] for r in val])
    X = mean_pooled_states(model, tok, texts, batch_size=32)
    logits = probe.logits(X)
    pred = logits.argmax(-1)
    margin = logits[:, 1] - logits[:, 0]
    hs = get_scorer("hatesonar")
    y_hs = torch.tensor([int(s >= 0.5) for s in hs.score_batch(texts)])
    report = {
        "probe": {k: probe.meta.get(k) for k in ("model_name", "labeller", "n_train", "n_val", "n_toxic",
                                                  "calibration", "train_report", "val_report")},
        "held_out": {
            "n": len(val), "n_toxic_by_labellers": int(y.sum()),
            "accuracy_vs_labeller_agreement": round(float((pred == y).float().mean()), 4),
            "loss_vs_labeller_agreement": round(float(torch.nn.functional.cross_entropy(logits, y)), 4),
            "accuracy_vs_hatesonar": round(float((pred == y_hs).float().mean()), 4),
            "n_toxic_by_hatesonar": int(y_hs.sum()),
            "labellers_vs_hatesonar_accuracy": round(float((y == y_hs).float().mean()), 4),
            "probe_recall_on_hatesonar_toxic": round(float(pred[y_hs == 1].float().mean()), 4) if y_hs.any() else None,
            "probe_false_positive_rate_on_hatesonar_clean": round(float(pred[y_hs == 0].float().mean()), 4),
            "margin_toxic": quantiles(margin[y == 1]), "margin_clean": quantiles(margin[y == 0]),
            "per_source_accuracy_vs_labellers": {
                s: round(float((pred[idx] == y[idx]).float().mean()), 4)
                for s in sorted({r["source"] for r in val})
                for idx in [torch.tensor([i for i, r in enumerate(val) if r["source"] == s])]},
        },
    }
    prompts = [json.loads(x)["prompt"] for x in (ROOT / "debias_lm" / "data" / "eval" /
                                                  "toxicity_prompts.jsonl").open(encoding="utf-8")][1::2]
    rows_p = [p for p in prompts for _ in range(2)]
    enc = encode_left_padded(tok, rows_p)
    torch.manual_seed(1)
    with torch.no_grad():
        seqs = model.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=20,
                              pad_token_id=tok.pad_token_id)
    full = [p + tok.decode(s[enc["input_ids"].shape[1]:], skip_special_tokens=True) for p, s in zip(rows_p, seqs)]
    H = mean_pooled_states(model, tok, full, batch_size=32)
    lg = probe.logits(H)
    ce = torch.nn.functional.cross_entropy(lg, torch.zeros(len(full), dtype=torch.long), reduction="none")
    p_tox = torch.softmax(lg, -1)[:, 1]
    default_trigger = dl.UDDIAConfig().tox_trigger
    report["plain_generations"] = {
        "n": len(full), "what": "odd-indexed toxicity prompts (unseen), 2 plain samples each, 20 tokens",
        "loss_nontoxic_target": quantiles(ce), "p_toxic": quantiles(p_tox),
        "share_above_default_tox_trigger": round(float((p_tox > default_trigger).float().mean()), 4),
        "default_tox_trigger": default_trigger,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
