"""Concept masking (CCE ``label_masking``): does the unit keep firing in its range when only the concept is kept?

Steps (CCE's ``get_concept_masking``), for an explanation L of unit u in range (lo, hi):

1. S = samples where L occurs.
2. Input weights at the mask grid: 1 on L, an independent U(0, 1) value elsewhere; bilinear resize to the input
   size; the normalised image is multiplied by them (label pixels kept, the rest randomly attenuated).
3. Forward the masked images and read u's raw layer map (h, w).
4. Per sample, the cosine similarity of ``a_before ⊙ b`` and ``a_after ⊙ b`` with ``b = 1[lo < a_before < hi]``
   (torch eps 1e-8; a sample with empty b scores 0); the score is the mean over S.

Upstream forwards the whole dataset once per (unit, range) with the global RNG; here the masks are drawn from
an explicit generator and many explanations share one forward pass: :func:`concept_masking_inputs` stacks the
J masked copies of each image, and :func:`cosine_concept_masking_score` scores all J at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["concept_masking_weights", "concept_masking_inputs", "cosine_concept_masking_score", "concept_masking_score"]


def concept_masking_weights(
    label_masks: torch.Tensor, input_size: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Input weights (B, J, H, W) float32: 1 on the label, U(0, 1) elsewhere, bilinearly resized.

    Args:
        label_masks: (B, J, sh, sw) bool explanation masks on the annotation grid.
        input_size: (H, W) of the model input.
        generator: RNG for the uniform values (deterministic runs pass a seeded one).
    """
    b, j, sh, sw = label_masks.shape
    noise = torch.rand(b, j, sh, sw, generator=generator, device=label_masks.device)
    w = torch.where(label_masks.bool(), torch.ones_like(noise), noise)
    return F.interpolate(w, size=tuple(input_size), mode="bilinear", align_corners=False)


def concept_masking_inputs(
    images: torch.Tensor, label_masks: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masked copies of normalised images, one per explanation: (B*J, 3, H, W) ordered image-major.

    Args:
        images: (B, 3, H, W) normalised model inputs.
        label_masks: (B, J, sh, sw) bool, the J explanations' masks on each image.
    """
    b, j = label_masks.shape[:2]
    w = concept_masking_weights(label_masks, images.shape[-2:], generator).to(images.dtype)
    return (images[:, None] * w[:, :, None]).reshape(b * j, *images.shape[1:])


def cosine_concept_masking_score(
    before: torch.Tensor, after: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """Per-sample cosine of the in-range activations before and after masking.

    Args:
        before: (N, J, h*w) (or (N, J, h, w)) raw layer maps of each explanation's unit on the original images.
        after: same shape, on the masked images.
        lo, hi: (J,) range bounds (strict); K = 1 explanations pass (thr, +inf).

    Returns:
        (N, J) float cosine similarities (0 where the range mask is empty).
    """
    n, j = before.shape[:2]
    x = before.reshape(n, j, -1).to(torch.float64)
    y = after.reshape(n, j, -1).to(torch.float64)
    lo = torch.as_tensor(lo, dtype=torch.float64).view(1, j, 1)
    hi = torch.as_tensor(hi, dtype=torch.float64).view(1, j, 1)
    b = (x > lo) & (x < hi)
    return F.cosine_similarity(x * b, y * b, dim=-1, eps=1e-8)


def concept_masking_score(
    before: torch.Tensor, after: torch.Tensor, label_present: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """Mean per-sample cosine over the samples where the explanation occurs: (J,) float64 (0 if none)."""
    cos = cosine_concept_masking_score(before, after, lo, hi)
    present = torch.as_tensor(label_present, dtype=torch.bool).reshape(cos.shape)
    num = (cos * present).sum(0)
    den = present.sum(0)
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
