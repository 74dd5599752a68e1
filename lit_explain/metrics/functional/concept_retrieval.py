"""Zero-shot concept retrieval of a CLIP: does a concept's text rank the images holding it above the others?

For concept c with text embedding t_c and images m with embeddings i_m, the score of image m is
``cos(i_m, t_c)``; the concept's retrieval quality is the AUROC of that score for "image m contains c"
(1 = every image with c ranks above every image without, 0.5 = chance; ties count 1/2). The summary is the
mean over concepts that have both positive and negative images (others are NaN and left out).
This is the yardstick of the synthetic world's CLIP (:mod:`lit_explain.models.clip_trainer`): WWW matches
concepts to neurons through exactly these text-image cosines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

__all__ = ["concept_retrieval_auroc"]


def concept_retrieval_auroc(image: torch.Tensor, text: torch.Tensor, present: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept AUROC of text-image cosine for concept presence, and their mean.

    Args:
        image: (M, D) image embeddings (any norm).
        text: (C, D) concept text embeddings (any norm), e.g. of "a photo of a {concept}".
        present: (M, C) bool, True where image m contains concept c.

    Returns:
        ``(auroc, mean)``: (C,) float64 with NaN for concepts present in all or none of the images, and the
        scalar mean over the others (NaN if none).
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(f"expected image (M, D) and text (C, D) embeddings of the same D, got "
                         f"{tuple(image.shape)} and {tuple(text.shape)}")
    if present.shape != (image.shape[0], text.shape[0]):
        raise ValueError(f"present must be (M, C) = {(image.shape[0], text.shape[0])}, got {tuple(present.shape)}")
    present = present.bool()
    sims = F.normalize(image.double(), dim=1) @ F.normalize(text.double(), dim=1).T  # (M, C)
    npos = present.sum(0)
    defined = (npos > 0) & (npos < present.shape[0])
    out = torch.full((text.shape[0],), float("nan"), dtype=torch.float64)
    for c in defined.nonzero().flatten().tolist():  # one exact (threshold-free) ROC per concept
        out[c] = float(binary_auroc(sims[:, c], present[:, c].long(), thresholds=None))
    mean = out[defined.cpu()].mean() if bool(defined.any()) else torch.tensor(float("nan"), dtype=torch.float64)
    return out, mean
