"""Pure tensor helpers for image-free / counterfactual image branches.

VCD's distorted image (Leng et al. 2024, ``DAMO-NLP-SG/VCD: vcd_utils/vcd_add_noise.py``; LLaVA-Align uses the
same function) is the forward diffusion of the preprocessed pixels to step ``t`` of a 1000-step schedule whose
betas follow a **sigmoid** from 1e-5 to 5e-3:

    β_s = 1e-5 + (5e-3 − 1e-5) · sigmoid(−6 + 12·s/999),   s = 0 … 999
    ᾱ_t = Π_{s≤t} (1 − β_s),   x_t = sqrt(ᾱ_t) · x + sqrt(1 − ᾱ_t) · ε,   ε ~ N(0, I)

At VCD's default step 500 the result is ≈ 0.86·x + 0.51·ε; at step 999 ≈ 0.29·x + 0.96·ε (a DDPM linear
schedule 1e-4 → 0.02 would already reach that at step 500).
"""

from __future__ import annotations

import torch

VCD_NUM_STEPS = 1000
VCD_BETA_MIN = 1e-5
VCD_BETA_MAX = 5e-3


def vcd_noise_coefficients(step: int, num_steps: int = VCD_NUM_STEPS) -> tuple[float, float]:
    """``(sqrt(ᾱ_t), sqrt(1 − ᾱ_t))`` of VCD's sigmoid schedule at 0-based ``step`` (computed in float64)."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
        raise ValueError(f"step={step!r} is invalid: expected an integer in [0, {num_steps - 1}]")
    grid = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    betas = torch.sigmoid(grid) * (VCD_BETA_MAX - VCD_BETA_MIN) + VCD_BETA_MIN
    abar = torch.cumprod(1.0 - betas, 0)[step]
    return float(abar.sqrt()), float((1.0 - abar).sqrt())


def diffusion_noise(x: torch.Tensor, step: int = 500, *, num_steps: int = VCD_NUM_STEPS,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward-diffuse ``x`` to ``step`` with VCD's sigmoid schedule (module docstring): ``a·x + b·ε``.

    ``ε`` is drawn in float32 from ``generator`` (CPU) with the shape of ``x``; the result has ``x``'s dtype.
    """
    a, b = vcd_noise_coefficients(step, num_steps)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return (a * x.float() + b * eps).to(x.dtype)
