"""LaViSE (Yang, Kim, Joo, CVPR 2022): explain filters with open-vocabulary words.

``fit`` trains an explainer that maps a masked feature map of a frozen network into a word-embedding space;
``predict`` names each filter of the explained layer with the words its attention-weighted features map to. The
pieces:

* the shared base :class:`~lit_explain.methods.base.LayerMethod`: model, layer, units, the activation store
  (the predict pass captures the layer into it), exact thresholds and top images from the stored maxima;
* network and head: :mod:`lit_explain.models.explainer_head` (frozen backbone cut at ``layer`` keeping the
  network's own pooling, head width from a dummy forward so ``layer3`` works);
* tensor math: :mod:`lit_explain.methods.lavise_ops` (loss, attention, word ranking);
* the per-(filter, image) results and their tables: :mod:`lit_explain.methods.lavise_filters`;
* outputs: the result (:class:`~lit_explain.results.MethodResult`: ``filters`` and ``pairs`` tables, pictures) goes
  to the CLI's result writer, and the recall@k callback (with baselines) reads its ``data``.

Data: any data module of the LaViSE contract (``data_modules._instances.InstanceDataModule``): ``label_names``,
``seen``, ``augment``, instance batches for fit, image batches for predict.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from lit_explain import distributed
from lit_explain.activations.bitmaps import unit_bitmaps
from lit_explain.concepts.vocabulary import read_word_list
from lit_explain.methods.base import SILENT_REASON, LayerMethod, check_tail_fraction
from lit_explain.methods.lavise_filters import FilterExplanations, filter_pictures, filter_rows, pair_rows
from lit_explain.methods.lavise_ops import (
    ATTENTION_MODES,
    cosine_hinge_rank_loss,
    filter_attention,
    rank_words,
    resize_masks,
)
from lit_explain.metrics.functional.recall import iou_ground_truth
from lit_explain.metrics.recall import RecallAtK
from lit_explain.models.explainer_head import CutBackbone, ExplainerHead
from lit_explain.results import MethodResult
from lit_explain.text.encoders import TextEncoder

__all__ = ["LaViSE", "RUN_OPTIONS"]

log = logging.getLogger(__name__)

#: Arguments that describe a run (what to explain, how, where to write), not the trained explainer. They are left
#: out of checkpoints' hyper-parameters, so ``predict --ckpt_path ...`` takes them from the command line and config
#: (LightningCLI otherwise lets a checkpoint's hyper-parameters override the config).
RUN_OPTIONS = ("cache_features", "cache_max_gb", "ks", "units", "random_units", "top_images", "top_words", "num_words",
               "attention", "word_source", "relevance_weighting", "quantile", "activation_dtype", "iou_threshold",
               "explain_batch_size", "cache_dir", "output_dir", "seed")


class LaViSE(LayerMethod):
    """The LaViSE explainer: trained with ``fit``, explains filters with ``predict``.

    **Fit.** For each training instance (an object with its mask and category words) the input is
    ``Feat(x) ⊙ M`` with the mask resized to the layer's grid, passed through the network's own pooling and the
    head; the loss is the cosine hinge-rank loss against the *seen* category embeddings (unseen categories are
    neither positives nor negatives, as if they did not exist in training). Validation logs the loss and the
    instance-level recall@k of the true category words among all K label words (seen and unseen separately).
    The backbone is frozen and always in eval mode. When the data module's ``augment`` is False the backbone's
    features are cached per training/validation sample in memory, so every epoch after the first skips the
    backbone (``cache_features``).

    **Predict.** Over the data module's image samples (the reference set), the layer's activations are captured
    into the activation store (the shared base); per filter the top ``top_images`` images by max activation and
    the threshold ``T_u`` above which the top ``quantile`` (0.005) of all its activations lie, exactly, from the
    stored values. Then for each (filter, top image) pair with a positive max activation:
    the explainer input by ``attention`` (below), the top words by cosine similarity over the word vocabulary,
    and the ground-truth categories (annotations with IoU > ``iou_threshold`` with ``upsample(F_u) > T_u``).
    Each filter's words are ranked by frequency over its images (optionally weighted by the image's max
    activation). Results land in :attr:`explanations`; the callbacks write them and compute recall@k.

    **Filter attention: paper vs code.** The paper (Eq. 2) weights each channel by a scalar,
    ``F_k^att = cos(F_u, F_k) · F_k``. The authors' code (``infer_filter.py``, method "projection") instead
    multiplies every channel *spatially* by the normalised filter map, ``F_k^att = F_k ⊙ F_u / ‖F_u‖₂``, which
    after the global average pool is ``⟨F_k, F_u⟩ / (‖F_u‖ h w)``; the MLRC reproduction noticed the difference
    and kept the code. The default here is the code's version (``attention_code``): every published number
    (paper and reproduction) was produced by it, it is spatial (it keeps *where* the filter fires, which is
    what the attention is meant to isolate), and it matches how the explainer was trained (features masked
    spatially). ``attention_paper`` is available for comparison, as are the baselines ``activation``,
    ``image`` and ``original``.

    **Checkpoints** hold the head, the label embeddings and names, and the hyper-parameters that define the
    explainer; the run options in :data:`RUN_OPTIONS` (units, top images/words, attention, vocabulary, output
    folder...) are left out, so ``predict --ckpt_path`` honours the command line and config for them.

    Args:
        model: model spec for :func:`~lit_explain.models.loading.load_model` (``torchvision:resnet18``,
            ``python:<module>:<factory>``, a file).
        weights: ``none``, ``default`` (library weights from the local cache) or a checkpoint path.
        model_kwargs: extra keyword arguments of the model factory (e.g. ``num_classes``).
        layer: dotted name of the explained layer (``layer4``, ``layer3``, ``features``).
        layer_classifier: top-level classification module the head replaces (``fc``, ``classifier``).
        text_encoder: the word-embedding space (``GloveEncoder``, ``SentenceTransformerEncoder``,
            ``OpenClipEncoder``; class_path configurable).
        input_size: side of the square input used for the dummy forward that sizes the head (named apart from
            the data modules' image_size so both can be logged as hyper-parameters).
        margin: hinge margin of the loss (1.0 in the paper).
        lr: Adam learning rate of the default optimiser (1e-4 in the authors' code). ``--optimizer`` /
            ``--lr_scheduler`` on the CLI replace the defaults.
        weight_decay: Adam weight decay.
        plateau_factor: ReduceLROnPlateau factor (on ``val/loss``).
        plateau_patience: ReduceLROnPlateau patience in epochs.
        dropout: head dropout (0.1).
        head_bn_eval: keep the head's BatchNorm in eval mode while training (the authors' ``set_bn_eval`` on the
            whole model); False trains them as usual BatchNorm.
        mask_resize: how instance masks are brought to the layer's grid: ``area`` (fraction of each cell
            covered; small objects survive), ``nearest`` (the authors' code), ``bilinear``.
        cache_features: cache the frozen backbone's features of training/validation samples in memory:
            None = when the data module's ``augment`` is False and the cache fits ``cache_max_gb``; True =
            always (an error if the data augments); False = never.
        cache_max_gb: largest in-memory feature cache (float16) allowed per split and process.
        ks: the recall@k cut-offs (validation and predict).
        units: filters (channels of ``layer``) to explain; None = all (or ``random_units``).
        random_units: when > 0 and ``units`` is None, explain this many filters drawn with ``seed``.
        top_images: p, top images per filter (25 in the authors' code; the paper: 5-25 work).
        top_words: s, words taken per image for the explanation (5).
        num_words: x, words in a filter's explanation (10).
        attention: explainer input per (filter, image): ``attention_code`` (default), ``attention_paper``,
            ``activation``, ``image``, ``original`` (see above).
        word_source: vocabulary of explanation words: ``labels`` (the data module's categories), ``encoder``
            (the text encoder's open vocabulary, e.g. GloVe's words or its ``vocabulary`` list), or the path of a
            word-list file (one word or phrase per line). Words without an embedding are skipped with a warning.
        relevance_weighting: weight each image's words by its max activation when ranking (the authors' code
            always repeated them ``int(max)`` times; the reproduction made it optional). Default: plain frequency.
        quantile: upper-tail fraction of the threshold, in (0, 0.5): 0.005 gives ``P(a > T_u) = 0.005`` (the
            99.5th percentile; the MLRC reproduction's 0.5th-percentile bug cannot be expressed).
        activation_dtype: storage dtype of the activation cache; float32 by default because the attention maps of
            the top images are computed in float32 and must be cut by thresholds of the same values.
        iou_threshold: ground-truth IoU threshold of recall@k (0.04).
        explain_batch_size: images (and pairs) per forward when explaining filters.
        cache_dir: folder of the activation cache.
        output_dir: where the predict callbacks write tables, pictures and recall.
        seed: seed of ``random_units``.
    """

    def __init__(
        self,
        model: str = "torchvision:resnet18",
        weights: str = "none",
        model_kwargs: dict[str, Any] | None = None,
        layer: str = "layer4",
        layer_classifier: str = "fc",
        text_encoder: TextEncoder | None = None,
        input_size: int = 224,
        margin: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        dropout: float = 0.1,
        head_bn_eval: bool = True,
        mask_resize: Literal["area", "nearest", "bilinear"] = "area",
        cache_features: bool | None = None,
        cache_max_gb: float = 4.0,
        ks: list[int] = [5, 10, 20],  # noqa: B006 - shown as the CLI default
        units: list[int] | None = None,
        random_units: int = 0,
        top_images: int = 25,
        top_words: int = 5,
        num_words: int = 10,
        attention: Literal["attention_code", "attention_paper", "activation", "image", "original"] = "attention_code",
        word_source: str = "labels",
        relevance_weighting: bool = False,
        quantile: float = 0.005,
        activation_dtype: str = "float32",
        iou_threshold: float = 0.04,
        explain_batch_size: int = 64,
        cache_dir: str = "cache",
        output_dir: str = "outputs/lavise",
        seed: int = 0,
    ) -> None:
        super().__init__(model, layer, weights=weights, model_kwargs=model_kwargs, units=units,
                         random_units=random_units, quantile=quantile, activation_dtype=activation_dtype,
                         cache_dir=cache_dir, output_dir=output_dir, top_images=top_images, seed=seed)
        self.save_hyperparameters()
        if not isinstance(self.hparams.get("text_encoder"), (dict, type(None))):
            # plain-Python construction: keep the object out of hparams.yaml / checkpoints (it may hold a model);
            # LaViSE.load_from_checkpoint(path, text_encoder=...) supplies it again
            self.hparams["text_encoder"] = None
        if text_encoder is None:
            raise ValueError("LaViSE needs a text_encoder (e.g. class_path: lit_explain.text.encoders."
                             "SentenceTransformerEncoder, or GloveEncoder with path: <glove.6B.300d.txt>)")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        check_tail_fraction(quantile)
        if mask_resize not in ("area", "nearest", "bilinear"):
            raise ValueError(f"mask_resize must be 'area', 'nearest' or 'bilinear', got {mask_resize!r}")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        for name, value, low in (("top_words", top_words, 1), ("num_words", num_words, 1),
                                 ("explain_batch_size", explain_batch_size, 1), ("input_size", input_size, 1),
                                 ("plateau_patience", plateau_patience, 0)):
            if int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        for name, value in (("margin", margin), ("lr", lr), ("cache_max_gb", cache_max_gb)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if float(weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        for name, value in (("dropout", dropout), ("iou_threshold", iou_threshold)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 < float(plateau_factor) < 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1), got {plateau_factor}")
        from lit_explain.models.loading import load_model

        self.text_encoder = text_encoder
        net = load_model(model, weights=weights, **(model_kwargs or {}))
        self.backbone = CutBackbone(net, layer, layer_classifier)
        (self.num_channels, *grid), in_dim = self.backbone.shapes(input_size)
        self.head = ExplainerHead(in_dim, text_encoder.dim, dropout=dropout, bn_eval=head_bn_eval)
        if units is not None:
            bad = [u for u in units if not 0 <= int(u) < self.num_channels]
            if bad:
                raise ValueError(f"units {bad[:10]} are not channels of {layer} (0..{self.num_channels - 1})")
        # label embeddings of the training vocabulary: sized in setup() from the data module (or the checkpoint)
        self.register_buffer("label_emb", torch.zeros(0, text_encoder.dim))
        self.register_buffer("label_seen", torch.zeros(0, dtype=torch.bool))
        self.label_names: list[str] = []
        self.val_recall = RecallAtK(ks)
        self.explanations: FilterExplanations | None = None
        self._caches: dict[str, _FeatureCache | None] = {}

    # ------------------------------------------------------------------ the shared base's network and features
    def network(self) -> torch.nn.Module:
        return self.backbone.model

    def features(self):
        return self.backbone.features

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "label_names"):
            raise RuntimeError("LaViSE needs a data module with label_names and seen (an InstanceDataModule: "
                               "VisualGenomeDataModule, CocoDataModule, ...)")
        names = list(dm.label_names)
        seen = torch.as_tensor(dm.seen, dtype=torch.bool)
        if seen.shape != (len(names),):
            raise ValueError(f"data module: seen has shape {tuple(seen.shape)}, expected ({len(names)},)")
        if stage == "fit" or self.label_emb.shape[0] == 0:
            self._set_labels(names, seen)
        self._dm_labels = (names, seen)

    def _set_labels(self, names: list[str], seen: torch.Tensor) -> None:
        emb = self._encode_labels(names)
        self.label_names = list(names)
        self.label_emb = emb.to(self.label_emb.device)
        self.label_seen = seen.to(self.label_emb.device)

    def _encode_labels(self, names: list[str]) -> torch.Tensor:
        emb, found = self.text_encoder.encode(names, return_found=True)
        if not bool(found.all()):
            missing = [n for n, f in zip(names, found) if not f]
            raise KeyError(f"{type(self.text_encoder).__name__} has no embedding for {len(missing)} label(s): "
                           f"{missing[:20]}. Filter the data module's vocabulary to words the encoder knows "
                           "(e.g. min_count / a label list) or use a sentence encoder.")
        return emb.float()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            for key in RUN_OPTIONS:
                hp.pop(key, None)

    def get_extra_state(self) -> dict[str, Any]:
        """The training label names travel with the state dict (checkpoints, ddp_spawn results)."""
        return {"label_names": list(self.label_names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.label_names = list(state.get("label_names", []))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the label buffers are sized by setup() for the current data (or empty before it): take the stored size
        for name in ("label_emb", "label_seen"):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ fit
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) (masked / attention-weighted) features → (B, D) word-space predictions."""
        return self.head(self.backbone.pool(feats))

    def _features(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        """The frozen backbone's features of a train/val batch, through the split's cache when there is one."""
        images = batch["image"]
        if split not in self._caches:  # first batch of the split: decide on the cache with the real shapes
            with torch.no_grad():
                feats = self.backbone.features(images)
            cache = self._caches[split] = self._make_cache(split, tuple(feats.shape[1:]))
            if cache is None:
                return feats
            index = batch["index"].cpu()
            cache.put(index, feats)
            return cache.get(index).to(images.device)
        cache = self._caches[split]
        if cache is None:
            with torch.no_grad():
                return self.backbone.features(images)
        index = batch["index"].cpu()
        hit = cache.filled[index]
        if not bool(hit.all()):
            miss = (~hit).nonzero().flatten()
            with torch.no_grad():
                cache.put(index[miss], self.backbone.features(images[miss.to(images.device)]))
        return cache.get(index).to(images.device)

    def _make_cache(self, split: str, shape: tuple[int, ...]) -> "_FeatureCache | None":
        hp = self.hparams
        augment = getattr(self.trainer.datamodule, "augment", None)
        if hp.cache_features is False:
            return None
        if augment is None or augment:
            if hp.cache_features:
                raise ValueError("cache_features=True but the data module augments its training images (or does not "
                                 "say: no `augment` property), so features differ every epoch. Set augment: false "
                                 "in the data module or cache_features: null/false.")
            return None
        loader = self.trainer.train_dataloader if split == "train" else self.trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        n = len(loader.dataset)
        size_gb = n * math.prod(shape) * 2 / 1e9
        if size_gb > hp.cache_max_gb:
            msg = (f"LaViSE: the {split} feature cache would need {size_gb:.1f} GB (> cache_max_gb="
                   f"{hp.cache_max_gb}); training without it")
            if hp.cache_features:
                raise ValueError(msg)
            rank_zero_warn(msg)
            return None
        log.info("LaViSE: caching %s features (%d samples x %s, %.2f GB)", split, n, shape, size_gb)
        return _FeatureCache(n, shape)

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self._features(batch, split)
        masks = resize_masks(batch["mask"].to(feats.dtype), tuple(feats.shape[-2:]), self.hparams.mask_resize)
        pred = self(feats * masks)
        seen = self.label_seen
        loss = cosine_hinge_rank_loss(pred, self.label_emb[seen], batch["target"][:, seen], self.hparams.margin)
        return loss, pred

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_recall.reset()  # fresh state tensors: under ddp_spawn the initial ones live in shared memory

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, pred = self._step(batch, "val")
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        sims = F.normalize(pred, dim=-1) @ F.normalize(self.label_emb, dim=-1).T
        k = min(max(self.hparams.ks), sims.shape[1])
        self.val_recall.update(sims.topk(k, dim=1).indices, batch["target"] > 0, self.label_seen)

    def on_validation_epoch_end(self) -> None:
        values = self.val_recall.compute()
        self.log_dict({f"val/{k}": v.float() for k, v in values.items() if k.startswith("recall")
                       and not torch.isnan(v)})
        self.val_recall.reset()

    def configure_optimizers(self):
        """Adam on the head + ReduceLROnPlateau on ``val/loss`` (the authors' setup); the CLI's ``--optimizer``
        and ``--lr_scheduler`` replace this method when given."""
        opt = torch.optim.Adam(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=self.hparams.plateau_factor,
                                                           patience=self.hparams.plateau_patience)
        # strict=False: runs without validation (limit_val_batches=0) only warn that val/loss is missing
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "strict": False}}

    # ------------------------------------------------------------------ predict: capture into the store
    def on_predict_start(self) -> None:
        super().on_predict_start()  # the activation store: cached entry, or a writer for this run's capture
        names, _ = self._dm_labels
        loader = self.trainer.predict_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        self._predict_dataset = loader.dataset
        self._predict_collate = loader.collate_fn
        self._vocab, self._vocab_emb = self._word_vocabulary(names)
        self._label_images = torch.zeros(len(names), dtype=torch.int64)
        self.explanations = None
        self.result = None

    def _word_vocabulary(self, label_names: list[str]) -> tuple[list[str], torch.Tensor]:
        src = self.hparams.word_source
        if src == "labels":
            words = list(label_names)
        elif src == "encoder":
            words = self.text_encoder.vocabulary()
            if not words:
                raise ValueError(f"word_source='encoder' but {type(self.text_encoder).__name__} has no vocabulary: "
                                 "give it one (vocabulary: <word list>) or use word_source: labels / a file")
        else:
            if not Path(src).is_file():
                raise FileNotFoundError(f"word_source {src!r} is neither 'labels', 'encoder' nor an existing word-list "
                                        "file (one word or phrase per line)")
            words = read_word_list(src)
        on_missing = self.text_encoder.on_missing
        self.text_encoder.on_missing = "skip"  # unknown explanation words are skipped (logged), never fatal
        try:
            emb, found = self.text_encoder.encode(words, return_found=True)
        finally:
            self.text_encoder.on_missing = on_missing
        if not bool(found.all()):
            dropped = [w for w, f in zip(words, found) if not f]
            rank_zero_warn(f"LaViSE: {len(dropped)} explanation word(s) have no embedding and are skipped: "
                           f"{dropped[:20]}")
            words = [w for w, f in zip(words, found) if f]
            emb = emb[found]
        if not words:
            raise ValueError(f"LaViSE: no explanation word has an embedding (word_source={src!r})")
        return words, emb.float().to(self.device)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The base captures the layer into the store; here the reference images of each category are counted
        (the frequency baseline of recall@k)."""
        super().predict_step(batch, batch_idx)
        labels = batch.get("mask_labels")
        if labels is not None:
            lab = labels.cpu()
            k = len(self._label_images)
            present = torch.zeros(lab.shape[0], k + 1, dtype=torch.bool)
            present.scatter_(1, torch.where(lab >= 0, lab, torch.full_like(lab, k)), True)
            self._label_images += present[:, :k].sum(0)
        return None

    # ------------------------------------------------------------------ predict: explaining the pairs
    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()  # commits the store entry
        hp = self.hparams
        names, seen = self._dm_labels
        units = self.select_units(self.entry.shape[1])
        thresholds = self.unit_thresholds(units)
        top_values, top_index = self.top_images(units, hp.top_images)
        label_images = distributed.all_sum(self._label_images)
        n_units, p = top_index.shape
        silent = self.silent_units(units, thresholds)  # nothing above the threshold: unlabelled, with a reason
        valid = (top_index >= 0) & (top_values > 0) & ~silent[:, None]  # the authors skip images with max <= 0
        images = torch.unique(top_index[valid])  # sorted
        world, rank = distributed.world_size(), distributed.rank()
        owner = torch.full((n_units, p), -1, dtype=torch.int64)
        pos = torch.searchsorted(images, top_index.clamp(min=0))
        owner[valid] = pos[valid] % world
        s_max = max(hp.top_words, max(hp.ks))
        s_max = min(s_max, len(self._vocab))
        grid = tuple(self.entry.shape[2:])
        words = torch.full((n_units, p, s_max), -1, dtype=torch.int64)
        scores = torch.zeros(n_units, p, s_max)
        gt = torch.zeros(n_units, p, len(names), dtype=torch.bool)
        maps = torch.zeros(n_units, p, *grid)
        mine = images[rank::world]
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for start in range(0, len(mine), hp.explain_batch_size):
                chunk = mine[start : start + hp.explain_batch_size]
                self._explain_chunk(chunk, top_index, valid, units, thresholds, words, scores, gt, maps, len(names))
        self.train(was_training)
        if world > 1:  # each pair from the rank that computed it
            sel = owner.clamp(min=0)
            u_i = torch.arange(n_units)[:, None].expand(-1, p)
            j_i = torch.arange(p)[None, :].expand(n_units, -1)
            words = distributed.all_gather(words)[sel, u_i, j_i]
            scores = distributed.all_gather(scores)[sel, u_i, j_i]
            gt = distributed.all_gather(gt)[sel, u_i, j_i]
            maps = distributed.all_gather(maps)[sel, u_i, j_i]
        weights = top_values.clamp(min=0) if hp.relevance_weighting else torch.ones_like(top_values)
        k_rank = min(hp.top_words, s_max)
        ranked = rank_words(words[..., :k_rank], scores[..., :k_rank], valid, weights, len(self._vocab), hp.num_words)
        lowered = {n.strip().lower(): i for i, n in enumerate(names)}
        word_labels = torch.tensor([lowered.get(w.strip().lower(), -1) for w in self._vocab], dtype=torch.int64)
        ex = self.explanations = FilterExplanations(
            units=units, thresholds=thresholds, top_index=top_index, top_values=top_values, valid=valid, owner=owner,
            words=words, word_scores=scores, ground_truth=gt, maps=maps, ranked=ranked, vocabulary=list(self._vocab),
            word_labels=word_labels, label_names=list(names), seen=seen.clone(), label_images=label_images,
            num_images=self.num_images, attention=hp.attention, quantile=hp.quantile, silent=silent,
            extra={"train_label_names": list(self.label_names), "layer": hp.layer, "model": hp.model},
        )
        rows = filter_rows(ex)
        meta = {**self.run_meta(), "attention": hp.attention, "quantile": hp.quantile, "word_source": hp.word_source,
                "top_images": p, "top_words": hp.top_words, "relevance_weighting": hp.relevance_weighting,
                "labels": [{"name": n, "seen": bool(s)} for n, s in zip(names, seen.tolist())],
                "train_labels": list(self.label_names)}
        lines = ["| filter | rank | word | score | seen |", "|---|---|---|---|---|"]
        lines += [f"| {r['filter']} | {r['rank']} | {r['word']} | {r['score']:.3f} | {r['seen']} |" for r in rows[:500]]
        self.result = MethodResult(
            tables={"filters": rows, "pairs": pair_rows(ex, hp.top_words)},
            meta=meta,
            pictures=filter_pictures(ex, self._predict_dataset),
            summary=self._summary(n_units, int(silent.sum())),
            markdown={"lavise/filters": "\n".join(lines)},
            data=ex,
        )

    def _summary(self, n_units: int, n_silent: int) -> str:
        """The run's closing lines: what was explained, what was left unlabelled, what the data module skipped."""
        hp = self.hparams
        lines = [f"LaViSE: explained {n_units} filters of {hp.layer}; results: {hp.output_dir}/filters.csv"]
        if n_silent:
            lines.append(f"{n_silent} filters unlabelled: {SILENT_REASON}")
        dm = self.trainer.datamodule if self._trainer is not None else None
        for name in ("skipped_annotations", "clipped_annotations"):
            counts = getattr(dm, name, None)
            if counts and any(counts.values()):
                what = name.split("_")[0]
                lines.append(f"annotations {what} by the data module: " + ", ".join(f"{k}: {v}" for k, v in
                                                                                 sorted(counts.items()) if v))
        return "\n".join(lines)

    def _explain_chunk(self, chunk, top_index, valid, units, thresholds, words, scores, gt, maps, num_labels) -> None:
        hp = self.hparams
        items = [self._predict_dataset[int(i)] for i in chunk]
        batch = self._predict_collate(items)
        got = torch.as_tensor(batch["index"]).cpu()
        if not torch.equal(got, chunk):
            raise RuntimeError(f"predict dataset item {int(chunk[0])} reports index {int(got[0])}: LaViSE needs "
                               "dataset[i]['index'] == i to fetch the top images again")
        x = batch["image"].to(self.device)
        feats = self.backbone.features(x)
        pair_u, pair_j = (valid & torch.isin(top_index, chunk)).nonzero(as_tuple=True)
        img_pos = torch.searchsorted(chunk, top_index[pair_u, pair_j])
        step = hp.explain_batch_size
        for s in range(0, len(pair_u), step):
            pu, pj, pi = pair_u[s : s + step], pair_j[s : s + step], img_pos[s : s + step]
            f = feats[pi.to(self.device)]
            fu = f[torch.arange(len(pu)), units[pu].to(self.device)]
            thr = thresholds[pu].to(device=self.device, dtype=f.dtype)
            if hp.attention == "image":
                region = unit_bitmaps(fu, x.shape[-2:], thr).view(len(pu), 1, *x.shape[-2:])
                inp = self.backbone.features(x[pi.to(self.device)] * region)
            else:
                inp = filter_attention(f, fu, thr, hp.attention)
            pred = self(inp)
            sims = F.normalize(pred, dim=-1) @ F.normalize(self._vocab_emb, dim=-1).T
            top = sims.topk(words.shape[-1], dim=1)
            words[pu, pj] = top.indices.cpu()
            scores[pu, pj] = top.values.float().cpu()
            maps[pu, pj] = fu.float().cpu()
            if "masks" in batch:  # in small groups: masks are (M, S, S) per pair at image resolution
                fu_cpu = fu.float().cpu()
                for g in range(0, len(pu), 16):
                    sl = slice(g, g + 16)
                    gt[pu[sl], pj[sl]] = iou_ground_truth(fu_cpu[sl], thresholds[pu[sl]], batch["masks"][pi[sl]],
                                                          batch["mask_labels"][pi[sl]], num_labels, hp.iou_threshold)


class _FeatureCache:
    """In-memory float16 features of one split, filled lazily by sample index (one per process).

    Nothing is written to disk, so nothing can be read back half-written; a new run starts empty.
    """

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.data = torch.zeros((n, *shape), dtype=torch.float16)
        self.filled = torch.zeros(n, dtype=torch.bool)

    def put(self, index: torch.Tensor, feats: torch.Tensor) -> None:
        if int(index.max()) >= len(self.filled):
            raise IndexError(f"sample index {int(index.max())} beyond the dataset size {len(self.filled)}")
        self.data[index] = feats.detach().to("cpu", torch.float16)
        self.filled[index] = True

    def get(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index].float()
