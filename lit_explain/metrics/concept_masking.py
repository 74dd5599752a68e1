"""ConceptMaskingScore: CCE's concept-masking cosine score, accumulated over batches (sum states, DDP-exact).

Functional twin and definition: :mod:`lit_explain.metrics.functional.concept_masking`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.concept_masking import cosine_concept_masking_score

__all__ = ["ConceptMaskingScore"]


class ConceptMaskingScore(Metric):
    """Mean over the samples containing each explanation of the in-range cosine before/after masking.

    ``update(before, after, label_present, lo, hi)``: raw unit maps (B, J, h*w) on the original and the masked
    images, (B, J) bool presence of each explanation, (J,) range bounds.

    Args:
        num_explanations: J.
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_explanations: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_explanations = int(num_explanations)
        self.add_state("cos_sum", torch.zeros(self.num_explanations, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(self.num_explanations, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, before: torch.Tensor, after: torch.Tensor, label_present: torch.Tensor,
               lo: torch.Tensor, hi: torch.Tensor) -> None:
        cos = cosine_concept_masking_score(before, after, lo, hi)  # (B, J)
        present = torch.as_tensor(label_present, dtype=torch.bool, device=cos.device).reshape(cos.shape)
        self.cos_sum += (cos * present).sum(0).to(self.cos_sum.device)
        self.count += present.sum(0).to(self.count.device)

    def compute(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.cos_sum / self.count.clamp(min=1), torch.zeros_like(self.cos_sum))
