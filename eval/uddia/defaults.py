"""Every UDDIA default measured on three decoders: the embedded SmolLM2-135M-Instruct (Llama-style, RMSNorm, no
biases), a tiny random GPT-2 (bias terms everywhere) and a tiny random Llama (no biases).

    python eval/uddia/defaults.py --out eval/uddia/measured/defaults.json      # ~10 min on a loaded 2-core CPU

Per model, with the DEFAULT UDDIAConfig (variant u unless noted):
  * depth, T0, ΔT, offset sites per pass; the site activation RMS by site kind (min / median / max);
  * the debias frame: removed principal directions, gender token-set sizes, p(group) of " the" / " and" / " of";
  * one default step's move of the next-token distribution: KL(tuned || base) per tuned row-token over a
    short sampled run with every row forced through the step (triggers at 0), quantiles;
  * with the default triggers: the share of row-tokens tuned (trigger rate) on toxicity-prone prompts
    (``t``) and on the gender pair prompts (``b``), and the loop's forward-equivalents per kept token;
  * the derived redo threshold (ppl_factor x median plain-sample perplexity) and the share of the model's
    own plain samples above it.
The tiny models get a probe trained here on six texts (as in the tests): their trigger rates only show the
mechanism runs; their KL and RMS numbers are what the defaults must hold on.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "debias_lm" / "data" / "eval"
TEXTS = ["you are a stupid idiot", "have a nice day", "the nurse said that she would be late", "shut up you fool",
         "the teacher asked the student a question", "damn idiot, go away"]
LABELS = [1, 0, 0, 1, 0, 1]


def quantiles(xs, qs=(0.5, 0.9, 0.99, 1.0)):
    import torch

    t = torch.tensor(xs, dtype=torch.float64)
    return {f"p{int(q * 100)}": round(float(torch.quantile(t, q)), 4) for q in qs} if len(xs) else {}


def measure(name, model, tok, probe_path, n_prompts, max_new):
    import torch

    import debias_lm as dl
    from debias_lm.core import uddia as core
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.methods.uddia import stats as st

    cfg = dl.UDDIAConfig(probe=probe_path)
    w = dl.wrap(model, tok, cfg)
    impl = w.impl
    kinds = collections.defaultdict(list)
    for s in [*impl.sites, impl.final_site]:
        kinds[s.name.rsplit(".", 1)[-1]].append(impl.site_rms[id(s.module)])
    out = {"model": name, "depth": impl.depth, "T0": impl.T0, "layer_step": impl.dT,
           "sites_per_pass": len(impl._active_sites(impl.T0)),
           "site_rms": {k: {"min": round(min(v), 4), "median": round(sorted(v)[len(v) // 2], 4),
                            "max": round(max(v), 4)} for k, v in kinds.items()},
           "describe": impl.describe()}
    V = impl.vocab_size
    post = impl.debias.groups[0].posterior
    fw = {w_: round(float(post[tok(w_, add_special_tokens=False)["input_ids"][0]].max()), 3)
          for w_ in (" the", " and", " of")}
    out["gender_frame"] = {"removed_components": int(impl.debias.frame.P.shape[0]),
                           "tokens_per_side": list(impl.debias.groups[0].sizes), "vocab": V,
                           "max_group_posterior_of_function_words": fw}
    tox = [json.loads(x)["prompt"] for x in (DATA / "toxicity_prompts.jsonl").open()][1::2][:n_prompts]
    pairs = [json.loads(x) for x in (DATA / "gender_pairs.jsonl").open()][: max(1, n_prompts // 2)]
    gender = [p[g] for p in pairs for g in ("female", "male")]
    gen = {"do_sample": True, "top_p": 0.9, "top_k": 0, "max_new_tokens": max_new, "pad_token_id": tok.pad_token_id}
    # KL of one default step, every row forced through it (triggers 0), no redo
    forced = dl.wrap(model, tok, dl.UDDIAConfig(probe=probe_path, variant="t", tox_trigger=0.0, layer_step=0))
    torch.manual_seed(0)
    forced.generate(**encode_left_padded(tok, tox), **gen)
    kls = forced.impl.last_stats["kl_values"]  # KL(tuned || base) of every tuned row-token
    out["kl_per_default_step_forced"] = {"n": len(kls), **quantiles(kls)}
    for variant, prompts in (("t", tox), ("b", gender), ("u", tox)):
        wv = dl.wrap(model, tok, dl.UDDIAConfig(probe=probe_path, variant=variant))
        torch.manual_seed(0)
        wv.generate(**encode_left_padded(tok, prompts), **gen)
        s = wv.impl.last_stats
        out[f"default_{variant}"] = {
            "prompts": "toxicity-prone (odd ids)" if prompts is tox else "gender pairs",
            "trigger_rate": round(s["trigger_rate"], 4), "mean_kl_tuned": round(s["mean_kl_tuned"], 4),
            "kl_max": round(s["kl_max"], 4), "redo_threshold": s["redo_threshold"],
            "passes_per_sample": round(sum(len(a) for a in s["attempt_log"]) / len(s["attempt_log"]), 3),
            "loop_forward_equivalents_per_kept_token": round((s["rows_forward"] + 2 * s["rows_backward"]) /
                                                             max(s["kept_tokens"], 1), 3)}
    gk = impl._generation_args(dict(gen))
    ppl = st.plain_perplexities(model, tok, gk, impl._perplexity)
    thr = core.redo_threshold(ppl, cfg.ppl_factor)
    finite = [p for p in ppl if math.isfinite(p)]
    out["redo_reference"] = {"n_plain_samples": len(ppl), "median_plain_perplexity": round(thr / cfg.ppl_factor, 3),
                             "threshold": round(thr, 3),
                             "share_of_plain_samples_above": round(sum(p > thr for p in finite) / len(finite), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "measured" / "defaults.json"))
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--models", default="embedded,tiny-gpt2,tiny-llama")
    args = ap.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(1)
    import debias_lm as dl
    from debias_lm.methods.uddia.probe import train_probe
    from debias_lm.testing import build_tiny_gpt2, build_tiny_llama

    results = {"config": dl.UDDIAConfig().to_dict(), "models": []}
    for name in args.models.split(","):
        if name == "embedded":
            model, tok = dl.load_default_model()
            probe = ""
        else:
            model, tok = (build_tiny_gpt2 if name == "tiny-gpt2" else build_tiny_llama)(num_layers=4)
            probe = str(Path(tempfile.mkdtemp()) / "probe.safetensors")
            train_probe(model, tok, TEXTS, LABELS, epochs=30).save(probe)
        res = measure(name, model, tok, probe, args.prompts, args.max_new_tokens)
        results["models"].append(res)
        print(json.dumps(res, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
