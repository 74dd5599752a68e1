"""The Broden-like synthetic world shared by ``bench/compexp.py`` and ``bench/optimal.py`` (vectorised, no files).

Both benchmarks time compositional searches on the same kind of world: each image has a background colour
covering it, up to three rectangular objects with their own colour and a part on their top third, an image-level
scene and sometimes an image-level texture (about 1.4 pixel labels per pixel, as Broden's colour + object + part
planes). They differ only in how they seed the generator and what they build from the planes, so the drawing
itself lives here once (with the dense evaluation of a formula and the noise of a planted unit): the same
draws in the same order give the same worlds in both.
"""

from __future__ import annotations

import torch

from lit_explain.concepts.formulas import And, Formula, Leaf, Not


class Vocabulary:
    """Concept id ranges of a Broden-like vocabulary: colours, objects, parts, scenes, textures (in that order)."""

    def __init__(self, colors: int, objects: int, parts: int, scenes: int, textures: int) -> None:
        self.sizes = dict(colors=colors, objects=objects, parts=parts, scenes=scenes, textures=textures)
        self.color0, self.object0 = 0, colors
        self.part0 = self.object0 + objects
        self.scene0 = self.part0 + parts
        self.texture0 = self.scene0 + scenes
        self.total = self.texture0 + textures
        self.objects, self.parts, self.scenes, self.textures, self.colors = objects, parts, scenes, textures, colors


def label_planes(n: int, size: int, voc: Vocabulary, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n images of the world on an (size, size) mask grid from the generator ``g``.

    Returns:
        planes: (n, 3, size * size) int64 concept ids of the colour, object and part planes (-1 = none);
        level: (n, voc.total) bool image-level labels (one scene each, a texture for about 30 % of the images).
    """
    yy = torch.arange(size).view(1, size, 1)
    xx = torch.arange(size).view(1, 1, size)
    color = torch.randint(0, voc.colors, (n, 1, 1), generator=g).expand(n, size, size).clone()
    obj = torch.full((n, size, size), -1, dtype=torch.int64)
    part = torch.full((n, size, size), -1, dtype=torch.int64)
    for _ in range(3):
        present = torch.rand(n, generator=g) < 0.7
        h = (torch.rand(n, generator=g) * 0.45 + 0.15) * size
        w = (torch.rand(n, generator=g) * 0.45 + 0.15) * size
        y0 = torch.rand(n, generator=g) * (size - h)
        x0 = torch.rand(n, generator=g) * (size - w)
        cls = torch.randint(0, voc.objects, (n,), generator=g)
        col = torch.randint(0, voc.colors, (n,), generator=g)
        inside = ((yy >= y0.view(n, 1, 1)) & (yy < (y0 + h).view(n, 1, 1)) & (xx >= x0.view(n, 1, 1))
                  & (xx < (x0 + w).view(n, 1, 1)) & present.view(n, 1, 1))
        top = inside & (yy < (y0 + h / 3).view(n, 1, 1))
        color = torch.where(inside, col.view(n, 1, 1), color)
        obj = torch.where(inside, cls.view(n, 1, 1), obj)
        part = torch.where(inside, -1, part)
        part = torch.where(top, (cls % voc.parts).view(n, 1, 1), part)
    planes = torch.stack([color + voc.color0, torch.where(obj >= 0, obj + voc.object0, -1),
                          torch.where(part >= 0, part + voc.part0, -1)], 1).reshape(n, 3, size * size)
    level = torch.zeros(n, voc.total, dtype=torch.bool)
    level[torch.arange(n), voc.scene0 + torch.randint(0, voc.scenes, (n,), generator=g)] = True
    tex = torch.nonzero(torch.rand(n, generator=g) < 0.3).flatten()
    level[tex, voc.texture0 + torch.randint(0, voc.textures, (len(tex),), generator=g)] = True
    return planes, level


def dense_of(planes: torch.Tensor, level: torch.Tensor, f: Formula) -> torch.Tensor:
    """(n, H) bool mask of formula ``f`` evaluated densely on label planes (n, 3, H) and image-level labels (n, C)."""
    if isinstance(f, Leaf):
        return (planes == f.concept).any(1) | level[:, f.concept, None]
    if isinstance(f, Not):
        return ~dense_of(planes, level, f.operand)
    left, right = dense_of(planes, level, f.left), dense_of(planes, level, f.right)
    return left & right if isinstance(f, And) else left | right


def noisy(base: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A planted unit's bitmap: ``base`` (any shape, bool) with 5 % of its pixels dropped and 0.2 % flipped on
    (the flips are drawn first, then the drops, from ``g``)."""
    flip = torch.rand(base.shape, generator=g) < 0.002
    drop = torch.rand(base.shape, generator=g) < 0.05
    return (base & ~drop) | flip
