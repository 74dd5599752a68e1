"""Compositional (CoEx) and Clustered Compositional Explanations (CCE) as a DDP predict loop.

For each selected unit u of the layer :

1. **Activation ranges.** ``num_clusters = 1``: NetDissect's single range ``(T_u, +inf)`` with the exact
   upper-tail quantile threshold (CoEx, and NetDissect with ``length = 1``). ``num_clusters = K > 1`` (CCE):
   the exact 1-D k-means of all raw activations of u (zeros dropped on post-ReLU layers), ranges = each
   cluster's [min, max] in ascending order (:func:`lit_explain.activations.clusters.cached_unit_ranges`). The
   sufficient statistic, a per-unit histogram of the cached float16 values, is accumulated over each rank's
   images and summed across ranks, so 1 and N processes cluster identically.
2. **Jobs.** Every (unit, range) is a job; jobs are sharded round-robin across ranks. A job builds the unit's
   dataset bitmap ``lo < upsample(a_u) < hi`` on the concept-mask grid
   (:func:`lit_explain.activations.bitmaps.range_bitmap`) and runs the beam search with the method's
   :class:`~lit_explain.concepts.search.SearchSettings` (:func:`lit_explain.concepts.search.beam_search`, exact
   vectorised scoring by default).
3. **Columns.** Beside the unified leading columns: the CCE metrics of the explanation
   (:mod:`lit_explain.metrics.functional.sample_counts`), the best single concept (NetDissect's answer),
   visited states, optional detection-accuracy-optimal formula (detacc-compexp), and null baselines, so an IoU
   of 0.04 can be judged: the IoU of the same search with the concept annotations shuffled across images
   (``null_shuffled_iou``: what chance alignment achieves with these masks and this bitmap), and the IoU of the
   same unit and range index of a randomly initialised copy of the model (``null_random_iou``: what the
   architecture and the concept masks give without training; its activations are cached like the model's and
   clustered the same way); the baselines are registered in :mod:`lit_explain.methods.null_baselines`.
4. **Model-based metrics (options).** ``concept_masking``: CCE's label-masking score of each explanation (the
   cosine between the unit's in-range activations before and after attenuating everything but the explanation in
   the input; one forward pass per (explanation, image containing it), in batches). ``range_importance``: the
   fraction of images whose predicted class changes when cluster range k of every selected unit is zeroed
   (a forward hook on the layer; K + 1 forward passes per image, summed across ranks), reported on each row of
   cluster k. Both are in :mod:`lit_explain.metrics.model_based`.
5. **Resume.** Each finished job is written atomically to ``{output_dir}/jobs/<key>.json`` by a
   :class:`~lit_explain.job_cache.JobCache` (the key hashes the activation cache, the concept index, the range
   and every search setting); a rerun after an interruption loads them instead of searching again, so it
   produces the same table.

``num_clusters=1, length=1`` is NetDissect with the plain dataset IoU; ``num_clusters=1, length=3`` is Compositional
Explanations (Mu & Andreas 2020, with CCE's length and de-duplicated search); ``num_clusters=5, length=3`` is CCE
(La Rosa et al. 2023).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lit_explain.activations.bitmaps import range_bitmap
from lit_explain.activations.clusters import CLUSTER_METHODS, cached_unit_ranges
from lit_explain.activations.store import ActivationEntry
from lit_explain.concepts.formulas import Formula, parse
from lit_explain.concepts.optimal import DEFAULT_MAX_NODES, optimal_search
from lit_explain.concepts.search import SearchContext, SearchSettings, beam_search, detacc_optimal_search
from lit_explain.concepts.tally import UnitTally, formula_stats
from lit_explain.job_cache import JobCache, code_digest
from lit_explain.methods.dissection import DissectionMethod
from lit_explain.methods.null_baselines import NULL_BASELINES, NullJob
from lit_explain.metrics.functional.sample_counts import detection_accuracy_from_counts, explanation_metrics_from_counts
from lit_explain.metrics.model_based import concept_masking_score, range_importance_scores

__all__ = ["CompositionalExplanations", "NULL_BASELINES"]

log = logging.getLogger(__name__)
#: Seconds between progress messages of the (unit, range) searches.
PROGRESS_SECONDS = 10.0
#: the code a stored (unit, range) job depends on (its key includes their source: see job_cache.code_digest)
_JOB_CODE = ("lit_explain.methods.compositional", "lit_explain.methods.null_baselines", "lit_explain.concepts",
             "lit_explain.activations", "lit_explain.metrics", "lit_explain.ratios")
#: Search modes of the (unit, range) jobs.
SEARCH_MODES = ("beam", "optimal")
#: Order of the column groups of a row (the CSV's column order follows it).
_ROW_PARTS = ("search", "metrics", "concept_masking", "shuffled_labels", "detacc", "random_model")


class CompositionalExplanations(DissectionMethod):
    """CoEx / CCE explanations of every (unit, activation range). Arguments of :class:`DissectionMethod`, plus:

    Args:
        num_clusters: activation ranges per unit: 1 = NetDissect's ``(threshold, inf)`` (CoEx), 5 = CCE.
        length: maximum formula length (number of concepts; NOT adds nothing): 1 = NetDissect, 3 = CoEx/CCE.
        beam_size: beam width of the search.
        first_beam_size: leaves in the first beam; None = 2 * beam_size (CCE), beam_size is compexp's choice.
        scorer: ``exact`` (vectorised exact scores, default), ``none`` (exhaustive dense evaluation),
            ``mmesh``, ``cfh`` or ``areas`` (CCE's heuristics; ``areas`` is not admissible).
        candidate_limit: restrict the concepts added by the search to the best ``k`` single concepts
            (compexp's BEAM_SEARCH_LIMIT); None = all.
        complexity_penalty: rank formulas by ``penalty^(length - 1) * IoU`` (1.0 = plain IoU).
        search: ``beam`` (CoEx/CCE's beam search) or ``optimal``: the formula of maximum IoU among all formulas of
            length <= ``length`` of the same grammar, by branch and bound seeded with the beam's answer (so never
            worse), with a certificate in the row: ``optimality_gap`` (proved upper bound minus IoU; 0 = proven
            optimal), ``upper_bound``, ``proven``, ``budget_hit``, ``search_nodes``, ``search_passes`` and the
            seed's ``beam_iou``. Needs ``complexity_penalty`` 1 and no ``candidate_limit`` (it maximises plain IoU
            over every concept). Null baselines keep the beam search (their columns do not change with this option).
        optimal_max_nodes: node budget of ``search: optimal`` per (unit, range): exact passes over the dataset
            before it stops with the best formula found and an honest gap (>= 1). Deterministic, unlike a time
            budget, so 1 and 2 processes agree.
        cluster_method: ``exact`` (optimal 1-D k-means) or ``sklearn`` (``KMeans(random_state=seed)``, CCE parity).
        drop_zeros: drop exact zeros before clustering: ``auto`` (when the unit has no negative value, CCE),
            ``true`` or ``false``.
        null_baselines: baselines reported beside each IoU: ``shuffled_labels`` (the same search with the images'
            annotations permuted, seeded by ``seed``: columns ``null_shuffled_iou``, ``null_shuffled_label``) and
            ``random_model`` (the same search for the same unit and range index of the model's architecture at
            random initialisation, weights drawn from ``seed`` (:func:`~lit_explain.models.random_copy.random_init_copy`);
            costs a second forward pass per image: columns ``null_random_iou``, ``null_random_label``). Empty to
            skip.
        detacc_length: also report the detection-accuracy-optimal formula (detacc-compexp: keep extending past
            ``length`` while its DetAcc grows).
        max_detacc_length: longest formula tried by ``detacc_length``.
        compute_metrics: add the CCE metric columns (activation/label/samples/explanation coverage, sizes).
        concept_masking: add CCE's concept-masking score (``concept_masking`` column; costs one forward pass per
            explanation and image where it occurs). The masks' random values come from a generator seeded with
            ``seed * 1000003 + unit * 101 + cluster``, so the score does not depend on the number of processes.
        range_importance: add CCE's range importance of each cluster index (``range_importance`` column; K + 1
            forward passes over the dataset; the layer must output (B, U, h, w) maps and the model logits).
        masking_batch_size: images per forward pass of the two options above.
        resume: reuse finished (unit, range) results from ``{output_dir}/jobs`` (written atomically per job).
        iou_threshold: an explanation is reported ``interpretable`` when its IoU exceeds this.
        **kwargs: see :class:`DissectionMethod` (model, layer, weights, units, random_units, quantile, ...).
    """

    def __init__(
        self,
        *args: Any,
        num_clusters: int = 5,
        length: int = 3,
        beam_size: int = 5,
        first_beam_size: int | None = None,
        scorer: str = "exact",
        candidate_limit: int | None = None,
        complexity_penalty: float = 1.0,
        search: str = "beam",
        optimal_max_nodes: int = DEFAULT_MAX_NODES,
        cluster_method: str = "exact",
        drop_zeros: bool | str = "auto",
        null_baselines: Sequence[str] = ("shuffled_labels",),
        detacc_length: bool = False,
        max_detacc_length: int = 6,
        compute_metrics: bool = True,
        concept_masking: bool = False,
        range_importance: bool = False,
        masking_batch_size: int = 64,
        resume: bool = True,
        iou_threshold: float = 0.04,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        #: the search settings of every job (validated here, with the accepted ranges in the messages)
        self.search = SearchSettings(length=length, beam_size=beam_size, first_beam_size=first_beam_size,
                                     scorer=scorer, candidate_limit=candidate_limit,
                                     complexity_penalty=complexity_penalty)
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
        if search == "optimal" and (complexity_penalty != 1.0 or candidate_limit is not None):
            raise ValueError("search: optimal maximises plain IoU over every concept: set complexity_penalty: 1.0 and "
                             f"candidate_limit: null (got {complexity_penalty} and {candidate_limit})")
        if isinstance(optimal_max_nodes, bool) or int(optimal_max_nodes) < 1:
            raise ValueError(f"optimal_max_nodes must be an integer >= 1, got {optimal_max_nodes!r}")
        if cluster_method not in CLUSTER_METHODS:
            raise ValueError(f"cluster_method must be one of {list(CLUSTER_METHODS)}, got {cluster_method!r}")
        if drop_zeros not in (True, False, "auto"):
            raise ValueError(f"drop_zeros must be 'auto', true or false, got {drop_zeros!r}")
        unknown = [b for b in null_baselines if b not in NULL_BASELINES]
        if unknown:
            raise ValueError(f"unknown null baselines {unknown}; available: {list(NULL_BASELINES)}")
        if detacc_length and max_detacc_length < length:
            raise ValueError(f"max_detacc_length must be >= length ({length}), got {max_detacc_length}")
        if masking_batch_size < 1:
            raise ValueError(f"masking_batch_size must be >= 1, got {masking_batch_size}")
        self.ranges: list[list[tuple[float, float]]] = []

    def needs_random_copy(self) -> bool:
        return any(NULL_BASELINES[b].needs_random_copy for b in self.hparams.null_baselines)

    # ------------------------------------------------------------------ activation ranges
    def unit_ranges(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
                    thresholds: torch.Tensor) -> list[list[tuple[float, float]]]:
        """Sorted (lo, hi) ranges of every selected unit (identical on all ranks)."""
        hp = self.hparams
        return cached_unit_ranges(entry, local_indices, units, thresholds, hp.num_clusters, hp.drop_zeros,
                                  hp.cluster_method, seed=hp.seed)

    def range_bitmap(self, entry: ActivationEntry, unit: int, lo: float, hi: float) -> torch.Tensor:
        """(N, H) bool ``lo < upsample(a_unit) < hi`` over the whole dataset (N = the cache's images)."""
        return range_bitmap(entry, unit, lo, hi, self.concept_index.mask_shape)

    # ------------------------------------------------------------------ jobs
    def _job_key(self, unit: int, k: int, lo: float, hi: float) -> tuple[str, dict[str, Any]]:
        """(file stem, spec): the spec holds everything the job's row depends on."""
        hp = self.hparams
        spec = {
            "code": code_digest(*_JOB_CODE),
            "activations": self.store_key,
            "index": self.concept_index.fingerprint(),
            "vocabulary": hashlib.sha256(json.dumps(self.vocabulary.to_dict()).encode()).hexdigest()[:16],
            "unit": int(unit), "cluster": int(k), "range": [repr(float(lo)), repr(float(hi))],
            "num_clusters": hp.num_clusters, **self.search.to_dict(), "null_baselines": list(hp.null_baselines),
            "search": hp.search, "optimal_max_nodes": hp.optimal_max_nodes if hp.search == "optimal" else None,
            "detacc_length": hp.detacc_length, "max_detacc_length": hp.max_detacc_length,
            "compute_metrics": hp.compute_metrics, "concept_masking": hp.concept_masking,
            "seed": hp.seed, "quantile": hp.quantile,
            "iou_threshold": hp.iou_threshold,
        }
        if self.random_entry is not None:
            spec["random_activations"] = self.random_store_key
        return f"u{int(unit):05d}_r{int(k)}", spec

    def explain(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
                thresholds: torch.Tensor) -> list[dict[str, Any]]:
        hp = self.hparams
        t0 = time.perf_counter()
        self.ranges = self.unit_ranges(entry, local_indices, units, thresholds)
        random_ranges: list[list[tuple[float, float]]] = []
        if self.random_entry is not None:  # the null model's units get their own thresholds and clusters
            random_ranges = self.unit_ranges(self.random_entry, local_indices, units,
                                             self.unit_thresholds(units, self.random_entry))
        ctx = SearchContext(self.concept_index)
        jobs = []
        for j, u in enumerate(units.tolist()):
            if not self.ranges[j]:
                jobs.append((j, u, 0, None, None))  # a unit that never fires: one empty row
            for k, (lo, hi) in enumerate(self.ranges[j]):
                jobs.append((j, u, k, lo, hi))
        mine = self.shard(jobs)
        cache = JobCache(Path(hp.output_dir) / "jobs", enabled=hp.resume)
        perm = torch.randperm(entry.shape[0], generator=torch.Generator().manual_seed(hp.seed))
        rows, done = [], 0
        t_log = t_jobs = time.perf_counter()
        for j, u, k, lo, hi in mine:
            if lo is None:
                rows.append(self._empty_row(u, float(thresholds[j])))
                continue
            stem, spec = self._job_key(u, k, lo, hi)
            row = cache.load(stem, spec)
            if row is None:
                t = time.perf_counter()
                rng = None
                if self.random_entry is not None and k < len(random_ranges[j]):
                    rng = random_ranges[j][k]
                row = self._explain_job(ctx, entry, u, k, lo, hi, float(thresholds[j]), perm, rng)
                row["seconds"] = round(time.perf_counter() - t, 4)
                cache.store(stem, spec, row)
            else:
                row = _decode_row(row)
            rows.append(row)
            done += 1
            now = time.perf_counter()
            if done in (1, len(mine)) or now - t_log >= PROGRESS_SECONDS:  # progress without flooding long runs
                t_log = now
                eta = (now - t_jobs) / done * (len(mine) - done)
                log.info("[rank %d] %d/%d (unit, range) jobs, %d reused, about %.0f s left; (unit %d, range %d): %s  "
                         "IoU %.4f", self.global_rank, done, len(mine), cache.hits, eta, u, k, row["label"] or "-",
                         float(row["iou"]))
        rows = self.gather_rows(rows)
        rows.sort(key=lambda r: (int(r["unit"]), int(r["cluster"])))
        if hp.range_importance:
            scores = range_importance_scores(self.network(), self.layer_name, local_indices, self._images,
                                             units.tolist(), self.ranges, hp.masking_batch_size)
            for r in rows:
                has_range = float(r["range_hi"]) > float(r["range_lo"])  # not the row of a unit that never fires
                r["range_importance"] = scores[int(r["cluster"])] if has_range else 0.0
        for r in rows:  # wall time depends on the machine: keep it out of the table, which must be reproducible
            r.pop("seconds", None)
        log.info("explained %d (unit, range) jobs in %.1f s (%d reused from %s)", len(rows),
                 time.perf_counter() - t0, cache.hits, cache.folder)
        return rows

    def _empty_row(self, unit: int, threshold: float) -> dict[str, Any]:
        return {"unit": unit, "cluster": 0, "range_lo": 0.0, "range_hi": 0.0, "label": "", "category": "",
                "length": 0, "iou": 0.0, "threshold": threshold, "interpretable": False}

    def _explain_job(self, ctx: SearchContext, entry: ActivationEntry, unit: int, k: int, lo: float, hi: float,
                     threshold: float, perm: torch.Tensor,
                     random_range: tuple[float, float] | None = None) -> dict[str, Any]:
        """The row of one (unit, range): the search, then the optional columns, in :data:`_ROW_PARTS` order."""
        hp = self.hparams
        vocab = self.vocabulary
        bitmap = self.range_bitmap(entry, unit, lo, hi)
        tally = UnitTally.build(ctx, bitmap)
        res = beam_search(ctx, tally, self.search)
        first = res.history[0][0] if res.history and res.history[0] else None
        certificate: dict[str, Any] = {}
        if hp.search == "optimal":  # branch and bound from the beam's answer: never worse, with a proved gap
            opt = optimal_search(ctx, tally, length=self.search.length, beam_size=0, seed=res.formula,
                                 max_nodes=hp.optimal_max_nodes)
            certificate = {**opt.columns(), "visited": int(res.visited) + int(opt.visited)}
            res = opt
        f = res.formula
        parts: dict[str, dict[str, Any]] = {"search": {
            "unit": unit,
            "cluster": k,
            "range_lo": float(lo),
            "range_hi": float(hi),
            "label": res.to_str(vocab),
            "category": vocab.categories[f.canonical().leaves()[0]] if f is not None else "",
            "length": f.length if f is not None else 0,
            "iou": float(res.iou),
            "threshold": threshold,
            "interpretable": bool(res.iou > hp.iou_threshold),
            "active_pixels": tally.total,
            "best_concept": vocab.names[first[0].concept] if first is not None else "",
            "best_concept_iou": float(first[1]) if first is not None else 0.0,
            "visited": int(res.visited),
            "scorer": self.search.scorer,
            **certificate,
        }}
        if hp.compute_metrics:
            parts["metrics"] = self._metrics(ctx, tally, f)
        if hp.concept_masking:
            parts["concept_masking"] = {"concept_masking": self.concept_masking_score(ctx, entry, unit, k, lo, hi, f)}
        job = NullJob(ctx, bitmap, self.search, vocab, perm,
                      lambda: None if random_range is None else self.range_bitmap(self.random_entry, unit,
                                                                                  *random_range))
        for name in hp.null_baselines:
            if not NULL_BASELINES[name].needs_random_copy or self.random_entry is not None:
                parts[name] = NULL_BASELINES[name].compute(job)
        if hp.detacc_length:
            dres, det = detacc_optimal_search(ctx, tally, detection_accuracy_from_counts, self.search,
                                              max_length=hp.max_detacc_length)
            parts["detacc"] = {
                "detacc_label": dres.to_str(vocab),
                "detacc_length": dres.formula.length if dres.formula is not None else 0,
                "detacc_iou": float(dres.iou),
                "detacc": float(det),
            }
        row: dict[str, Any] = {}
        for part in _ROW_PARTS:
            row.update(parts.get(part, {}))
        return row

    def _metrics(self, ctx: SearchContext, tally: UnitTally, f: Formula | None) -> dict[str, float]:
        n = ctx.num_images
        if f is None:
            label = overlap = torch.zeros(n, dtype=torch.int64)
        else:
            st = formula_stats(ctx, f, tally, with_concepts=False)
            label, overlap = st.image_area, st.image_inter
        m = explanation_metrics_from_counts(tally.act_areas, label, overlap, ctx.pixel_size)
        return {name: float(v) for name, v in m.items() if name != "iou"}

    # ------------------------------------------------------------------ model-based metrics
    def _images(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ds = self.predict_dataset()
        return torch.stack([ds[int(i)]["image"] for i in torch.as_tensor(ids).tolist()]).to(self.device)

    def concept_masking_score(self, ctx: SearchContext, entry: ActivationEntry, unit: int, k: int, lo: float,
                              hi: float, f: Formula | None) -> float:
        """CCE's concept-masking cosine score of one explanation (see the class arguments)."""
        if f is None:
            return 0.0
        hp = self.hparams
        present = torch.nonzero(formula_stats(ctx, f, None, with_concepts=False).image_area > 0).flatten()
        features = self.features()
        return concept_masking_score(
            present, self._images, lambda ids: f.mask(self.concept_index, ids),
            lambda x: features(x)[:, unit],
            lambda ids: torch.from_numpy(np.asarray(entry.acts[ids.numpy(), unit], dtype=np.float32)),
            lo, hi, torch.Generator().manual_seed(hp.seed * 1000003 + unit * 101 + k), hp.masking_batch_size)

    # ------------------------------------------------------------------ pictures
    def label_mask(self, row: dict[str, Any], image_ids: torch.Tensor) -> torch.Tensor:
        """(B, sh, sw) bool mask of a row's explanation on the given images (for the unit cards)."""
        if not row.get("label"):
            return torch.zeros(len(image_ids), *self.concept_index.mask_shape, dtype=torch.bool)
        return parse(row["label"], self.vocabulary).mask(self.concept_index, image_ids)


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the search returned it (bounds that older job files kept as strings become floats)."""
    for k in ("range_hi", "range_lo", "threshold"):
        if row.get(k) in ("inf", "-inf"):
            row[k] = float(row[k])
    return row
