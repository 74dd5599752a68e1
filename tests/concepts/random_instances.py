"""Random search problems with dense ground truth, for brute-force references in the compositional tests.

Concept masks are unions of random rectangles (so bounding boxes and inscribed rectangles matter), some
concepts are image-level (scene-like), one concept never occurs (empty masks), one pixel concept sometimes
covers a whole image, and some images carry no annotation at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_explain.concepts.index import ConceptIndex


@dataclass
class Instance:
    index: ConceptIndex
    dense: torch.Tensor  # (N, C, H) bool, image-level concepts expanded to full images
    image_level: torch.Tensor  # (N, C) bool
    mask_shape: tuple[int, int]

    def bitmap_of(self, fn) -> torch.Tensor:
        """Bitmap (N, H) from a function of the dense concept masks (N, C, H) -> (N, H)."""
        return fn(self.dense)


def make_instance(
    seed: int,
    n: int = 30,
    c: int = 10,
    shape: tuple[int, int] = (8, 9),
    n_scene: int = 2,
    rects_per_concept: int = 2,
    presence: float = 0.5,
) -> Instance:
    g = torch.Generator().manual_seed(seed)
    sh, sw = shape
    h = sh * sw
    masks = torch.zeros(n, c, sh, sw, dtype=torch.bool)
    n_pix = c - n_scene
    for k in range(n_pix - 1):  # the last pixel concept stays empty everywhere
        present = torch.rand(n, generator=g) < presence
        for i in torch.nonzero(present).flatten().tolist():
            for _ in range(int(torch.randint(1, rects_per_concept + 1, (1,), generator=g))):
                y0 = int(torch.randint(0, sh, (1,), generator=g))
                x0 = int(torch.randint(0, sw, (1,), generator=g))
                y1 = int(torch.randint(y0, sh, (1,), generator=g))
                x1 = int(torch.randint(x0, sw, (1,), generator=g))
                masks[i, k, y0 : y1 + 1, x0 : x1 + 1] = True
    # a pixel concept that covers some images entirely
    masks[: max(1, n // 6), 0] = True
    # a few images without any annotation
    masks[-2:] = False
    image_level = torch.zeros(n, c, dtype=torch.bool)
    for k in range(n_pix, c):
        image_level[:, k] = torch.rand(n, generator=g) < 0.4
    image_level[-2:] = False
    index = ConceptIndex.from_dense(masks, image_level)
    dense = masks.reshape(n, c, h) | image_level[:, :, None]
    return Instance(index, dense, image_level, shape)


def noisy_bitmap(inst: Instance, seed: int, base: torch.Tensor, flip: float = 0.05) -> torch.Tensor:
    """``base`` (N, H) bool with a fraction of pixels flipped."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(base.shape, generator=g) < flip
    return base ^ noise
