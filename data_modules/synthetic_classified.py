"""The synthetic world with class labels in ``predict`` batches (for methods that need them, e.g. WWW).

:class:`SyntheticClassifiedDataModule` is the :class:`~data_modules.synthetic.SyntheticWorldDataModule` whose
``predict_dataloader`` serves one split of the world with each image's class:
``{"image": (B, 3, H, W), "target": (B,), "index": (B,)}`` (``index`` is the position in that split, as the
activation store requires). The dataset carries a content ``fingerprint`` (the split's Broden fingerprint plus the
classes), so activation caches key on it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from torch.utils.data import DataLoader

from data_modules.synthetic import ClassifiedWorldDataset, SyntheticWorldDataModule

__all__ = ["SyntheticClassifiedDataModule"]


class _FingerprintedClasses(ClassifiedWorldDataset):
    """A :class:`ClassifiedWorldDataset` with ``fingerprint()`` (images, annotations and class targets)."""

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.dataset.fingerprint().encode())
        h.update(self.targets.numpy().tobytes())
        return "classified-" + h.hexdigest()[:16]


class SyntheticClassifiedDataModule(SyntheticWorldDataModule):
    """The synthetic world; predict batches carry class targets (see the module docstring).

    Args:
        predict_split: the world split served by ``predict_dataloader``: ``val`` (held-out images, default) or
            ``train``.
        kwargs: :class:`~data_modules.synthetic.SyntheticWorldDataModule` arguments (world parameters, batch size...).
    """

    def __init__(self, predict_split: str = "val", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if predict_split not in ("train", "val"):
            raise ValueError(f"SyntheticClassifiedDataModule: predict_split must be 'train' or 'val', got "
                             f"{predict_split!r}")
        self.predict_split = predict_split
        self._predict_set: _FingerprintedClasses | None = None

    def predict_dataloader(self) -> DataLoader:
        """Unshuffled batches ``{"image", "target", "index"}`` of ``predict_split``."""
        if self._predict_set is None:
            base = self._classified(self.predict_split)
            ds = _FingerprintedClasses.__new__(_FingerprintedClasses)
            ds.__dict__.update(base.__dict__)
            self._predict_set = ds
        return DataLoader(self._predict_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
