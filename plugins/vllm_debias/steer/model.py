"""Steer-capable vLLM models: the stock model class plus persistent steering buffers and a hook per decoder layer.

``DebiasSteerLlamaForCausalLM`` (registered by :func:`vllm_debias.steer.register`, chosen per engine with
``hf_overrides={"architectures": [...]}``) is vLLM's ``LlamaForCausalLM`` with:

* **persistent buffers**, allocated in ``__init__`` (before torch.compile and CUDA-graph capture): the vector
  tables ``[L, 1 + 2V, H]`` and the per-token buffers ``index [N]``, ``coef [L, N]``, ``ablate [N]``
  (``N = max_num_batched_tokens``), registered as non-persistent buffers of every local decoder layer, so a
  compiled graph reads them as module buffers (inputs, like weights), never as baked-in constants, and the weight
  loader never sees them;
* **a forward hook on every local decoder layer** (whether or not a vector touches it: the traced graph does not
  depend on the vector files), pure tensor code on those buffers. vLLM's Llama layer returns ``(hidden,
  residual)`` and the residual stream after the layer — HF's decoder-layer output — is their sum (the next
  layer's, or the final, fused add-RMSNorm adds them). With ``g = table_l[index_t]`` (float32) and the stream
  ``s = hidden + residual``::

      residual_t += cast(coef_l,t · g)                   add:    g = v_l,        coef = scale
      residual_t += cast(−coef_l,t · (s_t · g) · g)      ablate: g = v_l / |v_l|, coef = 1

  which is HF's ``h += scale · v`` / ``h −= (h · v̂) v̂`` (``debias_lm.core.steer``) up to float rounding order.
  Plain tokens have ``coef = 0`` and table row 0 (zeros): they get exactly ``+0``.
* **the per-token fill** before each forward (:func:`~vllm_debias.steer.rows.fill_tokens`, device ops only):
  V1 runner — from the rows the logits processor keeps (``SteerLogitsProcessor.update_state``) and the forward
  context's ``query_start_loc``; Model Runner V2 — from the request slots in ``SteerModelState.prepare_inputs``
  (:mod:`vllm_debias.steer.mrv2`), which MRV2 runs before the forward and before CUDA-graph replay.

CUDA graphs: everything the hooks and the fill read is a persistent tensor indexed by token, so a captured graph
replays correctly for any mix of requests; the fill's only shortcut (skip when no row steers) is taken only when
the step runs without a CUDA graph (then the hooks, when they run eagerly, also return at once, and with no row in
ablate mode they skip the projection; inside a compiled graph they always compute everything, with zero
coefficients where nothing is steered). Not supported: micro-batching (DBO / ubatches: the hooks index tokens from
0), checked at the first forward.

Bias-site files (``uddia_sites``: distilled UDDIA offsets) add ``coef_b,t · offset`` to the output of each HF site's
vLLM counterpart (:func:`llama_site_modules`: ``q/k/v_proj`` are slices of the fused ``qkv_proj``, ``gate/up_proj``
of ``gate_up_proj``; a fused add-RMSNorm's normalised output is HF's norm output; ``final_norm`` is the model's
norm), hooked only when the engine serves such a file; tensor parallelism 1.

After the weights load, the embedding fingerprint of the served model is checked against every vector file
(tensor-parallel rank 0 holds the rows it needs), so vectors built for another checkpoint stop the engine with
a clear error before it serves.
"""

from __future__ import annotations

import importlib
import logging

import torch

from .rows import SteerState, TokenBuffers, fill_tokens
from .vectors import ARCHITECTURES, alias
from .vectors import site_block as site_block_of

log = logging.getLogger("vllm_debias")

_BUFFERS = ("steer_table", "steer_index", "steer_coef", "steer_ablate")


def steer_hook(module, args, output):
    """Forward hook on a decoder layer (see the module docstring): tensor ops on the layer's buffers only. Run
    eagerly in a step where nothing is steered and no CUDA graph is used, it returns at once."""
    if not torch.compiler.is_compiling() and module.steer_tokens.skip:
        return None
    hidden = output[0] if isinstance(output, tuple) else output
    n = hidden.shape[0]
    g = module.steer_table[module.steer_index[:n]]  # [n, H] float32
    coef = module.steer_coef[:n]
    residual = output[1] if isinstance(output, tuple) else hidden
    if torch.compiler.is_compiling() or not module.steer_tokens.add_only:
        stream = hidden.float() + residual.float() if isinstance(output, tuple) else hidden.float()
        along = (stream * g).sum(-1)
        coef = coef * torch.where(module.steer_ablate[:n], -along, torch.ones_like(along))
    off = (coef.unsqueeze(1) * g).to(residual.dtype)
    if isinstance(output, tuple):
        return (hidden, residual + off, *output[2:])
    return hidden + off


def site_hook(module, args, output):
    """Forward hook on a module hosting bias sites: ``out[t] += cast(coef_b,t · table[index_t])`` (HF's
    ``core.row_offsets`` added at the site); the module's (first) output only."""
    if not torch.compiler.is_compiling() and module.steer_tokens.skip:
        return None
    out = output[0] if isinstance(output, tuple) else output
    n = out.shape[0]
    off = (module.steer_coef[:n].unsqueeze(1) * module.steer_site_table[module.steer_index[:n]]).to(out.dtype)
    if isinstance(output, tuple):
        return (out + off, *output[1:])
    return out + off


def llama_site_modules(model):
    """``(vLLM module, [(HF site name, width), ...] in output order, block)`` for vLLM's Llama: the HF sites of
    ``debias_lm.hf.sites`` and the module whose output holds them."""
    m = model.model
    cfg = model.config
    hidden, inter = int(cfg.hidden_size), int(cfg.intermediate_size)
    out = []
    for i in range(m.start_layer, m.end_layer):
        layer, p = m.layers[i], f"model.layers.{i}."
        attn = layer.self_attn
        out += [
            (attn.qkv_proj, [(p + "self_attn.q_proj", attn.q_size), (p + "self_attn.k_proj", attn.kv_size),
                             (p + "self_attn.v_proj", attn.kv_size)], i),
            (attn.o_proj, [(p + "self_attn.o_proj", hidden)], i),
            (layer.mlp.gate_up_proj, [(p + "mlp.gate_proj", inter), (p + "mlp.up_proj", inter)], i),
            (layer.mlp.down_proj, [(p + "mlp.down_proj", hidden)], i),
            (layer.input_layernorm, [(p + "input_layernorm", hidden)], i),
            (layer.post_attention_layernorm, [(p + "post_attention_layernorm", hidden)], i),
        ]
    if m.end_layer == len(m.layers):  # the last pipeline stage holds the final norm
        out.append((m.norm, [("final_norm", hidden)], len(m.layers)))
    return out


class SteerMixin:
    """The steering part of a steer-capable model (mixed in before the stock vLLM class)."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self._steer_config = vllm_config
        if getattr(vllm_config.parallel_config, "use_ubatching", False):
            raise ValueError("vllm_debias steering does not support micro-batching (DBO / ubatching); turn it off")
        param = next(self.parameters())
        st = self._steer = SteerState.of(vllm_config, param.device)
        self.steer_tokens = TokenBuffers(st.max_tokens, st.tables.num_blocks, param.device)
        table = st.tables.table.to(param.device)
        self._steer_mrv2 = False
        model = self.model
        for idx in range(model.start_layer, model.end_layer):
            layer = model.layers[idx]
            layer.register_buffer("steer_table", table[idx], persistent=False)
            layer.register_buffer("steer_index", self.steer_tokens.index, persistent=False)
            layer.register_buffer("steer_coef", self.steer_tokens.coef[idx], persistent=False)
            layer.register_buffer("steer_ablate", self.steer_tokens.ablate, persistent=False)
            layer.steer_tokens = self.steer_tokens  # for the eager no-op check only (never read when compiled)
            layer.register_forward_hook(steer_hook)
        if st.tables.sites:
            self._steer_hook_sites(vllm_config, param.device)

    def _steer_hook_sites(self, vllm_config, device) -> None:
        """Bias-site offsets (``uddia_sites`` files): a hook on each vLLM module that hosts HF sites (fused
        ``qkv_proj`` = q|k|v, ``gate_up_proj`` = gate|up), with the parts' tables side by side."""
        from debias_lm.errors import UserInputError

        tables = self._steer.tables
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise UserInputError("vllm_debias: bias-site steering files (uddia_sites) need tensor_parallel_size=1 "
                                 "(fused projections are sharded otherwise); residual-stream files work with any")
        v = tables.num_vectors
        hosted: set[str] = set()
        for module, parts, block in llama_site_modules(self):
            if not any(name in tables.sites for name, _ in parts):
                continue
            cols = []
            for name, width in parts:
                t = tables.sites.get(name)
                if t is None:
                    t = torch.zeros(1 + 2 * v, width)
                elif t.shape[1] != width:
                    raise UserInputError(f"steering site {name!r}: the file's vector has {t.shape[1]} values; the "
                                         f"served model's output there has {width}")
                cols.append(t)
                hosted.add(name)
            module.register_buffer("steer_site_table", torch.cat(cols, 1).to(device), persistent=False)
            module.register_buffer("steer_index", self.steer_tokens.index, persistent=False)
            module.register_buffer("steer_coef", self.steer_tokens.coef[block], persistent=False)
            module.steer_tokens = self.steer_tokens
            module.register_forward_hook(site_hook)
        model = self.model
        local = set(range(model.start_layer, model.end_layer)) | {tables.num_layers}
        unknown = sorted(n for n in tables.sites if n not in hosted
                         and site_block_of(n, tables.num_layers) in local)
        if unknown:
            raise UserInputError(f"steering sites {unknown[:3]} have no counterpart in vLLM's "
                                 f"{type(self).__name__} (sites: q/k/v/o/gate/up/down projections, the two layer "
                                 "norms, final_norm)")

    # -- V1 runner: per-token fill from the processor's rows --------------------------------------------
    @torch.no_grad()
    def _steer_fill_v1(self, positions: torch.Tensor) -> None:
        from vllm.config.compilation import CUDAGraphMode
        from vllm.forward_context import get_forward_context, is_forward_context_available

        buf, rows = self.steer_tokens, self._steer.rows
        n = positions.shape[-1]
        ctx = get_forward_context() if is_forward_context_available() else None
        graphless = ctx is None or ctx.cudagraph_runtime_mode == CUDAGraphMode.NONE
        buf.skip = buf.add_only = False
        if graphless and rows.num_active == 0:  # nothing steered: buffers zero, no work
            buf.zero()
            buf.skip = True
            return
        buf.add_only = graphless and not rows.h_ablate.any()
        md = ctx.attn_metadata if ctx is not None else None
        if not md:  # a dummy / profiling run without attention metadata
            buf.coef[:, :n] = 0.0
            return
        if isinstance(md, list):
            raise NotImplementedError("vllm_debias steering does not support micro-batching (ubatches)")
        qsl = next(iter(md.values())).query_start_loc
        fill_tokens(buf, rows, qsl, positions, n)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if not self._steer_mrv2:
            self._steer_fill_v1(positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    # -- Model Runner V2 --------------------------------------------------------------------------------
    def get_model_state_cls(self):
        """MRV2 asks the model for its ModelState first: wrap the one vLLM would choose for the stock model."""
        from vllm.v1.worker.gpu.model_states import resolve_model_state_cls

        from .mrv2 import steer_model_state_cls

        self._steer_mrv2 = True
        return steer_model_state_cls(resolve_model_state_cls(self._steer_config, _WithoutStateHook(self)))

    # -- the model the vectors were built for -------------------------------------------------------------
    def load_weights(self, weights):
        loaded = super().load_weights(weights)
        self._steer_check_fingerprint()
        return loaded

    def _steer_check_fingerprint(self) -> None:
        from debias_lm.errors import UserInputError
        from debias_lm.utils.fingerprint import fingerprint_of

        embed = self.model.embed_tokens
        if getattr(embed, "shard_indices", None) is not None and embed.shard_indices.org_vocab_start_index != 0:
            return  # another tensor-parallel rank: rank 0 checks
        hidden = int(embed.weight.shape[1])
        fp = fingerprint_of(self.config.model_type, _EmbeddingHead(embed.weight, int(embed.org_vocab_size), hidden))
        for name, f in self._steer.tables.files.items():
            if f.meta["model_fingerprint"] != fp:
                raise UserInputError(f"steering vectors {name!r}: {f.where} was built for {f.meta['model_name']!r} "
                                     f"(fingerprint {f.meta['model_fingerprint']}), not for the served model "
                                     f"(fingerprint {fp}); build vectors for it with 'debias-lm steer build'")


class _WithoutStateHook:
    """The model as vLLM's ModelState resolution sees it, minus ``get_model_state_cls`` (so vLLM's own order —
    encoder-decoder, encoder-only, hybrid, default — picks the base class)."""

    def __init__(self, model) -> None:
        self._model = model

    def modules(self):
        return self._model.modules()


class _EmbeddingHead:
    """What ``fingerprint_of`` reads of an embedding: its first rows and the unpadded ``[vocab, hidden]`` shape
    (vLLM pads the vocabulary of its embedding to a multiple of 64)."""

    def __init__(self, weight: torch.Tensor, vocab: int, hidden: int) -> None:
        self._weight = weight
        self.shape = torch.Size([vocab, hidden])

    def __getitem__(self, key):
        return self._weight[key]


_CLASSES: dict[str, type] = {}


def steer_class(arch: str) -> type:
    """The steer-capable subclass of vLLM's ``arch`` (built once per process)."""
    name = alias(arch)
    cls = _CLASSES.get(name)
    if cls is None:
        from vllm.model_executor.models.registry import _VLLM_MODELS

        module, cls_name = _VLLM_MODELS[arch]
        base = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls_name)
        cls = type(name, (SteerMixin, base), {"__module__": __name__, "__doc__": f"{arch} with per-request "
                                                                                   "steering (vllm_debias.steer)."})
        _CLASSES[name] = cls
    return cls


def __getattr__(name: str):  # vLLM imports "vllm_debias.steer.model:DebiasSteer<Arch>" lazily
    for arch in ARCHITECTURES.values():
        if name == alias(arch):
            return steer_class(arch)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
