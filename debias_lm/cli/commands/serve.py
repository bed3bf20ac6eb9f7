"""``debias-lm serve``: vLLM's OpenAI-compatible server with the plugin loaded (see plugins/vllm_debias/serve.py)."""

from __future__ import annotations

import argparse

from ..types import PORT, POSITIVE_INT


def register(sub) -> None:
    sv = sub.add_parser("serve", help="vLLM OpenAI-compatible server with the vllm_debias plugin loaded")
    sv.add_argument("--model", default="default", help="model path or id (default: the embedded SmolLM2-135M)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=PORT, default=8000)
    sv.add_argument("--dtype", default=None, help="vLLM --dtype (default: vLLM's choice)")
    sv.add_argument("--max-model-len", type=POSITIVE_INT, default=None)
    sv.add_argument("--nbls", action="store_true", help="ground every chat request (NBLS chat template)")
    sv.add_argument("--nbls-k", type=POSITIVE_INT, default=32, help="occupations in the NBLS grounding (default 32)")
    sv.add_argument("--steer", action="append", default=[], metavar="NAME=FILE",
                    help="serve steering vectors under NAME (repeatable; FILE may be a shipped short name); requests "
                         "opt in with vllm_xargs {\"debias_method\": \"steer\", \"debias_vectors\": NAME, ...}")
    sv.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    sv.add_argument("vllm_args", nargs=argparse.REMAINDER, help="further vLLM server arguments, after --")
    sv.set_defaults(run=run)


def run(args) -> int:
    import shlex
    import subprocess

    from vllm_debias.serve import server_command, server_env

    from ...methods.nbls import NBLSConfig

    extra = [a for a in args.vllm_args if a != "--"] if args.vllm_args else []
    steer = None
    if args.steer:  # every file checked against the model before the server starts
        from vllm_debias.serve import check_served_model
        from vllm_debias.steer.vectors import parse_specs

        steer = parse_specs(args.steer)
        check_served_model(steer, args.model)
    cmd = server_command(args.model, host=args.host, port=args.port, dtype=args.dtype,
                         max_model_len=args.max_model_len,
                         nbls_config=NBLSConfig(k=args.nbls_k) if args.nbls else None, extra=extra, steer=steer)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd, env=server_env(model=args.model, steer=steer))
