"""Do a class's components alone still predict it? The prediction-from-components test, in activation space.

For each class A with components H (K, C): take each component's most similar pooled grid cell (cosine, see
:mod:`lit_explain.decomposition.prototypes`), either from all images or only from images *not* predicted as A,
stack the K cell vectors as a K x 1 "strip" feature map (C, K, 1) (the paper stacks the image crops of these
cells vertically and feeds the strip to the network without resizing), run the rest of the network (``head``:
layer activations -> logits, e.g. a ResNet's remaining stages, global pool and classifier, which accept any
spatial size) and read the softmax p(A) and whether A is the argmax. Reported: per class, and as counts of
successes and mean p(A) over classes, for "all images" and "excluding A's images".

Classes whose basis is all zero (skipped by the NMF) or for which some component has no eligible cell are
marked invalid (NaN p, no success) and left out of the means and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lit_explain.decomposition.prototypes import top_cells

__all__ = ["ComponentPrediction", "component_prediction_test"]


@dataclass
class ComponentPrediction:
    """Per class (A,): p(A) and argmax success with cells from all images (``_all``) and from images not
    predicted as A (``_excl``); ``valid_*`` False where the test could not be run."""

    p_all: torch.Tensor
    hit_all: torch.Tensor
    valid_all: torch.Tensor
    p_excl: torch.Tensor
    hit_excl: torch.Tensor
    valid_excl: torch.Tensor

    def summary(self) -> dict[str, float | int]:
        """Counts of successes and mean p(A) over the valid classes, both pools."""
        out: dict[str, float | int] = {}
        for tag in ("all", "excl"):
            p, hit, ok = getattr(self, f"p_{tag}"), getattr(self, f"hit_{tag}"), getattr(self, f"valid_{tag}")
            out[f"count_{tag}"] = int((hit & ok).sum())
            out[f"classes_{tag}"] = int(ok.sum())
            out[f"mean_p_{tag}"] = float(p[ok].mean()) if bool(ok.any()) else float("nan")
        return out


def _strip_probs(cells: torch.Tensor, tc, classes: torch.Tensor, head: Callable, classes_per_pass: int):
    """p(A) and argmax == A from the strips of the top-1 cells; tc fields are (A, K, 1)."""
    N, C, gh, gw = cells.shape
    A, K = tc.image.shape[:2]
    ok = (tc.index[:, :, 0] >= 0).all(1)  # (A,)
    img, y, x = (t[:, :, 0].clamp(min=0) for t in (tc.image, tc.y, tc.x))
    vecs = cells[img, :, y, x]  # (A, K, C)
    strips = vecs.permute(0, 2, 1)[..., None]  # (A, C, K, 1)
    ps, hits = [], []
    for a0 in range(0, A, classes_per_pass):
        logits = head(strips[a0 : a0 + classes_per_pass])
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(f"component_prediction_test: head must return (A, n_classes) logits, got "
                             f"{getattr(logits, 'shape', type(logits))}")
        cls = classes[a0 : a0 + classes_per_pass]
        ps.append(logits.softmax(-1).gather(1, cls[:, None])[:, 0])
        hits.append(logits.argmax(-1) == cls)
    p, hit = torch.cat(ps), torch.cat(hits)
    return torch.where(ok, p, torch.full_like(p, float("nan"))), hit & ok, ok


def component_prediction_test(
    cells: torch.Tensor,
    preds: torch.Tensor,
    bases: torch.Tensor,
    classes: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    images_per_pass: int = 256,
    classes_per_pass: int = 64,
) -> ComponentPrediction:
    """Run the test for A classes at once.

    Args:
        cells: (N, C, gh, gw) pooled activations of the image pool.
        preds: (N,) the model's predicted class per image.
        bases: (A, K, C) components per class.
        classes: (A,) the class index each basis explains (the target read from the logits).
        head: (A', C, K, 1) strips -> (A', n_classes) logits; the network after the probed layer.
        images_per_pass, classes_per_pass: memory bounds, ints >= 1.
    """
    if isinstance(classes_per_pass, bool) or not isinstance(classes_per_pass, int) or classes_per_pass < 1:
        raise ValueError(f"component_prediction_test: classes_per_pass must be an int >= 1, got {classes_per_pass!r}")
    classes = torch.as_tensor(classes, device=cells.device).long().reshape(-1)
    if classes.shape != (bases.shape[0],):
        raise ValueError(f"component_prediction_test: classes must be ({bases.shape[0]},), got {tuple(classes.shape)}")
    nonzero = bases.flatten(1).abs().amax(1) > 0
    res = {}
    with torch.no_grad():
        for tag, excl in (("all", False), ("excl", True)):
            tc = top_cells(cells, bases, 1, preds=preds, classes=classes, exclude_own=excl,
                           images_per_pass=images_per_pass)
            p, hit, ok = _strip_probs(cells, tc, classes, head, classes_per_pass)
            ok = ok & nonzero
            res[tag] = (torch.where(ok, p, torch.full_like(p, float("nan"))), hit & ok, ok)
    return ComponentPrediction(p_all=res["all"][0], hit_all=res["all"][1], valid_all=res["all"][2],
                               p_excl=res["excl"][0], hit_excl=res["excl"][1], valid_excl=res["excl"][2])
