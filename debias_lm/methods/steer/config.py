"""``SteerConfig``: which vectors, how strongly, where (validated without a model)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import MethodConfig
from ...core.steer import MODES, POSITIONS
from ...errors import UserInputError

MAX_ABS_SCALE = 1000.0


@dataclasses.dataclass(frozen=True)
class SteerConfig(MethodConfig):
    """Activation steering: add ``scale · v`` to chosen activations at every forward (no gradients, weights untouched).

    Fields:
        vectors: a steering-vector file (``debias-lm steer build`` / ``debias-lm uddia distill``) or the short name
            of a file shipped for the embedded SmolLM2-135M-Instruct: ``toxicity`` (CAA away from toxic
            continuations; the default), ``gender`` (CAA female − male direction, meant for ``mode="ablate"``);
            distilled UDDIA offsets are built with ``debias-lm uddia distill`` (docs/steering.md).
        scale: the multiplier s of ``h += s · v`` (default 0.5: chosen on the embedded model with the ``toxicity``
            vectors by eval/steer/select_defaults.py, see docs/steering.md); 0 leaves the model untouched. Finite, |s| <= 1000. In ``ablate`` mode
            only its being non-zero matters (rows with 0 are plain). Per row: ``generate(..., steer_scales=[...])``.
        layers: decoder layers to steer (0-based), a subset of those in the file; ``()`` = every layer in the file.
            For a ``uddia_sites`` file: the blocks whose sites are steered (the final norm counts as block
            ``num_layers``).
        positions: ``"all"`` (prompt and generated tokens) or ``"generated"`` (only positions after the prompt: the
            prompt's states, its KV cache and so the first new token are unsteered).
        mode: ``"add"`` (``h += s · v``) or ``"ablate"`` (``h -= (h · v̂) v̂``, directional ablation; residual
            files only).
    """

    method: ClassVar[str] = "steer"
    vectors: str = "toxicity"
    scale: float = 0.5
    layers: tuple[int, ...] = ()
    positions: str = "all"
    mode: str = "add"

    def validate(self) -> None:
        if not self.vectors.strip():
            raise UserInputError("SteerConfig.vectors='' is invalid: expected a steering-vector file or a shipped "
                                 f"name ({', '.join(shipped_names())})")
        self._check_number("scale", lo=-MAX_ABS_SCALE, hi=MAX_ABS_SCALE)
        for layer in self.layers:
            if isinstance(layer, bool) or layer < 0:
                raise UserInputError(f"SteerConfig.layers={self.layers!r} is invalid: expected non-negative layer "
                                     "indices (0-based)")
        if len(set(self.layers)) != len(self.layers):
            raise UserInputError(f"SteerConfig.layers={self.layers!r} is invalid: a layer is listed twice")
        self._check_choice("positions", POSITIONS)
        self._check_choice("mode", MODES)

    def preflight(self) -> None:
        """Read and check the vectors file (format, NaN, kinds, layers) before a model is loaded."""
        load_for_config(self)


# -- shipped vectors -------------------------------------------------------------------------------------------
EMBEDDED_PREFIX = "smollm2-135m-instruct"


def shipped_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "data" / "steer"


def shipped_names() -> list[str]:
    """Short names of the files shipped for the embedded model (``toxicity``, ``gender``)."""
    d = shipped_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[len(EMBEDDED_PREFIX) + 1 : -len(".safetensors")]
                  for p in d.glob(f"{EMBEDDED_PREFIX}.*.safetensors"))


def resolve_vectors(value: str) -> str:
    """The path of ``value``: a shipped short name or an existing file."""
    import os

    if os.sep not in value and "/" not in value and not value.endswith(".safetensors"):
        path = shipped_dir() / f"{EMBEDDED_PREFIX}.{value}.safetensors"
        if path.is_file():
            return str(path)
        raise UserInputError(f"SteerConfig.vectors={value!r} is neither a file nor a shipped name (shipped for the "
                             f"embedded model: {', '.join(shipped_names()) or 'none'})")
    if not os.path.isfile(value):
        raise UserInputError(f"SteerConfig.vectors={value!r}: no such file; build one with 'debias-lm steer build' "
                             "or 'debias-lm uddia distill', or use a shipped name "
                             f"({', '.join(shipped_names()) or 'none'})")
    return value


def load_for_config(config: SteerConfig):
    """The checked :class:`~debias_lm.utils.steer_file.SteerFile` of a config (layers and mode checked too)."""
    from ...utils.steer_file import SteerFile

    f = SteerFile.load(resolve_vectors(config.vectors))
    if f.site_kind == "residual":
        missing = sorted(set(config.layers) - set(f.layers))
        if missing:
            raise UserInputError(f"SteerConfig.layers={config.layers!r}: layer(s) {missing} are not in {f.where} "
                                 f"(it holds layers {f.layers}); rebuild it with 'debias-lm steer build --layers ...'")
    elif config.mode == "ablate":
        raise UserInputError(f"SteerConfig.mode='ablate' needs residual-stream vectors; {f.where} holds "
                             f"{f.site_kind!r} offsets (use mode='add')")
    elif any(layer > f.meta["num_layers"] for layer in config.layers):
        raise UserInputError(f"SteerConfig.layers={config.layers!r} is invalid for {f.where}: blocks are "
                             f"0..{f.meta['num_layers'] - 1} and the final norm is {f.meta['num_layers']}")
    return f
