"""NMF concept decomposition and class contrasting (Herdt & Otero Baguer, "Concept Based Explanations and Class
Contrasting") as a fit loop on the shared :class:`~lit_explain.methods.base.LayerMethod`.

``python trainer_cli.py fit --config configs/nmf_synthetic.yaml`` explains every class of a classifier by a few
concept components of one layer:

1. **Activations and predictions.** The data module's predict images (the image pool, e.g. the validation split)
   go through the network once; the layer's activations (N, C, h, w) land in the shared activation store (cached
   by content, resumable) and the model's prediction per image is read from them through the rest of the network
   (:class:`~lit_explain.methods.nmf_ops.LayerHead`).
2. **Image selection.** Per class, the images *predicted* as it (not labelled: misclassified images are part of
   what the model calls the class), in a seeded random order, at most ``images_per_class`` (60).
3. **Relevance weighting.** R = relevance of the layer for the class's logit: gradient x activation (one
   backward per batch, fast) or DeepLift with SmoothGrad through captum (the paper's), batched; the per-pixel
   weight r = mean over channels of ReLU(R) multiplies the activations: Ã = r ⊙ A.
4. **NMF, all classes at once.** Rows = pixels of the class's images, columns = channels, X ≈ W H with
   ``components`` (6) rows of H per class, solved for many classes in one batched HALS run on the device
   (:func:`~lit_explain.decomposition.nmf.batched_nmf`; sklearn as a parity backend). Each finished class is
   stored at once (:class:`~lit_explain.job_cache.JobCache`, keyed on the activations' content key, the images,
   every setting and the source of the code that computes it), so an interrupted fit resumes per class.
   Reconstruction errors go to TensorBoard.
5. **Prototypes.** The layer's activations are pooled over ``grid_pool`` x ``grid_pool`` cells; the cells most
   similar (cosine) to each component, from all images and from images not predicted as the class, are cropped
   from the images (a fixed pixel window per cell) and drawn as one strip per component.
6. **Prediction from components** (the paper's Tables 1/2): the top cell vector of every component, stacked as a
   ``components`` x 1 strip feature map, through the rest of the network: p(class) and whether the class is the
   argmax, with cells from all images and excluding the class's own; counts and means over classes.
7. **Contrasting** for the configured class ``pairs``: logistic-regression hyperplanes between the classes'
   most relevant pixel vectors (all ordered pairs in one batched gradient descent), the shifting test (move the
   layer's activations of A's images along w_AB; p(B) rises, swap when it passes p(A)), and a patch-insertion
   test: cut from B's images the patch around the cell lying furthest on B's side of the A-B hyperplane, paste
   it into the bottom-right corner of A's images (control: the same corner filled with 0, the mean colour) and
   measure p(A) and p(B) (the paper's husky / malamute test with a patch chosen by the hyperplane).

Outputs (through :class:`~lit_explain.results.MethodResult`, written by the CLI's result writer at the end of
fit): ``components`` (one row per class and component: top units with loadings, share, prototype picture and
images, the class's prediction-test numbers), ``classes`` (one row per class), ``contrasts`` (one row per pair),
``contrastive_components`` (the "why A rather than B" components of each pair), pictures
``prototypes/<class>/component_<k>.png``, TensorBoard scalars, and ``report.html`` with two linked views: the
classes with their components and prototype strips, and the contrasted pairs with their figures and components.

Processes: images, classes and pool chunks are cut into fixed chunks that do not depend on the process count and
shared round-robin; per-class results, prototype candidates and predictions are gathered in a canonical order,
so 1 and N processes give identical tables. The fit has no gradient step: training batches are skipped and the
work happens once, at the start of training. (DDP needs a trainable parameter to wrap a module: the method owns
an empty one.)
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_explain import distributed
from lit_explain.attribution.relevance import (NOISE_MODES, deeplift_compatible, deeplift_smoothgrad,
                                               gradient_x_activation, spatial_relevance)
from lit_explain.decomposition.hyperplanes import (contrastive_mask, pad_classes, pairwise_hyperplanes,
                                                  shifted_probabilities)
from lit_explain.decomposition.nmf import INITS, SOLVERS, batched_nmf, class_rows
from lit_explain.decomposition.prototypes import TopCells, merge_top_cells, pool_grid, top_cells
from lit_explain.job_cache import JobCache, code_digest
from lit_explain.methods.base import LayerMethod
from lit_explain.methods.nmf_ops import (LayerHead, cell_window, class_probability, component_shares, crop_cells,
                                         fill_corner, image_codes, paste_patch, select_class_images, top_loadings)
from lit_explain.results import MethodResult, Picture, ReportView

__all__ = ["NMFConcepts", "RELEVANCE_MODES", "TARGETS", "SWAP_READS", "STRIP_AXES"]

log = logging.getLogger(__name__)

RELEVANCE_MODES = ("gradient_x_activation", "deeplift_smoothgrad", "none")
TARGETS = ("logit", "log_softmax")
SWAP_READS = ("same_offset", "previous_offset")
STRIP_AXES = ("vertical", "horizontal")
#: Bumped when a change alters the per-class results stored in the job cache.
JOB_VERSION = 1
#: the code a class's stored job depends on (its key includes their source: see job_cache.code_digest)
_JOB_CODE = ("lit_explain.methods.nmf", "lit_explain.methods.nmf_ops", "lit_explain.decomposition",
             "lit_explain.attribution")
_PAPER_OFFSETS = (0.0, 0.5, 1.0, 2.0, 10.0, 15.0, 20.0, 35.0, 50.0, 200.0)


class _LogSoftmax(nn.Module):
    """The network with log-softmax outputs (relevance target ``log_softmax``); the layer stays a submodule."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).log_softmax(-1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "class"


class NMFConcepts(LayerMethod):
    """NMF concept components per class, prototypes, the prediction-from-components test and class contrasts
    (see the module docstring).

    **The original's quirks, each an option here** (defaults in brackets): the DeepLift reference is a constant
    image of 1.0 in normalised units (``deeplift_baseline`` [1.0]); relevance explains the logit
    (``relevance_target`` [logit]); ReLU(R) before the channel mean of the NMF weight and none for the hyperplane
    pixels (``relevance_relu`` [true], ``hyperplane_relu`` [false]); sklearn's unpinned init and missing seed
    (``init`` [nndsvda], ``seed``); prototype cells map to a fixed int(H / grid) pixel window, approximate when the
    grid does not divide the image (``grid_pool`` [2]; see :func:`~lit_explain.methods.nmf_ops.cell_window`); the
    components' cells are stacked vertically (``strip_axis`` [vertical]); the swap metric read p(A) one offset
    early (``swap_read`` [same_offset], ``previous_offset`` reproduces it); images are chosen by prediction and
    capped after a shuffle (``images_per_class`` [60], seeded); the contrastive mask's bias sign
    (``contrastive_bias_sign`` [consistent], ``paper`` keeps the original's unnegated bias). Contrasted pairs are
    configured (``pairs``) rather than drawn at random (the original drew B from 1..999, never class 0), and a pair (A, A) is never trained (its
    hyperplane is zero). The prediction test feeds the strip of pooled cell *activations* to the rest of the
    network (the original fed the strip of image crops to the whole network).

    Args:
        model, layer, weights, model_kwargs, cache_dir, output_dir, seed: see
            :class:`~lit_explain.methods.base.LayerMethod` (``seed`` seeds the image shuffle, the NMF init's
            randomized SVD, SmoothGrad's noise and a ``linear`` hyperplane init). The NMF factorises every unit of
            the layer; ``units``, ``random_units``, ``quantile`` and ``top_images`` are accepted for the shared
            interface and not used.
        activation_dtype: storage dtype of the activation cache (``float32`` default: the NMF and the prediction
            test read the stored values).
        components: k, NMF components per class, >= 1 (the paper: 6).
        images_per_class: images selected per class, >= 1 (the paper: the first 60 of a shuffled loader).
        min_images: a class with fewer predicted images is skipped with a logged reason (default: ``components``).
        classes: the class indices to explain (default: every output of the network).
        relevance: ``gradient_x_activation`` (default; fast), ``deeplift_smoothgrad`` (the paper's, captum),
            ``none`` (unweighted activations, an ablation).
        relevance_target: what the relevance explains: ``logit`` (the paper's choice) or ``log_softmax``.
        relevance_relu: clip R at 0 before the channel mean of the NMF weight (the paper: yes).
        deeplift_baseline: DeepLift's reference image, a constant in normalised input units (the paper: 1.0, a
            constant image, not black).
        smoothgrad_samples: noisy copies per image, >= 1 (the paper: 20 on GPU, 5 on CPU).
        smoothgrad_std: SmoothGrad noise std in normalised input units, >= 0 (the paper: 0.25).
        smoothgrad_noise: ``shared`` (same noise images for every image: batch- and process-independent) or
            ``captum`` (captum's NoiseTunnel as in the paper; depends on the batch).
        relevance_batch_size: images per relevance pass, >= 1 (the paper: 1).
        solver: ``hals`` (default), ``mu`` or ``sklearn`` (per-class loop, parity checks).
        init: ``nndsvda`` (sklearn >= 1.1's default, which the paper's unpinned sklearn picked), ``nndsvd`` (sklearn
            <= 1.0) or ``random``; seeded either way (the paper's sklearn had no random_state).
        max_iter: NMF iterations at most, >= 1 (sklearn's 200).
        tol: NMF tolerance, >= 0 (sklearn's 1e-4).
        sweeps: HALS coordinate sweeps per iteration, >= 1 (1 = sklearn's cd iteration).
        negative: ``error`` (default: a negative activation, e.g. a layer without ReLU, raises) or ``shift``
            (subtract each class's minimum; the components then describe the shifted activations).
        classes_per_pass: classes factorised together (memory ∝ this x 60 images x h x w x C), >= 1; also the
            unit of work shared among processes.
        grid_pool: side of the average-pooling window of the prototype grid, >= 1 (the paper: 2).
        prototypes: crops per component in the pictures, >= 1 (the paper: 8).
        strip_axis: how the top cells of the k components are stacked for the prediction test: ``vertical``
            (a k x 1 feature map, the paper's tall strip of crops) or ``horizontal`` (1 x k).
        top_units: units listed per component in the table, >= 1.
        pairs: class pairs [A, B] (names or indices) to contrast; [] for none.
        hyperplane_steps, hyperplane_lr: full-batch gradient descent of the logistic regressions (the paper: 100
            steps, lr 0.01), >= 1 and > 0.
        hyperplane_init: ``zeros`` (deterministic) or ``linear`` (PyTorch's nn.Linear law from ``seed``, the paper).
        hyperplane_fraction: a pixel trains the hyperplanes when its relevance exceeds this fraction of its
            image's maximum, in [0, 1] (the paper: 0.25).
        hyperplane_relu: clip R at 0 before that channel mean (the paper's code: effectively no).
        shift_offsets: offsets o of the shifting test, a' = ReLU(a + o·w_AB); must contain 0 (the paper's
            ReLU(a − o·w) with o in 0..−200, written with positive o).
        swap_read: where the swap metric reads p(A): ``same_offset`` as p(B)'s peak (correct) or
            ``previous_offset`` (the paper's off-by-one).
        insertion_patch: [height, width] in pixels of the inserted patch (clipped to the image), or null to skip
            the insertion test.
        contrastive: for each pair, also factorise "why A rather than B": NMF of m ⊙ A over A's images, with the
            per-pixel weight m = ReLU(signed distance to B's side of the A-B hyperplane) (table
            ``contrastive_components``).
        contrastive_bias_sign: ``consistent`` (m = ReLU(−w·a − b)) or ``paper`` (the original negated w but not
            b: ReLU(−w·a + b)).
        resume: reuse the per-class results stored in the job cache by an earlier (interrupted) run.
    """

    def __init__(
        self,
        model: str = "python:lit_explain.models.synthetic_cnn:synthetic_cnn",
        layer: str = "layer4",
        weights: str = "none",
        model_kwargs: dict[str, Any] | None = None,
        components: int = 6,
        images_per_class: int = 60,
        min_images: int | None = None,
        classes: list[int] | None = None,
        relevance: Literal["gradient_x_activation", "deeplift_smoothgrad", "none"] = "gradient_x_activation",
        relevance_target: Literal["logit", "log_softmax"] = "logit",
        relevance_relu: bool = True,
        deeplift_baseline: float = 1.0,
        smoothgrad_samples: int = 20,
        smoothgrad_std: float = 0.25,
        smoothgrad_noise: Literal["shared", "captum"] = "shared",
        relevance_batch_size: int = 64,
        solver: Literal["hals", "mu", "sklearn"] = "hals",
        init: Literal["nndsvda", "nndsvd", "random"] = "nndsvda",
        max_iter: int = 200,
        tol: float = 1e-4,
        sweeps: int = 2,
        negative: Literal["error", "shift"] = "error",
        classes_per_pass: int = 64,
        grid_pool: int = 2,
        prototypes: int = 8,
        strip_axis: Literal["vertical", "horizontal"] = "vertical",
        top_units: int = 5,
        pairs: list[list[int | str]] | None = None,
        hyperplane_steps: int = 100,
        hyperplane_lr: float = 0.01,
        hyperplane_init: Literal["zeros", "linear"] = "zeros",
        hyperplane_fraction: float = 0.25,
        hyperplane_relu: bool = False,
        shift_offsets: list[float] = list(_PAPER_OFFSETS),  # noqa: B006 - shown as the CLI default
        swap_read: Literal["same_offset", "previous_offset"] = "same_offset",
        insertion_patch: list[int] | None = None,
        contrastive: bool = True,
        contrastive_bias_sign: Literal["consistent", "paper"] = "consistent",
        resume: bool = True,
        activation_dtype: str = "float32",
        output_dir: str = "outputs/nmf",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, weights=weights, model_kwargs=model_kwargs,
                         activation_dtype=activation_dtype, output_dir=output_dir,
                         **kwargs)  # the base validates and records every argument
        for name, value, low in (("components", components, 1), ("images_per_class", images_per_class, 1),
                                 ("smoothgrad_samples", smoothgrad_samples, 1),
                                 ("relevance_batch_size", relevance_batch_size, 1), ("max_iter", max_iter, 1),
                                 ("sweeps", sweeps, 1), ("classes_per_pass", classes_per_pass, 1),
                                 ("grid_pool", grid_pool, 1), ("prototypes", prototypes, 1),
                                 ("top_units", top_units, 1), ("hyperplane_steps", hyperplane_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"NMFConcepts: {name} must be an int >= {low}, got {value!r}")
        if min_images is not None and (isinstance(min_images, bool) or not isinstance(min_images, int)
                                       or min_images < 1):
            raise ValueError(f"NMFConcepts: min_images must be an int >= 1 or null (= components), got {min_images!r}")
        if classes is not None and (not classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0
                                                       for c in classes) or len(set(classes)) != len(classes)):
            raise ValueError(f"NMFConcepts: classes must be distinct class indices >= 0 or null (all), got {classes!r}")
        for name, value, allowed in (("relevance", relevance, RELEVANCE_MODES), ("relevance_target", relevance_target, TARGETS),
                                     ("smoothgrad_noise", smoothgrad_noise, NOISE_MODES),
                                     ("solver", solver, SOLVERS), ("init", init, tuple(i for i in INITS if i != "custom")),
                                     ("negative", negative, ("error", "shift")),
                                     ("strip_axis", strip_axis, STRIP_AXES),
                                     ("hyperplane_init", hyperplane_init, ("zeros", "linear")),
                                     ("swap_read", swap_read, SWAP_READS),
                                     ("contrastive_bias_sign", contrastive_bias_sign, ("consistent", "paper"))):
            if value not in allowed:
                raise ValueError(f"NMFConcepts: {name} must be one of {allowed}, got {value!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"NMFConcepts: tol must be a number >= 0, got {tol!r}")
        if isinstance(smoothgrad_std, bool) or not isinstance(smoothgrad_std, (int, float)) or not smoothgrad_std >= 0:
            raise ValueError(f"NMFConcepts: smoothgrad_std must be a number >= 0, got {smoothgrad_std!r}")
        if isinstance(deeplift_baseline, bool) or not isinstance(deeplift_baseline, (int, float)):
            raise ValueError(f"NMFConcepts: deeplift_baseline must be a number (a constant image), got {deeplift_baseline!r}")
        if isinstance(hyperplane_lr, bool) or not isinstance(hyperplane_lr, (int, float)) or not hyperplane_lr > 0:
            raise ValueError(f"NMFConcepts: hyperplane_lr must be a number > 0, got {hyperplane_lr!r}")
        if isinstance(hyperplane_fraction, bool) or not isinstance(hyperplane_fraction, (int, float)) \
                or not 0 <= hyperplane_fraction <= 1:
            raise ValueError(f"NMFConcepts: hyperplane_fraction must be in [0, 1], got {hyperplane_fraction!r}")
        offs = list(shift_offsets or [])
        if not offs or any(isinstance(o, bool) or not isinstance(o, (int, float)) for o in offs) \
                or sum(float(o) == 0 for o in offs) != 1 or len(offs) < 2:
            raise ValueError(f"NMFConcepts: shift_offsets must be numbers containing 0 exactly once and at least one "
                             f"other offset, e.g. {list(_PAPER_OFFSETS)}; got {shift_offsets!r}")
        if insertion_patch is not None and (len(insertion_patch) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in insertion_patch)):
            raise ValueError(f"NMFConcepts: insertion_patch must be [height, width] in pixels (ints >= 1) or null "
                             f"(no insertion test), got {insertion_patch!r}")
        for p in pairs or []:
            if not isinstance(p, (list, tuple)) or len(p) != 2 or p[0] == p[1]:
                raise ValueError(f"NMFConcepts: pairs must be [A, B] lists of two different classes (names or "
                                 f"indices), got {p!r}")
        #: lets DDP wrap the module (it refuses one without a trainable parameter); never trained (0 elements)
        self.ddp_anchor = nn.Parameter(torch.zeros(0))
        #: (num classes, k, C) components after fit (zeros for skipped classes)
        self.components: torch.Tensor | None = None
        self.contrastive_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ Lightning plumbing of a fit without steps
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.network()  # a registered submodule from here on: the trainer moves it to the device

    def train(self, mode: bool = True) -> "NMFConcepts":
        super().train(mode)
        if self.net is not None:
            self.net.eval()  # frozen: batch-norm statistics never mix images
        return self

    def configure_optimizers(self) -> None:
        return None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int:
        return -1  # nothing is trained by gradient: skip the training batches

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_train_start(self) -> None:
        self.explain()

    # ------------------------------------------------------------------ the image pool and its activations
    def _pool(self) -> tuple[Any, Any, int]:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "predict_dataloader"):
            raise ValueError("NMFConcepts needs a data module with predict_dataloader() (the image pool: "
                             "{'image', 'index'} items), e.g. data_modules.synthetic.SyntheticWorldDataModule")
        loader = dm.predict_dataloader()
        return dm, loader.dataset, int(loader.batch_size or 64)

    def predict_dataset(self) -> Any:
        return self._pool_dataset

    def _chunks(self, n: int, size: int) -> list[tuple[int, int]]:
        return [(s, min(n, s + size)) for s in range(0, n, size)]

    def _images(self, idx: list[int] | torch.Tensor) -> torch.Tensor:
        idx = [int(i) for i in idx]
        if not idx:
            return torch.zeros(0)
        return torch.stack([self._pool_dataset[i]["image"] for i in idx]).to(self.device)

    def _acts(self, idx: list[int] | torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) float32 stored activations of dataset indices ``idx`` (in that order)."""
        import numpy as np

        idx = np.asarray([int(i) for i in idx], dtype=np.int64)
        return torch.from_numpy(np.asarray(self.entry.acts[idx], dtype=np.float32)).to(self.device)

    def capture(self) -> None:
        """The layer's activations of the whole pool into the activation store (the shared base's capture), the pool
        cut into fixed batches shared round-robin among processes."""
        LayerMethod.on_predict_start(self)
        if self._writers:
            for b, (s, e) in enumerate(self.shard(self._chunks(self.num_images, self._batch))):
                batch = {"image": self._images(range(s, e)), "index": torch.arange(s, e)}
                LayerMethod.predict_step(self, batch, b)
        LayerMethod.on_predict_epoch_end(self)

    def predictions(self, head: LayerHead) -> torch.Tensor:
        """(N,) int64 predicted class of every pool image, from the stored activations through the head."""
        preds = torch.zeros(self.num_images, dtype=torch.int64)
        for s, e in self.shard(self._chunks(self.num_images, self._batch)):
            preds[s:e] = head(self._acts(range(s, e))).argmax(-1).cpu() + 1
        return self._sum_across_ranks(preds) - 1

    # ------------------------------------------------------------------ relevance
    def _relevance_model(self, example: torch.Tensor) -> tuple[nn.Module, nn.Module]:
        hp = self.hparams
        net = self.network()
        if hp.relevance == "deeplift_smoothgrad":
            if getattr(self, "_dl_net", None) is None:
                self._dl_net = deeplift_compatible(net, example[:1])
            net = self._dl_net
        layer = net.get_submodule(self.layer_name)
        return (_LogSoftmax(net).eval() if hp.relevance_target == "log_softmax" else net), layer

    def relevance(self, images: torch.Tensor, target: int) -> torch.Tensor:
        """(n, C, h, w) relevance of the layer for class ``target`` of images (n, 3, H, W), in fixed batches."""
        hp = self.hparams
        model, layer = self._relevance_model(images)
        out = []
        for s in range(0, images.shape[0], hp.relevance_batch_size):
            x = images[s : s + hp.relevance_batch_size]
            t = torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
            if hp.relevance == "deeplift_smoothgrad":
                out.append(deeplift_smoothgrad(model, layer, x, t, baseline=float(hp.deeplift_baseline),
                                               n_samples=hp.smoothgrad_samples, stdevs=float(hp.smoothgrad_std),
                                               noise=hp.smoothgrad_noise, seed=hp.seed))
            else:
                out.append(gradient_x_activation(model, layer, x, t))
        return torch.cat(out)

    # ------------------------------------------------------------------ per-class NMF (resumable)
    def _spec(self, c: int, images: torch.Tensor) -> dict[str, Any]:
        hp = self.hparams
        keys = ("components", "relevance", "relevance_target", "relevance_relu", "solver", "init", "max_iter", "tol",
                "sweeps", "negative", "hyperplane_fraction", "hyperplane_relu", "seed")
        spec = {k: hp[k] for k in keys}
        if hp.relevance == "deeplift_smoothgrad":
            spec.update({k: hp[k] for k in ("deeplift_baseline", "smoothgrad_samples", "smoothgrad_std",
                                            "smoothgrad_noise")})
            if hp.smoothgrad_noise == "captum":
                spec["relevance_batch_size"] = hp.relevance_batch_size
        return {"version": JOB_VERSION, "code": code_digest(*_JOB_CODE), "activations": self.store_key, "class": int(c),
                "images": [int(i) for i in images], **spec}

    def factorise(self, todo: list[int], selected: dict[int, torch.Tensor]) -> dict[int, dict[str, Any]]:
        """Relevance, weighting and one batched NMF for the classes ``todo`` (one chunk); per-class results."""
        hp = self.hparams
        maps, pixels, positions = [], [], []
        for c in todo:
            idx = selected[c]
            images, acts = self._images(idx), self._acts(idx)
            if hp.relevance == "none":
                R = torch.ones_like(acts)
            else:
                R = self.relevance(images, c).to(acts)
            maps.append(spatial_relevance(R, relu=hp.relevance_relu) * acts)
            score = spatial_relevance(R, relu=hp.hyperplane_relu)[:, 0]  # (n, h, w)
            top = score.flatten(1).amax(1)
            keep = (score > hp.hyperplane_fraction * top[:, None, None]) & (top > 0)[:, None, None]
            positions.append(torch.nonzero(keep.flatten()).flatten().cpu().tolist())
            pixels.append(int(acts.shape[2] * acts.shape[3]))
        X, n_rows = class_rows(maps)
        try:
            res = batched_nmf(X, hp.components, n_rows=n_rows, solver=hp.solver, init=hp.init, max_iter=hp.max_iter,
                              tol=float(hp.tol), seed=hp.seed, negative=hp.negative, sweeps=hp.sweeps)
        except ValueError as e:
            if "negative" in str(e):
                raise ValueError(f"NMFConcepts: the relevance-weighted activations of layer {self.layer_name!r} have "
                                 f"negative entries (classes {todo}); NMF needs non-negative input: probe a layer "
                                 "after a ReLU (e.g. a whole block), or set negative: shift to subtract each "
                                 f"class's minimum. ({e})") from None
            raise
        shares = component_shares(res.W, res.H)
        out = {}
        for b, c in enumerate(todo):
            n = len(selected[c])
            out[c] = {
                "H": res.H[b].double().cpu().tolist(),
                "error": float(res.error[b]), "n_iter": int(res.n_iter[b]), "converged": bool(res.converged[b]),
                "skipped": res.skipped.get(b, ""),
                "shares": shares[b].double().cpu().tolist(),
                "image_codes": image_codes(res.W[b], n, pixels[b]).double().cpu().tolist(),
                "hyperplane_pixels": positions[b],
            }
        return out

    # ------------------------------------------------------------------ prototypes and the prediction test
    def prototype_cells(self, bases: torch.Tensor, classes: torch.Tensor, preds: torch.Tensor) -> tuple[TopCells, TopCells, tuple[int, int]]:
        """Top cells of every component among all pool images and among images not predicted as the class,
        streamed over fixed pool chunks, merged exactly across chunks and processes."""
        hp = self.hparams
        res: dict[str, TopCells | None] = {"all": None, "excl": None}
        grid = None
        for s, e in self.shard(self._chunks(self.num_images, self._batch)):
            cells = pool_grid(self._acts(range(s, e)), hp.grid_pool)
            grid = tuple(cells.shape[2:])
            ids = torch.arange(s, e, device=cells.device)
            for tag in res:
                tc = top_cells(cells, bases.to(cells), hp.prototypes, preds=preds[s:e].to(cells.device),
                               classes=classes.to(cells.device), exclude_own=tag == "excl", image_ids=ids)
                tc = TopCells(*(t.cpu() for t in (tc.score, tc.index, tc.image, tc.y, tc.x)))
                res[tag] = tc if res[tag] is None else merge_top_cells(res[tag], tc, grid)
        parts = distributed.gather_objects([(res["all"], res["excl"], grid)])
        grid = next(g for _, _, g in parts if g is not None)
        merged = {}
        for j, tag in enumerate(("all", "excl")):
            out = None
            for p in parts:
                if p[j] is not None:
                    out = p[j] if out is None else merge_top_cells(out, p[j], grid)
            merged[tag] = out
        return merged["all"], merged["excl"], grid

    def cell_vectors(self, tc: TopCells) -> torch.Tensor:
        """(A, K, C) pooled activation vectors of the top-1 cells of ``tc`` (zeros where none)."""
        img, y, x = tc.image[:, :, 0], tc.y[:, :, 0], tc.x[:, :, 0]
        ok = img >= 0
        need = sorted(set(img[ok].tolist()))
        A, K = img.shape
        if not need:
            return torch.zeros(A, K, self.entry.shape[1], device=self.device)
        cells = pool_grid(self._acts(need), self.hparams.grid_pool)  # (n, C, gh, gw)
        row = {i: r for r, i in enumerate(need)}
        r = torch.tensor([row.get(int(i), 0) for i in img.flatten()], device=cells.device).reshape(A, K)
        vecs = cells[r, :, y.clamp(min=0).to(cells.device), x.clamp(min=0).to(cells.device)]  # (A, K, C)
        return vecs * ok.to(cells.device)[..., None]

    def prediction_test(self, head: LayerHead, tc: TopCells, classes: torch.Tensor,
                        valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(class), argmax hit and validity (A,) of the strips of each class's top-1 component cells."""
        vecs = self.cell_vectors(tc)  # (A, K, C)
        ok = valid.cpu() & (tc.image[:, :, 0] >= 0).all(1)
        strips = vecs.permute(0, 2, 1)[..., None] if self.hparams.strip_axis == "vertical" else vecs.permute(0, 2, 1)[:, :, None]
        p, hit = [], []
        for s, e in self._chunks(len(classes), self.hparams.classes_per_pass):
            logits = head(strips[s:e])
            cls = classes[s:e].to(logits.device)
            p.append(class_probability(logits, cls).cpu())
            hit.append((logits.argmax(-1) == cls).cpu())
        p = torch.cat(p) if p else torch.zeros(0)
        hit = torch.cat(hit) if hit else torch.zeros(0, dtype=torch.bool)
        return torch.where(ok, p.double(), torch.full_like(p.double(), float("nan"))), hit & ok, ok

    # ------------------------------------------------------------------ contrasts
    def _class_index(self, c: int | str, names: list[str], K: int) -> int:
        if isinstance(c, str) and c in names:
            return names.index(c)
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < K:
            return c
        raise ValueError(f"NMFConcepts: pair class {c!r} is neither a class name nor an index in 0..{K - 1}; "
                         f"class names: {names[:20]}")

    def contrasts(self, pairs: list[tuple[int, int]], selected: dict[int, torch.Tensor],
                  jobs: dict[int, dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
        """Hyperplanes of every ordered pair among the paired classes, the shifting test and the insertion test
        (one row per configured pair). Every process computes the same rows (pairs are few)."""
        hp = self.hparams
        if not pairs:
            return []
        members = sorted({c for p in pairs for c in p})
        vectors = []
        for c in members:
            pos = (jobs.get(c) or {}).get("hyperplane_pixels") or []
            if len(selected.get(c, [])) == 0 or not pos:
                vectors.append(torch.zeros(0, self.entry.shape[1], device=self.device))
                continue
            acts = self._acts(selected[c])  # (n, C, h, w)
            rows = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])
            vectors.append(rows[torch.tensor(pos, device=rows.device)])
        feats, counts = pad_classes(vectors)
        planes = pairwise_hyperplanes(feats, counts, steps=hp.hyperplane_steps, lr=float(hp.hyperplane_lr),
                                      init=hp.hyperplane_init, seed=hp.seed)
        net, layer = self.network(), self.network().get_submodule(self.layer_name)
        offsets = torch.tensor([float(o) for o in hp.shift_offsets], dtype=torch.float64)
        nonzero = (offsets != 0).nonzero().flatten()
        rows, contrast_maps = [], []
        for i, (a, b) in enumerate(pairs):
            ia, ib = members.index(a), members.index(b)
            # ``pair``: the position among the configured pairs, which keys the pair (in report.html too) even when
            # one pair is configured twice, and joins its row to its contrastive components
            row = {"pair": i, "pair_name": f"{names[a]} vs {names[b]}", "class_a": a, "name_a": names[a],
                   "class_b": b, "name_b": names[b],
                   "images_a": len(selected.get(a, [])), "images_b": len(selected.get(b, [])),
                   "vectors_a": int(counts[ia]), "vectors_b": int(counts[ib])}
            if int(counts[ia]) == 0 or int(counts[ib]) == 0:
                row["status"] = "skipped: a class of the pair has no selected images or no relevant pixels"
                rows.append(row)
                continue
            w, bias = planes.normals[ia, ib], planes.bias[ia, ib]
            row.update(hyperplane_accuracy=float(planes.accuracy[ia, ib]), status="ok")
            images_a = self._images(selected[a])
            P = shifted_probabilities(net, layer, images_a, w[None].to(images_a), offsets.to(images_a))[0]  # (O, K)
            pb, pa = P[:, b].double().cpu(), P[:, a].double().cpu()
            best = nonzero[pb[nonzero].argmax()]
            read = best if hp.swap_read == "same_offset" else best - 1
            row.update(p_b_unshifted=float(pb[offsets == 0][0]), p_a_unshifted=float(pa[offsets == 0][0]),
                       p_b_max=float(pb[best]), best_offset=float(offsets[best]), p_a_at_best=float(pa[read]))
            row["swap"] = bool(row["p_b_max"] >= row["p_a_at_best"] and row["p_b_max"] > 0.5)
            if hp.insertion_patch is not None:
                row.update(self.insertion(images_a, a, b, w, bias, selected))
            if hp.contrastive:
                acts_a = self._acts(selected[a])
                contrast_maps.append((len(rows), contrastive_mask(acts_a, w.to(acts_a), bias,
                                                                  bias_sign=hp.contrastive_bias_sign) * acts_a))
            rows.append(row)
        self.contrastive_rows = self.contrastive_components(rows, contrast_maps)
        return rows

    def contrastive_components(self, rows: list[dict[str, Any]],
                               maps: list[tuple[int, torch.Tensor]]) -> list[dict[str, Any]]:
        """One batched NMF of every pair's hyperplane-weighted activations (n_a, C, h, w); one row per component."""
        hp = self.hparams
        if not maps:
            return []
        X, n_rows = class_rows([m for _, m in maps])
        res = batched_nmf(X, hp.components, n_rows=n_rows, solver=hp.solver, init=hp.init, max_iter=hp.max_iter,
                          tol=float(hp.tol), seed=hp.seed, negative="error", sweeps=hp.sweeps)
        shares = component_shares(res.W, res.H)
        out = []
        for b, (r, _) in enumerate(maps):
            pair = {k: rows[r][k] for k in ("pair", "class_a", "name_a", "class_b", "name_b")}
            if b in res.skipped:
                out.append({**pair, "component": -1, "status": f"skipped: {res.skipped[b]}"})
                continue
            for t in range(hp.components):
                units, loads = top_loadings(res.H[b, t].double().cpu(), hp.top_units)
                out.append({**pair, "component": t, "share": float(shares[b, t]),
                            "top_units": " ".join(str(u) for u in units),
                            "loadings": " ".join(f"{v:.4f}" for v in loads), "norm": float(res.H[b, t].norm()),
                            "error": float(res.error[b]), "status": "ok"})
        return out

    def insertion(self, images_a: torch.Tensor, a: int, b: int, w: torch.Tensor, bias: torch.Tensor,
                  selected: dict[int, torch.Tensor]) -> dict[str, Any]:
        """The patch-insertion test of one pair: mean p(A), p(B) of A's images as they are, with B's most
        B-sided patch in the bottom-right corner, and with that corner filled with 0 (control)."""
        hp = self.hparams
        idx_b = selected[b]
        acts_b = self._acts(idx_b)  # (n, C, h, w)
        side = torch.einsum("nchw,c->nhw", acts_b, w.to(acts_b)) + bias.to(acts_b)  # > 0: B's side
        n, h, wd = side.shape
        flat = int(torch.argmax(side.flatten()))  # ties: the first (smallest image, then y, x)
        k, y, x = flat // (h * wd), (flat % (h * wd)) // wd, flat % wd
        img_b = self._images([int(idx_b[k])])[0]
        H, W = img_b.shape[-2:]
        ph, pw = min(hp.insertion_patch[0], H), min(hp.insertion_patch[1], W)
        cy, cx = int((y + 0.5) * H / h), int((x + 0.5) * W / wd)
        y0, x0 = min(max(0, cy - ph // 2), H - ph), min(max(0, cx - pw // 2), W - pw)
        patch = img_b[:, y0 : y0 + ph, x0 : x0 + pw]
        net = self.network()
        out = {"patch_image": int(idx_b[k]), "patch_y": y0, "patch_x": x0}
        cls = torch.tensor([a, b], device=images_a.device)
        for tag, imgs in (("orig", images_a), ("inserted", paste_patch(images_a, patch)),
                          ("control", fill_corner(images_a, (ph, pw), 0.0))):
            with torch.no_grad():
                p = net(imgs).softmax(-1)[:, cls].mean(0).double().cpu()
            out[f"p_a_{tag}"], out[f"p_b_{tag}"] = float(p[0]), float(p[1])
        return out

    # ------------------------------------------------------------------ the run
    def explain(self) -> None:
        """Everything, once, at the start of fit (see the module docstring); sets :attr:`result`."""
        hp = self.hparams
        dm, self._pool_dataset, self._batch = self._pool()
        self.capture()
        net = self.network()
        layer = net.get_submodule(self.layer_name)
        image_shape = tuple(self._pool_dataset[0]["image"].shape)
        head = LayerHead(net, layer, image_shape)
        preds = self.predictions(head)
        log.info("NMFConcepts: %d pool images, activations %s, predictions done", self.num_images,
                 tuple(self.entry.shape))
        with torch.no_grad():
            K = int(head(self._acts([0])).shape[1])
        names = self._class_names(dm, K)
        classes = list(range(K)) if hp.classes is None else list(hp.classes)
        bad = [c for c in classes if not 0 <= c < K]
        if bad:
            raise ValueError(f"NMFConcepts: classes {bad} out of range: the network has {K} outputs (0..{K - 1})")
        pairs = [(self._class_index(a, names, K), self._class_index(b, names, K)) for a, b in (hp.pairs or [])]
        for a, b in pairs:
            if a == b:
                raise ValueError(f"NMFConcepts: pair [{names[a]}, {names[b]}] names one class twice")
        classes = sorted(set(classes) | {c for p in pairs for c in p})
        sel_list = select_class_images(preds, classes, hp.images_per_class, hp.seed)
        selected = dict(zip(classes, sel_list))
        min_images = hp.min_images or hp.components
        skipped: dict[int, str] = {}
        for c in classes:
            n = len(selected[c])
            if n < min_images:
                skipped[c] = (f"{n} images predicted as this class, fewer than min_images={min_images}: lower "
                              "components / min_images or give more images")
        for c, why in skipped.items():
            log.warning("NMFConcepts: class %d (%s) skipped: %s", c, names[c], why)

        # per-class NMF, resumable: finished classes are read back, the rest in fixed chunks shared by the processes
        cache = JobCache(f"{self.cache_dir}/nmf_jobs", enabled=hp.resume)
        jobs: dict[int, dict[str, Any]] = {}
        todo = []
        for c in classes:
            if c in skipped:
                continue
            found = cache.load(f"class{c:05d}", self._spec(c, selected[c]))
            if found is not None:
                jobs[c] = found
            else:
                todo.append(c)
        resumed = len(jobs)
        if resumed:
            log.info("NMFConcepts: %d classes read back from %s, %d to factorise", resumed, cache.folder, len(todo))
        chunks = [todo[s:e] for s, e in self._chunks(len(todo), hp.classes_per_pass)]
        mine = {}
        for chunk in self.shard(chunks):
            log.info("NMFConcepts: relevance and NMF of classes %s", chunk)
            done = self.factorise(chunk, selected)
            for c, r in done.items():
                cache.store(f"class{c:05d}", self._spec(c, selected[c]), r)
            mine.update(done)
        for c, r in distributed.gather_objects(sorted(mine.items())):
            jobs[c] = r
        for c, r in jobs.items():
            if r["skipped"]:
                skipped[c] = r["skipped"]
                log.warning("NMFConcepts: class %d (%s) skipped by the NMF: %s", c, names[c], r["skipped"])
        self.resumed_classes = resumed

        C = int(self.entry.shape[1])
        k = hp.components
        fitted = [c for c in classes if c in jobs and not jobs[c]["skipped"]]
        self.components = torch.zeros(K, k, C, dtype=torch.float64)
        for c in fitted:
            self.components[c] = torch.tensor(jobs[c]["H"], dtype=torch.float64)

        proto = pred = None
        cls_t = torch.tensor(fitted, dtype=torch.long)
        if fitted:
            bases = self.components[cls_t].float().to(self.device)
            log.info("NMFConcepts: prototypes and the prediction-from-components test of %d classes", len(fitted))
            tc_all, tc_excl, grid = self.prototype_cells(bases, cls_t, preds)
            valid = torch.ones(len(fitted), dtype=torch.bool)
            pred = {"all": self.prediction_test(head, tc_all, cls_t, valid),
                    "excl": self.prediction_test(head, tc_excl, cls_t, valid)}
            proto = (tc_all, tc_excl, grid)

        if pairs:
            log.info("NMFConcepts: hyperplanes, shifting and insertion tests of %d pairs", len(pairs))
        contrast_rows = self.contrasts(pairs, selected, jobs, names)
        self.result = self._result(classes, names, selected, jobs, skipped, fitted, proto, pred, contrast_rows, dm,
                                   preds)

    @staticmethod
    def _class_names(dm: Any, K: int) -> list[str]:
        for attr in ("class_names", "classes"):
            try:
                names = getattr(dm, attr, None)
            except Exception:  # noqa: BLE001 - a property that needs files the run does not have
                names = None
            if isinstance(names, (list, tuple)) and len(names) == K and all(isinstance(n, str) for n in names):
                return list(names)
        return [f"class{c}" for c in range(K)]

    # ------------------------------------------------------------------ outputs
    def _result(self, classes, names, selected, jobs, skipped, fitted, proto, pred, contrast_rows, dm,
                preds) -> MethodResult:
        hp = self.hparams
        pos = {c: i for i, c in enumerate(fitted)}
        class_rows_, comp_rows, pictures, scalars = [], [], [], {}
        for c in classes:
            r = jobs.get(c)
            status = skipped.get(c, "ok")
            crow = {"class": c, "class_name": names[c], "predicted_images": int((preds == c).sum()),
                    "selected_images": len(selected[c]), "status": status}
            if c in pos:
                i = pos[c]
                crow.update(error=r["error"], n_iter=r["n_iter"], converged=r["converged"])
                for tag in ("all", "excl"):
                    p, hit, ok = pred[tag]
                    crow[f"p_{tag}"] = float(p[i])
                    crow[f"hit_{tag}"] = bool(hit[i])
                scalars[f"nmf/reconstruction_error/{_safe(names[c])}"] = float(r["error"])
                tc_all, tc_excl, grid = proto
                for t in range(hp.components):
                    h = torch.tensor(r["H"][t], dtype=torch.float64)
                    units, loads = top_loadings(h, hp.top_units)
                    name = f"prototypes/{_safe(names[c])}/component_{t}"
                    comp_rows.append({
                        "class": c, "class_name": names[c], "component": t, "share": r["shares"][t],
                        "top_units": " ".join(str(u) for u in units),
                        "loadings": " ".join(f"{v:.4f}" for v in loads),
                        "norm": float(h.norm()),
                        "prototype_picture": name + ".png",
                        "prototype_images": " ".join(str(int(v)) for v in tc_all.image[i, t] if v >= 0),
                        "prototype_images_excl": " ".join(str(int(v)) for v in tc_excl.image[i, t] if v >= 0),
                        "top_cosine": float(tc_all.score[i, t, 0]),
                        "top_cosine_excl": float(tc_excl.score[i, t, 0]),
                        "class_error": r["error"], "p_all": crow["p_all"], "hit_all": crow["hit_all"],
                        "p_excl": crow["p_excl"], "hit_excl": crow["hit_excl"],
                    })
                    pictures.append(Picture(name, self._strip_drawer(tc_all, tc_excl, grid, i, t, dm)))
            class_rows_.append(crow)
        summary_vals = {}
        if pred is not None:
            for tag in ("all", "excl"):
                p, hit, ok = pred[tag]
                summary_vals[f"count_{tag}"] = int(hit.sum())
                summary_vals[f"classes_{tag}"] = int(ok.sum())
                summary_vals[f"mean_p_{tag}"] = float(p[ok].mean()) if bool(ok.any()) else float("nan")
                scalars[f"nmf/prediction_test/count_{tag}"] = summary_vals[f"count_{tag}"]
                scalars[f"nmf/prediction_test/mean_p_{tag}"] = summary_vals[f"mean_p_{tag}"]
        errors = [jobs[c]["error"] for c in fitted]
        if errors:
            scalars["nmf/reconstruction_error/mean"] = float(sum(errors) / len(errors))
        for row in contrast_rows:
            if row.get("status") == "ok":
                tag = f"{_safe(row['name_a'])}_vs_{_safe(row['name_b'])}"
                scalars[f"nmf/shifting/p_b_max/{tag}"] = row["p_b_max"]
                if "p_b_inserted" in row:
                    scalars[f"nmf/insertion/p_b_shift/{tag}"] = row["p_b_inserted"] - row["p_b_orig"]
        summary = (f"NMF concepts: {len(fitted)} classes factorised ({getattr(self, 'resumed_classes', 0)} resumed), "
                   f"{len(skipped)} skipped, {hp.components} components each, layer {self.layer_name}")
        if summary_vals:
            summary += (f"; prediction from components: {summary_vals['count_all']}/{summary_vals['classes_all']} "
                        f"classes (mean p {summary_vals['mean_p_all']:.3f}) with all images, "
                        f"{summary_vals['count_excl']}/{summary_vals['classes_excl']} (mean p "
                        f"{summary_vals['mean_p_excl']:.3f}) excluding the class's own")
        meta = self.run_meta() | {"skipped": {names[c]: why for c, why in sorted(skipped.items())},
                                  "prediction_test": summary_vals, "class_names": names}
        tables = {"components": comp_rows, "classes": class_rows_}
        contrastive_rows = getattr(self, "contrastive_rows", None) or []
        if contrast_rows:
            tables["contrasts"] = contrast_rows
        if contrastive_rows:
            tables["contrastive_components"] = contrastive_rows
        return MethodResult(tables=tables, meta=meta, pictures=pictures, summary=summary, scalars=scalars,
                            report=self.report_views(tables),
                            data={"components": self.components, "classes": fitted, "selected": selected,
                                  "predictions": preds, "prediction_test": summary_vals})

    @staticmethod
    def report_views(tables: dict[str, list[dict[str, Any]]]) -> tuple[ReportView, ...]:
        """The views of report.html: ``classes`` (each class with its components, prototype strips and
        prediction-from-components numbers) and, when pairs were contrasted, ``contrasts``: each pair "A vs B" with
        its hyperplane accuracy, shifting-test and patch-insertion figures (its ``contrasts`` row) and its "why A
        rather than B" components; A and B link to the class view, and a class there lists the pairs it is in.
        Without contrastive components (``contrastive: false``, or no pair trained) the pairs' rows are the items.
        Columns are offered only where some row has them (a table of skipped rows lacks the numbers)."""
        def present(table: str, cols: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(c for c in cols if any(c in r for r in tables.get(table, ())))

        views = [ReportView("classes", "components", group="class", item="component", title="class_name",
                            order="component", picture="prototype_picture", details="classes",
                            columns=present("components", ("component", "share", "top_units", "loadings", "top_cosine",
                                                           "top_cosine_excl")),
                            summary=("status", "p_all", "hit_all", "p_excl", "hit_excl"))]
        figures = ("status", "hyperplane_accuracy", "p_b_max", "swap", "p_b_inserted", "p_b_control")
        refs = {"class_a": "classes", "class_b": "classes"}
        if tables.get("contrastive_components") and tables.get("contrasts"):
            rows = tables["contrastive_components"]
            views.append(ReportView(
                "contrasts", "contrastive_components", group="pair", item="component", title="pair_name",
                order="component", details="contrasts", summary=figures, refs=refs,
                picture="prototype_picture" if any("prototype_picture" in r for r in rows) else None,
                columns=present("contrastive_components", ("component", "share", "top_units", "loadings", "norm",
                                                           "status"))))
        elif tables.get("contrasts"):
            views.append(ReportView(
                "contrasts", "contrasts", group="pair", item="pair_name", refs=refs,
                columns=present("contrasts", ("pair_name", "class_a", "class_b", *figures, "p_b_unshifted",
                                              "p_a_at_best", "best_offset", "p_b_orig"))))
        return tuple(views)

    def _strip_drawer(self, tc_all: TopCells, tc_excl: TopCells, grid: tuple[int, int], i: int, t: int, dm: Any):
        """A function drawing component t of class row i: top crops from all images (first row) and from images
        not predicted as the class (second row), nearest-upscaled to at least 32 px, 2 px gaps."""
        mean = torch.tensor(getattr(dm, "mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(getattr(dm, "std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(3, 1, 1)
        dataset = self._pool_dataset

        def draw():
            from PIL import Image

            rows = []
            for tc in (tc_all, tc_excl):
                img, y, x = tc.image[i, t], tc.y[i, t], tc.x[i, t]
                ok = img >= 0
                if not bool(ok.any()):
                    rows.append(None)
                    continue
                images = torch.stack([dataset[int(j)]["image"].cpu() for j in img[ok]])
                crops = crop_cells(images, y[ok], x[ok], grid) * std + mean  # (m, 3, sy, sx)
                rows.append(crops.clamp(0, 1))
            sy, sx = next(r for r in rows if r is not None).shape[-2:]
            scale = max(1, -(-32 // max(sy, sx)))
            sy, sx, gap = sy * scale, sx * scale, 2
            P = self.hparams.prototypes
            canvas = torch.ones(3, 2 * sy + gap, P * sx + (P - 1) * gap)
            for r, crops in enumerate(rows):
                if crops is None:
                    continue
                crops = F.interpolate(crops, scale_factor=scale, mode="nearest")
                for j, crop in enumerate(crops):
                    canvas[:, r * (sy + gap): r * (sy + gap) + sy, j * (sx + gap): j * (sx + gap) + sx] = crop
            return Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))

        return draw
