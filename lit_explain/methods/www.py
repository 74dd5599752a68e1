"""WWW (Ahn, Kim, Kim, CVPR 2024): what a neuron detects, where, and why it matters, on the shared LayerMethod.

One ``predict`` run over a labelled dataset (the probe set) gives, for the units of ``layer``:

* **why (the Shapley prior).** Class-wise importance ``Phi[c, k] = mean_{x in class c} a_k(x) dy_c/da_k(x)``
  (first-order Taylor, ground-truth labels), for the explained layer and for the heatmap layer. It is exact and
  needs no gradient when the layer's average-pooled output feeds a linear ``head`` (``Phi = W * class-mean
  activation``, checked numerically on the first image) or when the layer *is* the network output (``Phi[c, k] =
  [c = k] * mean logit``); otherwise one batched backward per batch (``gradient_x_activation``; ViT, timm heads).
  Per-class sums and counts are summed across processes.
* **what (concepts).** The ``num_examples`` (40) images of largest activation per unit, from the stored per-image
  maxima of the shared base (:meth:`~lit_explain.methods.base.LayerMethod.top_images`; ties to the smaller index),
  are embedded by the encoder pair's image tower; concept prompts ``template.format(word)`` and the bare template
  by its text tower. Scores are the adaptive cosine summed over a unit's examples, computed exactly through the
  per-unit sum of example embeddings (a (K, D) x (D, V) product, never the (K*N, V) similarity matrix), and the
  concepts scoring at least ``alpha`` x the best (0.95) are kept: the **major** concepts. **Minor** concepts: the
  same on crops (``crop_fraction`` of the image side) centred on the unit's peak in each example, with the looser
  ``minor_alpha`` (0.90), minus the major ones. A layer without a spatial grid (``fc``) has no minor concepts.
* **where and why (heatmaps, reliability).** For every image, the class heatmap ``H_c`` mixes the activation maps
  of ``heatmap_layer`` of the ``top_neurons`` (3) neurons of ``Phi[pred]`` and the sample heatmap ``H_s`` those of
  the image's own ``phi_pred(x)``; ``reliability = cos(H_c, H_s)`` and its AUROC for detecting mispredictions,
  beside the maximum softmax probability, come out of the same run (a second pass over the data once ``Phi`` is
  known; each image on one process, gathered exactly).

Outputs (a :class:`~lit_explain.results.MethodResult`): ``www_units`` (unit, concepts ranked with scores, minor
concepts, Shapley per class, top examples), ``www_classes`` (each class's top neurons, the ``H_c`` weights),
``www_images`` (per image: label, prediction, MSP, reliability), unit cards (examples with the unit's localised
activation, or for class-logit units their class heatmap) and heatmap pictures, TensorBoard scalars. The metrics
(hit rate, P/R/F1, CLIP text cosine) against ``ground_truth`` are the callback ``callbacks/www.py``.

Differences from the authors' code, on purpose: one batched pass instead of 1.28 M batch-1 passes, no
similarity matrix on disk, ``H_s`` computed directly (their list of sample heatmaps stays empty), no hard-coded
device or path separator.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lit_explain import distributed
from lit_explain.methods.base import SILENT_REASON, LayerMethod
from lit_explain.methods.www_crops import crop_resize, peak_cells, peak_crop_boxes
from lit_explain.methods.www_encoders import ImageTextEncoder, load_vocabulary
from lit_explain.methods.www_ops import (class_activation_sums, concept_scores, gradient_x_activation,
                                         linear_head_sample_shapley, linear_head_shapley, misprediction_auroc,
                                         percentile_masks, ranked_concepts, reliability, select_concepts,
                                         top_n_weights, weighted_heatmap)
from lit_explain.results import MethodResult, Picture

__all__ = ["WWW", "WWWExplanations", "load_ground_truth", "SHAPLEY_MODES"]

log = logging.getLogger(__name__)

SHAPLEY_MODES = ("auto", "linear", "autograd")


@dataclass
class WWWExplanations:
    """What the metric callback reads (``MethodResult.data``).

    Args:
        units: (K,) explained units; concepts: per unit its major concept words, best first.
        ground_truth: per unit its ground-truth words, or None where it has none.
        encode_words: raw words -> (n, D) text embeddings of the encoder pair (the CLIP text cosine).
        auroc: the reliability / MSP misprediction AUROCs of the run.
    """

    units: torch.Tensor
    concepts: list[list[str]]
    ground_truth: list[list[str] | None]
    encode_words: Callable[[list[str]], torch.Tensor] | None = None
    auroc: dict[str, float] = field(default_factory=dict)


def load_ground_truth(source: str | Path, num_units: int) -> list[list[str] | None]:
    """Ground-truth words per unit (index = unit) from a local file or folder.

    * a folder with ``world.json`` (the synthetic world): unit c is class c, its words the concepts its rule
      requires (the positive names of the rule's disjunctive normal form, e.g. ``(yellow OR orange) AND
      triangle`` -> yellow, orange, triangle; a negated name is not a ground truth);
    * a file: line u holds unit u's comma-separated synonyms (ImageNet's ``tench, Tinca tinca``); an empty line
      means no ground truth for that unit.
    """
    path = Path(source)
    if path.is_dir():
        import json

        from lit_explain.synth.formula import names_in, parse, to_dnf

        if not (path / "world.json").is_file():
            raise FileNotFoundError(f"ground_truth folder {path} has no world.json; give a synthetic world folder or "
                                    "a file with one line of comma-separated synonyms per unit")
        classes = sorted(json.loads((path / "world.json").read_text())["classes"], key=lambda c: c["id"])
        out: list[list[str] | None] = []
        for c in classes:
            tree = parse(c["rule"])
            positive = set().union(*(p for p, _ in to_dnf(tree)))
            out.append([n for n in dict.fromkeys(names_in(tree)) if n in positive])
    elif path.is_file():
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            words = [w.strip() for w in line.split(",") if w.strip()]
            out.append(words or None)
    else:
        raise FileNotFoundError(f"ground_truth {path} not found (a synthetic world folder, or a file of "
                                "comma-separated synonyms, one line per unit)")
    return (out + [None] * num_units)[:num_units]


def _check_rgb(name: str, values: Sequence[float], positive: bool) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3 or (positive and min(vals) <= 0):
        raise ValueError(f"{name} must be 3 per-channel values{' > 0' if positive else ''}, got {list(values)}")
    return vals  # type: ignore[return-value]


class WWW(LayerMethod):
    """WWW on the shared layer method (see the module docstring for what it computes).

    Args:
        model, weights, model_kwargs: the network (as every method: ``load_model`` spec, weights, factory kwargs).
        layer: the explained layer; ``fc`` (the class logits) or a convolutional / token layer (``layer4``).
        encoder: the image/text encoder pair (:class:`~lit_explain.methods.www_encoders.OpenClipPair` on a local
            CLIP, or any object with ``encode_images``, ``encode_texts``, ``token_counts``).
        vocabulary: concept words: a word-list file, a synthetic world folder (``world.json``) or a Broden folder
            (``label.csv``); see :func:`~lit_explain.methods.www_encoders.load_vocabulary`.
        vocabulary_synonyms: the vocabulary file holds comma-separated synonym sets per line (ImageNet class names,
            ``tench, Tinca tinca``): every synonym is a concept.
        heatmap_layer: the layer whose activation maps make the heatmaps (a grid of >= 2 positions, e.g.
            ``layer4``); None = ``layer``.
        head: the name of the final linear module (for the exact linear-head Shapley prior).
        shapley: ``auto`` (exact when possible, else autograd), ``linear`` (exact or an error), ``autograd``.
        num_examples: N, example images per unit for concept matching, >= 1 (40).
        alpha: major concepts keep scores >= alpha x the best, in (0, 1] (0.95).
        minor_alpha: the same for the crop-based minor concepts, in (0, 1] (0.90).
        minor_concepts: compute minor concepts from crops (spatial layers only).
        crop_fraction: side of the crop around a unit's peak as a fraction of the image side, in (0, 1].
        template: concept prompt with one ``{}`` ("a photo of a {}"); the bare template is it without the word.
        top_neurons: n, neurons mixed in each heatmap, >= 1 (3).
        heatmap_percentile: activation maps on cards keep values above this quantile, in [0, 1) (0.7).
        label_key: batch key of the class labels (``target`` for the synthetic world, ``label`` for ImageNet).
        class_names: class names for tables (None: the data module's ``class_names``, else ``class<c>``).
        ground_truth: per-unit ground-truth words for the metrics (:func:`load_ground_truth`), or None.
        input_mean, input_std: the normalisation of the data's images (undone before the encoder).
        batch_size: images per forward of the heatmap pass and of the encoder, >= 1.
        num_pictures: unit cards drawn (the first units), >= 0; heatmap pictures: min(4, num_pictures).
        units, random_units, quantile, activation_dtype, cache_dir, output_dir, seed: as every method.
        top_images: examples shown per unit card, >= 1.
    """

    def __init__(
        self,
        model: str,
        layer: str = "fc",
        encoder: ImageTextEncoder | None = None,
        vocabulary: str = "",
        vocabulary_synonyms: bool = False,
        weights: str = "none",
        model_kwargs: dict[str, Any] | None = None,
        heatmap_layer: str | None = None,
        head: str = "fc",
        shapley: str = "auto",
        num_examples: int = 40,
        alpha: float = 0.95,
        minor_alpha: float = 0.90,
        minor_concepts: bool = True,
        crop_fraction: float = 0.5,
        template: str = "a photo of a {}",
        top_neurons: int = 3,
        heatmap_percentile: float = 0.7,
        label_key: str = "target",
        class_names: list[str] | None = None,
        ground_truth: str | None = None,
        input_mean: Sequence[float] = (0.485, 0.456, 0.406),
        input_std: Sequence[float] = (0.229, 0.224, 0.225),
        batch_size: int = 64,
        num_pictures: int = 16,
        activation_dtype: str = "float32",
        output_dir: str = "outputs/www",
        top_images: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, weights=weights, model_kwargs=model_kwargs,
                         activation_dtype=activation_dtype, output_dir=output_dir, top_images=top_images,
                         **kwargs)  # the base validates and records every argument
        if not isinstance(self.hparams.get("encoder"), (dict, type(None))):
            self.hparams["encoder"] = None  # the object may hold a model: keep it out of hparams.yaml
        needed = ("encode_images", "encode_texts", "token_counts")
        missing = [m for m in needed if not callable(getattr(encoder, m, None))]
        if encoder is None or missing:
            raise ValueError("WWW needs an image/text encoder pair: encoder: {class_path: lit_explain.methods."
                             "www_encoders.OpenClipPair, init_args: {path: <CLIP folder or file>}}"
                             + (f" (the given {type(encoder).__name__} lacks {missing})" if encoder is not None
                                else ""))
        if not isinstance(vocabulary, (str, Path)) or not str(vocabulary).strip():
            raise ValueError("vocabulary must name a word-list file, a synthetic world folder (world.json) or a "
                             f"Broden folder (label.csv); got {vocabulary!r}")
        if heatmap_layer is not None and (not isinstance(heatmap_layer, str) or not heatmap_layer.strip()):
            raise ValueError(f"heatmap_layer must be a dotted layer name (e.g. 'layer4') or None, got "
                             f"{heatmap_layer!r}")
        if not isinstance(head, str) or not head.strip():
            raise ValueError(f"head must be the name of the final linear module (e.g. 'fc'), got {head!r}")
        if shapley not in SHAPLEY_MODES:
            raise ValueError(f"shapley must be one of {SHAPLEY_MODES}, got {shapley!r}")
        for name, value in (("num_examples", num_examples), ("top_neurons", top_neurons), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(num_pictures) < 0:
            raise ValueError(f"num_pictures must be >= 0, got {num_pictures}")
        for name, value in (("alpha", alpha), ("minor_alpha", minor_alpha), ("crop_fraction", crop_fraction)):
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not 0.0 <= float(heatmap_percentile) < 1.0:
            raise ValueError(f"heatmap_percentile must be in [0, 1), got {heatmap_percentile}")
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"template must contain one '{{}}' where the concept goes (e.g. 'a photo of a {{}}'), "
                             f"got {template!r}")
        if not isinstance(label_key, str) or not label_key:
            raise ValueError(f"label_key must be the batch key of the class labels (e.g. 'target'), got {label_key!r}")
        self.mean = _check_rgb("input_mean", input_mean, False)
        self.std = _check_rgb("input_std", input_std, True)
        self.encoder = encoder
        #: the concept words (file errors surface here, at construction)
        self.vocabulary = load_vocabulary(vocabulary, synonyms=bool(vocabulary_synonyms))
        self.explanations: WWWExplanations | None = None

    # ------------------------------------------------------------------ layers and the Shapley mode
    @property
    def heat_layer(self) -> str:
        return self.hparams.heatmap_layer or self.hparams.layer

    @property
    def _layers(self) -> list[str]:
        return list(dict.fromkeys([self.hparams.layer, self.heat_layer]))

    def _probe(self):
        from lit_explain.models.probe import LayerProbe

        if getattr(self, "_www_probe", None) is None:
            self._www_probe = LayerProbe(self.network(), self._layers, stop_early=False)
        return self._www_probe

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits (B, C), {layer: (B, U, h, w)}) without gradients."""
        with torch.no_grad():
            out, grids = self._probe().probe_with_output(images)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError(f"WWW needs a classifier returning (B, C) logits; {self.hparams.model} returned "
                             f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        return out.float(), {k: v.float() for k, v in grids.items()}

    def features(self):
        """The base's capture function, through this method's probe: the forward that fills the activation store
        also gives the logits and the heatmap layer, kept for :meth:`predict_step` (one forward per batch)."""
        def capture(images: torch.Tensor) -> torch.Tensor:
            logits, grids = self._forward(images)
            self._last = (images, logits, grids)
            return grids[self.hparams.layer]
        return capture

    def _head(self) -> torch.nn.Linear | None:
        try:
            m = self.network().get_submodule(self.hparams.head)
        except AttributeError:
            return None
        return m if isinstance(m, torch.nn.Linear) else None

    def _choose_mode(self, name: str, grid: torch.Tensor, logits: torch.Tensor) -> str:
        """``output`` (the layer is the logits), ``linear`` (its pooled output feeds the linear head) or
        ``autograd``, checked on real activations."""
        if self.hparams.shapley == "autograd":
            return "autograd"
        pooled = grid.mean(dim=(2, 3))
        tol = 1e-4 * max(1.0, float(logits.abs().max()))
        if pooled.shape == logits.shape and torch.allclose(pooled, logits, atol=tol, rtol=1e-4) \
                and grid.shape[2] * grid.shape[3] == 1:
            return "output"
        head = self._head()
        if head is not None and head.in_features == pooled.shape[1]:
            with torch.no_grad():
                y = head(pooled.to(head.weight.dtype)).float()
            if torch.allclose(y, logits, atol=tol, rtol=1e-4):
                return "linear"
        if self.hparams.shapley == "linear":
            raise ValueError(f"shapley='linear' but the pooled output of layer {name!r} is not the input of a linear "
                             f"head {self.hparams.head!r} (head(mean over positions) differs from the logits) nor "
                             "the logits themselves; use shapley: auto or autograd, or name the head")
        return "autograd"

    def _grad_x_act(self, images: torch.Tensor, name: str, classes: torch.Tensor) -> torch.Tensor:
        """(B, U) per-image ``sum over positions of a * dy_class/da`` of layer ``name``, one backward."""
        net = self.network()
        module = net.get_submodule(name)
        state: dict[str, Any] = {}

        def hook(_m, _inp, out):
            if "replace" in state:
                return state["replace"]
            state["raw"] = out.detach().clone()
            return None

        handle = module.register_forward_hook(hook)
        try:
            with torch.inference_mode(False):
                x = images.clone()
                with torch.no_grad():
                    net(x)
                raw = state["raw"].clone()
                tokens = raw.ndim == 3
                acts = raw.transpose(1, 2) if tokens else raw  # channels at dim 1

                def head(a: torch.Tensor) -> torch.Tensor:
                    state["replace"] = a.transpose(1, 2) if tokens else a
                    return net(x)

                phi = gradient_x_activation(head, acts, classes.to(acts.device).clone(), reduce="sum")
        finally:
            handle.remove()
            state.pop("replace", None)
        return phi.float()

    def _phi(self, mode: str, name: str, images: torch.Tensor, grid: torch.Tensor, classes: torch.Tensor,
             logits: torch.Tensor) -> torch.Tensor:
        """(B, U) first-order Shapley scores of layer ``name`` for ``classes`` (one per image)."""
        if mode == "output":
            return F.one_hot(classes.long(), grid.shape[1]).to(grid.dtype) * grid.mean(dim=(2, 3))
        if mode == "linear":
            return linear_head_sample_shapley(self._head().weight.float(), grid.mean(dim=(2, 3)), classes)
        return self._grad_x_act(images, name, classes)

    # ------------------------------------------------------------------ predict loop
    def setup(self, stage: str) -> None:
        """Load the network before Lightning's predict loop enters inference mode: tensors made there cannot take
        part in the backward pass of the autograd Shapley prior."""
        super().setup(stage)
        self.network()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        hp = self.hparams
        self.check_vocabulary()
        dataset = self.predict_dataset()
        item = dataset[0]
        if hp.label_key not in item:
            raise ValueError(f"WWW needs class labels: the predict dataset's items have no {hp.label_key!r} key (keys: "
                             f"{sorted(item)}); set label_key, or use a data module whose predict batches carry labels "
                             "(e.g. data_modules.synthetic_classified.SyntheticClassifiedDataModule)")
        logits, grids = self._forward(item["image"][None].to(self.device))
        self.num_classes = logits.shape[1]
        heat = grids[self.heat_layer]
        if heat.shape[2] * heat.shape[3] < 2:
            raise ValueError(f"heatmap_layer {self.heat_layer!r} has {heat.shape[2]}x{heat.shape[3]} spatial "
                             "positions; heatmaps need at least 2: set heatmap_layer to a layer before global pooling "
                             "(e.g. layer4)")
        if hp.top_neurons > heat.shape[1]:
            raise ValueError(f"top_neurons={hp.top_neurons} but heatmap_layer {self.heat_layer!r} has {heat.shape[1]} "
                             "neurons")
        self.modes = {name: self._choose_mode(name, grids[name], logits) for name in self._layers}
        self._sums = {name: torch.zeros(self.num_classes, grids[name].shape[1], dtype=torch.float64)
                      for name in self._layers}
        self._counts = torch.zeros(self.num_classes, dtype=torch.int64)
        self._done = torch.zeros(self.num_images, dtype=torch.bool)
        if hasattr(self.encoder, "to"):
            self.encoder.to(self.device)
        log.info("WWW: Shapley prior modes %s", self.modes)

    def check_vocabulary(self) -> None:
        """Every concept must give the encoder at least one word token (a line of punctuation gives none)."""
        words = self.vocabulary
        counts = self.encoder.token_counts(words)
        empty = [w for w, n, in zip(words, counts) if n == 0 or not any(ch.isalnum() for ch in w)]
        if empty:
            raise ValueError(f"vocabulary {self.hparams.vocabulary}: {len(empty)} concept(s) have no word tokens for "
                             f"the encoder: {empty[:10]}; remove them or spell them with letters or digits")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The base stores the layer; here the per-class sums of the Shapley prior (ground-truth classes)."""
        self._last = None
        super().predict_step(batch, batch_idx)
        hp = self.hparams
        if hp.label_key not in batch:
            raise ValueError(f"WWW: predict batch has no {hp.label_key!r} (keys: {sorted(batch)}); set label_key")
        idx = batch["index"].detach().cpu().long()
        fresh = ~self._done[idx]  # an image seen twice on this rank counts once
        self._done[idx] = True
        if not bool(fresh.any()):
            return None
        last, self._last = self._last, None
        if last is not None and last[0] is batch["image"]:  # the store's capture ran this forward already
            _, logits, grids = last
        else:
            logits, grids = self._forward(batch["image"])
        keep = fresh.to(logits.device)
        images = batch["image"][fresh.to(batch["image"].device)]
        logits, grids = logits[keep], {k: v[keep] for k, v in grids.items()}
        labels = torch.as_tensor(batch[hp.label_key]).long().cpu()[fresh]
        for name in self._layers:
            if self.modes[name] == "linear":  # class sums of pooled activations; W applied once at the end
                phi = grids[name].mean(dim=(2, 3))
            else:
                phi = self._phi(self.modes[name], name, images, grids[name], labels.to(self.device), logits)
            sums, counts = class_activation_sums(phi.cpu().double(), labels, self.num_classes)
            self._sums[name] += sums
        self._counts += counts
        return None

    def _shapley(self, name: str) -> torch.Tensor:
        """(C, U) float64 class-wise Shapley prior of layer ``name`` over every process's images."""
        sums = distributed.all_sum(self._sums[name])
        counts = distributed.all_sum(self._counts)
        if self.modes[name] == "linear":
            return linear_head_shapley(self._head().weight.detach().cpu(), sums, counts)
        return sums / counts.clamp(min=1).double()[:, None]

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() * std + mean).clamp(0.0, 1.0)

    def _load(self, indices: Sequence[int]) -> dict[str, Any]:
        """A collated batch of dataset items (the predict loader's collate), checked to be at ``indices``."""
        loader = self.trainer.predict_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        dataset = loader.dataset
        batch = loader.collate_fn([dataset[int(i)] for i in indices])
        got = torch.as_tensor(batch["index"]).cpu().long()
        if not torch.equal(got, torch.as_tensor(list(indices)).long()):
            raise RuntimeError("WWW needs dataset[i]['index'] == i to fetch images again (example images, heatmaps)")
        return batch

    # ------------------------------------------------------------------ the run's end
    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        hp = self.hparams
        phi_layer = self._shapley(hp.layer)
        phi_heat = self._shapley(self.heat_layer) if self.heat_layer != hp.layer else phi_layer
        units = self.select_units(self.entry.shape[1])
        top_values, top_index = self.top_images(units, hp.num_examples)
        valid = top_index >= 0
        text, template = self._text_embeddings()
        image_sums, crop_sums = self._example_embeddings(units, top_index, valid, text.shape[1])
        scores = concept_scores(image_sums, text, template)
        # a unit with no activation above its threshold has no examples worth the name: no concept, a reason
        silent = self.silent_units(units, self.unit_thresholds(units))
        keep = select_concepts(scores, hp.alpha) & ~silent[:, None]
        major = ranked_concepts(scores, keep)
        minor: list[list[tuple[int, float]]] = [[] for _ in range(len(units))]
        if crop_sums is not None:
            mscores = concept_scores(crop_sums, text, template)
            mkeep = select_concepts(mscores, hp.minor_alpha) & ~keep & ~silent[:, None]
            minor = ranked_concepts(mscores, mkeep)
        images = self._heatmap_pass(phi_heat)
        auroc = misprediction_auroc(images["reliability"], images["logits"], images["label"])
        class_names = self._class_names()
        vocab = self.vocabulary
        n_units = self.entry.shape[1]
        gt = load_ground_truth(hp.ground_truth, n_units) if hp.ground_truth else [None] * n_units
        gt_units = [gt[int(u)] for u in units]
        if hp.ground_truth and self.modes[hp.layer] != "output" and Path(hp.ground_truth).is_dir():
            log.warning("WWW: ground_truth %s gives one class per unit, but layer %r is not the class logits; the "
                        "metrics compare unit u with class u", hp.ground_truth, hp.layer)
        rows = self._unit_rows(units, major, minor, phi_layer, top_values, top_index, class_names, gt_units)
        for row, quiet in zip(rows, silent.tolist()):
            if quiet:
                row["reason"] = SILENT_REASON
        class_rows = self._class_rows(phi_heat, class_names)
        pred = images["logits"].argmax(dim=1)
        msp = images["logits"].double().softmax(dim=1).max(dim=1).values
        image_rows = [{"image": i, "label": int(images["label"][i]), "prediction": int(pred[i]),
                       "correct": bool(pred[i] == images["label"][i]), "msp": float(msp[i]),
                       "reliability": float(images["reliability"][i])} for i in range(self.num_images)]
        self.explanations = WWWExplanations(
            units=units, concepts=[[vocab[v] for v, _ in m] for m in major], ground_truth=gt_units,
            encode_words=lambda words: self.encoder.encode_texts(list(words)).cpu(), auroc=auroc)
        scalars = {f"www/{k}": float(v) for k, v in auroc.items() if not (isinstance(v, float) and math.isnan(v))}
        meta = {**self.run_meta(), "shapley_modes": self.modes, "heatmap_layer": self.heat_layer,
                "vocabulary": list(vocab), "class_names": class_names, "misprediction_auroc": auroc,
                "minor_concepts": crop_sums is not None, "encoder": type(self.encoder).__name__}
        lines = ["| unit | concepts | minor |", "|---|---|---|"]
        lines += [f"| {r['unit']} | {r['concepts']} | {r['minor_concepts']} |" for r in rows[:200]]
        self.result = MethodResult(
            tables={"www_units": rows, "www_classes": class_rows, "www_images": image_rows},
            meta=meta,
            pictures=self._pictures(units, major, top_index, images),
            report="www_units",
            summary=self._summary(len(units), auroc),
            scalars=scalars,
            markdown={"www/units": "\n".join(lines)},
            data=self.explanations,
        )

    def _class_names(self) -> list[str]:
        names = self.hparams.class_names
        if names is None:
            dm = self.trainer.datamodule if self._trainer is not None else None
            names = getattr(dm, "class_names", None)
        names = list(names) if names is not None else []
        if len(names) != self.num_classes:
            if names:
                log.warning("WWW: %d class names for %d classes; using class<c>", len(names), self.num_classes)
            names = [f"class{c}" for c in range(self.num_classes)]
        return names

    def _text_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, D) prompt embeddings and (D,) bare-template embedding; prompts sharded over processes."""
        tpl = self.hparams.template
        bare = tpl.replace("{}", "").strip()
        template = self.encoder.encode_texts([bare]).float().cpu()[0]
        prompts = [tpl.format(w) for w in self.vocabulary]
        mine = self.shard(list(range(len(prompts))))
        text = torch.zeros(len(prompts), template.shape[0])
        if mine:
            text[mine] = self.encoder.encode_texts([prompts[i] for i in mine]).float().cpu()
        return distributed.all_sum(text), template

    def _example_embeddings(self, units: torch.Tensor, top_index: torch.Tensor, valid: torch.Tensor, dim: int
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-unit sums of the unit-norm embeddings of its examples (K, D), and of its peak-centred crops (or
        None). Each image is embedded by one process (its position in the sorted image list, round robin), and the
        sums are gathered so that every process holds the same numbers."""
        hp = self.hparams
        grid = tuple(self.entry.shape[2:])
        crops = hp.minor_concepts and grid[0] * grid[1] >= 2
        images = torch.unique(top_index[valid])
        world, rank = distributed.world_size(), distributed.rank()
        emb = torch.zeros(len(images), dim)
        crop_emb = torch.zeros(*top_index.shape, dim) if crops else None
        mine = torch.arange(rank, len(images), world)
        slot = torch.full(top_index.shape, -1, dtype=torch.int64)
        slot[valid] = torch.searchsorted(images, top_index[valid])
        for s in range(0, len(mine), hp.batch_size):
            pos = mine[s:s + hp.batch_size]
            batch = self._load(images[pos].tolist())
            rgb = self._rgb(batch["image"].to(self.device))
            emb[pos] = F.normalize(self.encoder.encode_images(rgb).float().cpu(), dim=1)
            if crops:
                self._embed_crops(units, top_index, slot, pos, rgb, crop_emb)
        emb = distributed.all_sum(emb)
        per_slot = emb[slot.clamp(min=0)] * valid[..., None]
        sums = per_slot.sum(dim=1)
        crop_sums = None
        if crops:
            crop_sums = F.normalize(distributed.all_sum(crop_emb), dim=2).sum(dim=1)
        return sums, crop_sums

    def _embed_crops(self, units: torch.Tensor, top: torch.Tensor, slot: torch.Tensor, pos: torch.Tensor,
                     rgb: torch.Tensor, out: torch.Tensor) -> None:
        """Embed the crops centred on each (unit, example) peak for the example images at positions ``pos``
        (``rgb`` holds those images); rows of ``out`` (K, N, D) are filled."""
        hp = self.hparams
        k_i, n_i = torch.isin(slot, pos).nonzero(as_tuple=True)
        if len(k_i) == 0:
            return
        b_i = torch.searchsorted(pos, slot[k_i, n_i])
        cells = torch.empty(len(k_i), 2, dtype=torch.int64)
        for b in torch.unique(b_i).tolist():  # one read of each example image's maps
            sel = (b_i == b).nonzero(as_tuple=True)[0]
            image = int(top[k_i[sel[0]], n_i[sel[0]]])
            maps = torch.from_numpy(np.asarray(self.entry.acts[image], dtype=np.float32))[units[k_i[sel]]]
            cells[sel] = peak_cells(maps)
        size = tuple(rgb.shape[-2:])
        boxes = peak_crop_boxes(cells, tuple(self.entry.shape[2:]), size, hp.crop_fraction)
        for s in range(0, len(boxes), hp.batch_size):
            part = slice(s, s + hp.batch_size)
            crops = crop_resize(rgb, b_i[part], boxes[part], size)
            out[k_i[part], n_i[part]] = F.normalize(self.encoder.encode_images(crops).float().cpu(), dim=1)

    def _heatmaps(self, images: torch.Tensor, maps: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) class heatmaps H_c (weights Phi[pred]) and sample heatmaps H_s (weights phi_pred(x))."""
        n = self.hparams.top_neurons
        size = tuple(images.shape[-2:])
        w_class = self._phi_heat[pred.cpu()].float().to(maps.device)
        w_sample = self._phi(self.modes[self.heat_layer], self.heat_layer, images, maps, pred, logits).to(maps.device)
        return (weighted_heatmap(maps, w_class, n, size=size), weighted_heatmap(maps, w_sample, n, size=size))

    def _heatmap_pass(self, phi_heat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image (every process's images, gathered): logits (N, C), label (N,), reliability (N,) float64.

        Images are split round robin by dataset index; each is computed by one process, so the gathered vectors
        are the one-process vectors."""
        hp = self.hparams
        self._phi_heat = phi_heat
        n = self.num_images
        rel = torch.zeros(n, dtype=torch.float64)
        logits_all = torch.zeros(n, self.num_classes)
        labels = torch.zeros(n, dtype=torch.int64)
        mine = self.shard(list(range(n)))
        for s in range(0, len(mine), hp.batch_size):
            ids = mine[s:s + hp.batch_size]
            batch = self._load(ids)
            x = batch["image"].to(self.device)
            logits, grids = self._forward(x)
            pred = logits.argmax(dim=1)
            h_c, h_s = self._heatmaps(x, grids[self.heat_layer], pred, logits)
            rel[ids] = reliability(h_c, h_s).double().cpu()
            logits_all[ids] = logits.cpu()
            labels[ids] = torch.as_tensor(batch[hp.label_key]).long().cpu()
        return {"reliability": distributed.all_sum(rel), "logits": distributed.all_sum(logits_all),
                "label": distributed.all_sum(labels)}

    # ------------------------------------------------------------------ tables
    def _unit_rows(self, units: torch.Tensor, major: list, minor: list, phi: torch.Tensor, top_values: torch.Tensor,
                   top_index: torch.Tensor, class_names: list[str], gt_units: list) -> list[dict[str, Any]]:
        """One row per unit: major concepts (best first) with scores, minor concepts, Shapley per class."""
        vocab = self.vocabulary
        per_class = len(class_names) <= 16
        rows = []
        for k, u in enumerate(units.tolist()):
            col = phi[:, u]
            order = torch.sort(col, descending=True, stable=True).indices[:5].tolist()
            row: dict[str, Any] = {
                "unit": u,
                "label": vocab[major[k][0][0]] if major[k] else "",
                "concepts": "; ".join(vocab[v] for v, _ in major[k]),
                "concept_scores": "; ".join(f"{sc:.4f}" for _, sc in major[k]),
                "num_concepts": len(major[k]),
                "minor_concepts": "; ".join(vocab[v] for v, _ in minor[k]),
                "minor_scores": "; ".join(f"{sc:.4f}" for _, sc in minor[k]),
                "shapley_top": "; ".join(f"{class_names[c]}:{float(col[c]):.4g}" for c in order),
            }
            if per_class:
                row.update({f"shapley_{name}": float(col[c]) for c, name in enumerate(class_names)})
            row["top_examples"] = " ".join(str(i) for i in top_index[k].tolist() if i >= 0)
            row["top_activation"] = float(top_values[k, 0])
            if any(g is not None for g in gt_units):
                row["ground_truth"] = ", ".join(gt_units[k] or [])
            rows.append(row)
        return rows

    def _class_rows(self, phi_heat: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
        """One row per class: the top-n neurons of ``heatmap_layer`` by Shapley value and their H_c weights."""
        n = self.hparams.top_neurons
        weights = top_n_weights(phi_heat.float(), n)
        top = torch.sort(phi_heat, dim=1, descending=True, stable=True).indices[:, :n]
        return [{"class": c, "name": class_names[c], "images": int(cnt),
                 "neurons": " ".join(str(k) for k in top[c].tolist()),
                 "shapley": "; ".join(f"{float(phi_heat[c, k]):.4g}" for k in top[c].tolist()),
                 "weights": "; ".join(f"{float(weights[c, k]):.4f}" for k in top[c].tolist())}
                for c, cnt in enumerate(distributed.all_sum(self._counts).tolist())]

    # ------------------------------------------------------------------ pictures
    def _pictures(self, units: torch.Tensor, major: list, top_index: torch.Tensor, images: dict) -> list[Picture]:
        hp = self.hparams
        pics = []
        for k in range(min(hp.num_pictures, len(units))):
            u = int(units[k])
            idx = [int(i) for i in top_index[k, :hp.top_images].tolist() if i >= 0]
            if not idx:
                continue
            title = f"unit {u}: " + ", ".join(self.vocabulary[v] for v, _ in major[k][:4])
            pics.append(Picture(f"units/unit_{u:04d}", functools.partial(self._draw_unit, u, idx, title)))
        rel = images["reliability"]
        for i in torch.argsort(rel, stable=True)[:min(4, hp.num_pictures)].tolist():
            title = (f"image {i}: label {int(images['label'][i])}, prediction {int(images['logits'][i].argmax())}, "
                     f"reliability {float(rel[i]):.3f} (left H_c, right H_s)")
            pics.append(Picture(f"heatmaps/image_{i:06d}", functools.partial(self._draw_heatmaps, i, title)))
        return pics

    def _draw_unit(self, unit: int, indices: list[int], title: str):
        """Examples of a unit with where it fires: its activation map above the ``heatmap_percentile`` quantile;
        for a class-logit unit (no map), the class heatmap H_c of its class on each example."""
        from lit_explain.viz.filter_pictures import attention_picture

        x = self._load(indices)["image"].to(self.device)
        logits, grids = self._forward(x)
        if self.modes[self.hparams.layer] == "output":
            w = self._phi_heat[unit].float().to(x.device)[None].expand(len(indices), -1)
            maps = weighted_heatmap(grids[self.heat_layer], w, self.hparams.top_neurons).clamp(min=0)
        else:
            maps = percentile_masks(grids[self.hparams.layer][:, unit:unit + 1], self.hparams.heatmap_percentile)[:, 0]
        rgb = self._rgb(x).permute(0, 2, 3, 1).cpu().numpy()
        return attention_picture(list(rgb), [m.cpu() for m in maps], title)

    def _draw_heatmaps(self, index: int, title: str):
        from lit_explain.viz.filter_pictures import attention_picture

        x = self._load([index])["image"].to(self.device)
        logits, grids = self._forward(x)
        h_c, h_s = self._heatmaps(x, grids[self.heat_layer], logits.argmax(dim=1), logits)
        rgb = self._rgb(x).permute(0, 2, 3, 1).cpu().numpy()[0]
        return attention_picture([rgb, rgb], [h_c[0].clamp(min=0).cpu(), h_s[0].clamp(min=0).cpu()], title)

    def _summary(self, n_units: int, auroc: dict[str, float]) -> str:
        hp = self.hparams
        return (f"WWW: explained {n_units} units of {hp.layer} with {len(self.vocabulary)} concepts "
                f"(heatmaps from {self.heat_layer}, Shapley {self.modes}); results: {hp.output_dir}/www_units.csv\n"
                f"misprediction AUROC over {auroc['images']} images (error rate {auroc['error_rate']:.3f}): "
                f"reliability {auroc['auroc_reliability']:.4f}, max softmax probability {auroc['auroc_msp']:.4f}")
