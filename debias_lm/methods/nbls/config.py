"""Config of the ``nbls`` method (grounding prompts in U.S. BLS occupation statistics)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import MethodConfig
from ...errors import UserInputError
from .grounding import CONTROLS, NBLSGrounding
from .table import ATTRIBUTES


@dataclasses.dataclass(frozen=True)
class NBLSConfig(MethodConfig):
    """Config of NBLS grounding (see :class:`debias_lm.NBLSGrounding` for the meaning of each field).

    ``template`` / ``header``: ``""`` keeps the defaults. ``bls_table``: path of an official Table 11
    export to ground on instead of the shipped 2022 table. ``exclude_related`` (default true): also leave out
    every occupation related to an excluded one. ``control``: ``""`` (the method), ``"instructions"`` (the
    grounding's wording without the statistics) or ``"shuffled"`` (the same lines with the figures permuted
    across the occupations): the controls of an evaluation, registered as the variants ``nbls_instructions`` and
    ``nbls_shuffled`` (``debias-lm eval --suite occupational --method none,nbls_instructions,nbls_shuffled,nbls``).
    """

    method: ClassVar[str] = "nbls"
    k: int = 32
    attributes: tuple[str, ...] = ATTRIBUTES
    exclude: tuple[str, ...] = ()
    seed: int = 0
    template: str = ""
    header: str = ""
    bls_table: str = ""
    exclude_related: bool = True
    control: str = ""

    def validate(self) -> None:
        self._check_number("k", lo=1, integer=True)
        self._check_number("seed", lo=0, integer=True)
        if not isinstance(self.attributes, tuple) or not self.attributes:
            raise UserInputError(
                f"NBLSConfig.attributes={self.attributes!r} is invalid: expected a non-empty tuple of "
                + ", ".join(ATTRIBUTES)
            )
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad:
            raise UserInputError(f"NBLSConfig.attributes has {bad!r}; allowed values: {', '.join(ATTRIBUTES)}")
        if not isinstance(self.exclude, tuple) or not all(isinstance(x, str) for x in self.exclude):
            raise UserInputError(f"NBLSConfig.exclude={self.exclude!r} is invalid: expected a tuple of occupation names")
        if not isinstance(self.exclude_related, bool):
            raise UserInputError(f"NBLSConfig.exclude_related={self.exclude_related!r} is invalid: expected true or false")
        self._check_choice("control", CONTROLS)

    def preflight(self) -> None:
        self.grounding()  # k too large, unknown exclusions, bad template or table: fail before loading a model

    def grounding(self) -> NBLSGrounding:
        """Build the :class:`NBLSGrounding` this config describes (validates exclusions and k)."""
        from .table import load_bls_table

        return NBLSGrounding(
            k=self.k,
            attributes=self.attributes,
            exclude=self.exclude,
            seed=self.seed,
            template=self.template or None,
            header=self.header or None,
            table=load_bls_table(self.bls_table) if self.bls_table else None,
            exclude_related=self.exclude_related,
            control=self.control,
        )
