"""``debias-lm methods``: list the registered methods."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("methods", help="list the registered methods").set_defaults(run=run)


def run(args) -> int:
    from ...registry import list_methods

    print(f"{'method':<18}{'vllm':<9}description")
    for spec in list_methods():
        print(f"{spec.name:<18}{spec.vllm:<9}{spec.description}")
        for variant, preset in spec.variants.items():
            fields = ", ".join(f"{k}={v}" for k, v in preset.items())
            print(f"{variant:<18}{spec.vllm:<9}variant of {spec.name}: {fields}")
    return 0
