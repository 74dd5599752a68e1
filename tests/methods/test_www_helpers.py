"""Fakes for the WWW tests: planted truth and an encoder pair whose geometry is known (no training).

* :class:`ColourDiscs`: images of a large palette-coloured disc (the class) and sometimes a small disc of another
  colour on a grey background; a quarter of the labels name the small disc's colour instead (mispredictions for the
  reliability AUROC). Items ``{"image", "target", "index"}``, ImageNet-normalised, 32 x 32.
* :class:`HueEncoder`: image embedding = per-colour fraction of coloured pixels whose hue is within 15 degrees of
  the colour, plus 0.2 on a shared "photo" axis; text "a photo of a <word>" = one-hot(word) + the photo axis, the
  bare template = the photo axis. So a red-detecting unit's examples point at "red" and at no shape word.
* the planted model: ``python:lit_explain.synth.planted:planted_model`` with units :data:`UNITS`.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lit_explain.synth.concepts import COLORS

UNITS = ["red", "green", "blue", "yellow"]
WORDS = ["red", "green", "blue", "yellow", "purple", "circle", "square", "sky"]
MODEL = "python:lit_explain.synth.planted:planted_model"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def hue_degrees(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, H, W) hue in degrees (atan2 form)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return torch.rad2deg(torch.atan2(math.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0


class HueEncoder:
    """The known-geometry encoder pair (see the module docstring)."""

    def __init__(self, words=WORDS, prefix: str = "a photo of a") -> None:
        self.words, self.prefix = list(words), prefix
        self.dim = len(self.words) + 1

    def to(self, device):
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.float()
        chroma = rgb.amax(1) - rgb.amin(1)
        hue = hue_degrees(rgb)
        out = torch.zeros(len(images), self.dim)
        for j, w in enumerate(self.words):
            if w not in COLORS:
                continue
            h0 = float(hue_degrees(torch.tensor(COLORS[w]).view(1, 3, 1, 1)))
            d = (hue - h0).abs()
            d = torch.minimum(d, 360 - d)
            out[:, j] = ((chroma > 0.3) & (d < 15)).float().mean(dim=(1, 2))
        out[:, -1] = 0.2
        return out

    def encode_texts(self, texts) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            word = t[len(self.prefix):].strip() if t.startswith(self.prefix) else t.strip()
            if word in self.words:
                out[i, self.words.index(word)] = 1.0
            if t.startswith(self.prefix):
                out[i, -1] = 1.0
        return out

    def token_counts(self, texts):
        return [sum(any(c.isalnum() for c in tok) for tok in t.split()) for t in texts]


def colour_images(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) normalised images and (n,) labels (see the module docstring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    images, labels = [], []
    for i in range(n):
        img = np.full((size, size, 3), rng.uniform(0.35, 0.6))
        big = i % len(UNITS)
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(6, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = COLORS[UNITS[big]]
        label = big
        if rng.random() < 0.6:
            small = (big + 1 + rng.integers(len(UNITS) - 1)) % len(UNITS)
            sy, sx = rng.choice([3.5, size - 3.5]), rng.choice([3.5, size - 3.5])
            img[(yy - sy) ** 2 + (xx - sx) ** 2 < 9] = COLORS[UNITS[small]]
            if rng.random() < 0.4:
                label = int(small)
        images.append((img - np.array(MEAN)) / np.array(STD))
        labels.append(label)
    x = torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


class _Discs(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = colour_images(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i], "index": i}

    def fingerprint(self) -> str:
        return "discs-" + hashlib.sha256(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()[:16]


class ColourDiscs(LightningDataModule):
    def __init__(self, n: int = 40, seed: int = 0, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.class_names = list(UNITS)
        self._ds = None

    def predict_dataloader(self) -> DataLoader:
        if self._ds is None:
            self._ds = _Discs(self.n, self.seed)
        return DataLoader(self._ds, batch_size=self.batch_size, shuffle=False)
