"""``steer`` on any HF decoder: forward hooks add the vectors during ``generate`` (weights never change).

For each ``generate`` call the hooks are registered, then removed (also on errors):

* a forward pre-hook on the decoder stack (the module holding the layers) reads which columns this forward covers
  (``start`` = the KV cache length, or 0 without a cache; ``T`` = the input length) and builds the ``[B, T]``
  steered mask from the per-row scales (0 = plain row) and ``positions`` (``core.steer.column_mask``);
* a forward hook on each target (decoder layer ``l`` for residual files, the named site for ``uddia_sites`` files)
  replaces its output (a tensor, or the first element of a tuple) by ``core.steer.add_offsets`` /
  ``ablate_direction`` of it.

Rows whose scale is 0 are selected out with ``torch.where``, so they are bit-identical to plain decoding of the same
batch; a batch whose rows are all plain runs the model's own ``generate`` with no hooks at all. Rows expanded by
``generate`` (``num_return_sequences`` / beams) inherit their input row's scale.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from ...core import steer as core
from ...errors import UserInputError
from ...hf.base import HFMethod
from ...hf.sites import base_model, collect_sites, find_blocks
from ...utils.fingerprint import model_fingerprint, model_name
from .config import MAX_ABS_SCALE, SteerConfig, load_for_config

log = logging.getLogger(__name__)


def _norm_site(name: str) -> str:
    """Site names without peft's wrapper level (``q_proj.base_layer`` -> ``q_proj``)."""
    return name.replace(".base_layer", "")


class SteerHF(HFMethod):
    """HF implementation of :class:`SteerConfig` (see the module docstring)."""

    def __init__(self, model, tokenizer_or_processor, config: SteerConfig) -> None:
        super().__init__(model, tokenizer_or_processor, config)
        self.file = load_for_config(config)
        stack_name, blocks, _ = find_blocks(model)
        base = base_model(model)
        self.stack = base.get_submodule(stack_name.rpartition(".")[0]) if "." in stack_name else base
        hidden = int(model.get_input_embeddings().weight.shape[1])
        self.file.check_model(fingerprint=model_fingerprint(model), hidden_size=hidden, num_layers=len(blocks),
                              name=model_name(model))
        # (module, vector [d] float32, label)
        self.targets: list[tuple[torch.nn.Module, torch.Tensor, str]] = []
        if self.file.site_kind == "residual":
            vecs = self.file.layer_vectors()
            for layer in config.layers or sorted(vecs):
                self.targets.append((blocks[layer], vecs[layer].float(), f"layer {layer}"))
        else:
            sites, final, depth = collect_sites(model)
            by_name = {_norm_site(s.name): s for s in [*sites, final]}
            wanted = self.file.site_vectors()
            unknown = sorted(set(wanted) - set(by_name))
            if unknown:
                examples = ", ".join(sorted(by_name)[:3])
                raise UserInputError(f"{self.file.where} names {len(unknown)} site(s) this model does not have "
                                     f"(e.g. {unknown[0]!r}); its sites are named like {examples}")
            for name, vec in sorted(wanted.items()):
                site = by_name[name]
                if config.layers and site.layer not in config.layers:
                    continue
                if site.dim != vec.numel():
                    raise UserInputError(f"{self.file.where}: site {name!r} has width {site.dim} in this model but "
                                         f"the file's vector has {vec.numel()} values")
                self.targets.append((site.module, vec.float(), name))
        if not self.targets:
            raise UserInputError(f"SteerConfig.layers={config.layers!r} selects no vectors of {self.file.where}")
        self._state: dict | None = None

    # -- generation ---------------------------------------------------------------------------------------
    def _generate(self, *args, steer_scales=None, **kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            raise UserInputError("steer generate needs input_ids (or inputs_embeds, or prompt=/prompts=/messages=)")
        scales = self.row_scales(steer_scales, int(ids.shape[0]))
        if not bool((scales != 0).any()):
            return self.model.generate(*args, **kwargs)
        with self.steering(scales, prompt_width=int(ids.shape[1])):
            return self.model.generate(*args, **kwargs)

    def row_scales(self, steer_scales, batch: int) -> torch.Tensor:
        """Per-row scales ``[B]`` (float32): ``steer_scales`` checked, or the config's scale for every row."""
        if steer_scales is None:
            return torch.full((batch,), float(self.config.scale), dtype=torch.float32)
        values = steer_scales.tolist() if isinstance(steer_scales, torch.Tensor) else steer_scales
        if not isinstance(values, (list, tuple)) or len(values) != batch:
            raise UserInputError(f"steer_scales must list one scale per prompt row ({batch}), got {steer_scales!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_ABS_SCALE:
                raise UserInputError(f"steer_scales={values!r} is invalid: expected finite numbers with "
                                     f"|scale| <= {MAX_ABS_SCALE:g} (0 = plain row)")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    @contextlib.contextmanager
    def steering(self, scales: torch.Tensor, prompt_width: int):
        """Hooks active for the block: rows ``scales != 0`` steered; columns by ``positions`` (see module doc)."""
        self._state = {"scales": scales, "prompt_width": prompt_width, "select": None, "batch": len(scales),
                       "offsets": {}}
        handles = [self.stack.register_forward_pre_hook(self._pre_hook, with_kwargs=True)]
        try:
            for i, (module, _, _) in enumerate(self.targets):
                handles.append(module.register_forward_hook(self._make_hook(i)))
            yield
        finally:
            for h in handles:
                h.remove()
            self._state = None

    def _pre_hook(self, module, args, kwargs):
        st = self._state
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = next((a for a in args if hasattr(a, "get_seq_length")), None)
        start = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        B, T = int(x.shape[0]), int(x.shape[1])
        scales = st["scales"]
        if B != len(scales):
            if B % len(scales):
                raise UserInputError(f"steer: the model ran a batch of {B} rows for {len(scales)} prompts")
            scales = scales.repeat_interleave(B // len(scales))
        st["rows_scales"] = scales
        rows = scales != 0
        columns = core.column_mask(start, T, st["prompt_width"], self.config.positions)
        st["select"] = core.select_mask(None if bool(rows.all()) else rows, columns)
        st["skip"] = columns is not None and not bool(columns.any())
        return None

    def _make_hook(self, index: int):
        _, vector, _ = self.targets[index]
        ablate = self.config.mode == "ablate"

        def hook(module, inputs, output):
            st = self._state
            if st is None or st.get("skip"):
                return None
            out = output[0] if isinstance(output, tuple) else output
            if out.dim() != 3:  # e.g. a site flattened to [B*T, d]: refuse rather than misalign rows
                raise UserInputError(f"steer: {self.targets[index][2]} returns a {out.dim()}-D output, not "
                                     "[batch, positions, width]; it cannot be steered")
            select = st["select"]
            if select is not None:
                select = select.to(out.device)
            if ablate:
                new = core.ablate_direction(out, vector.to(out.device), select)
            else:
                key = (index, out.dtype, out.device, len(st["rows_scales"]))
                offsets = st["offsets"].get(key)
                if offsets is None:
                    offsets = core.row_offsets(vector.to(out.device), st["rows_scales"].to(out.device), out.dtype)
                    st["offsets"][key] = offsets
                new = core.add_offsets(out, offsets, select)
            if isinstance(output, tuple):
                return (new, *output[1:])
            return new

        return hook
