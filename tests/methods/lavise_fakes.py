"""Small fakes for the LaViSE tests, independent of the real data modules and encoders.

* :class:`HashEncoder`: a TextEncoder giving every word a fixed pseudo-random unit vector (SHA-256 seeded),
  except for the words listed as missing.
* :func:`color_net`: a *planted* network: channel c of ``layer1`` is by construction a detector of palette
  colour c (``relu(1 - |pixel - colour_c| / 0.3)``, average-pooled 4×4), so filter c's ground truth is known.
  Top-level modules ``conv1, layer1, layer2, avgpool, fc`` (``layer2`` widens the map, to test layers whose width
  differs from the classifier's input).
* :class:`ColorSquares`: a LightningDataModule of the LaViSE data contract: scenes of 1–3 non-overlapping
  coloured squares on black; category c = palette colour c ("color0", ...).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lit_explain.text.encoders import TextEncoder

#: 12 colours whose largest channel is 1, pairwise at least 0.5 apart (so hue detectors never cross-talk)
PALETTE = torch.tensor([
    [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0],
    [1.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.5, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 1.0],
])


class HashEncoder(TextEncoder):
    """Deterministic pseudo-random unit vectors per word; ``missing`` words have none."""

    def __init__(self, dim: int = 32, missing: list[str] | None = None, vocabulary: list[str] | None = None,
                 on_missing: str = "error") -> None:
        super().__init__(vocabulary=vocabulary, on_missing=on_missing, cache_dir=None)
        self._d = dim
        self.missing = set(missing or [])

    def _identity(self) -> dict:
        return {"class": "hash", "dim": self._d}

    def _dim(self) -> int:
        return self._d

    def _encode(self, words):
        out = np.zeros((len(words), self._d), dtype=np.float32)
        found = np.zeros(len(words), dtype=bool)
        for i, w in enumerate(words):
            if w in self.missing or not w.strip():
                continue
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self._d)
            found[i] = True
        return out, found


class ColorDetector(nn.Module):
    """(B, 3, S, S) -> (B, C, S, S): channel c = brightness * relu(1 - ||pixel / brightness - palette[c]|| / 0.3).

    Brightness is the largest channel of the pixel, so a colour is detected whatever its brightness and the
    response grows with it; a fixed ±2 % spatial ripple breaks ties between equal pixels (as real networks never
    produce large plateaus of identical values).
    """

    def __init__(self, num_colors: int, radius: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("palette", PALETTE[:num_colors].clone())
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = x.amax(1, keepdim=True)  # (B, 1, S, S)
        hue = x / bright.clamp(min=1e-6)
        cross = torch.einsum("bkhw,ck->bchw", hue, self.palette)
        d2 = (hue * hue).sum(1, keepdim=True) - 2 * cross + (self.palette**2).sum(1)[None, :, None, None]
        d = d2.clamp(min=0).sqrt()  # (B, C, S, S) distance of each pixel's hue to each palette colour
        out = bright * (1 - d / self.radius).clamp(min=0)
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        return out * (1 + 0.02 * torch.sin(0.9 * xx + 1.7 * yy))


class ColorNet(nn.Module):
    def __init__(self, num_colors: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Identity()
        self.layer1 = nn.Sequential(ColorDetector(num_colors), nn.AvgPool2d(4))
        self.layer2 = nn.Conv2d(num_colors, 2 * num_colors, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * num_colors, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def color_net(num_colors: int = 12, num_classes: int = 10) -> nn.Module:
    """Factory for ``python:tests.methods.lavise_fakes:color_net``."""
    torch.manual_seed(0)
    return ColorNet(num_colors, num_classes)


@functools.lru_cache(maxsize=4096)
def render_scene(i: int, seed: int, size: int, num_colors: int):
    """Image (3,S,S), masks (M,S,S) bool, labels (M,) of scene i (1-3 non-overlapping squares); do not modify."""
    rng = np.random.default_rng([seed, i])
    n = int(rng.integers(1, 4))
    colors = rng.choice(num_colors, size=n, replace=False)
    cell = size // 2
    slots = rng.choice(4, size=n, replace=False)  # quadrants: squares never overlap
    img = torch.zeros(3, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for m, (c, slot) in enumerate(zip(colors, slots)):
        side = int(rng.integers(cell // 2, cell + 1))
        y0 = (slot // 2) * cell + int(rng.integers(0, cell - side + 1))
        x0 = (slot % 2) * cell + int(rng.integers(0, cell - side + 1))
        masks[m, y0 : y0 + side, x0 : x0 + side] = True
        img[:, masks[m]] = PALETTE[c][:, None] * float(rng.uniform(0.5, 1.0))
    return img, masks, torch.as_tensor(colors, dtype=torch.int64)


class _Instances(Dataset):
    def __init__(self, scenes, allowed: torch.Tensor, num_labels: int, seed: int, size: int, num_colors: int):
        self.items = []
        for i in scenes:
            _, _, labels = render_scene(i, seed, size, num_colors)
            self.items += [(i, m) for m, c in enumerate(labels.tolist()) if allowed[c]]
        self.num_labels, self.seed, self.size, self.num_colors = num_labels, seed, size, num_colors

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        i, m = self.items[k]
        img, masks, labels = render_scene(i, self.seed, self.size, self.num_colors)
        target = torch.zeros(self.num_labels)
        target[labels[m]] = 1.0
        return {"image": img, "mask": masks[m : m + 1].float(), "target": target, "index": k}


class _Images(Dataset):
    def __init__(self, scenes, seed: int, size: int, num_colors: int):
        self.scenes, self.seed, self.size, self.num_colors = list(scenes), seed, size, num_colors

    def __len__(self):
        return len(self.scenes)

    def fingerprint(self) -> str:
        """Content key for the activation cache: the images are rendered from these parameters alone."""
        import hashlib

        scenes = hashlib.sha256(repr(self.scenes).encode()).hexdigest()[:16]
        return f"color-squares:{self.seed}:{self.size}:{self.num_colors}:{scenes}"

    def __getitem__(self, k):
        img, masks, labels = render_scene(self.scenes[k], self.seed, self.size, self.num_colors)
        return {"image": img, "masks": masks, "mask_labels": labels, "index": k}


def _collate_instances(items):
    return {k: (torch.stack([it[k] for it in items]) if k != "index" else torch.tensor([it[k] for it in items]))
            for k in ("image", "mask", "target", "index")}


def _collate_images(items):
    m = max(len(it["mask_labels"]) for it in items)
    s = items[0]["image"].shape[-1]
    masks = torch.zeros(len(items), m, s, s, dtype=torch.bool)
    labels = torch.full((len(items), m), -1, dtype=torch.int64)
    for b, it in enumerate(items):
        masks[b, : len(it["mask_labels"])] = it["masks"]
        labels[b, : len(it["mask_labels"])] = it["mask_labels"]
    return {"image": torch.stack([it["image"] for it in items]), "masks": masks, "mask_labels": labels,
            "index": torch.tensor([it["index"] for it in items])}


class ColorSquares(LightningDataModule):
    """Coloured squares, following the LaViSE data contract.

    Args:
        num_train, num_val, num_predict: scenes per split (disjoint scene ids).
        num_colors: categories K.
        unseen: category ids held out of training.
        size: image side.
        batch_size: batch size of every loader.
        seed: scene seed.
        augment: value of the ``augment`` property (the transforms are always deterministic here).
    """

    def __init__(self, num_train: int = 96, num_val: int = 32, num_predict: int = 40, num_colors: int = 12,
                 unseen: list[int] | None = None, size: int = 32, batch_size: int = 32, seed: int = 0,
                 augment: bool = False) -> None:
        super().__init__()
        self.num_colors = num_colors
        self.label_names = [f"color{c}" for c in range(num_colors)]
        seen = torch.ones(num_colors, dtype=torch.bool)
        seen[list(unseen or [])] = False
        self.seen = seen
        self.augment = augment
        self.batch_size = batch_size
        a, b = num_train, num_train + num_val
        self.train_set = _Instances(range(a), seen, num_colors, seed, size, num_colors)
        self.val_set = _Instances(range(a, b), torch.ones(num_colors, dtype=torch.bool), num_colors, seed, size,
                                  num_colors)
        self.predict_set = _Images(range(b, b + num_predict), seed, size, num_colors)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=_collate_instances)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=_collate_instances)

    def predict_dataloader(self):
        return DataLoader(self.predict_set, batch_size=self.batch_size, collate_fn=_collate_images)
