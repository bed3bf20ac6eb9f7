"""One module per ``debias-lm`` command, each with ``register(subparsers)`` and ``run(args) -> int``.

``COMMANDS`` is the order ``debias-lm --help`` lists them in; ``cli/main.py`` builds the parser from it.
"""

COMMANDS = ("generate", "eval", "ches", "bench", "uddia", "steer", "methods", "env", "serve")
