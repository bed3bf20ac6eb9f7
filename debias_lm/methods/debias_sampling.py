"""The ``debias_sampling`` method (visual debias decoding / contrastive decoding): config and HF implementation.

VLMs: the unconditional branch is the same prompt with the image removed (``variant="none"``), replaced by
one UNK token (``"unk"``), or a noised image (``"noise"``, VCD style); ``"none+unk"`` etc. average several
branches. Text LLMs: the unconditional branch is a counterfactual context: the prompt behind a biasing
``counterfactual_prefix``, or with gendered terms swapped (``counterfactual_swap="gender"``), or contexts the
caller passes to ``generate(counterfactual=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..config import MethodConfig
from ..errors import UserInputError

IMAGE_FREE_VARIANTS = ("none", "unk", "noise")
# Documented ranges. alpha: above ~100 the contrast is already the alpha -> inf limit (argmax of l_c - l_u among the
# plausible tokens), and far larger values overflow float32 scores to inf - inf = NaN. seed: what torch.Generator takes.
ALPHA_MAX = 100
SEED_MAX = 2**63 - 1
SWAPS = ("", "gender")


def parse_variants(variant: str) -> tuple[str, ...]:
    """``"none+unk"`` -> ``("none", "unk")``; raises on unknown or repeated parts."""
    parts = tuple(p.strip() for p in str(variant).split("+"))
    bad = [p for p in parts if p not in IMAGE_FREE_VARIANTS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise UserInputError(
            f"variant={variant!r} is invalid: expected one of {', '.join(IMAGE_FREE_VARIANTS)} or several joined "
            "with '+' (e.g. 'none+unk': the branches' logits are averaged)"
        )
    return parts


@dataclasses.dataclass(frozen=True)
class DebiasSamplingConfig(MethodConfig):
    """Config of debias sampling (VDD).

    Attributes:
        alpha: contrast strength α ∈ [0, 100]; scores are ``(1+α)·l_c − α·l_u`` (1.0, the paper's POPE setting;
            the reference sampler's internal fallback is 0.5). Beyond ~100 nothing changes any more (the choice is
            already the argmax of ``l_c − l_u`` among plausible tokens) and huge values overflow float32.
        beta: adaptive plausibility cutoff β ∈ (0, 1]: tokens with p_c < β·max p_c are never chosen (0.1).
        variant: image-free branch(es) for VLMs: ``none`` (image tokens removed), ``unk`` (one UNK token in
            their place), ``noise`` (the image with diffusion noise at step ``noise_step``), or several joined
            by ``+`` whose logits are averaged.
        noise_step: diffusion step of the ``noise`` variant (VCD uses 500 of 1000).
        counterfactual_prefix: text LLMs: the counterfactual context is this text followed by the prompt.
        counterfactual_swap: text LLMs: ``"gender"`` builds the counterfactual by swapping gendered terms.
        seed: seed of the ``noise`` variant's noise, in [0, 2**63 - 1]. (Sampling randomness comes from
            ``generate``'s own seed / RNG, on every backend.)
        fused: ``wrap(...).generate`` runs both branches in one forward of stacked rows where it can (LLaVA and
            Qwen2-VL families and text LLMs; variants ``none``/``unk``; temperature / top-k / top-p sampling):
            faster on small batches. ``False`` always uses the two-forward logits processor.
    """

    method: ClassVar[str] = "debias_sampling"
    alpha: float = 1.0
    beta: float = 0.1
    variant: str = "none"
    noise_step: int = 500
    counterfactual_prefix: str = ""
    counterfactual_swap: str = ""
    seed: int = 0
    fused: bool = True

    def validate(self) -> None:
        self._check_number("alpha", lo=0, hi=ALPHA_MAX)
        if not isinstance(self.fused, bool):
            raise UserInputError(f"DebiasSamplingConfig.fused={self.fused!r} is invalid: expected true or false")
        self._check_number("beta", lo=0, hi=1, lo_open=True)
        if not isinstance(self.variant, str):
            raise UserInputError(f"DebiasSamplingConfig.variant={self.variant!r} is invalid: expected a string")
        parse_variants(self.variant)
        self._check_number("noise_step", lo=1, hi=999, integer=True)
        if not isinstance(self.counterfactual_prefix, str):
            raise UserInputError("DebiasSamplingConfig.counterfactual_prefix must be a string")
        self._check_choice("counterfactual_swap", SWAPS)
        if self.counterfactual_prefix and self.counterfactual_swap:
            raise UserInputError(
                "DebiasSamplingConfig: set counterfactual_prefix or counterfactual_swap, not both"
            )
        self._check_number("seed", lo=0, hi=SEED_MAX, integer=True)

    @property
    def variants(self) -> tuple[str, ...]:
        return parse_variants(self.variant)


def counterfactual_texts(config: DebiasSamplingConfig, prompts: list[str]) -> list[str]:
    """Text LLMs: the counterfactual context of each prompt that ``config`` describes.

    ``counterfactual_prefix`` -> prefix + prompt; ``counterfactual_swap="gender"`` -> gendered terms swapped.
    Raises when the config names neither (then the caller must pass the contexts explicitly), or when
    swapping leaves a prompt unchanged (there is nothing to contrast against).
    """
    if config.counterfactual_prefix:
        return [config.counterfactual_prefix + p for p in prompts]
    if config.counterfactual_swap:
        from ..words import swap_terms

        out = [swap_terms(p, config.counterfactual_swap) for p in prompts]
        same = [i for i, (a, b) in enumerate(zip(prompts, out)) if a == b]
        if same:
            raise UserInputError(
                f"counterfactual_swap={config.counterfactual_swap!r} left prompt(s) {same[:5]} unchanged (no "
                f"{config.counterfactual_swap} terms); pass explicit counterfactual contexts for them"
            )
        return out
    raise UserInputError(
        "text debias sampling needs a counterfactual context: set DebiasSamplingConfig.counterfactual_prefix or "
        "counterfactual_swap='gender', or pass counterfactual=[...] (one text per prompt)"
    )


from ..hf.base import HFMethod  # noqa: E402

_GENERATE_ONLY = ("streamer", "generation_config", "stopping_criteria", "prefix_allowed_tokens_fn")


def _is_vlm(model) -> bool:
    return hasattr(getattr(model, "config", None), "vision_config")


def _swap_messages(messages: list[dict], config: DebiasSamplingConfig) -> list[dict]:
    """Counterfactual chat: the prefix goes before the last user message's text; swaps apply to every text."""
    from ..words import swap_terms

    out = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise UserInputError("counterfactual chat needs at least one user message")
    for i, m in enumerate(out):
        if not isinstance(m.get("content"), str):
            raise UserInputError("text debias sampling with messages= needs string message contents")
        if config.counterfactual_swap:
            m["content"] = swap_terms(m["content"], config.counterfactual_swap)
        elif i == last_user:
            m["content"] = config.counterfactual_prefix + m["content"]
    if config.counterfactual_swap and out == messages:
        raise UserInputError("counterfactual_swap left the chat unchanged (no gendered terms to swap)")
    return out


class DebiasSamplingHF(HFMethod):
    """``wrap(model, tok_or_processor, DebiasSamplingConfig(...)).generate(...)``.

    VLMs: pass the processor's inputs (``input_ids``, ``pixel_values``, ...); the image-free branch(es) of
    ``config.variant`` are built for you. Text LLMs: pass ``prompt=``/``prompts=``/``messages=`` or
    ``input_ids=`` and a counterfactual context: ``counterfactual=[texts]`` (one per row) or the config's
    ``counterfactual_prefix`` / ``counterfactual_swap``. Beam search and ``num_return_sequences > 1`` are refused
    before generation starts.
    """

    def check_prompts(self, prompts: list) -> None:
        if _is_vlm(self.model):
            raise UserInputError("debias sampling on a VLM needs image inputs (use the Python API with the processor)")
        if all(isinstance(p, str) for p in prompts):
            counterfactual_texts(self.config, list(prompts))

    def generate(self, *args, chat: bool | None = None, counterfactual=None, **kwargs):
        import torch

        from ..hf.base import PROMPT_KWARGS
        from ..hf.debias_sampling import DebiasSamplingLogitsProcessor

        cfg = self.config
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise UserInputError(
                "debias sampling supports num_beams=1 and num_return_sequences=1 only (its counterfactual branch "
                "keeps one cache per row); for several samples repeat the prompts"
            )
        if args:
            kwargs["input_ids"], args = args[0], ()
        text_args = {k: kwargs.pop(k) for k in PROMPT_KWARGS if k in kwargs}
        if text_args and "input_ids" in kwargs:
            raise UserInputError("pass either input_ids or prompt=/prompts=/messages=, not both")
        procs = list(kwargs.pop("logits_processor", None) or [])
        if _is_vlm(self.model):
            if text_args:
                raise UserInputError("for a VLM pass the processor's inputs (input_ids, pixel_values, ...), not text")
            if counterfactual is not None:
                raise UserInputError("counterfactual= is for text LLMs; VLMs use config.variant (image-free branches)")
            inputs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            fused = self._fused_vlm(inputs, kwargs, procs)
            if fused is not None:
                return fused
            proc = DebiasSamplingLogitsProcessor.from_inputs(
                self.model, self.processor, inputs, alpha=cfg.alpha, beta=cfg.beta, variant=cfg.variant,
                noise_step=cfg.noise_step, seed=cfg.seed)
            return self.model.generate(logits_processor=procs + [proc], **kwargs)
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        if text_args:
            enc = self.encode(chat=chat, **text_args)
            cf_enc = self._counterfactual_from_text(text_args, counterfactual, chat)
            kwargs.update(enc)
        elif "input_ids" in kwargs:
            ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            cf_enc = self._counterfactual_from_ids(ids, mask, counterfactual, chat)
        else:
            raise UserInputError("debias sampling needs input_ids= or prompt=/prompts=/messages=")
        n_rows = kwargs["input_ids"].shape[0]
        if cf_enc["input_ids"].shape[0] != n_rows:
            raise UserInputError(f"{cf_enc['input_ids'].shape[0]} counterfactual contexts for {n_rows} prompts")
        if cfg.fused:
            out = self._generate_twin(kwargs, [cf_enc], procs)
            if out is not None:
                return out
        proc = DebiasSamplingLogitsProcessor(
            self.model, cf_enc["input_ids"].to(device), cf_enc["attention_mask"].to(device), alpha=cfg.alpha,
            beta=cfg.beta, pad_token_id=tok.pad_token_id or 0)
        return self.model.generate(logits_processor=procs + [proc], **kwargs)

    def _fused_vlm(self, inputs: dict, kwargs: dict, procs: list):
        from ..hf.image_free import arch_spec, check_has_images, image_free_inputs

        cfg = self.config
        if not cfg.fused or "noise" in cfg.variants or arch_spec(self.model).family not in ("llava", "qwen2_vl"):
            return None
        check_has_images(self.model, self.tokenizer, inputs)
        unconds = [image_free_inputs(self.model, self.processor, inputs, v) for v in cfg.variants]
        return self._generate_twin(kwargs, unconds, procs)

    def _generate_twin(self, kwargs: dict, unconds: list[dict], procs: list):
        """Both branches in one forward (see :mod:`debias_lm.hf.twin_rows`); ``None`` if not applicable."""
        from ..hf.twin_rows import (
            SAMPLING_KEYS,
            UNFUSABLE_KEYS,
            LastLogits,
            TwinRowContrastProcessor,
            join_rows,
            repetition_controls,
            sampling_warpers,
            shifted_lengths,
            slice_output,
        )

        if kwargs.get("streamer") is not None or kwargs.get("output_scores") or kwargs.get("output_logits"):
            return None  # streamers take one row; returned scores must be the contrasted ones: use the processor
        if any(kwargs.get(k) is not None for k in UNFUSABLE_KEYS):
            return None
        mode = sampling_warpers(self.model, kwargs)
        if mode is None:
            return None
        do_sample, warpers = mode
        neutral, rep_procs = repetition_controls(self.model, kwargs)
        b = kwargs["input_ids"].shape[0]
        main = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask") or k not in
                _GENERATE_ONLY and hasattr(v, "shape")}
        rest = {k: v for k, v in kwargs.items() if k not in main and k not in SAMPLING_KEYS and k not in neutral}
        joint = join_rows(main, unconds, self.tokenizer.pad_token_id or 0)
        extra = joint["input_ids"].shape[1] - kwargs["input_ids"].shape[1]
        rest.update(shifted_lengths(self.model, kwargs, extra))
        raw = LastLogits(self.model)
        twin = TwinRowContrastProcessor(b, self.config.alpha, self.config.beta, k=len(unconds), do_sample=do_sample,
                                        warpers=warpers, cond_processors=rep_procs + procs, raw_logits=raw,
                                        history_start=extra)
        try:
            out = self.model.generate(**joint, **rest, **neutral, do_sample=False, logits_processor=[twin])
        finally:
            raw.close()
        return slice_output(out, b, extra)

    def _counterfactual_from_text(self, text_args: dict, counterfactual, chat):
        cfg = self.config
        if counterfactual is not None:
            if isinstance(counterfactual, str):
                counterfactual = [counterfactual]
            if "messages" in text_args:
                return self.encode(messages=counterfactual)
            return self.encode(prompts=list(counterfactual), chat=chat)
        if "messages" in text_args:
            msgs = text_args["messages"]
            chats = [msgs] if msgs and isinstance(msgs[0], dict) else list(msgs)
            return self.encode(messages=[_swap_messages(c, cfg) for c in chats])
        prompts = text_args.get("prompts", text_args.get("prompt"))
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.encode(prompts=counterfactual_texts(cfg, prompts), chat=chat)

    def _counterfactual_from_ids(self, ids, mask, counterfactual, chat):

        from ..hf.base import encode_left_padded

        tok = self.tokenizer
        if counterfactual is not None:
            if isinstance(counterfactual, dict):
                return counterfactual
            if isinstance(counterfactual, str):
                counterfactual = [counterfactual]
            return encode_left_padded(tok, list(counterfactual))
        cfg = self.config
        rows = [ids[b][mask[b].bool()].tolist() for b in range(ids.shape[0])]
        special = set(tok.all_special_ids)
        out_rows = []
        if cfg.counterfactual_prefix:
            pre = tok.encode(cfg.counterfactual_prefix, add_special_tokens=False)
            for r in rows:
                k = 0
                while k < len(r) and r[k] in special:
                    k += 1
                out_rows.append(r[:k] + pre + r[k:])
        elif cfg.counterfactual_swap:
            from ..words import swap_terms

            for r in rows:
                text = tok.decode(r, skip_special_tokens=False)
                swapped = swap_terms(text, cfg.counterfactual_swap)
                if swapped == text:
                    raise UserInputError("counterfactual_swap left a prompt unchanged (no gendered terms to swap)")
                out_rows.append(tok.encode(swapped, add_special_tokens=False))
        else:
            counterfactual_texts(cfg, [""])  # raises the "needs a counterfactual context" error
        from ..hf.image_free import left_pad_rows

        cf_ids, cf_mask = left_pad_rows(out_rows, tok.pad_token_id or 0, ids.device)
        return {"input_ids": cf_ids, "attention_mask": cf_mask}
