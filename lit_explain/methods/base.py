"""LayerMethod: what every method that explains the units of one layer of a model needs, written once.

A method explains units of one layer of one model over one dataset. Whatever it does next (tally IoUs, search
formulas, name filters with words, fit concept classifiers, factorise), it first needs the same things, and they
live here:

* the network: a model spec (``torchvision:resnet18``, ``timm:...``, ``python:<module>:<factory>``, a file) and its
  weights, loaded by :func:`~lit_explain.models.loading.load_model`, frozen, in eval mode (:meth:`network`);
* the layer's activations (N, U, h, w) over the predict dataset, captured once into the content-addressed
  :class:`~lit_explain.activations.store.ActivationStore` (a later run or another method with the same model,
  layer, data and dtype reads them back): every rank writes its own rows of one shared partial entry in
  ``predict_step`` and the entry is committed atomically at epoch end (:meth:`captured`);
* the units to explain: a list, a seeded random sample, or all (:meth:`select_units`);
* exact per-unit thresholds in one convention, ``quantile`` = the upper-tail fraction (0.005 = the top 0.5 % of a
  unit's N·h·w values lie above its threshold), units sharded over ranks (:meth:`unit_thresholds`);
* per-unit top images from the stored per-image maxima, ties to the smaller dataset index (:meth:`top_images`);
* DDP: work sharded round-robin and results gathered in rank order through :mod:`lit_explain.distributed`, so
  1 and N processes give identical results;
* the result: a subclass sets :attr:`result` (a :class:`~lit_explain.results.MethodResult`: tables, metadata,
  pictures, a summary) and the writer callback writes it; the method never writes files itself.

Subclasses add their idea: :class:`~lit_explain.methods.dissection.DissectionMethod` a concept index, LaViSE a
trained explainer head. A subclass that needs activations in ``on_predict_epoch_end`` calls
``super().on_predict_epoch_end()`` first, then reads :attr:`entry`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule

from lit_explain import distributed
from lit_explain.activations.stats import store_unit_quantiles
from lit_explain.activations.store import ActivationEntry, ActivationStore, ActivationWriter, cache_key
from lit_explain.memory import TRIM_EVERY, release_free_memory
from lit_explain.results import MethodResult
from lit_explain.topk import merge_topk

__all__ = ["SILENT_REASON", "LayerMethod", "check_tail_fraction", "code_fingerprint", "dataset_fingerprint"]

log = logging.getLogger(__name__)

#: A callable mapping a batch of images (B, 3, H, W) to the layer's activations (B, U, h, w).
Features = Callable[[torch.Tensor], torch.Tensor]

ACTIVATION_DTYPES = ("float16", "float32")

#: Why a unit is reported unlabelled (the ``reason`` column of the tables, present when some unit is).
SILENT_REASON = "no activation above the threshold (dead, constant or saturated unit)"

#: Per-image maxima (images x units) read at a time by top_images / silent_units (16 MB as float32).
MAXES_BLOCK = 1 << 22


def check_tail_fraction(quantile: float, name: str = "quantile") -> float:
    """Validate the one threshold convention of the project: the upper-tail fraction in (0, 0.5).

    A value in [0.5, 1) is almost surely the other convention (the quantile level, 0.995 where 0.005 is meant),
    which would mark nearly every pixel active; it is refused with a message that says so.
    """
    q = float(quantile)
    if 0.5 <= q < 1.0:
        raise ValueError(f"{name}={q:g} looks like a quantile level; {name} is the upper-tail fraction (0.005 = the "
                         f"top 0.5 % of a unit's activations lie above its threshold): use {1 - q:g}")
    if not 0.0 < q < 0.5:
        raise ValueError(f"{name} must be the upper-tail fraction in (0, 0.5), e.g. 0.005; got {quantile}")
    return q


def dataset_fingerprint(dataset: Any) -> str:
    """A content key of a dataset for the activation cache: its ``fingerprint()`` when it has one, else a hash of
    its ``image_paths`` (a list or a method returning one; with the files' sizes and modification times)."""
    if hasattr(dataset, "fingerprint"):
        return str(dataset.fingerprint())
    if hasattr(dataset, "image_paths"):
        paths = dataset.image_paths
        h = hashlib.sha256()
        for p in (paths() if callable(paths) else paths):
            h.update(str(p).encode())
            try:
                st = os.stat(p)
                h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                pass
            h.update(b"\n")
        return h.hexdigest()[:24]
    raise TypeError(f"{type(dataset).__name__} has neither fingerprint() nor image_paths(): the activation cache "
                    "cannot be keyed on its content; add one of them to the dataset")


def code_fingerprint(net: torch.nn.Module) -> str:
    """A hash of what the weights hash cannot see: the module tree as printed (strides, kernel sizes, activation
    choices set by factory arguments) and the source files defining every module class of ``net`` (a changed
    ``forward`` of a ``python:`` model). Modules without Python source (TorchScript, C extensions) count by repr."""
    h = hashlib.sha256(repr(net).encode())
    files = set()
    for m in net.modules():
        try:
            files.add(inspect.getsourcefile(type(m)))
        except (TypeError, OSError):
            continue
    for f in sorted(x for x in files if x):
        try:
            h.update(f.encode() + b"\0" + open(f, "rb").read())
        except OSError:
            h.update(f.encode())
    return h.hexdigest()[:24]


class LayerMethod(LightningModule):
    """Base class of every method explaining units of one layer (see the module docstring).

    Args:
        model: model spec for ``load_model``: ``torchvision:<arch>``, ``timm:<arch>``, ``python:<module>:<factory>``
            or a saved model file.
        layer: dotted name of the explained layer (``layer4``, ``layer4.1.conv2``, ``features.28``, ``blocks.11``).
        weights: ``none`` (random init), ``default`` (the library's pretrained weights, from the local cache) or a
            checkpoint path.
        model_kwargs: extra keyword arguments for the model factory (e.g. ``num_classes: 365``).
        units: explicit unit indices to explain (None: all, or ``random_units``).
        random_units: when > 0 and ``units`` is None, explain this many units drawn with ``seed`` (>= 0).
        quantile: upper-tail fraction of the activation threshold, in (0, 0.5): 0.005 puts the threshold at the
            99.5th percentile of all N·h·w values of the unit.
        activation_dtype: storage dtype of the activation cache (``float16`` or ``float32``); thresholds, maxima
            and bitmaps are computed from the stored values, so exactness claims hold for them.
        cache_dir: folder of the activation cache (shared by every method and run).
        output_dir: where the results, pictures and the resolved configuration are written.
        top_images: images kept per unit (pictures, examples), >= 1.
        seed: seed of the random unit selection and of any other draw of the method (>= 0).
    """

    def __init__(
        self,
        model: str,
        layer: str,
        weights: str = "none",
        model_kwargs: dict[str, Any] | None = None,
        units: list[int] | None = None,
        random_units: int = 0,
        quantile: float = 0.005,
        activation_dtype: str = "float16",
        cache_dir: str = "cache",
        output_dir: str = "outputs/explanations",
        top_images: int = 6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # recorded here, from this frame and every subclass __init__ frame around it, so the base's defaults are
        # recorded too when a subclass forwards **kwargs (a subclass calling save_hyperparameters() again after
        # super().__init__ would drop them unless it lists every argument itself)
        self.save_hyperparameters()
        #: where the caches live: a run option, not part of what the method is (kept out of hparams and checkpoints,
        #: and so never in conflict with a data module's own ``cache_dir`` when Lightning logs both)
        self.cache_dir = str(cache_dir)
        check_tail_fraction(quantile)
        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a model spec such as 'torchvision:resnet18' or 'python:pkg.mod:factory'")
        if not isinstance(layer, str) or not layer.strip():
            raise ValueError("layer must be a dotted layer name such as 'layer4' or 'features.28'")
        if activation_dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"activation_dtype must be one of {ACTIVATION_DTYPES}, got {activation_dtype!r}")
        if int(random_units) < 0:
            raise ValueError(f"random_units must be >= 0 (0 = every unit), got {random_units}")
        if int(top_images) < 1:
            raise ValueError(f"top_images must be >= 1, got {top_images}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if units is not None:
            bad = [u for u in units if int(u) < 0]
            if not len(units):
                raise ValueError("units is empty: list the units to explain, or null for every unit")
            if bad or len(set(int(u) for u in units)) != len(units):
                raise ValueError(f"units must be distinct indices >= 0, got {list(units)[:20]}")
        self.net: torch.nn.Module | None = None
        self.random_net: torch.nn.Module | None = None
        self.entry: ActivationEntry | None = None
        self.random_entry: ActivationEntry | None = None
        #: what the method found, for the writer callbacks (set at the end of predict)
        self.result: MethodResult | None = None
        self._writers: dict[str, ActivationWriter] = {}
        self._locks: dict[str, Any] = {}
        self._captures: list[tuple[str, Features, str, dict[str, Any]]] = []
        self._seen: list[torch.Tensor] = []

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``ddp_spawn`` sends the module to its processes) without this run's state: the result and its
        drawing closures, open memory maps, probe hooks, writers and locks belong to the process that made them."""
        state = dict(super().__getstate__())
        for name in ("result", "entry", "random_entry", "probe", "random_probe"):
            if name in state:
                state[name] = None
        state.update(_writers={}, _locks={}, _captures=[], _seen=[])
        return state

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        """Lightning's, from the caller's frame, always leaving out ``cache_dir`` (see :attr:`cache_dir`)."""
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        super().save_hyperparameters(*args, ignore=[*ignore, "cache_dir"], frame=frame or inspect.currentframe().f_back,
                                     logger=logger)

    # ------------------------------------------------------------------ hparams shared by every method
    # (properties so that subclasses with other argument lists, e.g. LaViSE's, read them the same way)
    @property
    def layer_name(self) -> str:
        return self.hparams.layer

    # ------------------------------------------------------------------ distributed helpers
    @property
    def world(self) -> int:
        return distributed.world_size()

    def _barrier(self, name: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            self.trainer.strategy.barrier(name)

    @staticmethod
    def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
        return distributed.all_sum(t)

    @staticmethod
    def shard(jobs: Sequence[Any]) -> list[Any]:
        """This rank's share of a job list (round-robin), for work split across DDP processes."""
        return distributed.shard(jobs)

    @staticmethod
    def gather_rows(rows: list[Any]) -> list[Any]:
        """Every rank's rows concatenated in rank order, on all ranks."""
        return distributed.gather_objects(rows)

    # ------------------------------------------------------------------ the network
    def network(self) -> torch.nn.Module:
        """The frozen model in eval mode, loaded once."""
        if self.net is None:
            from lit_explain.models.loading import load_model

            hp = self.hparams
            net = load_model(hp.model, weights=hp.weights, **(hp.model_kwargs or {}))
            self.net = net.eval().requires_grad_(False)
        return self.net

    def features(self) -> Features:
        """The function capturing the layer's activations (default: a :class:`LayerProbe` on the network)."""
        from lit_explain.models.probe import LayerProbe

        if getattr(self, "probe", None) is None:
            self.probe = LayerProbe(self.network(), [self.layer_name])
        layer, probe = self.layer_name, self.probe
        return lambda images: probe(images)[layer]

    def needs_random_copy(self) -> bool:
        """Whether the method also captures a randomly initialised copy of the model (a null baseline); its
        activations go to :attr:`random_entry`, cached like the model's."""
        return False

    def _random_features(self) -> Features:
        from lit_explain.models.probe import LayerProbe
        from lit_explain.models.random_copy import random_init_copy

        hp = self.hparams
        if self.random_net is None:
            self.random_net = random_init_copy(self.network(), hp.model, seed=hp.seed, **(hp.model_kwargs or {}))
            self.random_probe = LayerProbe(self.random_net, [self.layer_name])
        layer, probe = self.layer_name, self.random_probe
        return lambda images: probe(images)[layer]

    # ------------------------------------------------------------------ the activation store
    def predict_dataset(self) -> Any:
        """The dataset of the predict loader (activations are stored at its indices: ``dataset[i]['index'] == i``)."""
        loader = self.trainer.predict_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        return loader.dataset

    def _cache_lookup(self, net: torch.nn.Module, name: str, dataset: Any) -> tuple[dict[str, Any], str, Any]:
        """(key parts, content key, committed entry or None) of ``net``'s layer activations over ``dataset``."""
        from lit_explain.models.loading import model_fingerprint

        parts = {
            "model": name,
            "model_kwargs": json.dumps(self.hparams.model_kwargs or {}, sort_keys=True, default=str),
            "model_fingerprint": model_fingerprint(net),
            "model_code": code_fingerprint(net),
            "layer": self.layer_name,
            "dataset": dataset_fingerprint(dataset),
            "transform": repr(getattr(dataset, "transform", None)),
            "dtype": self.hparams.activation_dtype,
        }
        key = cache_key(**parts)
        return parts, key, self.store.get(key)

    def setup(self, stage: str) -> None:
        """Load the network here, on every process, before Lightning moves the module to its device and outside the
        predict loop's inference mode (methods that take gradients through it need that)."""
        self._predict_started = False
        self.network()

    def teardown(self, stage: str) -> None:
        """Lightning skips the whole predict loop when the loader has no batch; say so instead of exiting quietly
        with nothing written."""
        if stage == "predict" and not getattr(self, "_predict_started", True):
            raise ValueError(f"{type(self).__name__}: the predict dataloader has no images, nothing was explained; "
                             "check the data module's split / subset / selection")
        if self._trainer is not None and distributed.is_distributed() and \
                getattr(self.trainer.strategy, "_start_method", None) in ("spawn", "fork", "forkserver"):
            # processes Lightning spawned exit right after this run: leave together, with the process group closed,
            # so no rank's gloo threads outlive the store of rank 0 (that race aborts a rank at exit)
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def on_predict_start(self) -> None:
        self._predict_started = True
        hp = self.hparams
        dataset = self.predict_dataset()
        self.num_images = len(dataset)
        if self.num_images == 0:
            raise ValueError(f"{type(self).__name__}: the predict dataset has no images; check the data module's "
                             "split / subset / selection")
        self.store = ActivationStore(f"{self.cache_dir}/activations")
        self._captures = []
        self._seen, self._writers = [], {}
        nets = [("", self.network(), hp.model, self.features())]
        if self.needs_random_copy():
            feats = self._random_features()
            if self._same_layer_output(self.features(), feats, dataset):
                log.warning("random-model null baseline skipped: layer %r has no parameters upstream, so the randomly "
                            "initialised copy gives the very same activations (the baseline would equal the model)",
                            self.layer_name)
                self.random_net = None
            else:
                nets.append(("random_", self.random_net, f"{hp.model} (random init, seed {hp.seed})", feats))
        for prefix, net, name, feats in nets:
            parts, key, entry = self._cache_lookup(net, name, dataset)
            setattr(self, f"{prefix}entry", entry)
            setattr(self, f"{prefix}store_key", key)  # e.g. part of the key of results derived from the entry
            self._captures.append((prefix, feats, key, parts))
            if entry is not None:
                log.info("activations found in cache %s", entry.path)
                continue
            if self.trainer.is_global_zero:  # another run may be building it: wait for it, then read its entry
                self._locks[prefix] = self.store.lock(key)
                entry = self.store.get(key)
            entry = distributed.broadcast_object(entry is not None) and self.store.get(key)
            if entry:
                self._release(prefix)
                setattr(self, f"{prefix}entry", entry)
                log.info("activations found in cache %s (built by a concurrent run)", entry.path)
                continue
            shape = self._layer_shape(feats, dataset)
            if self.trainer.is_global_zero:
                self._writers[prefix] = self.store.writer(key, shape, hp.activation_dtype, create=True, meta=parts)
            self._barrier(f"store_create_{prefix}")
            if not self.trainer.is_global_zero:
                self._writers[prefix] = self.store.writer(key, shape, hp.activation_dtype, create=False, meta=parts)

    def _same_layer_output(self, a: Features, b: Features, dataset: Any) -> bool:
        """Whether two networks give bit-identical activations at the layer on the dataset's first image."""
        x = dataset[0]["image"][None].to(self.device)
        with torch.no_grad():
            return bool(torch.equal(a(x), b(x)))

    def _release(self, prefix: str) -> None:
        lock = self._locks.pop(prefix, None)
        if lock is not None:
            lock.release()

    def _layer_shape(self, feats: Features, dataset: Any) -> tuple[int, int, int, int]:
        """(N, U, h, w) from one forward on the first image of the dataset."""
        x = dataset[0]["image"][None].to(self.device)
        with torch.no_grad():
            a = feats(x)
        if a.dim() != 4:
            raise ValueError(f"layer {self.layer_name!r} gives activations of shape {tuple(a.shape)}; a (B, U, h, w) "
                             "feature map is needed (choose a convolutional layer or a token layer)")
        return (len(dataset), *a.shape[1:])

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Capture the layer's activations of the batch (unless cached) at the images' dataset indices."""
        idx = batch["index"].detach().cpu().to(torch.int64)
        self._seen.append(idx)
        for prefix, feats, _, _ in self._captures:
            writer = self._writers.get(prefix)
            if writer is not None and not bool(writer.done[idx.numpy()].all()):
                with torch.no_grad():
                    acts = feats(batch["image"])
                writer.write(idx, acts)
        if batch_idx % TRIM_EVERY == TRIM_EVERY - 1:
            release_free_memory()  # the batches' freed buffers back to the system (lit_explain.memory)
        return None

    def on_predict_epoch_end(self) -> None:
        """Commit the captured entries; :attr:`entry` (and :attr:`random_entry`) are then readable on every rank."""
        release_free_memory()
        for prefix, _, key, _ in self._captures:
            writer = self._writers.pop(prefix, None)
            if writer is None:
                continue
            writer.flush()
            writer.close()
            self._barrier(f"store_flush_{prefix}")
            if self.trainer.is_global_zero:
                writer.commit()
                self._release(prefix)
            self._barrier(f"store_commit_{prefix}")
            entry = self.store.get(key)
            if entry is None:
                raise RuntimeError(f"activation cache {self.store.root / key} was not committed")
            setattr(self, f"{prefix}entry", entry)
        local = torch.cat(self._seen) if self._seen else torch.zeros(0, dtype=torch.int64)
        #: this rank's images, sorted
        self.local_indices = torch.sort(local).values

    # ------------------------------------------------------------------ statistics over the stored activations
    def select_units(self, num_units: int) -> torch.Tensor:
        """(U_sel,) int64 units to explain: ``units``, else ``random_units`` drawn with ``seed``, else all."""
        hp = self.hparams
        if hp.units is not None:
            units = torch.as_tensor(list(hp.units), dtype=torch.int64)
            bad = units[(units < 0) | (units >= num_units)]
            if len(bad):
                raise ValueError(f"units {bad.tolist()} out of range: layer {self.layer_name!r} has {num_units} units")
            return units
        if hp.random_units and hp.random_units < num_units:
            g = torch.Generator().manual_seed(hp.seed)
            return torch.sort(torch.randperm(num_units, generator=g)[: hp.random_units]).values
        return torch.arange(num_units)

    def unit_thresholds(self, units: torch.Tensor, entry: ActivationEntry | None = None) -> torch.Tensor:
        """Exact per-unit thresholds (U_sel,) float64 of ``entry`` (default: the model's activations): the
        ``1 - quantile`` quantile (numpy 'linear') of each unit's N·h·w stored values; units sharded over ranks."""
        q = 1.0 - self.hparams.quantile
        positions = torch.arange(len(units))
        mine = torch.tensor(self.shard(positions.tolist()), dtype=torch.int64)
        out = torch.zeros(len(units), dtype=torch.float64)
        if len(mine):
            out[mine] = store_unit_quantiles((entry or self.entry).acts, q, units[mine])
        return self._sum_across_ranks(out)

    def _maxes_blocks(self, units: torch.Tensor, entry: ActivationEntry | None = None):
        """The stored per-image maxima of ``units``, as (first image, (B, U_sel) float32) blocks of at most
        :data:`MAXES_BLOCK` values in image order: readers of the maxima never hold (N, U_sel) at once."""
        maxes = (entry or self.entry).maxes
        cols = units.numpy()
        step = max(1, MAXES_BLOCK // max(1, len(cols)))
        for s in range(0, maxes.shape[0], step):
            yield s, torch.from_numpy(np.asarray(maxes[s : s + step][:, cols], dtype=np.float32))

    def top_images(self, units: torch.Tensor, k: int | None = None,
                   entry: ActivationEntry | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k images of largest maximum activation of each unit, from the stored per-image maxima.

        Returns:
            (U_sel, k) float32 maxima in descending order and (U_sel, k) int64 dataset indices; ties go to the
            smaller index, so the answer does not depend on batch order or the number of processes. Units with
            fewer than k images are padded with -inf / -1. The maxima are read in blocks of images, merged into
            the best k so far by :func:`lit_explain.topk.merge_topk`.
        """
        k = int(self.hparams.top_images if k is None else k)
        values = torch.full((len(units), k), float("-inf"))
        index = torch.full((len(units), k), -1, dtype=torch.int64)
        for s, block in self._maxes_blocks(units, entry):
            ids = torch.arange(s, s + len(block)).expand(len(units), -1)
            values, index = merge_topk(values, index, block.T, ids, k)
        return values, index

    def silent_units(self, units: torch.Tensor, thresholds: torch.Tensor,
                     entry: ActivationEntry | None = None) -> torch.Tensor:
        """(U_sel,) bool: units with no stored activation strictly above their threshold anywhere in the dataset
        (dead units, constant units, saturated units whose top tail is one repeated value). Such a unit has an empty
        activation region, so every concept scores IoU 0 with it; methods report it unlabelled, with a reason."""
        top = torch.full((len(units),), float("-inf"), dtype=torch.float64)
        for _, block in self._maxes_blocks(units, entry):
            top = torch.maximum(top, block.to(torch.float64).amax(0))
        return top <= thresholds.to(torch.float64)

    def run_meta(self) -> dict[str, Any]:
        """Metadata every result carries: the method, its arguments, the activation cache and the data size."""
        meta = {
            "method": type(self).__name__,
            "hparams": dict(self.hparams),
            "num_images": self.num_images,
            "world_size": self.world,
        }
        if self.entry is not None:
            meta["activation_cache"] = str(self.entry.path)
            meta["activation_shape"] = list(self.entry.shape)
        if self.random_entry is not None:
            meta["random_activation_cache"] = str(self.random_entry.path)
        return meta
