"""The steering-vector file: one safetensors file for CAA vectors and distilled UDDIA offsets ("debias-lm steer v1").

Tensors (float32, 1-D):

* ``layers.{l}`` -> ``[hidden]``: added to the output of decoder layer ``l`` (0-based; the residual stream HF's
  ``model.model.layers[l]`` returns), when ``site_kind = "residual"``;
* ``sites.{name}`` -> ``[dim]``: added to the output of the site ``name`` (``debias_lm.hf.sites`` names:
  ``model.layers.29.mlp.down_proj``, ``final_norm``), when ``site_kind = "uddia_sites"``.

A file holds one kind. Metadata (safetensors metadata strings; JSON where not plain strings): ``format``,
``site_kind``, ``model_name``, ``model_fingerprint`` (:func:`debias_lm.utils.fingerprint.model_fingerprint`),
``hidden_size``, ``num_layers``, ``model_type``, ``recipe`` (``caa``, ``caa-ablation``, ``uddia-distill-mean``,
``uddia-distill-triggered``), ``attribute``, ``provenance`` (JSON object: data file and sha256, counts, command,
debias-lm version, date, labeller), ``suggested_scale``; optionally ``suggested_mode`` (``add`` / ``ablate``).

Writing and reading check everything that does not need a model (format, kinds, names, shapes, finite values,
layer range); :meth:`SteerFile.check_model` checks the model it is applied to. The vLLM plugin reads the same
files, so this module needs only torch and safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import UserInputError

FORMAT = "debias-lm steer v1"
SITE_KINDS = ("residual", "uddia_sites")
RECIPES = ("caa", "caa-ablation", "uddia-distill-mean", "uddia-distill-triggered")
REQUIRED = ("format", "site_kind", "model_name", "model_fingerprint", "hidden_size", "num_layers", "model_type",
            "recipe", "attribute", "provenance", "suggested_scale")
_INT_KEYS = ("hidden_size", "num_layers")
_PREFIX = {"residual": "layers.", "uddia_sites": "sites."}
BUILD_HINT = ("build vectors for it with 'debias-lm steer build --model M --pairs PAIRS.jsonl --out V.safetensors' "
              "(or distilled UDDIA offsets with 'debias-lm uddia distill --model M --prompts P --out V.safetensors')")


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclasses.dataclass
class SteerFile:
    """Vectors (``layers.{l}`` / ``sites.{name}`` -> float32 ``[d]``) and their decoded metadata."""

    vectors: dict[str, Any]
    meta: dict[str, Any]
    path: str = ""

    # -- views --------------------------------------------------------------------------------------------
    @property
    def site_kind(self) -> str:
        return self.meta["site_kind"]

    @property
    def where(self) -> str:
        return f"steering-vector file {self.path!r}" if self.path else "steering vectors"

    def layer_vectors(self) -> dict[int, Any]:
        """``{layer: vector}`` of a residual file, by layer."""
        return {int(k.split(".", 1)[1]): v for k, v in sorted(self.vectors.items(), key=lambda kv: _layer_key(kv[0]))}

    def site_vectors(self) -> dict[str, Any]:
        """``{site name: vector}`` of a ``uddia_sites`` file."""
        return {k.split(".", 1)[1]: v for k, v in self.vectors.items()}

    @property
    def layers(self) -> list[int]:
        return sorted(self.layer_vectors()) if self.site_kind == "residual" else []

    # -- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Everything checkable without a model; a :class:`UserInputError` naming the file and the problem."""
        import torch

        where = self.where
        missing = [k for k in REQUIRED if k not in self.meta]
        if self.meta.get("format") != FORMAT:
            raise UserInputError(f"{where} is not a debias-lm steering file (metadata format="
                                 f"{self.meta.get('format')!r}, expected {FORMAT!r}); {BUILD_HINT}")
        if missing:
            raise UserInputError(f"{where} lacks metadata {', '.join(missing)}; rebuild it ({BUILD_HINT})")
        if self.meta["site_kind"] not in SITE_KINDS:
            raise UserInputError(f"{where}: site_kind={self.meta['site_kind']!r} is invalid: expected one of "
                                 f"{', '.join(SITE_KINDS)}")
        for key in _INT_KEYS:
            v = self.meta[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserInputError(f"{where}: metadata {key}={v!r} is invalid: expected a positive integer")
        s = self.meta["suggested_scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise UserInputError(f"{where}: metadata suggested_scale={s!r} is invalid: expected a finite number")
        if not isinstance(self.meta["provenance"], dict):
            raise UserInputError(f"{where}: metadata provenance must be a JSON object")
        if not self.vectors:
            raise UserInputError(f"{where} holds no vectors")
        prefix = _PREFIX[self.meta["site_kind"]]
        hidden, depth = self.meta["hidden_size"], self.meta["num_layers"]
        for name, v in self.vectors.items():
            if not name.startswith(prefix) or len(name) == len(prefix):
                raise UserInputError(f"{where}: tensor {name!r} does not belong in a {self.meta['site_kind']!r} file "
                                     f"(expected names {prefix}...); a file holds one kind of site")
            if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() == 0:
                raise UserInputError(f"{where}: tensor {name!r} must be a non-empty 1-D vector, got shape "
                                     f"{tuple(getattr(v, 'shape', ()))}")
            if not v.is_floating_point():
                raise UserInputError(f"{where}: tensor {name!r} has dtype {v.dtype}; expected float32")
            if not bool(torch.isfinite(v).all()):
                bad = int((~torch.isfinite(v)).sum())
                raise UserInputError(f"{where}: tensor {name!r} has {bad} NaN/inf value(s); rebuild the file")
            if prefix == "layers.":
                layer = _layer_key(name)
                if layer is None:
                    raise UserInputError(f"{where}: tensor {name!r} is not 'layers.<integer>'")
                if not 0 <= layer < depth:
                    raise UserInputError(f"{where}: tensor {name!r} is outside the model's layers 0..{depth - 1} "
                                         f"(num_layers={depth})")
                if v.numel() != hidden:
                    raise UserInputError(f"{where}: tensor {name!r} has {v.numel()} values; the residual stream has "
                                         f"hidden_size={hidden}")

    def check_model(self, *, fingerprint: str, hidden_size: int, num_layers: int, name: str = "this model") -> None:
        """The file must be for this model: same hidden size, layer count and fingerprint (in that order)."""
        m = self.meta
        built = f"built for {m['model_name']!r} ({m['model_type']}, hidden {m['hidden_size']}, {m['num_layers']} layers, " \
                f"fingerprint {m['model_fingerprint']})"
        this = f"{name!r} (hidden {hidden_size}, {num_layers} layers, fingerprint {fingerprint})"
        if m["hidden_size"] != hidden_size:
            raise UserInputError(f"{self.where} was {built}: hidden size {m['hidden_size']} != {hidden_size} of "
                                 f"this model {this}; {BUILD_HINT}")
        if m["num_layers"] != num_layers:
            raise UserInputError(f"{self.where} was {built}: layer count {m['num_layers']} != {num_layers} of "
                                 f"this model {this}; {BUILD_HINT}")
        if m["model_fingerprint"] != fingerprint:
            raise UserInputError(f"{self.where} was {built}, not for this model {this} (the model fingerprint "
                                 f"differs: another checkpoint); {BUILD_HINT}")

    # -- IO -----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Validate, then write (float32, contiguous; metadata strings)."""
        from safetensors.torch import save_file

        self.meta.setdefault("format", FORMAT)
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.vectors.items()}
        save_file(tensors, str(path), metadata={k: _encode(v) for k, v in self.meta.items()})
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteerFile:
        """Read and :meth:`validate` a file (a clear error for a missing file, another format, NaN, ...)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"steering-vector file {str(path)!r} does not exist; {BUILD_HINT}")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = dict(f.metadata() or {})
                vectors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        except Exception as e:  # not safetensors, truncated, ...
            raise UserInputError(f"{str(path)!r} is not a readable safetensors steering file: {e}") from None
        meta: dict[str, Any] = {}
        for k, v in raw.items():
            if k in _INT_KEYS or k in ("suggested_scale", "provenance"):
                try:
                    meta[k] = json.loads(v)
                except json.JSONDecodeError:
                    raise UserInputError(f"steering-vector file {str(path)!r}: metadata {k}={v!r} is not valid "
                                         "JSON") from None
            else:
                meta[k] = v
        out = cls(vectors, meta, str(path))
        out.validate()
        return out


def _layer_key(name: str) -> int | None:
    m = re.fullmatch(r"layers\.(\d+)", name)
    return int(m.group(1)) if m else None
