"""Pure tensor helpers for image-free / counterfactual image branches."""

from __future__ import annotations

import torch


def diffusion_noise(x: torch.Tensor, step: int = 500, *, num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward-diffuse ``x`` to ``step`` (DDPM linear schedule), as VCD does to make its distorted image.

    ``x_t = sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε`` with ``ᾱ_t = Π_{s≤t} (1 − β_s)`` and β linear from ``beta_start``
    to ``beta_end`` over ``num_steps``; ``step`` is 0-based (``num_steps − 1`` is almost pure noise).
    """
    if not 0 <= step < num_steps:
        raise ValueError(f"step={step} is invalid: expected an integer in [0, {num_steps - 1}]")
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0)[step]
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return (abar.sqrt() * x.float() + (1 - abar).sqrt() * eps).to(x.dtype)
