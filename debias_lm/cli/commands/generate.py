"""``debias-lm generate``: generate with a method, side by side with plain decoding."""

from __future__ import annotations

import json
from typing import Any

from ...errors import UserInputError
from ...utils.files import check_output_path, check_utf8_text, prepare_parent
from ..flags import add_model_flags, load_model_from_args
from ..types import NON_NEGATIVE_INT, POSITIVE_INT, SEED, TEMPERATURE, TOP_P


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate with a method, side by side with plain decoding")
    g.add_argument("--method", required=True, help="registered method name (see 'debias-lm methods')")
    add_model_flags(g)
    g.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    g.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=TEMPERATURE, default=1.0, help="sampling temperature (> 0)")
    g.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--top-k", type=NON_NEGATIVE_INT, default=None,
                   help="sample from the K most likely tokens (0: no top-k; default: the model's generation config)")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    g.add_argument("--config", help="method config as a JSON object or a JSON file")
    g.add_argument("--no-baseline", action="store_true", help="only the debiased output")
    g.add_argument("--json", metavar="OUT", help="also write the outputs to this JSON file")
    g.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ...hf.wrap import wrap
    from ...registry import get_method, resolve_config

    if any(not p.strip() for p in args.prompt):
        raise UserInputError("--prompt is empty; pass the text to continue")
    for i, p in enumerate(args.prompt):
        check_utf8_text(p, f"--prompt {i + 1}" if len(args.prompt) > 1 else "--prompt")
    gen_kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        gen_kwargs.update(temperature=args.temperature, top_p=args.top_p)
        if args.top_k is not None:
            gen_kwargs["top_k"] = args.top_k
    elif args.top_k is not None or args.temperature != 1.0 or args.top_p != 1.0:
        raise UserInputError("--temperature, --top-p and --top-k apply to sampling: add --sample")
    get_method(args.method)  # an unknown name is the first error, before --config / --set are read
    config = resolve_config(args.method, sets=args.set, config_json=args.config)
    config.preflight()
    check_output_path(args.json, kind="file", flag="--json")
    model, tok = load_model_from_args(args)
    debiased = wrap(model, tok, config)  # validates method-specific inputs before any generation
    debiased.impl.check_prompts(list(args.prompt))
    plain = wrap(model, tok, "identity")
    for w in ([plain] if not args.no_baseline else []) + [debiased]:  # prompt + new tokens fit the model
        w.check_length(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens)
    results = {"model": args.model, "config": config.to_dict(), "generation": gen_kwargs, "outputs": []}
    base_out = None
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        base_out = plain.generate_text(args.prompt, chat=args.chat, **gen_kwargs)
    torch.manual_seed(args.seed)
    deb_out = debiased.generate_text(args.prompt, chat=args.chat, **gen_kwargs)
    for i, prompt in enumerate(args.prompt):
        row = {"prompt": prompt, "debiased": deb_out[i]}
        print(f"=== prompt: {prompt}")
        if base_out is not None:
            row["plain"] = base_out[i]
            print(f"--- plain:\n{base_out[i].strip()}")
        print(f"--- {config.method}:\n{deb_out[i].strip()}\n")
        results["outputs"].append(row)
    if args.json:
        with open(prepare_parent(args.json), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
    return 0
