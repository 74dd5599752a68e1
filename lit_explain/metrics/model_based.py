"""Model-based metrics of explanations (CCE): they run the network again on modified inputs or activations.

* :func:`concept_masking_score`: CCE's label-masking score of one explanation of unit u in range (lo, hi): the
  mean, over the images containing the explanation, of the cosine between u's in-range activations before and
  after attenuating everything but the explanation in the input (one forward pass per (explanation, image), in
  batches; definition in :mod:`lit_explain.metrics.functional.concept_masking`).
* :func:`range_importance_scores`: per cluster index k, the fraction of images whose predicted class changes
  when every selected unit's activations strictly inside its k-th range are zeroed (a forward hook on the layer;
  K + 1 forward passes per image, summed across DDP processes; definition in
  :mod:`lit_explain.metrics.functional.range_importance`).

The network, the images and the explanation masks come in as callables, so this module knows neither the
method nor the concept index.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from lit_explain import distributed
from lit_explain.metrics.concept_masking import ConceptMaskingScore
from lit_explain.metrics.functional.concept_masking import concept_masking_inputs
from lit_explain.metrics.functional.range_importance import mask_activation_ranges
from lit_explain.metrics.range_importance import RangeImportance

__all__ = ["concept_masking_score", "range_importance_scores"]


def concept_masking_score(
    image_ids: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor],
    label_masks: Callable[[torch.Tensor], torch.Tensor],
    unit_maps: Callable[[torch.Tensor], torch.Tensor],
    stored_maps: Callable[[torch.Tensor], torch.Tensor],
    lo: float,
    hi: float,
    generator: torch.Generator,
    batch_size: int = 64,
) -> float:
    """CCE's concept-masking cosine score of one explanation (0.0 when no image contains it).

    Args:
        image_ids: (S,) the images where the explanation occurs.
        images: ids (B,) -> (B, 3, H, W) normalised model inputs.
        label_masks: ids (B,) -> (B, sh, sw) bool masks of the explanation on those images.
        unit_maps: inputs (B, 3, H, W) -> (B, h, w) the unit's layer maps of the network on them.
        stored_maps: ids (B,) -> (B, h, w) float32 the unit's stored maps on the original images.
        lo, hi: the unit's range (strict).
        generator: source of the masks' random attenuation (seed it per explanation for reproducible scores).
        batch_size: images per forward pass, >= 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    metric = ConceptMaskingScore(1, sync_on_compute=False)
    bounds = (torch.tensor([lo]), torch.tensor([hi]))
    for chunk in torch.as_tensor(image_ids, dtype=torch.int64).split(batch_size):
        x = images(chunk)
        masked = concept_masking_inputs(x.cpu(), label_masks(chunk)[:, None], generator).to(x.device)
        with torch.no_grad():
            after = unit_maps(masked).float().cpu()
        before = stored_maps(chunk)
        metric.update(before.flatten(1)[:, None], after.flatten(1)[:, None], torch.ones(len(chunk), 1), *bounds)
    return float(metric.compute())


def range_importance_scores(
    net: torch.nn.Module,
    layer: str,
    image_ids: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor],
    units: Sequence[int],
    ranges: Sequence[Sequence[tuple[float, float]]],
    batch_size: int = 64,
) -> list[float]:
    """Per cluster index k, the fraction of images whose arg-max prediction changes when the activations of
    every unit ``units[j]`` strictly inside its k-th range ``ranges[j][k]`` are zeroed.

    Args:
        net: a classifier whose output is (B, classes) logits.
        layer: the submodule whose (B, U, h, w) output is masked.
        image_ids: (B_r,) this process's images (the counts are summed across processes).
        images: ids -> (B, 3, H, W) model inputs.
        units, ranges: the selected units and each one's sorted ranges (units with fewer ranges, and units not
            selected, are never masked for the missing indices).
        batch_size: images per forward pass, >= 1.

    Returns:
        K fractions, K the largest number of ranges of a unit ([] when no unit has a range).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k_max = max((len(r) for r in ranges), default=0)
    if k_max == 0:
        return []
    module = net.get_submodule(layer)
    state: dict[str, Any] = {"k": None, "lo": None, "hi": None}

    def hook(mod, inputs, output):
        if state["k"] is None:
            return None
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(f"range_importance needs layer {layer!r} to output (B, U, h, w) maps, got "
                             f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")
        if state["lo"] is None:  # units that are not selected, and missing ranges, are never masked
            lo = torch.full((output.shape[1], k_max), math.inf, dtype=output.dtype, device=output.device)
            hi = torch.full_like(lo, -math.inf)
            for j, u in enumerate(units):
                for kk, (a, b) in enumerate(ranges[j]):
                    lo[u, kk], hi[u, kk] = a, b
            state["lo"], state["hi"] = lo, hi
        kk = state["k"]
        return mask_activation_ranges(output, state["lo"][:, kk : kk + 1], state["hi"][:, kk : kk + 1])[0]

    metric = RangeImportance(k_max, sync_on_compute=False)
    handle = module.register_forward_hook(hook)
    try:
        for chunk in torch.as_tensor(image_ids, dtype=torch.int64).split(batch_size):
            x = images(chunk)
            with torch.no_grad():
                state["k"] = None
                logits = net(x)
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                    raise ValueError("range_importance needs a classifier whose output is (B, classes) logits")
                masked = []
                for kk in range(k_max):
                    state["k"] = kk
                    masked.append(net(x))
                state["k"] = None
            metric.update(logits.cpu(), torch.stack(masked).cpu())
    finally:
        handle.remove()
    changed = distributed.all_sum(metric.changed)
    total = distributed.all_sum(metric.total)
    return [float(v) for v in (changed.to(torch.float64) / max(1, int(total)))]
