"""The Broden reader (broden1_224 / broden1_227 / broden1_384): index rows, images, label planes, vocabulary and
the sparse concept index, without Lightning (:mod:`data_modules.broden` wraps it in a LightningDataModule).

On-disk format, read exactly (the small tables and PNG decoding live in :mod:`.broden_tables`):

* ``index.csv``: ``image,split,ih,iw,sh,sw`` then one column per category (``color,object,part,material,scene,
  texture``). A category cell holds zero or more ``;``-separated entries: a decimal integer is an *image-level*
  label (it covers the whole image), anything else is a PNG under ``images/`` holding a per-pixel label map
  decoded as ``R + 256 * G`` (B unused, 0 = no label). Several PNGs in one cell (parts) are separate planes.
* ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``number`` is the global label id stored in
  the PNGs, ``category`` reads ``object(4743)`` or ``material(36);object(3)``. Label 0 and numbers missing
  from the file mean "no label".
* ``category.csv`` (``name,first,last,count,frequency``): the categories and their order (optional).
* ``c_<category>.csv`` (``code,number,name,frequency,coverage``): per-category coverage (optional per category).

Decisions (each one a choice between the upstream codebases, made explicit here):

* **Category order** is category.csv's row order, then any further index.csv columns. Planes are stacked in
  that order whatever order ``categories`` is given in.
* **Primary category** of a label: the category whose ``c_<category>.csv`` gives it the largest coverage, ties
  going to the later category (NetDissect-Lite). A label listed in no c_ file falls back to label.csv's
  ``category`` column, comparing the bracketed image counts with the same tie rule.
* **Rows** are those of ``index.csv`` (or of ``index_<subset>.csv`` when that file exists next to it), filtered
  by ``subset`` (first path component of ``image``) and ``split``; then rows with no entry in any selected
  category are dropped (NetDissect's ``index_has_any_data``). An integer entry 0 (scene 0) is not a label and
  does not count as data. Images and annotations share this single row list, so they cannot misalign.
* **Vocabulary**: ``concepts`` given -> exactly those label names, in that order (a concept must belong to a
  selected category). Otherwise every label of label.csv whose primary category is selected, in label-number
  order; with ``min_image_count = m > 0`` only those occurring in at least m kept images, where "occurring"
  means: present in at least one pixel of a PNG plane of a selected category, or listed as an image-level
  entry of a selected category, of that image. Those counts need one pass over the PNGs; it is the same pass
  that builds the concept index, and ``data_modules.broden.BrodenDataModule`` caches its result. The primary
  category is taken over *all* categories, so a label whose primary category is not selected (``fabric``: material(36);
  object(3), without material) is left out of a derived vocabulary even where it appears in an object PNG
  (NetDissect-Lite); naming it in ``concepts`` keeps it (its recorded category is then the selected category
  with the largest coverage). ``image_level`` is True for a concept when every selected category listing it
  holds integer entries in index.csv (scene, texture).
* **Label ids**: an id found in a PNG (or an integer cell of a selected category) that label.csv does not
  define is always an error naming the file and the id. A defined id outside the vocabulary is ignored.
* **Repeats** are errors naming the file and both lines: a label number or name defined twice in label.csv,
  a category twice in category.csv, a number or name twice in one c_ file, an image on two index.csv rows,
  a concept twice in ``concepts``. Letting the last row win would hand one concept another label's pixels.
* ``mask_shape`` (sh, sw) and ``image_shape`` (ih, iw) must be constant over the kept rows (one Broden variant).

Speed (vectorised per image, no per-pixel Python): one image costs a PNG decode per plane, one lookup-table
gather and one sort-based deduplication of its (P * sh * sw) pixel keys (ConceptIndex.from_label_planes, which
runs inside the DataLoader workers together with the decoding). Measured on the shared 2-core dev machine
(load average ~10 from other jobs): 3,000 images of 112x112 with 4 planes (color, object, 2 parts) + scene,
111.5 M index entries, build in 26 s of CPU time (8.7 ms/image, about 4 ms of it decoding the 4 PNGs; 85 s
wall under that load), without workers. Full ADE (22,210 images) is then ~3 CPU-minutes, split over the workers.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from lit_explain.concepts import ConceptIndex, ConceptVocabulary
from lit_explain.concepts.index import BLOCK
from lit_explain.datasets.broden_tables import (NUM_IDS, BrodenFormatError, BrodenLabels, check_root,
                                                decode_label_png, read_csv, split_cell)
from lit_explain.datasets.checks import check_int, check_strings

__all__ = ["BrodenDataset", "BrodenFormatError", "CACHE_FORMAT", "DEFAULT_CATEGORIES", "IMAGENET_MEAN", "IMAGENET_STD"]

#: NetDissect-Lite's categories (material excluded).
DEFAULT_CATEGORIES = ("object", "part", "scene", "texture", "color")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Version of the concept-index cache format, part of every fingerprint.
CACHE_FORMAT = 1
_META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_IMAGE_LEVEL_BY_NAME = ("scene", "texture")  # kind of a category whose column is empty everywhere


@dataclass(frozen=True)
class _Row:
    """One kept row of the index: paths relative to ``images/`` and the selected categories' entries."""

    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    masks: tuple[str, ...]  # PNG planes of the selected pixel entries, in category order
    labels: tuple[int, ...]  # image-level global ids (0 removed, deduplicated)



def _subset_concepts(index: ConceptIndex, keep: np.ndarray, spill_dir: str | Path | None = None) -> ConceptIndex:
    """The index restricted to the dense concepts ``keep`` (increasing), renumbered 0..len(keep)-1 (in blocks of
    entries, into a :class:`_Column` each: the temporaries stay bounded)."""
    lut = torch.full((index.num_concepts,), -1, dtype=torch.int32)
    keep_t = torch.as_tensor(keep, dtype=torch.int64)
    lut[keep_t] = torch.arange(len(keep_t), dtype=torch.int32)
    offsets, concepts = _Column(np.int64, spill_dir), _Column(np.int32, spill_dir)
    for s in range(0, index.pixel_offsets.numel(), BLOCK):
        new = lut[index.pixel_concepts[s : s + BLOCK].to(torch.int64)]
        m = new >= 0
        offsets.append(index.pixel_offsets[s : s + BLOCK][m])
        concepts.append(new[m])
    return ConceptIndex(offsets.finish(), concepts.finish(), index.image_concepts[:, keep_t], index.mask_shape)


class _Column:
    """A 1-D array of one dtype built by appending parts, for the per-entry arrays of a concept index.

    In memory, :meth:`finish` concatenates the parts, dropping each once copied (the result plus the parts not yet
    copied, never twice the result). Given ``spill_dir``, the parts go to an unlinked temporary file there and
    :meth:`finish` memory-maps it (copy-on-write): the index then takes no memory of its own, only page cache,
    and the file's space returns when the index is dropped.
    """

    def __init__(self, dtype: Any, spill_dir: str | Path | None = None) -> None:
        self.dtype, self.n = np.dtype(dtype), 0
        self.parts: list[np.ndarray] = []
        self.file = None
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=spill_dir, prefix="concept_index.", suffix=".spill")

    def append(self, part: torch.Tensor | np.ndarray) -> None:
        a = np.ascontiguousarray(part.numpy() if isinstance(part, torch.Tensor) else part, dtype=self.dtype)
        if self.file is None:
            self.parts.append(a)
        else:
            self.file.write(memoryview(a.view(np.uint8)))
        self.n += len(a)

    def finish(self) -> torch.Tensor:
        if self.file is None:
            out = np.empty(self.n, dtype=self.dtype)
            pos = 0
            for i in range(len(self.parts)):
                p, self.parts[i] = self.parts[i], None
                out[pos : pos + len(p)] = p
                pos += len(p)
                del p
            self.parts = []
            return torch.from_numpy(out)
        self.file.flush()
        out = np.memmap(self.file, dtype=self.dtype, mode="c", shape=(self.n,)) if self.n else np.zeros(0, self.dtype)
        self.file.close()  # the map keeps the (unlinked) file alive
        return torch.from_numpy(out)


class _AnnotationView(Dataset):
    """Item i -> (planes (P, sh, sw) int32, image-level ids) of a BrodenDataset; lets a DataLoader decode PNGs."""

    def __init__(self, dataset: "BrodenDataset") -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[int]]:
        return self.dataset.annotations(i)


class _ChunkIndexer:
    """DataLoader ``collate_fn``: a chunk of annotations -> its ConceptIndex arrays (runs in the workers).

    Returns (pixel_offsets local to the chunk, pixel_concepts, image_concepts (B, C)), so that PNG decoding and
    the per-image deduplication of :meth:`ConceptIndex.from_label_planes` both run in parallel.
    """

    def __init__(self, lut: np.ndarray, num_concepts: int, mask_shape: tuple[int, int]) -> None:
        self.lut, self.num_concepts, self.mask_shape = lut, num_concepts, mask_shape

    def __call__(self, batch: list[tuple[np.ndarray, list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        part = ConceptIndex.from_label_planes(
            [b[0] for b in batch], [b[1] for b in batch], self.lut, self.num_concepts, self.mask_shape
        )
        return part.pixel_offsets, part.pixel_concepts, part.image_concepts


class BrodenDataset(Dataset):
    """Rows of a Broden index with their images, label planes and concept vocabulary.

    Item ``i`` is ``{"image": FloatTensor (3, ih, iw), "index": i}``; :meth:`annotations` gives its labels.

    Args:
        root: the Broden folder holding index.csv, label.csv, c_*.csv and images/ (e.g. ``data/broden1_224``).
        categories: categories to read, e.g. NetDissect's default ``("object", "part", "scene", "texture",
            "color")``; add ``"material"`` for CCE. None = every category known to the dataset. A category must
            be an index.csv column with labels defined (c_<category>.csv or label.csv), else ValueError; one
            with no entries in the selected rows just contributes nothing (texture on ADE). Categories not
            requested may be empty or absent.
        subset: keep rows whose image path starts with this folder (``ade20k``, ``pascal``, ``dtd``,
            ``opensurfaces``); when ``index_<subset>.csv`` exists next to index.csv its rows are used instead.
        split: keep rows of this ``split`` value (``train`` / ``val``); None keeps all.
        concepts: explicit concept names (label.csv ``name``, each once), the vocabulary in this order; None derives it
            (see the module docstring).
        min_image_count: with a derived vocabulary, drop labels occurring in fewer kept images (detacc: 5).
        transform: PIL image -> tensor; None = [Resize(image_size)] + ToTensor + Normalize(mean, std).
        mean: per-channel mean of the default transform.
        std: per-channel std of the default transform.
        image_size: resize images to (image_size, image_size) in the default transform; None keeps the
            stored size (Broden images are already 224/227/384).
    """

    def __init__(
        self,
        root: str,
        categories: Sequence[str] | None = DEFAULT_CATEGORIES,
        subset: str | None = None,
        split: str | None = None,
        concepts: Sequence[str] | None = None,
        min_image_count: int = 0,
        transform: Callable | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_size: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        check_root(self.root)
        if concepts is not None and min_image_count > 0:
            raise ValueError("BrodenDataset: give either `concepts` (an explicit vocabulary) or `min_image_count`, not both")
        self.subset, self.split = subset, split
        self.min_image_count = check_int("BrodenDataset", "min_image_count", min_image_count, low=0)
        self._concepts = None if concepts is None else check_strings("BrodenDataset", "concepts", list(concepts), unique=True)
        self.image_size = check_int("BrodenDataset", "image_size", image_size, low=1, optional=True)
        self.transform = transform if transform is not None else self._default_transform(mean, std, image_size)
        self._read_labels()
        self.index_file = self._index_file()
        header, records = read_csv(self.index_file)
        missing_meta = [c for c in _META_COLUMNS if c not in header]
        if missing_meta:
            raise BrodenFormatError(f"{self.index_file} lacks the columns {missing_meta}; it is not a Broden index")
        self._index_columns = [c for c in header if c not in _META_COLUMNS]
        label_csv_cats = sorted({c for cats in self._label_csv_cats.values() for c in cats})
        self.category_order = list(
            dict.fromkeys(self._category_csv_order + self._index_columns + sorted(self._c_coverage) + label_csv_cats)
        )
        self.categories = self._resolve_categories(categories)
        self._rows = self._select_rows(records)
        self._check_shapes()
        self._vocabulary: ConceptVocabulary | None = None
        self._index_cache: ConceptIndex | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ tables
    @staticmethod
    def _default_transform(mean: Sequence[float], std: Sequence[float], image_size: int | None) -> Callable:
        steps = [T.Resize((image_size, image_size))] if image_size else []
        return T.Compose(steps + [T.ToTensor(), T.Normalize(list(mean), list(std))])

    def _read_labels(self) -> None:
        """label.csv -> names and label.csv categories; category.csv -> order; c_*.csv -> coverages."""
        labels = BrodenLabels(self.root)
        self._names = labels.names
        self._label_csv_cats = labels.label_csv_categories
        self._known = labels.known
        self._category_csv_order = labels.category_csv_order
        self._c_coverage = labels.coverage

    def _index_file(self) -> Path:
        if self.subset:
            alt = self.root / f"index_{self.subset}.csv"
            if alt.is_file():
                return alt
        return self.root / "index.csv"

    def _label_categories(self, number: int) -> list[str]:
        """Every category that lists the label (c_ files and label.csv), in category order."""
        cats = {c for c, cov in self._c_coverage.items() if number in cov} | set(self._label_csv_cats.get(number, {}))
        return [c for c in self.category_order if c in cats]

    def _primary(self, number: int, allowed: Sequence[str] | None = None) -> str | None:
        """Category with the largest c_ coverage (fallback: label.csv count) among ``allowed``; ties -> later."""
        in_c = {c: cov[number] for c, cov in self._c_coverage.items() if number in cov}
        scores = in_c if in_c else self._label_csv_cats.get(number, {})
        best, best_score = None, None
        for c in self.category_order:
            if c in scores and (allowed is None or c in allowed) and (best_score is None or scores[c] >= best_score):
                best, best_score = c, scores[c]
        return best

    def primary_category(self, number: int) -> str | None:
        """The primary category of a global label id (None when label.csv does not define it)."""
        return self._primary(number) if number in self._names else None

    def _resolve_categories(self, categories: Sequence[str] | None) -> tuple[str, ...]:
        defined = {c for c in self._c_coverage} | {c for cats in self._label_csv_cats.values() for c in cats}
        available = [c for c in self.category_order if c in self._index_columns and c in defined]
        if categories is None:
            return tuple(available)
        if isinstance(categories, str):
            categories = [categories]
        bad = [c for c in categories if c not in available]
        if bad:
            why = []
            for c in bad:
                if c not in self._index_columns:
                    why.append(f"{c!r} is not a column of {self.index_file.name}")
                else:
                    why.append(f"{c!r} has no labels (no c_{c}.csv and no label.csv row lists it)")
            raise ValueError(
                f"Broden categories {bad} are not available in {self.root}: {'; '.join(why)}. "
                f"Available categories: {available}. Drop them from `categories` (e.g. the ADE subset has no "
                f"material), or check that the Broden folder is complete."
            )
        return tuple(c for c in self.category_order if c in set(categories))

    # ------------------------------------------------------------------ rows
    def _select_rows(self, records: list[dict[str, str]]) -> list[_Row]:
        kinds: dict[str, set[str]] = {c: set() for c in self.categories}
        rows, seen_subsets, seen_splits = [], set(), set()
        use_subset_filter = self.subset and self.index_file.name == "index.csv"
        line_of: dict[str, int] = {}
        for line, rec in enumerate(records, start=2):
            image = (rec.get("image") or "").strip()
            if image in line_of:  # the image (and its labels) would count twice in every dataset-level number
                raise BrodenFormatError(f"{self.index_file}:{line}: image {image!r} is already listed on line "
                                        f"{line_of[image]}; each image must have one row (restore the index file)")
            line_of[image] = line
            cells = {c: split_cell(rec.get(c)) for c in self.categories}
            for c, entries in cells.items():
                kinds[c].update("image" if e.isdigit() else "pixel" for e in entries)
            seen_subsets.add(image.split("/")[0])
            if use_subset_filter and image.split("/")[0] != self.subset:
                continue
            split = (rec.get("split") or "").strip()
            seen_splits.add(split)
            if self.split is not None and split != self.split:
                continue
            masks, labels = [], []
            for c in self.categories:
                for e in cells[c]:
                    if not e.isdigit():
                        masks.append(e)
                    elif int(e) != 0:
                        if not (int(e) < NUM_IDS and self._known[int(e)]):
                            raise BrodenFormatError(
                                f"{self.index_file}:{line} ({image}): {c} label {int(e)} is not defined in "
                                f"{self.root / 'label.csv'}; the index and label files do not belong together"
                            )
                        labels.append(int(e))
            if not masks and not labels:
                continue  # no data in any selected category (NetDissect's index_has_any_data)
            try:
                ih, iw, sh, sw = (int(rec[k]) for k in ("ih", "iw", "sh", "sw"))
            except (TypeError, ValueError):
                raise BrodenFormatError(f"{self.index_file}:{line}: ih/iw/sh/sw are not integers") from None
            rows.append(_Row(image, split, ih, iw, sh, sw, tuple(masks), tuple(dict.fromkeys(labels))))
        self._category_kind = {
            c: ("pixel" if "pixel" in k else "image" if k else ("image" if c in _IMAGE_LEVEL_BY_NAME else "pixel"))
            for c, k in kinds.items()
        }
        if not rows:
            raise ValueError(
                f"no Broden rows selected from {self.index_file} with subset={self.subset!r}, split={self.split!r}, "
                f"categories={list(self.categories)} (rows without data in these categories are dropped). "
                f"Subsets present: {sorted(seen_subsets)[:20]}; splits: {sorted(seen_splits)}"
            )
        return rows

    def _check_shapes(self) -> None:
        masks = sorted({(r.sh, r.sw) for r in self._rows})
        images = sorted({(r.ih, r.iw) for r in self._rows})
        for what, shapes in (("mask (sh, sw)", masks), ("image (ih, iw)", images if not self.image_size else [])):
            if len(shapes) > 1:
                raise ValueError(
                    f"the selected Broden rows of {self.index_file} mix {what} sizes {shapes}; select rows of one "
                    f"variant (broden1_224: 224/112, broden1_227: 227/113, broden1_384: 384/192) with `subset`/`split`"
                    + (" or set `image_size`" if what.startswith("image") else "")
                )
        self.mask_shape: tuple[int, int] = masks[0]
        self.image_shape: tuple[int, int] = (self.image_size, self.image_size) if self.image_size else images[0]

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def image_names(self) -> list[str]:
        """Per item, the ``image`` path of its index row (relative to ``images/``)."""
        return [r.image for r in self._rows]

    @property
    def splits(self) -> list[str]:
        """Per item, the ``split`` value of its index row."""
        return [r.split for r in self._rows]

    def image_path(self, i: int) -> Path:
        """Absolute path of item i's image."""
        return self.root / "images" / self._rows[i].image

    def _missing(self, path: Path, i: int) -> FileNotFoundError:
        return FileNotFoundError(
            f"Broden file {path} (row {self._rows[i].image!r} of {self.index_file}) is missing; the Broden folder is "
            f"incomplete: re-extract the archive or pick rows without it (`subset`/`split`)"
        )

    def load_image(self, i: int) -> Image.Image:
        """Item i's image as an RGB PIL image at its stored size; raises on a missing or corrupt file."""
        path = self.image_path(i)
        if not path.is_file():
            raise self._missing(path, i)
        try:
            with Image.open(path) as im:
                im.load()
                img = im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise BrodenFormatError(f"cannot read Broden image {path}: {e}; the file is corrupt, replace it from the archive") from e
        row = self._rows[i]
        if img.size != (row.iw, row.ih):
            raise BrodenFormatError(f"Broden image {path} is {img.size[1]}x{img.size[0]} but {self.index_file} says {row.ih}x{row.iw}")
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.transform(self.load_image(i)), "index": i}

    def _read_plane(self, i: int, name: str) -> np.ndarray:
        """One label PNG as (sh, sw) int32 global ids, validated against label.csv."""
        path = self.root / "images" / name
        if not path.is_file():
            raise self._missing(path, i)
        row = self._rows[i]
        return decode_label_png(path, (row.sh, row.sw), self._known, self.root / "label.csv")

    def annotations(self, i: int) -> tuple[np.ndarray, list[int]]:
        """Item i's labels: planes (P, sh, sw) int32 of global ids (0 = none) and the image-level global ids.

        The planes are the PNGs of the selected pixel categories in category order (several for parts).
        """
        row = self._rows[i]
        planes = [self._read_plane(i, name) for name in row.masks]
        stack = np.stack(planes) if planes else np.zeros((0, row.sh, row.sw), dtype=np.int32)
        return stack, list(row.labels)

    # ------------------------------------------------------------------ vocabulary
    def _candidates(self) -> ConceptVocabulary:
        """Every label whose primary category is selected, in number order (before ``min_image_count``)."""
        ids = [n for n in sorted(self._names) if self._primary(n) in self.categories]
        if not ids:
            raise ValueError(f"no label of {self.root / 'label.csv'} has its primary category in {list(self.categories)}")
        return self._vocab_of(ids, [self._primary(n) for n in ids])

    def _vocab_of(self, ids: list[int], cats: list[str]) -> ConceptVocabulary:
        image_level = [
            all(self._category_kind[c] == "image" for c in self._label_categories(n) if c in self.categories) for n in ids
        ]
        return ConceptVocabulary(tuple(ids), tuple(self._names[n] for n in ids), tuple(cats), tuple(image_level))

    def _explicit(self, names: list[str]) -> ConceptVocabulary:
        by_name = {v: k for k, v in self._names.items()}  # names are unique (BrodenLabels rejects repeats)
        ids, cats = [], []
        for name in names:
            n = by_name.get(name)
            if n is None:
                close = difflib.get_close_matches(name, list(by_name), n=8, cutoff=0.6)
                raise ValueError(f"unknown Broden concept {name!r} (not a name in {self.root / 'label.csv'}); close names: {close}")
            mine = [c for c in self._label_categories(n) if c in self.categories]
            if not mine:
                raise ValueError(
                    f"Broden concept {name!r} (label {n}) belongs to categories {self._label_categories(n)}, none of "
                    f"which is selected ({list(self.categories)}); add its category to `categories`"
                )
            ids.append(n)
            cats.append(self._primary(n, mine))
        return self._vocab_of(ids, cats)

    @property
    def vocabulary(self) -> ConceptVocabulary:
        """Dense concept ids 0..C-1 <-> global label ids. With ``min_image_count`` > 0 the first access reads
        every PNG once (it builds the concept index, kept for :meth:`build_concept_index`)."""
        if self._vocabulary is None:
            if self._concepts is not None:
                self._vocabulary = self._explicit(self._concepts)
            elif self.min_image_count <= 0:
                self._vocabulary = self._candidates()
            else:
                self.build_concept_index()
        return self._vocabulary

    @property
    def vocabulary_needs_pass(self) -> bool:
        """True while the vocabulary is unknown and computing it needs a pass over the PNGs."""
        return self._vocabulary is None and self._concepts is None and self.min_image_count > 0

    def adopt_vocabulary(self, vocabulary: ConceptVocabulary) -> None:
        """Set a vocabulary computed earlier for this same configuration (e.g. read from a cache).

        Raises ValueError when it is not a valid vocabulary of this dataset's configuration.
        """
        if self._vocabulary is not None or not self.vocabulary_needs_pass:
            if vocabulary != self.vocabulary:
                raise ValueError("adopt_vocabulary: differs from this dataset's vocabulary")
            return
        cand = self._candidates()
        if not set(vocabulary.label_ids) <= set(cand.label_ids):
            raise ValueError("adopt_vocabulary: contains labels outside the selected categories")
        keep = [cand.label_ids.index(n) for n in vocabulary.label_ids]
        if keep != sorted(keep) or cand.subset(keep) != vocabulary:
            raise ValueError("adopt_vocabulary: not a subset of the derived vocabulary in label order")
        self._vocabulary = vocabulary

    # ------------------------------------------------------------------ concept index
    def _build(self, vocab: ConceptVocabulary, num_workers: int, chunk_size: int,
               spill_dir: str | Path | None = None) -> ConceptIndex:
        lut = np.full(NUM_IDS, -1, dtype=np.int64)
        lut[list(vocab.label_ids)] = np.arange(len(vocab))
        sh, sw = self.mask_shape
        collate = _ChunkIndexer(lut, len(vocab), (sh, sw))
        loader = DataLoader(_AnnotationView(self), batch_size=chunk_size, num_workers=num_workers, collate_fn=collate)
        offsets, concepts = _Column(np.int64, spill_dir), _Column(np.int32, spill_dir)
        # allocated once: nothing allocated per chunk outlives the chunk (long-lived small blocks between the
        # chunks' freed arrays would keep the allocator from reusing or returning that memory)
        images, start = torch.zeros(len(self), len(vocab), dtype=torch.bool), 0
        for off, con, img in loader:  # in order: chunk k holds rows [start, start + len(chunk))
            offsets.append(off + start * sh * sw)
            concepts.append(con)
            images[start : start + len(img)] = img
            start += len(img)
        # each chunk comes sorted and without pixel entries of its image-level labels, so the index adopts the
        # columns as they are (no further copy)
        return ConceptIndex(offsets.finish(), concepts.finish(), images, (sh, sw))

    def build_concept_index(self, num_workers: int = 0, chunk_size: int = 64,
                            spill_dir: str | Path | None = None) -> ConceptIndex:
        """The sparse concept index of the kept rows over :attr:`vocabulary`, streamed over the images.

        Only ``chunk_size`` images' planes and their entries are held at a time (about 40 bytes per entry while
        a chunk is indexed); ``num_workers`` DataLoader workers decode PNGs in parallel, in order (the result
        does not depend on either). The index's per-entry arrays (12 bytes per entry) are held in memory, or,
        with ``spill_dir``, written to unlinked temporary files in that folder and memory-mapped, so that
        building an index of any size needs a bounded amount of memory. With ``min_image_count`` > 0 and no
        vocabulary yet, the index is built over all candidate labels, the vocabulary is set to those in at
        least ``min_image_count`` images, and the index is restricted to it.
        """
        if self._index_cache is not None:
            return self._index_cache
        if self.vocabulary_needs_pass:
            cand = self._candidates()
            full = self._build(cand, num_workers, chunk_size, spill_dir)
            keep = np.flatnonzero(full.concept_image_counts().numpy() >= self.min_image_count)
            if not len(keep):
                raise ValueError(f"no concept occurs in {self.min_image_count} of the {len(self)} selected Broden images; "
                                 f"lower `min_image_count`")
            self._vocabulary = cand.subset(keep.tolist())
            self._index_cache = _subset_concepts(full, keep, spill_dir)
            return self._index_cache
        return self._build(self.vocabulary, num_workers, chunk_size, spill_dir)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index_cache"] = None  # DataLoader workers do not need it
        return state

    # ------------------------------------------------------------------ fingerprint
    def fingerprint(self) -> str:
        """Content key (16 hex) of the kept rows, categories, vocabulary definition and files, for caches.

        It hashes label.csv, category.csv and every c_*.csv byte for byte, the kept rows with their selected
        entries, the categories, ``concepts``/``min_image_count`` (which with those files determine the
        vocabulary) and the size and mtime of every image and PNG of the kept rows. Raises FileNotFoundError
        naming a missing image or PNG.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(f"broden-v{CACHE_FORMAT}".encode())
            spec = {"categories": list(self.categories), "concepts": self._concepts, "min_image_count": self.min_image_count}
            h.update(json.dumps(spec, sort_keys=True).encode())
            for f in [self.root / "label.csv", self.root / "category.csv", *sorted(self.root.glob("c_*.csv"))]:
                h.update(f.name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"<missing>") + b"\0")
            for i, r in enumerate(self._rows):
                h.update(f"{r.image}\t{r.split}\t{r.ih},{r.iw},{r.sh},{r.sw}\t{';'.join(r.masks)}\t{r.labels}\n".encode())
                for name in (r.image, *r.masks):
                    p = self.root / "images" / name
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        raise self._missing(p, i) from None
                    h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
