"""``debias-lm env``: versions, device and which extras work."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("env", help="versions, device and which extras work").set_defaults(run=run)


def run(args) -> int:
    from ...utils.env import environment_report

    for key, value in environment_report().items():
        print(f"{key:<22}{value}")
    return 0
