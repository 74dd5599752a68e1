"""HINT (Wang, Lee, Qi, CVPR 2022): which neurons of a layer are responsible for which concepts, at every level of
a concept hierarchy, checked by localising objects with the concept classifiers.

``fit`` trains, ``predict`` explains, ``test`` localises:

* **fit** (steps 1-3): for each training batch, guided backpropagation of every image's ground-truth logit to the
  probed layer in one backward pass (:func:`~lit_explain.attribution.guided_backprop.layer_saliency`); the
  responsible region = cells whose channel-L2 saliency, normalised (x − min) / (P99 − min), exceeds 0.5; every
  responsible cell plus ``background_per_positive`` background cells per positive, drawn with a hash of (seed,
  dataset index) (:mod:`lit_explain.methods.hint_ops`). The cells' C-dimensional feature columns train the linear
  classifiers of all K concepts of all levels at once (:class:`~lit_explain.models.concept_classifiers.
  ConceptClassifiers`, hinge or modified-Huber, L2 ``alpha``), each concept against its siblings' regions and the
  background. Pixels are computed in the training loop from each batch (the same cells every epoch, since the
  draws are keyed by dataset index) and never stored: nothing is held beyond one batch, never float64.
* **predict** (step 3, the explanation): the same pixels over the predict dataset, their features read back from
  the activation store (float16 by default), give neuron Shapley values per (concept, unit): exact linear SHAP
  mean |phi| = |w| · E|x − mu| over each concept's labelled pixels by default, or a tree surrogate with
  TreeSHAP (:mod:`lit_explain.attribution.shapley`). The table ``hint_neurons`` (unit, concept, level, shapley,
  rank, responsible, collaborative, multimodal) and a per-concept summary ``hint_concepts`` go to the writer.
* **test** (step 4, WSOL): the classifier of ``wsol_concept`` as a 1x1 convolution gives a concept map; its
  positive pixels (upsampled to the image) give the box, all of them (HINT) or the largest component; a CAM
  baseline of the same model is computed in the same pass. The metrics callback (``callbacks/wsol.py``) sums
  GT-known Loc, Top-1 Loc and MaxBoxAccV2 over processes and writes ``wsol.csv`` / ``wsol.json``.

1 and N processes give identical tables: pixel draws depend only on dataset indices, the cells of every rank are
gathered and put in one canonical order, and every rank computes the Shapley sums over all of them in that order;
WSOL metrics are integer sums (padding images that DDP's sampler repeats are dropped).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from lit_explain import distributed
from lit_explain.attribution.guided_backprop import layer_saliency
from lit_explain.attribution.shapley import (linear_shap_scores, masked_abs_deviation, masked_mean,
                                             tree_shap_scores)
from lit_explain.methods.base import LayerMethod
from lit_explain.methods.hint_concepts import HIERARCHY_SUFFIXES, ConceptPlan, load_hierarchy, plan_concepts
from lit_explain.methods.hint_ops import (RegionPixels, channel_norm, class_activation_maps, concept_targets,
                                          minmax_normalize, neuron_rows, responsible_mask, sample_region_pixels,
                                          upsample_maps)
from lit_explain.models.concept_classifiers import LOSSES, ConceptClassifiers, per_concept_accuracy
from lit_explain.results import MethodResult, Picture, ReportView

__all__ = ["HINT", "SALIENCY_MODES", "SHAPLEY_MODES", "BOX_MODES", "GT_MODES", "RUN_OPTIONS"]

log = logging.getLogger(__name__)

SALIENCY_MODES = ("guided", "vanilla")
SHAPLEY_MODES = ("linear", "tree")
BOX_MODES = ("all", "largest")
GT_MODES = ("max", "union")
#: Arguments that describe a run, not the trained classifiers (kept out of checkpoints' hyper-parameters).
RUN_OPTIONS = ("wsol_concept", "shapley", "tree_max_pixels", "tree_max_depth", "tree_rounds", "responsible_k",
               "box_mode", "gt_mode", "iou_threshold", "cam_layer", "cam_classifier", "cam_threshold", "units",
               "random_units", "quantile", "top_images", "cache_dir", "output_dir")


class HINT(LayerMethod):
    """HINT on one layer of one classifier (see the module docstring).

    Args:
        model, layer, weights, model_kwargs, units, random_units, quantile, activation_dtype, cache_dir, output_dir,
            top_images, seed: see :class:`~lit_explain.methods.base.LayerMethod` (``units`` restricts the rows of
            the neuron table; ranks are over all units; ``activation_dtype`` is also the dtype of the sampled pixels).
        hierarchy: a hierarchy file (ILSVRC2012 ``meta.mat``, ``node<TAB>parent`` ``.tsv``/``.txt``, or ``.json``);
            None takes the data module's ``hierarchy()`` (the synthetic world declares one). Its leaves must include
            every class of the data.
        concepts: the concepts to explain (node ids); None: every node between the roots and the classes.
        wsol_concept: the concept whose classifier localises objects in ``test`` (class-agnostic, as HINT's
            "whole"/"animal"); None: the explained concept with the most classes below it.
        saliency: ``guided`` (guided backpropagation, HINT's default) or ``vanilla`` gradients.
        region_threshold: responsible-region threshold on the normalised saliency, in [0, 1) (HINT: 0.5).
        region_quantile: the normalising upper quantile, in (0, 1] (HINT: 0.99).
        background_per_positive: background cells drawn per responsible cell, >= 0 (HINT draws |positives| / K
            for a group of K concepts; 0.5 suits groups of two).
        loss: ``hinge`` (linear SVM) or ``modified_huber``.
        alpha: L2 strength of each classifier, >= 0 (HINT: 0.01).
        lr: Adam learning rate of the classifiers, > 0.
        shapley: ``linear`` (exact linear SHAP, streaming) or ``tree`` (gradient-boosted surrogate + TreeSHAP).
        tree_max_pixels: pixels per concept the tree surrogate is fitted and explained on (seeded sample), >= 10.
        tree_max_depth, tree_rounds: the surrogate's depth and boosting rounds, >= 1 (HINT: 10, 50).
        responsible_k: units in each concept's responsible set, >= 1 (HINT plots the top 10; capped at the layer's
            unit count).
        box_mode: ``all`` (box of every positive pixel, HINT) or ``largest`` (largest connected component).
        gt_mode: ``max`` (best single GT box) or ``union`` (union of the GT boxes, HINT's notebooks).
        iou_threshold: GT-known / Top-1 Loc IoU threshold, in (0, 1] (0.5).
        cam_layer: the layer before global pooling for the CAM baseline (None: ``layer``).
        cam_classifier: the linear layer after that pooling (its (classes, C) weight makes the CAM).
        cam_threshold: CAM box threshold on the min-max normalised map, in (0, 1) (0.2 is usual).
    """

    def __init__(
        self,
        model: str = "python:lit_explain.models.synthetic_cnn:synthetic_cnn",
        layer: str = "layer4",
        weights: str = "none",
        model_kwargs: dict[str, Any] | None = None,
        hierarchy: str | None = None,
        concepts: list[str] | None = None,
        wsol_concept: str | None = None,
        saliency: Literal["guided", "vanilla"] = "guided",
        region_threshold: float = 0.5,
        region_quantile: float = 0.99,
        background_per_positive: float = 0.5,
        loss: Literal["hinge", "modified_huber"] = "hinge",
        alpha: float = 0.01,
        lr: float = 0.01,
        shapley: Literal["linear", "tree"] = "linear",
        tree_max_pixels: int = 2000,
        tree_max_depth: int = 10,
        tree_rounds: int = 50,
        responsible_k: int = 10,
        box_mode: Literal["all", "largest"] = "all",
        gt_mode: Literal["max", "union"] = "max",
        iou_threshold: float = 0.5,
        cam_layer: str | None = None,
        cam_classifier: str = "fc",
        cam_threshold: float = 0.2,
        output_dir: str = "outputs/hint",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, weights=weights, model_kwargs=model_kwargs, output_dir=output_dir,
                         **kwargs)  # the base validates and records every argument
        if hierarchy is not None and Path(str(hierarchy)).suffix.lower() not in HIERARCHY_SUFFIXES:
            raise ValueError(f"hierarchy must be a file ending in one of {HIERARCHY_SUFFIXES} (meta.mat, 'node<TAB>"
                             f"parent' TSV, JSON) or null for the data module's own hierarchy; got {hierarchy!r}")
        if concepts is not None and (not concepts or not all(isinstance(c, str) and c for c in concepts)):
            raise ValueError(f"concepts must be a non-empty list of node ids or null (every node), got {concepts!r}")
        choices = (("saliency", saliency, SALIENCY_MODES), ("loss", loss, LOSSES), ("shapley", shapley, SHAPLEY_MODES),
                   ("box_mode", box_mode, BOX_MODES), ("gt_mode", gt_mode, GT_MODES))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        ranges = (("region_threshold", region_threshold, 0.0, True, 1.0, False),
                  ("region_quantile", region_quantile, 0.0, False, 1.0, True),
                  ("iou_threshold", iou_threshold, 0.0, False, 1.0, True),
                  ("cam_threshold", cam_threshold, 0.0, False, 1.0, False))
        for name, value, lo, lo_in, hi, hi_in in ranges:
            v = float(value)
            if not ((v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)):
                raise ValueError(f"{name} must be in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}, "
                                 f"got {value}")
        for name, value in (("background_per_positive", background_per_positive), ("alpha", alpha)):
            if not float(value) >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for name, value, low in (("tree_max_pixels", tree_max_pixels, 10), ("tree_max_depth", tree_max_depth, 1),
                                 ("tree_rounds", tree_rounds, 1), ("responsible_k", responsible_k, 1)):
            if int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if cam_layer is not None and (not isinstance(cam_layer, str) or not cam_layer.strip()):
            raise ValueError(f"cam_layer must be a dotted layer name or null (= layer), got {cam_layer!r}")
        if not isinstance(cam_classifier, str) or not cam_classifier.strip():
            raise ValueError(f"cam_classifier must be the dotted name of the model's final linear layer, got "
                             f"{cam_classifier!r}")
        #: the trained concept classifiers (built in setup once the layer's width and the concepts are known)
        self.classifiers: ConceptClassifiers | None = None
        self.plan: ConceptPlan | None = None
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._counts = torch.zeros(2, 0, dtype=torch.int64)

    # ------------------------------------------------------------------ the network, kept in eval mode
    def train(self, mode: bool = True) -> "HINT":
        """The probed network stays in eval mode (batch norm in training mode would mix the images of a batch and
        make the saliency wrong); only the classifiers train."""
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    def _layer(self, name: str) -> torch.nn.Module:
        from lit_explain.models.probe import LayerProbe

        return LayerProbe.resolve(self.network(), name)

    # ------------------------------------------------------------------ setup: hierarchy, plan, classifiers
    def _datamodule(self) -> Any:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "classes"):
            raise ValueError("HINT needs a data module with `classes` (the class id of each label, e.g. a WSOL data "
                             "module: data_modules.imagenet / cub / voc / synthetic_boxes)")
        return dm

    def make_plan(self, dm: Any) -> ConceptPlan:
        """The concept plan of this run: the hierarchy (file or ``dm.hierarchy()``) over the data's classes."""
        hp = self.hparams
        if hp.hierarchy is not None:
            hierarchy = load_hierarchy(hp.hierarchy)
        elif hasattr(dm, "hierarchy"):
            hierarchy = dm.hierarchy()
        else:
            raise ValueError(f"HINT: no hierarchy: set `hierarchy` to a meta.mat / TSV / JSON file ({type(dm).__name__} "
                             "declares none)")
        return plan_concepts(hierarchy, list(dm.classes), hp.concepts)

    @staticmethod
    def _loader_dataset(dm: Any, stage: str) -> Any:
        getter = {"fit": "train_dataloader", "predict": "predict_dataloader", "test": "test_dataloader",
                  "validate": "val_dataloader"}[stage]
        return getattr(dm, getter)().dataset

    @staticmethod
    def _labels_of(dataset: Any) -> np.ndarray | None:
        """Every image's class without reading images (``records[i].label`` or ``targets``), or None."""
        if hasattr(dataset, "records"):
            return np.asarray([int(r.label) for r in dataset.records], dtype=np.int64)
        if hasattr(dataset, "targets"):
            return np.asarray(dataset.targets, dtype=np.int64)
        return None

    def _check_images(self, plan: ConceptPlan, dataset: Any, dm: Any) -> None:
        """Every concept needs images of at least one of its classes, else its classifier has no positive."""
        labels = self._labels_of(dataset)
        if labels is None:
            return
        counts = np.bincount(labels[(labels >= 0) & (labels < len(plan.classes))], minlength=len(plan.classes))
        has = plan.membership.numpy() & (counts > 0)[None]
        empty = [k for k in range(len(plan.concepts)) if not has[k].any()]
        if empty:
            k = empty[0]
            cls = [plan.classes[l] for l in np.flatnonzero(plan.membership[k].numpy())]
            raise ValueError(f"HINT: concept {plan.concepts[k]!r} (and {len(empty) - 1} more) has no training image: "
                             f"its classes {cls[:5]} have no image in {getattr(dm, 'root', type(dm).__name__)}; add "
                             "images of these classes or leave the concept out (`concepts`)")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage not in ("fit", "predict"):
            self.network()
            return  # test: the classifiers come from fit in this process or from the checkpoint
        dm = self._datamodule()
        plan = self.make_plan(dm)
        dataset = self._loader_dataset(dm, stage)
        if len(dataset) == 0:
            raise ValueError(f"HINT: the {stage} dataset of {type(dm).__name__} has no images")
        if stage == "fit":
            self._check_images(plan, dataset, dm)
        samples = [dataset[i] for i in range(min(4, len(dataset)))]
        x = torch.stack([s["image"] for s in samples]).to(self.device)
        y = torch.as_tensor([int(s["label"]) for s in samples], device=self.device)
        # a dry run on a few images: a layer without gradient path, a model without nn.ReLU or a bad label fails
        # here, before any training step, checkpoint or table
        sal = layer_saliency(self.network().to(self.device), self._layer(self.layer_name), x, y,
                             guided=self.hparams.saliency == "guided", layer_name=self.layer_name)
        g = channel_norm(sal.saliency).flatten(1)
        if g.shape[1] > 1 and bool(((g.amax(1) - g.amin(1)) <= 1e-6 * g.amax(1).clamp(min=1e-30)).all()):
            raise ValueError(f"HINT: the saliency at layer {self.layer_name!r} is the same at every cell of the grid "
                             "(a layer that feeds global average pooling + a linear head directly gets a constant "
                             "gradient), so no cell stands out as a responsible region; probe an earlier layer (e.g. "
                             "layer3 instead of layer4 of a ResNet: HINT uses layer3.5 of ResNet-50)")
        channels = sal.activations.shape[1]
        self.plan = plan
        clf = self.classifiers
        if clf is None or clf.concepts != plan.concepts or clf.weight.shape[1] != channels:
            if stage == "predict" and bool(self.fitted):
                raise ValueError(f"HINT: the trained classifiers are for concepts {clf.concepts[:5]}... over "
                                 f"{clf.weight.shape[1]} units, but this run explains {plan.concepts[:5]}... over "
                                 f"{channels} units; use the same hierarchy, concepts and layer as in fit")
            self.classifiers = ConceptClassifiers(channels, plan.concepts, self.hparams.loss, self.hparams.alpha).to(self.device)
            self.fitted.fill_(False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the run options (:data:`RUN_OPTIONS`: how to explain, localise and where to write) out of the
        checkpoint's hyper-parameters: LightningCLI lets a checkpoint's hyper-parameters override the config, so
        ``predict``/``test --ckpt_path`` would otherwise ignore e.g. ``--model.init_args.gt_mode union``."""
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            for key in RUN_OPTIONS:
                hp.pop(key, None)

    def get_extra_state(self) -> dict[str, Any]:
        """The classifiers' concept names travel with the state dict (checkpoints, ddp_spawn results)."""
        return {"concepts": None if self.classifiers is None else list(self.classifiers.concepts)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._stored_concepts = state.get("concepts")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        weight = state_dict.get(prefix + "classifiers.weight")
        extra = state_dict.get(prefix + "_extra_state") or {}
        if weight is not None and (self.classifiers is None or self.classifiers.weight.shape != weight.shape):
            names = extra.get("concepts") or [f"concept_{k}" for k in range(weight.shape[0])]
            self.classifiers = ConceptClassifiers(weight.shape[1], names, self.hparams.loss,
                                                  self.hparams.alpha).to(self.device)
        if self.net is None and any(k.startswith(prefix + "net.") for k in state_dict):
            self.network()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if extra.get("concepts") and self.classifiers is not None:
            self.classifiers.concepts = list(extra["concepts"])

    # ------------------------------------------------------------------ steps 1-2: the pixels of a batch
    def region_pixels(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> RegionPixels:
        """Responsible-region and background cells of a batch (one forward + one guided backward for the batch).

        Args:
            images: (B, 3, H, W); labels: (B,) ground-truth classes (the logits back-propagated); index: (B,)
                dataset indices (keys of the background draws).
        """
        hp = self.hparams
        sal = layer_saliency(self.network(), self._layer(self.layer_name), images, labels,
                             guided=hp.saliency == "guided", layer_name=self.layer_name)
        pos = responsible_mask(sal.saliency, hp.region_threshold, hp.region_quantile)
        dtype = torch.float16 if hp.activation_dtype == "float16" else torch.float32
        return sample_region_pixels(sal.activations, pos, labels, hp.background_per_positive, index, hp.seed, dtype)

    # ------------------------------------------------------------------ fit: all concept classifiers at once
    def on_train_epoch_start(self) -> None:
        self._counts = torch.zeros(2, len(self.plan.concepts), dtype=torch.int64)  # per concept: correct, labelled

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        plan = self.plan
        px = self.region_pixels(batch["image"], batch["label"], batch["index"])
        dev = self.device
        targets = concept_targets(px.label.to(dev), px.positive.to(dev), plan.membership.to(dev), plan.group.to(dev))
        scores = self.classifiers(px.features.float())
        loss, _ = self.classifiers.loss(px.features.float(), targets)
        correct, labelled = per_concept_accuracy(scores.detach(), targets)
        counts = torch.stack([correct, labelled]).cpu()
        self._counts = self._counts + counts
        B = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=B, sync_dist=True)
        self.log("train/pixels", float(targets.shape[0]), on_step=False, on_epoch=True, batch_size=B, reduce_fx="sum",
                 sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.fitted.fill_(True)
        counts = self._counts
        counts = distributed.all_sum(counts.to(device=self.device, dtype=torch.int64)).cpu()  # (2, K): exact sums
        levels = sorted(set(self.plan.levels))
        for lv in levels:
            idx = [k for k, x in enumerate(self.plan.levels) if x == lv]
            c, n = counts[0, idx].sum(), counts[1, idx].sum()
            if n > 0:
                self.log(f"train/acc/{lv}", c.double() / n, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self):
        """Adam on the classifiers' weights and biases (the network is frozen)."""
        return torch.optim.Adam(self.classifiers.parameters(), lr=self.hparams.lr)

    def _require_fitted(self, stage: str) -> None:
        if self.classifiers is None or not bool(self.fitted):
            raise ValueError(f"HINT {stage}: the concept classifiers are not trained; run `fit` first (same process) "
                             "or pass --ckpt_path <a HINT fit checkpoint>")

    # ------------------------------------------------------------------ predict: neuron Shapley values
    def on_predict_start(self) -> None:
        self._require_fitted("predict")
        super().on_predict_start()
        self._cells: list[tuple[torch.Tensor, ...]] = []
        self.result = None

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        super().predict_step(batch, batch_idx)  # the layer's activations into the store (unless cached)
        with torch.inference_mode(False):
            images, labels = batch["image"].clone(), batch["label"].clone()
            px = self.region_pixels(images, labels, batch["index"].clone())
        self._cells.append((px.image, px.cell, px.positive, px.label))
        return None

    def predict_dataset(self) -> Any:
        """The predict dataset; a WSOL box dataset (records with image paths but no ``image_paths()``) is seen
        through :class:`_RecordPaths`, so the activation cache can key on its files."""
        ds = super().predict_dataset()
        if hasattr(ds, "fingerprint") or hasattr(ds, "image_paths") or not hasattr(ds, "records"):
            return ds
        return _RecordPaths(ds)

    def _all_cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every rank's sampled cells in one canonical order: by image, its positives (row-major) then its
        background draws (draw order), the same order one process produces."""
        parts = list(zip(*self._cells)) if self._cells else [[torch.zeros(0, dtype=torch.int64)]] * 4
        mine = torch.stack([torch.cat(list(p)).to(torch.int64) for p in parts]).numpy()  # (4, n): image, cell, pos, label
        # as picklable objects (any backend, CPU or GPU), concatenated in rank order
        image, cell, pos, label = torch.from_numpy(np.concatenate(self.gather_rows([mine]), axis=1))
        pos = pos.bool()
        key = image * 2 + (~pos).to(torch.int64)
        order = torch.sort(key, stable=True).indices
        return image[order], cell[order], pos[order], label[order]

    def _features_in_chunks(self, image: torch.Tensor, cell: torch.Tensor, max_values: int = 1 << 24):
        """Yield (start, stop, (stop − start, C) float32 features) of consecutive pixels, read back from the
        activation store a block of images at a time (``image`` sorted ascending)."""
        acts = self.entry.acts
        _, C, h, w = acts.shape
        if not len(image):
            return
        per = max(1, max_values // (C * h * w))
        uniq = torch.unique(image)
        bounds = torch.searchsorted(image, uniq).tolist() + [len(image)]
        for j in range(0, len(uniq), per):
            ids = uniq[j:j + per]
            s, e = bounds[j], bounds[min(j + per, len(uniq))]
            block = torch.from_numpy(np.asarray(acts[ids.numpy()]))  # (m, C, h, w)
            local = torch.searchsorted(ids, image[s:e])
            yield s, e, block.flatten(2)[local, :, cell[s:e]].float()

    def _features_at(self, image: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(image, stable=True)
        out = torch.empty(len(image), self.entry.acts.shape[1])
        for s, e, x in self._features_in_chunks(image[order], cell[order]):
            out[order[s:e]] = x
        return out

    def _linear_scores(self, image, cell, targets) -> torch.Tensor:
        """(K, C) float64 exact linear-SHAP mean |phi| (two streaming passes: means, then absolute deviations)."""
        K, C = self.classifiers.weight.shape
        sums = torch.zeros(K, C, dtype=torch.float64)
        count = torch.zeros(K, dtype=torch.float64)
        for s, e, x in self._features_in_chunks(image, cell):
            a, n = masked_mean(x, targets[s:e])
            sums += a
            count += n
        mean = sums / count.clamp(min=1)[:, None]
        dev = torch.zeros(K, C, dtype=torch.float64)
        chunk = max(1, (1 << 22) // (K * C))
        for s, e, x in self._features_in_chunks(image, cell):
            dev += masked_abs_deviation(x, targets[s:e], mean, chunk=chunk)
        return linear_shap_scores(self.classifiers.weight.detach().cpu(), dev, count)

    def _tree_scores(self, image, cell, targets) -> torch.Tensor:
        """(K, C) mean |TreeSHAP| of a surrogate per concept, on a seeded sample of its labelled pixels; concepts
        are shared out over ranks (each is computed from the same data whatever the rank)."""
        hp = self.hparams
        K, C = self.classifiers.weight.shape
        mine = []
        for k in self.shard(list(range(K))):
            valid = torch.nonzero(targets[:, k] >= 0).flatten()
            if len(valid) > hp.tree_max_pixels:
                g = torch.Generator().manual_seed(int(hp.seed) * 1_000_003 + k)
                valid = torch.sort(valid[torch.randperm(len(valid), generator=g)[: hp.tree_max_pixels]]).values
            y = (targets[valid, k] > 0).numpy().astype(int)
            if len(np.unique(y)) < 2:
                log.warning("HINT tree SHAP: concept %r has %s; its scores are 0", self.classifiers.concepts[k],
                            "no labelled pixel" if not len(y) else "one class only")
                mine.append((k, np.zeros(C)))
                continue
            x = self._features_at(image[valid], cell[valid]).numpy()
            mine.append((k, tree_shap_scores(x, y, hp.tree_max_depth, hp.tree_rounds, 1.0, hp.seed)))
        out = torch.zeros(K, C, dtype=torch.float64)
        for k, v in self.gather_rows(mine):
            out[k] = torch.as_tensor(v, dtype=torch.float64)
        return out

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        hp, plan = self.hparams, self.plan
        image, cell, pos, label = self._all_cells()
        self._cells = []
        targets = concept_targets(label, pos, plan.membership, plan.group)  # (n, K) int8
        scores = (self._linear_scores if hp.shapley == "linear" else self._tree_scores)(image, cell, targets)
        C = scores.shape[1]
        rows = neuron_rows(scores, plan.concepts, plan.levels, plan.branches, k=min(int(hp.responsible_k), C))
        keep = set(self.select_units(C).tolist())
        rows = [r for r in rows if r["unit"] in keep]
        positives = ((targets > 0).sum(0)).tolist()
        labelled = ((targets >= 0).sum(0)).tolist()
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        concept_rows = [{"concept": c, "name": n, "level": lv, "branch": br, "classes": int(plan.membership[k].sum()),
                         "positive_pixels": int(positives[k]), "labelled_pixels": int(labelled[k]),
                         "top_units": " ".join(str(u) for u in order[k, : min(int(hp.responsible_k), C)].tolist())}
                        for k, (c, n, lv, br) in enumerate(zip(plan.concepts, plan.names, plan.levels, plan.branches))]
        collab = sorted({r["unit"] for r in rows if r["collaborative"]})
        multi = sorted({r["unit"] for r in rows if r["multimodal"]})
        meta = {**self.run_meta(), "shapley": hp.shapley, "pixels": int(len(image)),
                "positive_pixels": int(pos.sum()), "concepts": plan.concepts, "levels": plan.levels,
                "branches": plan.branches, "classes": plan.classes}
        summary = (f"HINT ({hp.shapley} SHAP) on {self.layer_name}: {len(plan.concepts)} concepts, {C} units, "
                   f"{len(image)} pixels ({int(pos.sum())} responsible) from {self.num_images} images; "
                   f"{len(collab)} collaborative and {len(multi)} multimodal units. Top unit per concept: "
                   + ", ".join(f"{c}={order[k, 0].item()}" for k, c in enumerate(plan.concepts[:12]))
                   + (" ..." if len(plan.concepts) > 12 else ""))
        self.shapley_scores = scores
        shown = plan.concepts[:6]
        pictures = [Picture("concept_maps", self._draw_concept_maps, tag="hint/concept_maps")]
        flags = ("responsible", "collaborative", "multimodal")  # report.html: a unit's concepts, a concept's units
        report = (ReportView("units", "hint_neurons", group="unit", item="concept", order="-shapley", flags=flags,
                             only=("responsible",), links="concepts"),
                  ReportView("concepts", "hint_neurons", group="concept", item="unit", title="name", order="rank",
                             flags=flags, only=("responsible",), details="hint_concepts",
                             summary=("level", "branch", "top_units"), links="units"))
        self.result = MethodResult(tables={"hint_neurons": rows, "hint_concepts": concept_rows}, meta=meta,
                                   summary=summary, pictures=pictures, report=report,
                                   scalars={"hint/collaborative_units": float(len(collab)),
                                            "hint/multimodal_units": float(len(multi))},
                                   markdown={"hint/concept_maps": "Each row: the image, then the maps of "
                                                                  + ", ".join(shown) + " (red: classifier says yes)",
                                             "hint/concepts": "\n".join(
                                       f"* **{r['concept']}** ({r['level']}): units {r['top_units']}"
                                       for r in concept_rows)},
                                   data=scores)

    def _draw_concept_maps(self, images: int = 4, concepts: int = 6) -> Any:
        """The first ``images`` predict images beside the maps of the first ``concepts`` concepts (a PIL image)."""
        from lit_explain.methods.hint_pictures import concept_map_grid

        ds = self.predict_dataset()
        idx = list(range(min(int(images), len(ds))))
        if not idx or self.entry is None:
            return None
        x = torch.stack([ds[i]["image"] for i in idx])
        feats = torch.from_numpy(np.asarray(self.entry.acts[idx])).to(self.classifiers.weight.device)
        with torch.no_grad():
            maps = self.classifiers.concept_maps(feats.float())[:, : int(concepts)].cpu()
        return concept_map_grid(x, maps)

    # ------------------------------------------------------------------ test: WSOL maps (the callback scores them)
    def wsol_index(self) -> int:
        """The head of :attr:`classifiers` that localises (``wsol_concept`` or the one with the most classes)."""
        names = list(self.classifiers.concepts)
        want = self.hparams.wsol_concept
        if want is not None:
            if want not in names:
                raise ValueError(f"wsol_concept {want!r} is not one of the trained concepts {names[:10]}"
                                 f"{' ...' if len(names) > 10 else ''}; pick one of them")
            return names.index(want)
        if self.plan is not None and self.plan.concepts == names:
            return int(torch.argmax(self.plan.membership.sum(1)))
        return 0

    def on_test_start(self) -> None:
        from lit_explain.models.probe import LayerProbe

        self._require_fitted("test")
        hp = self.hparams
        self._wsol_k = self.wsol_index()
        cam_layer = hp.cam_layer or self.layer_name
        head = self._layer(hp.cam_classifier)
        w = getattr(head, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w.flatten(1)  # a 1x1 convolution head is a linear layer applied per cell
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            raise ValueError(f"cam_classifier {hp.cam_classifier!r} is a {type(head).__name__}, not a linear layer "
                             "(or 1x1 convolution) with a (classes, C) weight; name the model's final nn.Linear (e.g. "
                             "fc, classifier.6)")
        self._cam_weight = w.detach()
        self._test_probe = LayerProbe(self.network(), list(dict.fromkeys([self.layer_name, cam_layer])),
                                      stop_early=False)
        self._cam_layer = cam_layer
        self._test_seen = 0

    def teardown(self, stage: str) -> None:
        """Drop what a run leaves that cannot (or should not) be pickled for a later ``ddp_spawn`` run: the probes'
        forward hooks and the capture functions (local functions), the activation entry (memory maps would be
        copied into the pickle). The result and the classifiers stay."""
        for name in ("probe", "_test_probe"):
            probe = getattr(self, name, None)
            if probe is not None:
                probe.close()
                setattr(self, name, None)
        self._captures, self._writers = [], {}
        self.entry = self.random_entry = None
        if self.result is not None:
            self.result.pictures = []  # drawn by the writer already; bound methods need not travel
        super().teardown(stage)

    def _not_padding(self, n: int) -> torch.Tensor:
        """(n,) bool: False for the images DDP's DistributedSampler repeats to even out the ranks (position
        j·W + rank >= dataset length), so every image is scored exactly once whatever the number of processes."""
        loader = self.trainer.test_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        sampler = getattr(loader, "sampler", None)
        keep = torch.ones(n, dtype=torch.bool)
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            j = self._test_seen + torch.arange(n)
            keep = j * sampler.num_replicas + sampler.rank < len(sampler.dataset)
        self._test_seen += n
        return keep

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """Concept and CAM maps of a batch for the WSOL callback: ``{"maps": {name: (mask (B, H, W) bool, scores
        (B, H, W) in [0, 1])}, "boxes", "preds", "target", "keep"}``."""
        hp = self.hparams
        images, labels = batch["image"], batch["label"]
        with torch.no_grad():
            logits, grids = self._test_probe.probe_with_output(images)
        size = tuple(images.shape[-2:])
        concept = self.classifiers.concept_maps(grids[self.layer_name].float())[:, self._wsol_k]
        up = upsample_maps(concept, size)
        cam_feats = grids[self._cam_layer].float()
        if cam_feats.shape[1] != self._cam_weight.shape[1]:
            raise ValueError(f"CAM: layer {self._cam_layer!r} has {cam_feats.shape[1]} channels but "
                             f"{hp.cam_classifier!r} takes {self._cam_weight.shape[1]}; set cam_layer to the layer "
                             "right before the global pooling")
        cam = minmax_normalize(upsample_maps(class_activation_maps(cam_feats, self._cam_weight.float(), labels), size))
        return {"maps": {"hint": (up > 0, minmax_normalize(up)), "cam": (cam >= hp.cam_threshold, cam)},
                "boxes": batch["boxes"], "preds": logits.argmax(1), "target": labels,
                "keep": self._not_padding(images.shape[0])}


class _RecordPaths:
    """A dataset of :class:`BoxRecord`-like records (``records[i].path``) with ``image_paths()`` added, so the
    activation cache keys on its image files (with their sizes and modification times) and its transform."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.transform = getattr(dataset, "transform", None)

    def image_paths(self) -> list[str]:
        return [str(r.path) for r in self.dataset.records]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]
