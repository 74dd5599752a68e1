"""Safe ratio of summed statistics (0 where the denominator is 0), as float64."""

from __future__ import annotations

import torch


def ratio(num, den) -> torch.Tensor:
    num = torch.as_tensor(num).to(torch.float64)
    den = torch.as_tensor(den).to(torch.float64)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
