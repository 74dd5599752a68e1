"""Contrastive training of a small open_clip model on captioned images (the synthetic world's offline CLIP).

:class:`ContrastiveClip` trains an ``open_clip.CLIP`` built from an open_clip model config (default
:data:`~lit_explain.models.clip_files.TINY_CLIP_CONFIG`) with open_clip's ``ClipLoss`` (symmetric InfoNCE over the
batch; under DDP the features of every process are gathered with gradients, so the negatives are the global
batch). Batches are ``{"image": (B, 3, 64, 64), "tokens": (B, T) int64, "concepts": (B, C) bool}`` as
:class:`data_modules.synthetic_captions.SyntheticCaptionsDataModule` yields them (``concepts`` only needed in
validation).

Each validation epoch measures zero-shot concept retrieval on the held-out images
(:func:`~lit_explain.metrics.functional.concept_retrieval.concept_retrieval_auroc`: per concept, the AUROC of
``cos(image, text("a photo of a {concept}"))`` for the images holding it) and logs its mean as
``val/concept_auroc``. At the end of ``fit`` the model is written to ``output_dir`` as an open_clip model folder
(:func:`~lit_explain.models.clip_files.save_clip`) with the last retrieval figures, loadable by
:func:`~lit_explain.models.clip_files.load_clip`, ``open_clip.create_model_and_transforms("local-dir:...")`` and
:class:`~lit_explain.text.encoders.OpenClipEncoder`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningModule

from lit_explain.distributed import gather_varlen
from lit_explain.metrics.functional.concept_retrieval import concept_retrieval_auroc
from lit_explain.models.clip_files import TINY_CLIP_CONFIG, build_clip, check_model_config, save_clip

__all__ = ["ContrastiveClip"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ContrastiveClip(LightningModule):
    """Train a CLIP contrastively; logs ``train/loss``, ``train/logit_scale``, ``val/loss``, ``val/concept_auroc``.

    Args:
        model_config: open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); None = the tiny
            64-pixel ResNet + text transformer of :data:`~lit_explain.models.clip_files.TINY_CLIP_CONFIG`.
        name: architecture name written with the model (file ``<name>.json``); no '/', '\\' or spaces.
        concepts: concept names scored in validation, in the order of the batches' ``concepts`` columns; None =
            every synthetic-world concept (:func:`lit_explain.synth.concepts.world_concepts` order).
        template: prompt of a concept, with "{}" where the name goes (WWW's "a photo of a {}").
        lr: peak AdamW learning rate, > 0.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings and the logit scale), >= 0.
        warmup_fraction: fraction of the steps with a linear warm-up before the cosine decay, in [0, 1).
        output_dir: folder the trained model is written to at the end of fit; None = not written.
        mean: image normalisation mean the data uses (stored for consumers' preprocessing), 3 values.
        std: image normalisation std, 3 positive values.
    """

    def __init__(
        self,
        model_config: dict | None = None,
        name: str = "synth-clip",
        concepts: Sequence[str] | None = None,
        template: str = "a photo of a {}",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.1,
        output_dir: str | None = "outputs/clip_synthetic/model",
        mean: Sequence[float] = _IMAGENET_MEAN,
        std: Sequence[float] = _IMAGENET_STD,
    ) -> None:
        super().__init__()
        cfg = check_model_config(TINY_CLIP_CONFIG if model_config is None else dict(model_config))
        if not name or any(c in name for c in "/\\ "):
            raise ValueError(f"ContrastiveClip: name must be a non-empty file stem without '/', '\\' or spaces, "
                             f"got {name!r}")
        if concepts is None:
            from lit_explain.synth.concepts import world_concepts

            concepts = [c.name for c in world_concepts()]
        concepts = [str(c) for c in concepts]
        if not concepts or len(set(concepts)) != len(concepts) or not all(c.strip() for c in concepts):
            raise ValueError(f"ContrastiveClip: concepts must be non-empty, unique, non-blank names, got {concepts}")
        if "{}" not in template:
            raise ValueError(f"ContrastiveClip: template must contain '{{}}' where the concept goes, got {template!r}")
        if not float(lr) > 0:
            raise ValueError(f"ContrastiveClip: lr must be > 0, got {lr}")
        if float(weight_decay) < 0:
            raise ValueError(f"ContrastiveClip: weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= float(warmup_fraction) < 1.0:
            raise ValueError(f"ContrastiveClip: warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"ContrastiveClip: mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.save_hyperparameters()
        self.model_config = cfg
        self.concepts = concepts
        self.context_length = int(cfg["text_cfg"].get("context_length", 77))
        self.clip = build_clip(cfg)
        self._loss = None
        self._val_images: list[torch.Tensor] = []
        self._val_present: list[torch.Tensor] = []
        self.retrieval: dict[str, Any] | None = None

    # ------------------------------------------------------------------ pieces
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, T) int64 tokens of ``texts`` (open_clip's BPE tokenizer, this model's context length)."""
        from open_clip.tokenizer import SimpleTokenizer

        if not hasattr(self, "_tokenizer"):
            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer(list(texts))

    def _loss_fn(self):
        if self._loss is None:
            from open_clip.loss import ClipLoss

            world = self.trainer.world_size if self._trainer is not None else 1
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._loss = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world)
        return self._loss

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"ContrastiveClip: batch['tokens'] must be (B, {self.context_length}) for this model's "
                             f"text_cfg.context_length, got {tuple(tokens.shape)}; give the data module the same "
                             "context_length")
        return self.clip(batch["image"], tokens)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict]:
        out = self._forward(batch)
        loss = self._loss_fn()(out["image_features"], out["text_features"], out["logit_scale"])
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=batch["image"].shape[0], sync_dist=stage != "train")
        return loss, out

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, out = self._step(batch, "train")
        self.log("train/logit_scale", out["logit_scale"].detach(), on_step=False, on_epoch=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # open_clip's practice: temperature at most 100
            self.clip.logit_scale.clamp_(0, math.log(100))

    def on_validation_epoch_start(self) -> None:
        self._val_images, self._val_present = [], []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, out = self._step(batch, "val")
        if "concepts" in batch:
            present = batch["concepts"]
            if present.ndim != 2 or present.shape[1] != len(self.concepts):
                raise ValueError(f"ContrastiveClip: batch['concepts'] must be (B, {len(self.concepts)}) for the "
                                 f"model's concepts, got {tuple(present.shape)}; give both the same concept list")
            self._val_images.append(out["image_features"].detach().float())
            self._val_present.append(present.bool())

    @torch.no_grad()
    def encode_concepts(self) -> torch.Tensor:
        """(C, D) text embeddings of the concept prompts (``template.format(concept)``)."""
        tokens = self.tokenize([self.hparams.template.format(c) for c in self.concepts]).to(self.device)
        return self.clip.encode_text(tokens).float()

    def on_validation_epoch_end(self) -> None:
        if not self._val_images:
            return
        images = gather_varlen(torch.cat(self._val_images))
        present = gather_varlen(torch.cat(self._val_present))
        per_concept, mean = concept_retrieval_auroc(images.cpu(), self.encode_concepts().cpu(), present.cpu())
        self.retrieval = {"mean_auroc": None if math.isnan(float(mean)) else float(mean),
                          "images": int(images.shape[0]), "template": self.hparams.template,
                          # None: the concept is in all or none of the held-out images (AUROC undefined)
                          "per_concept": {c: None if math.isnan(v) else float(v)
                                          for c, v in zip(self.concepts, per_concept.tolist())}}
        self.log("val/concept_auroc", mean.float(), prog_bar=True, rank_zero_only=True)
        self._val_images, self._val_present = [], []

    def on_fit_end(self) -> None:
        if self.hparams.output_dir and self.trainer.is_global_zero:
            extra = {"template": self.hparams.template, "concepts": self.concepts,
                     "zero_shot_retrieval": self.retrieval, "epochs": int(self.current_epoch),
                     "steps": int(self.global_step)}
            save_clip(self.clip, self.model_config, self.hparams.output_dir, name=self.hparams.name,
                      mean=self.hparams.mean, std=self.hparams.std, extra=extra)

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for n, p in self.clip.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr,
                                betas=(0.9, 0.98), eps=1e-6)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = int(self.hparams.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(total - warm, 1))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
