"""ImageClassifier: supervised training of a backbone (the network that is later explained).

Batches are ``{"image": (B, 3, H, W), "target": (B,) int64, ...}`` (e.g. from
:class:`data_modules.synthetic.SyntheticWorldDataModule`). The backbone is built by
:func:`lit_explain.models.loading.load_model` and stored as the attribute ``model``, so checkpoint
``state_dict`` keys read ``model.<backbone key>``; ``load_model(spec, weights=<ckpt>)`` strips the prefix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from lit_explain.models.loading import load_model

__all__ = ["ImageClassifier"]

_SCHEDULES = ("none", "cosine", "onecycle")


class ImageClassifier(LightningModule):
    """Train an image classifier with cross-entropy; logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``.

    Args:
        backbone: model spec for :func:`~lit_explain.models.loading.load_model` (``torchvision:<arch>``,
            ``timm:<arch>``, ``python:<module>:<factory>``, or a model file).
        weights: ``"none"`` (random init), ``"default"`` (library weights from the local cache) or a checkpoint.
        num_classes: number of classes (the backbone's output size).
        backbone_kwargs: extra keyword arguments for the backbone factory (e.g. ``{"width": 16}``).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        schedule: ``"onecycle"`` (warm-up then cosine annealing over the run, per step), ``"cosine"``
            (cosine annealing per step over the run) or ``"none"``.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        backbone: str = "python:lit_explain.models.synthetic_cnn:synthetic_cnn",
        weights: str = "none",
        num_classes: int = 8,
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        schedule: str = "onecycle",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if schedule not in _SCHEDULES:
            raise ValueError(f"ImageClassifier: schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if int(num_classes) < 2:
            raise ValueError(f"ImageClassifier: num_classes must be >= 2, got {num_classes}")
        self.save_hyperparameters()
        self.model = load_model(backbone, weights=weights, num_classes=int(num_classes), **(backbone_kwargs or {}))
        self.train_acc = MulticlassAccuracy(num_classes=int(num_classes), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=int(num_classes), average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W)."""
        return self.model(images)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["target"]
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        acc = self.train_acc if stage == "train" else self.val_acc
        acc(logits.detach(), target)
        bs = target.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", on_step=False, on_epoch=True, batch_size=bs,
                 sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"logits": (B, K), "index": (B,)}`` for each predict batch."""
        return {"logits": self(batch["image"]), "index": batch["index"]}

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "none":
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        if self.hparams.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=max(total, 1),
                                                        pct_start=0.2)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
