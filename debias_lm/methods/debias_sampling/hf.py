"""HF implementation of ``debias_sampling``: the fused twin-row path where it applies, else the two-forward processor."""

from __future__ import annotations

from ...errors import UserInputError
from ...hf.base import HFMethod
from .counterfactual import counterfactual_texts, swap_messages

_GENERATE_ONLY = ("streamer", "generation_config", "stopping_criteria", "prefix_allowed_tokens_fn")


def _is_vlm(model) -> bool:
    return hasattr(getattr(model, "config", None), "vision_config")


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

        from ...hf.base import PROMPT_KWARGS
        from .processor import DebiasSamplingLogitsProcessor

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
        from ...hf.image_free import arch_spec, check_has_images, image_free_inputs

        cfg = self.config
        if not cfg.fused or "noise" in cfg.variants or arch_spec(self.model).family not in ("llava", "qwen2_vl"):
            return None
        check_has_images(self.model, self.tokenizer, inputs)
        unconds = [image_free_inputs(self.model, self.processor, inputs, v) for v in cfg.variants]
        return self._generate_twin(kwargs, unconds, procs)

    def _generate_twin(self, kwargs: dict, unconds: list[dict], procs: list):
        """Both branches in one forward (see :mod:`debias_lm.methods.debias_sampling.twin_rows`); ``None`` if not applicable."""
        from ...hf.padding import join_rows
        from .twin_rows import (
            SAMPLING_KEYS,
            UNFUSABLE_KEYS,
            LastLogits,
            TwinRowContrastProcessor,
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
            return self.encode(messages=[swap_messages(c, cfg) for c in chats])
        prompts = text_args.get("prompts", text_args.get("prompt"))
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.encode(prompts=counterfactual_texts(cfg, prompts), chat=chat)

    def _counterfactual_from_ids(self, ids, mask, counterfactual, chat):
        from ...hf.padding import encode_left_padded, left_pad_rows

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
            from ...words import swap_terms

            for r in rows:
                text = tok.decode(r, skip_special_tokens=False)
                swapped = swap_terms(text, cfg.counterfactual_swap)
                if swapped == text:
                    raise UserInputError("counterfactual_swap left a prompt unchanged (no gendered terms to swap)")
                out_rows.append(tok.encode(swapped, add_special_tokens=False))
        else:
            counterfactual_texts(cfg, [""])  # raises the "needs a counterfactual context" error
        cf_ids, cf_mask = left_pad_rows(out_rows, tok.pad_token_id or 0, ids.device)
        return {"input_ids": cf_ids, "attention_mask": cf_mask}
