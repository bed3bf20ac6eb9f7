"""The ``debias-lm`` command line.

Commands: ``generate``, ``eval`` (the harness), ``bench``,
``ches``, ``uddia``, ``steer``, ``methods``, ``env``, ``serve``; each is one module in :mod:`debias_lm.cli.commands` with
``register(subparsers)`` and ``run(args) -> int``. Bad user input prints one line (``debias-lm: error: ...``)
and exits with code 2; it never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import DebiasLMError
from .commands import COMMANDS
from .flags import Parser

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="debias-lm", description="Inference-time debiasing for LLMs and VLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
        return args.run(args)
    except (DebiasLMError, ValueError) as e:
        print(f"debias-lm: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("debias-lm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
