"""NBLS grounding: BLS occupation data (:func:`load_bls_table`) and prompt grounding (:class:`NBLSGrounding`)."""

from .grounding import NBLSGrounding, default_line_template
from .table import ATTRIBUTES, BLSOccupation, BLSTable, is_aggregate_name, load_bls_table, parse_table11_grid

__all__ = [
    "ATTRIBUTES",
    "BLSOccupation",
    "BLSTable",
    "NBLSGrounding",
    "default_line_template",
    "is_aggregate_name",
    "load_bls_table",
    "parse_table11_grid",
]
