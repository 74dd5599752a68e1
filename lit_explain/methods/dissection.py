"""DissectionMethod: the predict loop shared by every dissection-style method (NetDissect, CoEx, CCE).

The loop, in Lightning's predict hooks:

1. ``setup``: load the backbone (:func:`lit_explain.models.loading.load_model`), probe the layer, get the concept
   vocabulary and concept index from the data module, and look the activations up in the
   :class:`~lit_explain.activations.store.ActivationStore` by content key.
2. ``predict_step``: unless cached, one forward pass per batch; the layer's activations go to the store at the
   images' global dataset indices (every rank writes its own rows of one shared partial entry).
3. ``on_predict_epoch_end``: the entry is committed atomically, per-unit thresholds are computed exactly (units
   sharded over ranks), and the subclass's :meth:`explain` turns activations + concept index into result rows.
   Dataset-level numbers are reduced with torchmetrics sum states or gathered, so 1 and N processes agree.
4. The :class:`~callbacks.explanation_writer.ExplanationWriter` (added automatically) writes the unified table
   (:mod:`lit_explain.results`), JSON with vocabulary and configuration, pictures and TensorBoard entries.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule

from lit_explain.activations.stats import store_unit_quantiles
from lit_explain.activations.store import ActivationEntry, ActivationStore, ActivationWriter, cache_key
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.vocabulary import ConceptVocabulary

__all__ = ["DissectionMethod"]

log = logging.getLogger(__name__)


class DissectionMethod(LightningModule):
    """Base class of predict-loop dissection methods; subclasses implement :meth:`explain`.

    Args:
        model: model spec for ``load_model``: ``torchvision:<arch>``, ``timm:<arch>``, ``python:<module>:<factory>``
            or a saved model file.
        layer: dotted name of the layer to dissect (``layer4``, ``features.28``, ``blocks.11``).
        weights: ``none`` (random init), ``default`` (the library's pretrained weights, from the local cache) or a
            checkpoint path.
        model_kwargs: extra keyword arguments for the model factory (e.g. ``num_classes: 365``).
        units: explicit unit indices to explain (None: all, or ``random_units``).
        random_units: when > 0 and ``units`` is None, explain this many units drawn with ``seed``.
        quantile: upper-tail fraction of the NetDissect threshold (0.005: the 99.5th percentile of all N*h*w
            values of the unit).
        activation_dtype: storage dtype of the activation cache (``float16`` or ``float32``).
        cache_dir: folder of the activation cache (shared by every method and run).
        output_dir: where the results, pictures and the resolved configuration are written.
        top_images: images per unit picture.
        num_pictures: how many units get a picture (the highest-IoU ones).
        seed: seed of the random unit selection.
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
        output_dir: str = "outputs/dissection",
        top_images: int = 6,
        num_pictures: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.net: torch.nn.Module | None = None
        self.results: list[dict[str, Any]] = []
        self.result_meta: dict[str, Any] = {}
        self._writers: dict[str, ActivationWriter] = {}
        self.entry: ActivationEntry | None = None
        self.random_net: torch.nn.Module | None = None
        self.random_entry: ActivationEntry | None = None
        self._seen: list[torch.Tensor] = []

    # ------------------------------------------------------------------ distributed helpers
    @property
    def world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _barrier(self, name: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            self.trainer.strategy.barrier(name)

    @staticmethod
    def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def shard(self, jobs: Sequence[Any]) -> list[Any]:
        """This rank's share of a job list (round-robin), for work split across DDP processes."""
        rank = self.global_rank if self._trainer is not None else 0
        return list(jobs)[rank :: self.world]

    def gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Concatenate every rank's rows (Python objects) on all ranks."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, rows)
            return [r for p in parts for r in p]
        return list(rows)

    # ------------------------------------------------------------------ setup
    def configure_callbacks(self):
        from callbacks.explanation_writer import ExplanationWriter

        return [ExplanationWriter()]

    def setup(self, stage: str) -> None:
        from lit_explain.models.loading import load_model
        from lit_explain.models.probe import LayerProbe

        hp = self.hparams
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise RuntimeError(f"{type(self).__name__} needs a data module with a concept index (e.g. BrodenDataModule)")
        if self.net is None:
            net = load_model(hp.model, weights=hp.weights, **(hp.model_kwargs or {}))
            net.eval().requires_grad_(False)
            self.net = net
            self.probe = LayerProbe(self.net, [hp.layer])
        if self.needs_random_copy() and self.random_net is None:
            from lit_explain.models.random_copy import random_init_copy

            self.random_net = random_init_copy(self.net, hp.model, seed=hp.seed, **(hp.model_kwargs or {}))
            self.random_probe = LayerProbe(self.random_net, [hp.layer])
        dm.setup("predict")
        self.vocabulary: ConceptVocabulary = dm.vocabulary
        # one rank builds the concept index (cached atomically), the others then load it
        if self.trainer.is_global_zero:
            self.concept_index: ConceptIndex = dm.concept_index()
        self._barrier("concept_index")
        if not self.trainer.is_global_zero:
            self.concept_index = dm.concept_index()
        dataset = dm.dataset
        self.store = ActivationStore(f"{hp.cache_dir}/activations")
        self.key_parts, self.store_key, self.entry = self._cache_lookup(self.net, hp.model, dataset)
        if self.random_net is not None:
            self.random_key_parts, self.random_store_key, self.random_entry = self._cache_lookup(
                self.random_net, f"{hp.model} (random init, seed {hp.seed})", dataset)
        self.num_images = len(dataset)

    def _cache_lookup(self, net: torch.nn.Module, name: str, dataset: Any) -> tuple[dict[str, Any], str, Any]:
        """(key parts, content key, committed entry or None) of ``net``'s layer activations over ``dataset``."""
        from lit_explain.models.loading import model_fingerprint

        parts = {
            "model": name,
            "model_fingerprint": model_fingerprint(net),
            "layer": self.hparams.layer,
            "dataset": dataset.fingerprint(),
            "transform": repr(getattr(dataset, "transform", None)),
            "dtype": self.hparams.activation_dtype,
        }
        key = cache_key(**parts)
        return parts, key, self.store.get(key)

    def needs_random_copy(self) -> bool:
        """Whether the method also captures a randomly initialised copy of the model (a null baseline); its
        activations go to ``self.random_entry``, cached like the model's."""
        return False

    def _captures(self) -> list[tuple[str, Any, str, dict[str, Any]]]:
        """(attribute prefix, probe, store key, key parts) of every network whose activations this run captures."""
        out = [("", self.probe, self.store_key, self.key_parts)]
        if self.random_net is not None:
            out.append(("random_", self.random_probe, self.random_store_key, self.random_key_parts))
        return out

    def on_predict_start(self) -> None:
        self._seen = []
        self._writers = {}
        for prefix, probe, key, meta in self._captures():
            if getattr(self, f"{prefix}entry") is not None:
                log.info("activations found in cache %s", getattr(self, f"{prefix}entry").path)
                continue
            shape = self._layer_shape(probe)
            if self.trainer.is_global_zero:
                self._writers[prefix] = self.store.writer(key, shape, self.hparams.activation_dtype, create=True,
                                                          meta=meta)
            self._barrier(f"store_create_{prefix}")
            if not self.trainer.is_global_zero:
                self._writers[prefix] = self.store.writer(key, shape, self.hparams.activation_dtype, create=False,
                                                          meta=meta)

    def _layer_shape(self, probe: Any = None) -> tuple[int, int, int, int]:
        """(N, U, h, w) from one dummy forward on the first image of the dataset."""
        dataset = self.trainer.datamodule.dataset
        x = dataset[0]["image"][None].to(self.device)
        with torch.no_grad():
            a = (probe or self.probe)(x)[self.hparams.layer]
        return (self.num_images, *a.shape[1:])

    # ------------------------------------------------------------------ the loop
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        idx = batch["index"].detach().cpu().to(torch.int64)
        self._seen.append(idx)
        for prefix, probe, _, _ in self._captures():
            writer = self._writers.get(prefix)
            if writer is not None and not bool(writer.done[idx.numpy()].all()):
                with torch.no_grad():
                    acts = probe(batch["image"])[self.hparams.layer]
                writer.write(idx, acts)
        return None

    def on_predict_epoch_end(self) -> None:
        for prefix, _, key, _ in self._captures():
            writer = self._writers.pop(prefix, None)
            if writer is None:
                continue
            writer.flush()
            writer.close()
            self._barrier(f"store_flush_{prefix}")
            if self.trainer.is_global_zero:
                writer.commit()
            self._barrier(f"store_commit_{prefix}")
            entry = self.store.get(key)
            if entry is None:
                raise RuntimeError(f"activation cache {self.store.root / key} was not committed")
            setattr(self, f"{prefix}entry", entry)
        local = torch.cat(self._seen) if self._seen else torch.zeros(0, dtype=torch.int64)
        self.local_indices = torch.sort(local).values
        self.selected_units = self._select_units(self.entry.shape[1])
        self.thresholds = self.unit_thresholds(self.selected_units)
        self.results = self.explain(self.entry, self.local_indices, self.selected_units, self.thresholds)
        self.result_meta = {
            "method": type(self).__name__,
            "hparams": dict(self.hparams),
            "vocabulary": self.vocabulary.to_dict(),
            "activation_cache": str(self.entry.path),
            "activation_shape": list(self.entry.shape),
            "mask_shape": list(self.concept_index.mask_shape),
            "num_images": self.num_images,
            "world_size": self.world,
        }
        if self.random_entry is not None:
            self.result_meta["random_activation_cache"] = str(self.random_entry.path)

    # ------------------------------------------------------------------ shared pieces for subclasses
    def _select_units(self, num_units: int) -> torch.Tensor:
        hp = self.hparams
        if hp.units is not None:
            units = torch.as_tensor(list(hp.units), dtype=torch.int64)
            bad = units[(units < 0) | (units >= num_units)]
            if len(bad):
                raise ValueError(f"units {bad.tolist()} out of range: layer {hp.layer!r} has {num_units} units")
            return units
        if hp.random_units and hp.random_units < num_units:
            g = torch.Generator().manual_seed(hp.seed)
            return torch.sort(torch.randperm(num_units, generator=g)[: hp.random_units]).values
        return torch.arange(num_units)

    def unit_thresholds(self, units: torch.Tensor, entry: ActivationEntry | None = None) -> torch.Tensor:
        """Exact per-unit upper-tail quantile thresholds (U_sel,) float64 of ``entry`` (default: the model's
        activations); units sharded across ranks."""
        q = 1.0 - self.hparams.quantile
        positions = torch.arange(len(units))
        mine = torch.tensor(self.shard(positions.tolist()), dtype=torch.int64)
        out = torch.zeros(len(units), dtype=torch.float64)
        if len(mine):
            out[mine] = store_unit_quantiles((entry or self.entry).acts, q, units[mine])
        return self._sum_across_ranks(out)

    def image_chunks(self, indices: torch.Tensor, units: int) -> list[torch.Tensor]:
        """Split image indices into chunks whose upsampled bitmaps stay around 2**25 values."""
        per_image = max(1, units * self.concept_index.pixel_size)
        size = max(1, min(256, (1 << 25) // per_image))
        return list(indices.split(size)) if len(indices) else []

    # ------------------------------------------------------------------ subclass hook
    def explain(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
                thresholds: torch.Tensor) -> list[dict[str, Any]]:
        """Return the result rows (identical on every rank). ``local_indices`` are this rank's images."""
        raise NotImplementedError
