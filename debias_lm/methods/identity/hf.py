"""The ``identity`` method: no change at all (a baseline and a check of the wrapping machinery)."""

from __future__ import annotations

from ...config import IdentityConfig
from ...hf.base import HFMethod


class IdentityHF(HFMethod):
    """``generate`` forwards to the model's own ``generate`` untouched (bit-identical output)."""

    is_prompt_transform = True

    def generate(self, *args, chat: bool | None = None, **kwargs):
        if any(k in kwargs for k in ("prompt", "prompts", "messages")):
            return super().generate(*args, chat=chat, **kwargs)
        return self.model.generate(*args, **kwargs)


__all__ = ["IdentityConfig", "IdentityHF"]
