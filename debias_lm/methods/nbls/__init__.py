"""The ``nbls`` method: ground prompts in U.S. BLS occupation statistics (a prompt transform).

BLS data (:func:`load_bls_table`), the grounding itself (:class:`NBLSGrounding`), its config, the HF
implementation (``hf.NBLSHF``) and the vLLM server's grounding chat template (``vllm.nbls_chat_template``).
"""

from __future__ import annotations

from ...registry import _REGISTRY, register_method
from .config import NBLSConfig
from .grounding import NBLSGrounding, default_line_template
from .table import ATTRIBUTES, BLSOccupation, BLSTable, is_aggregate_name, load_bls_table, parse_table11_grid

if NBLSConfig.method not in _REGISTRY:
    register_method(
        NBLSConfig,
        "debias_lm.methods.nbls.hf:NBLSHF",
        kind="prompt",
        vllm="yes",
        vllm_mapping="debias_lm.methods.nbls.vllm:MAPPING",
        # the controls of an NBLS evaluation: the grounding's wording without figures; the figures permuted
        variants={"nbls_instructions": {"control": "instructions"}, "nbls_shuffled": {"control": "shuffled"}},
        description="ground prompts in U.S. BLS occupation statistics (k=32 instances, system message)",
    )

__all__ = [
    "ATTRIBUTES",
    "BLSOccupation",
    "BLSTable",
    "NBLSConfig",
    "NBLSGrounding",
    "default_line_template",
    "is_aggregate_name",
    "load_bls_table",
    "parse_table11_grid",
]
