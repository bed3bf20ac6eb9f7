"""Are the steering defaults (layer = int(0.4 * depth), scale 4) sane beyond the embedded model?

For the embedded SmolLM2-135M (its shipped toxicity vector) and for a tiny random GPT-2 and Llama
(``debias_lm.testing``; vectors built with ``steer build``'s defaults from eval/steer/gender_pairs.jsonl), report
the default layer, ‖v‖, the median ‖h‖ of the residual stream at that layer over a few prompts, the relative
perturbation ‖scale · v‖ / median ‖h‖, whether steered logits stay finite, and the share of greedy continuations
that change. Sane: the layer exists, logits are finite, and the relative perturbation is of the same order on all
three (a vector's size follows its model's residual scale, so one scale transfers).

    .venv/bin/python eval/steer/check_defaults_tiny.py --out eval/steer/measured/defaults_tiny.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS = ["The nurse said that", "My neighbour is", "The meeting was about", "He looked at the sky and",
           "Yesterday the team", "The best way to cook rice is"]


def measure(name, model, tok, vectors_path, scale):
    import torch

    import debias_lm as dl
    from debias_lm.hf.base import encode_left_padded
    from debias_lm.hf.sites import find_blocks
    from debias_lm.utils.steer_file import SteerFile

    f = SteerFile.load(vectors_path)
    layer = f.layers[0]
    v = f.layer_vectors()[layer]
    _, blocks, _ = find_blocks(model)
    captured = {}
    h = blocks[layer].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    enc = encode_left_padded(tok, PROMPTS)
    with torch.no_grad():
        model(**enc)
    h.remove()
    norms = captured["h"].float().norm(dim=-1)[enc["attention_mask"].bool()]
    w = dl.wrap(model, tok, dl.SteerConfig(vectors=vectors_path, scale=scale))
    out = w.generate(**enc, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True,
                     pad_token_id=tok.pad_token_id)
    plain = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    finite = all(bool(torch.isfinite(x).all()) for x in out.logits)
    changed = sum(not torch.equal(a, b) for a, b in zip(out.sequences, plain)) / len(PROMPTS)
    return {"model": name, "depth": len(blocks), "layer": layer, "vector_norm": float(v.norm()),
            "median_residual_norm": float(norms.median()), "scale": scale,
            "relative_perturbation": float(scale * v.norm() / norms.median()), "finite": finite,
            "share_changed": changed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "measured" / "defaults_tiny.json"))
    args = ap.parse_args()
    import torch

    import debias_lm as dl
    from debias_lm.methods.steer.build import build_file
    from debias_lm.methods.steer.config import resolve_vectors
    from debias_lm.testing import build_tiny_gpt2, build_tiny_llama

    torch.set_num_threads(1)
    scale = dl.SteerConfig().scale
    rows = []
    model, tok = dl.load_default_model(dtype="float32")
    rows.append(measure("SmolLM2-135M-Instruct (toxicity vector)", model, tok, resolve_vectors("toxicity"), scale))
    tmp = Path(tempfile.mkdtemp())
    for name, builder in (("tiny GPT-2 (4 layers)", build_tiny_gpt2), ("tiny Llama (4 layers)", build_tiny_llama)):
        model, tok = builder(num_layers=4)
        path = tmp / f"{builder.__name__}.safetensors"
        build_file(model, tok, HERE / "gender_pairs.jsonl", layers="auto", attribute="gender").save(path)
        rows.append(measure(name, model, tok, str(path), scale))
    for r in rows:
        print(json.dumps(r))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
