"""vLLM plugin for debias-lm.

The logits processor and request helpers arrive with the vLLM integration; importing this package never
imports vLLM itself, so it is safe on machines without vLLM.
"""

__all__: list[str] = []
