"""Built-in methods, one package each (``methods/<name>/``: config, HF implementation, processors, vLLM mapping).

Each package registers itself in its own ``__init__`` with :func:`debias_lm.registry.register_method`, the
way peft's tuners call ``register_peft_method``; :func:`load_builtin_methods` imports every package here, which
is what :func:`debias_lm.registry.get_method` does on first use. Importing this package alone registers
nothing and stays light.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_builtin_methods() -> None:
    """Import (and so register) every method package under ``debias_lm.methods``."""
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["load_builtin_methods"]
