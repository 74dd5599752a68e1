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

__all__ = ["ContrastiveClip", "caption_positives", "multi_positive_loss"]

LOSSES = ("multi_positive", "clip")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def caption_positives(present: torch.Tensor, named: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: caption j is a positive of image i when i holds every concept j names, or j is i's own caption.

    Args:
        present: (N, C) bool, the concepts image i holds.
        named: (M, C) bool, the concepts caption j names (a caption naming nothing is true of every image).
        owner: (M,) int64, the image each caption was written for (its row in ``present``).

    Concept sets ignore which object a colour belongs to, so "a red circle" counts as true of an image with a red
    square and a blue circle; with whole-image descriptions such a pair is rare in a batch.
    """
    if present.ndim != 2 or named.ndim != 2 or present.shape[1] != named.shape[1] or owner.shape != named.shape[:1]:
        raise ValueError(f"caption_positives: expected present (N, C), named (M, C), owner (M,), got "
                         f"{tuple(present.shape)}, {tuple(named.shape)}, {tuple(owner.shape)}")
    missing = (~present.bool()).float() @ named.float().T  # (N, M): concepts j names that i lacks
    own = owner[None, :] == torch.arange(present.shape[0], device=owner.device)[:, None]
    return (missing == 0) | own


def multi_positive_loss(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                        logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with several positives: the mean of the image -> caption and caption -> image
    cross-entropies between ``softmax(logit_scale * cos)`` and the positives, uniformly weighted per row.

    Args:
        image: (N, D) unit-norm image features.
        text: (M, D) unit-norm caption features.
        positives: (N, M) bool (:func:`caption_positives`); every row and column needs one positive.
        logit_scale: scalar, the inverse temperature (``exp`` of open_clip's ``logit_scale`` parameter).

    With exactly one positive per row and column (a permutation) this is open_clip's ``ClipLoss``.
    """
    if positives.shape != (image.shape[0], text.shape[0]):
        raise ValueError(f"multi_positive_loss: positives must be {(image.shape[0], text.shape[0])}, got "
                         f"{tuple(positives.shape)}")
    pos = positives.to(image.dtype)
    if bool((pos.sum(1) == 0).any()) or bool((pos.sum(0) == 0).any()):
        raise ValueError("multi_positive_loss: every image and every caption needs at least one positive")
    logits = logit_scale * image @ text.T
    to_text = -(pos / pos.sum(1, keepdim=True) * torch.log_softmax(logits, dim=1)).sum(1).mean()
    to_image = -(pos.T / pos.sum(0)[:, None] * torch.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (to_text + to_image)


class ContrastiveClip(LightningModule):
    """Train a CLIP contrastively; logs ``train/loss``, ``train/logit_scale``, ``val/loss``, ``val/concept_auroc``.

    Args:
        model_config: open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); None = the tiny
            64-pixel ResNet + text transformer of :data:`~lit_explain.models.clip_files.TINY_CLIP_CONFIG`.
        name: architecture name written with the model (file ``<name>.json``); no '/', '\\' or spaces.
        concepts: concept names scored in validation, in the order of the batches' ``concepts`` columns; None =
            every synthetic-world concept (:func:`lit_explain.synth.concepts.world_concepts` order).
        template: prompt of a concept, with "{}" where the name goes (WWW's "a photo of a {}").
        loss: "multi_positive" (every caption true of an image is its positive; needs ``concepts`` and
            ``caption_concepts`` in the batches) or "clip" (open_clip's ClipLoss, one caption per image).
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
        loss: str = "multi_positive",
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
        if loss not in LOSSES:
            raise ValueError(f"ContrastiveClip: loss must be one of {LOSSES}, got {loss!r}")
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
            raise ValueError(f"ContrastiveClip: batch['tokens'] must be (B * K, {self.context_length}) for this "
                             f"model's text_cfg.context_length, got {tuple(tokens.shape)}; give the data module the "
                             "same context_length")
        return self.clip(batch["image"], tokens)

    def _multi_positive(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> torch.Tensor:
        img, txt = out["image_features"], out["text_features"]
        for key in ("concepts", "caption_concepts"):
            if key not in batch:
                raise ValueError(f"ContrastiveClip: loss 'multi_positive' needs batch[{key!r}] (the data module's "
                                 "concepts of images and of captions); use loss 'clip' without them")
        present, named = batch["concepts"].bool(), batch["caption_concepts"].bool()
        if txt.shape[0] % img.shape[0] or named.shape != (txt.shape[0], present.shape[1]):
            raise ValueError(f"ContrastiveClip: {img.shape[0]} images need K captions each and caption_concepts "
                             f"(captions, C); got {txt.shape[0]} captions, caption_concepts {tuple(named.shape)}, "
                             f"concepts {tuple(present.shape)}")
        per_image = txt.shape[0] // img.shape[0]
        owner = torch.arange(txt.shape[0], device=txt.device) // per_image
        if self._trainer is not None and self.trainer.world_size > 1:  # the global batch, as ClipLoss gathers it
            from torch.distributed.nn import all_gather as all_gather_with_grad

            from lit_explain.distributed import all_gather

            world, local = self.trainer.world_size, img.shape[0]  # equal local batches, as ClipLoss assumes
            img = torch.cat(all_gather_with_grad(img))
            txt = torch.cat(all_gather_with_grad(txt))
            present, named = all_gather(present).flatten(0, 1), all_gather(named).flatten(0, 1)
            owner = (owner[None] + local * torch.arange(world, device=owner.device)[:, None]).flatten()
        positives = caption_positives(present, named, owner)
        return multi_positive_loss(img, txt, positives, out["logit_scale"])

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict]:
        out = self._forward(batch)
        if self.hparams.loss == "multi_positive":
            loss = self._multi_positive(batch, out)
        else:
            if out["text_features"].shape[0] != out["image_features"].shape[0]:
                raise ValueError(f"ContrastiveClip: loss 'clip' takes one caption per image, got "
                                 f"{out['text_features'].shape[0]} captions for {out['image_features'].shape[0]} "
                                 "images; use captions_per_step 1 or loss 'multi_positive'")
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
