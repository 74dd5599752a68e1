"""ConceptIndex: a dataset's concept annotations as a sparse pixel->concept incidence.

Dense masks of every concept over a dataset do not fit in memory (Broden/ADE: 333 GB as bool), so the
annotations are stored once, deduplicated, as

* ``pixel_offsets`` (E,) int64: flat positions ``image * H + y * sw + x`` on the (sh, sw) mask grid,
  sorted, with ``image_ptr`` (N+1,) giving each image's slice (CSR over images);
* ``pixel_concepts`` (E,) int32: the dense concept id (0..C-1) at that position. A (position, concept)
  pair occurs at most once, so a label present in two part planes is counted once (compexp/CCE OR);
* ``image_concepts`` (N, C) bool: image-level labels (Broden scene, texture) that cover the whole image.

That is 12 bytes per (pixel, concept) entry (Broden/ADE at 112x112: about 0.7 G entries, 8 GB), memory-mapped
from a file when the index comes from :meth:`ConceptIndex.load` (or a build that spills to disk), so it costs
page cache rather than process memory. Nothing else of size E is kept: the slot of an entry among its pixel's
entries, needed to lay images out as dense label planes, is derived per query. Nothing else of size E is made
either: the passes over the whole index (validation, image pointers, depth, areas) walk it in blocks of
:data:`BLOCK` entries, and the per-image queries (:meth:`ConceptIndex.label_planes`,
:meth:`ConceptIndex.concept_areas` of some images) in groups of images of at most ``max_entries`` entries, so
their temporaries (several int64 arrays per entry) stay bounded however many images a caller asks for.

From it, the intersection of any dataset bitmap with *every* concept is one sparse product, which is what
NetDissect's tally and the exact compositional search need.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit_explain.activations.bitmaps import set_pixels

__all__ = ["BLOCK", "ConceptIndex"]

#: Entries per step of the passes over the whole index and per group of the per-image queries: their temporaries
#: (at most about ten int64 arrays of this length, ~80 MB) never grow with the dataset.
BLOCK = 1 << 20


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int array; same result as ``np.unique(x)``.

    Sort + neighbour mask: numpy 2.4's hash-based ``np.unique`` is ~15x slower on the 50 k keys of one Broden image.
    """
    s = np.sort(x)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


@dataclass
class ConceptIndex:
    """Sparse concept annotations of N images on an (sh, sw) grid; see the module docstring.

    Args:
        pixel_offsets: (E,) int64 flat positions, sorted ascending.
        pixel_concepts: (E,) int32 concept ids aligned with ``pixel_offsets`` (any integer dtype is converted).
        image_concepts: (N, C) bool image-level concept presence.
        mask_shape: (sh, sw) of the annotation grid.
    """

    pixel_offsets: torch.Tensor
    pixel_concepts: torch.Tensor
    image_concepts: torch.Tensor
    mask_shape: tuple[int, int]

    def __post_init__(self) -> None:
        self.pixel_offsets = torch.as_tensor(self.pixel_offsets, dtype=torch.int64)
        self.pixel_concepts = torch.as_tensor(self.pixel_concepts, dtype=torch.int32)
        self.image_concepts = torch.as_tensor(self.image_concepts, dtype=torch.bool)
        self.mask_shape = (int(self.mask_shape[0]), int(self.mask_shape[1]))
        if self.pixel_offsets.shape != self.pixel_concepts.shape:
            raise ValueError("pixel_offsets and pixel_concepts must have the same shape")
        # every pass below walks the entries in blocks: no temporary of size E (the index itself is the only one)
        if not _blocks_all(self.pixel_offsets, 1, lambda a, b: bool((b >= a).all())):
            order = torch.argsort(self.pixel_offsets, stable=True)  # unsorted input only (from_dense, tests)
            self.pixel_offsets, self.pixel_concepts = self.pixel_offsets[order], self.pixel_concepts[order]
        n, h = self.num_images, self.pixel_size
        if self.pixel_offsets.numel() and int(self.pixel_offsets[-1]) >= n * h:
            raise ValueError("pixel_offsets point past the last image")
        if self.pixel_offsets.numel() and int(self.pixel_offsets[0]) < 0:
            raise ValueError("pixel_offsets must be >= 0")
        self._set_pointers()
        if self.pixel_offsets.numel() and bool(self.image_concepts.any()):
            # an image-level label already covers the whole image: drop its pixel entries so nothing counts twice
            # (Broden's builder drops them per chunk already, so this finds none and copies nothing)
            covered = sum(int(self._covered(s, e).sum()) for s, e in _spans(self.pixel_offsets.numel(), BLOCK))
            if covered:
                keep = torch.cat([~self._covered(s, e) for s, e in _spans(self.pixel_offsets.numel(), BLOCK)])
                self.pixel_offsets, self.pixel_concepts = self.pixel_offsets[keep], self.pixel_concepts[keep]
                self._set_pointers()
        self._image_areas: torch.Tensor | None = None
        # depth = the most concepts on one pixel: entries are sorted by offset, so m + 1 concepts share a pixel iff
        # some entry equals the one m places later (one comparison pass per level, in blocks)
        offs = self.pixel_offsets
        self.depth = 1 if offs.numel() else 0
        while self.depth < offs.numel() and not _blocks_all(offs, self.depth, lambda a, b: not bool((a == b).any())):
            self.depth += 1

    def _set_pointers(self) -> None:
        """``image_ptr`` (N+1,): entries of image i are ``image_ptr[i]:image_ptr[i+1]`` (offsets are sorted, so a
        binary search of each image's first offset; no per-entry array)."""
        starts = torch.arange(self.num_images + 1, dtype=torch.int64) * self.pixel_size
        self.image_ptr = torch.searchsorted(self.pixel_offsets, starts)

    def _covered(self, s: int, e: int) -> torch.Tensor:
        """(e - s,) bool: entries s..e-1 whose concept is image-level in their image."""
        return self.image_concepts[self.pixel_offsets[s:e] // self.pixel_size, self.pixel_concepts[s:e].to(torch.int64)]

    # ------------------------------------------------------------------ sizes
    @property
    def num_images(self) -> int:
        return int(self.image_concepts.shape[0])

    @property
    def num_concepts(self) -> int:
        return int(self.image_concepts.shape[1])

    @property
    def pixel_size(self) -> int:
        """H = sh * sw, pixels per image on the mask grid."""
        return self.mask_shape[0] * self.mask_shape[1]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, masks: torch.Tensor, image_concepts: torch.Tensor | None = None) -> "ConceptIndex":
        """Build from dense masks (N, C, sh, sw) bool (tests, small worlds). Image-level concepts given apart."""
        n, c, sh, sw = masks.shape
        img, con, pix = masks.reshape(n, c, sh * sw).nonzero(as_tuple=True)
        offsets = img * (sh * sw) + pix
        order = torch.argsort(offsets * c + con)
        if image_concepts is None:
            image_concepts = torch.zeros(n, c, dtype=torch.bool)
        return cls(offsets[order], con[order], image_concepts, (sh, sw))

    @classmethod
    def from_label_planes(
        cls,
        planes: list[np.ndarray],
        image_labels: list[list[int]],
        label_to_concept: np.ndarray,
        num_concepts: int,
        mask_shape: tuple[int, int],
    ) -> "ConceptIndex":
        """Build from per-image label planes as Broden stores them.

        Args:
            planes: per image, an int array (P_i, sh, sw) of global label ids (0 = none); P_i may be 0.
            image_labels: per image, its image-level global label ids.
            label_to_concept: (max_label+1,) int array, global id -> dense concept id, -1 when not in the vocabulary.
            num_concepts: C.
            mask_shape: (sh, sw).
        """
        sh, sw = mask_shape
        h = sh * sw
        offsets, concepts = [], []
        image_concepts = np.zeros((len(planes), num_concepts), dtype=bool)
        lut = np.asarray(label_to_concept, dtype=np.int64)
        for i, (p, labels) in enumerate(zip(planes, image_labels)):
            for lab in labels:
                if 0 < lab < len(lut) and lut[lab] >= 0:
                    image_concepts[i, lut[lab]] = True
            if p is None or len(p) == 0:
                continue
            p = np.asarray(p).reshape(-1, h)
            p = np.where(p < len(lut), p, 0)
            con = lut[p]  # (P, h)
            pos = np.broadcast_to(np.arange(h), con.shape)
            keep = con >= 0
            key = _sorted_unique(pos[keep] * num_concepts + con[keep])  # dedup planes, sorted by pixel then concept
            offsets.append(i * h + key // num_concepts)
            concepts.append(key % num_concepts)
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))
        return cls(torch.from_numpy(cat(offsets)), torch.from_numpy(cat(concepts)), torch.from_numpy(image_concepts), (sh, sw))

    # ------------------------------------------------------------------ totals
    def concept_areas(self, image_ids: torch.Tensor | None = None, max_entries: int | None = None) -> torch.Tensor:
        """(C,) int64: annotated pixels per concept over the dataset, or over the images ``image_ids`` (each
        counted as often as it is listed); an image-level label counts H pixels per image. Entries are counted in
        groups of images of at most ``max_entries`` (default :data:`BLOCK`) entries, without the (N, C) table of
        :meth:`image_areas`."""
        c = self.num_concepts
        if image_ids is None:
            pix = torch.zeros(c, dtype=torch.int64)
            for s, e in _spans(self.pixel_concepts.numel(), BLOCK):
                pix += torch.bincount(self.pixel_concepts[s:e], minlength=c)
            return pix + self.image_concepts.sum(0).to(torch.int64) * self.pixel_size
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        pix = torch.zeros(c, dtype=torch.int64)
        for s, e in self._image_groups(image_ids, max_entries):
            pix += torch.bincount(self._entries(image_ids[s:e])[2], minlength=c)
        return pix + self.image_concepts[image_ids].sum(0).to(torch.int64) * self.pixel_size

    def image_areas(self) -> torch.Tensor:
        """(N, C): annotated pixels per (image, concept), image-level labels as H. Cached.

        The dtype is the narrowest signed integer type that holds H (int8 up to 127 pixels, int16 up to 32767 (a
        181x181 grid), else int32): widen before summing. Its size grows with N * C; :meth:`concept_areas` gives
        sums over images without it."""
        if self._image_areas is None:
            n, c, h = self.num_images, self.num_concepts, self.pixel_size
            dtype = next(t for t in (torch.int8, torch.int16, torch.int32) if h <= torch.iinfo(t).max)
            areas = torch.zeros(n, c, dtype=dtype)
            ptr = self.image_ptr
            for s, e in self._image_groups(torch.arange(n), BLOCK, max_images=max(1, BLOCK // max(c, 1))):
                e0, e1 = int(ptr[s]), int(ptr[e])
                img = self.pixel_offsets[e0:e1] // h - s
                flat = torch.bincount(img * c + self.pixel_concepts[e0:e1], minlength=(e - s) * c)
                areas[s:e] = flat.view(e - s, c).to(dtype)
            areas[self.image_concepts] = h
            self._image_areas = areas
        return self._image_areas

    def concept_image_counts(self) -> torch.Tensor:
        """(C,) int64: number of images in which each concept occurs (in groups of images, without the (N, C)
        table of :meth:`image_areas` unless it is cached already)."""
        if self._image_areas is not None:
            return (self._image_areas > 0).sum(0).to(torch.int64)
        n, c, h = self.num_images, self.num_concepts, self.pixel_size
        out = self.image_concepts.sum(0).to(torch.int64)
        for s, e in self._image_groups(torch.arange(n), BLOCK, max_images=max(1, BLOCK // max(c, 1))):
            e0, e1 = int(self.image_ptr[s]), int(self.image_ptr[e])
            img = self.pixel_offsets[e0:e1] // h - s
            present = torch.bincount(img * c + self.pixel_concepts[e0:e1], minlength=(e - s) * c) > 0
            out += present.view(e - s, c).sum(0)  # pixel entries of image-level concepts were dropped: no overlap
        return out

    # ------------------------------------------------------------------ slicing
    def _image_groups(self, image_ids: torch.Tensor, max_entries: int | None, max_images: int | None = None):
        """Consecutive position ranges ``(s, e)`` of ``image_ids`` whose entries total at most ``max_entries``
        (at least one image per range; at most ``max_images`` images when given)."""
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        max_entries = BLOCK if max_entries is None else int(max_entries)
        counts = (self.image_ptr[image_ids + 1] - self.image_ptr[image_ids]).numpy()
        ends = np.cumsum(counts)
        s, n = 0, len(counts)
        while s < n:
            base = int(ends[s - 1]) if s else 0
            e = max(s + 1, int(np.searchsorted(ends, base + max_entries, side="right")))
            if max_images is not None:
                e = min(e, s + max_images)
            yield s, e
            s = e

    def _entries(self, image_ids: torch.Tensor, with_slots: bool = False) -> tuple[torch.Tensor, ...]:
        """Entries of the given images: (local image position b, pixel within image, concept[, slot])."""
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        starts, ends = self.image_ptr[image_ids], self.image_ptr[image_ids + 1]
        counts = ends - starts
        total = int(counts.sum())
        if total == 0:
            z = torch.zeros(0, dtype=torch.int64)
            return (z, z, z, z) if with_slots else (z, z, z)
        b = torch.repeat_interleave(torch.arange(len(image_ids)), counts, output_size=total)
        first = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts, output_size=total)
        e = first + torch.arange(total)
        offs = self.pixel_offsets[e]
        out = (b, offs % self.pixel_size, self.pixel_concepts[e].to(torch.int64))
        if not with_slots:
            return out
        # slot of each entry among the entries of its pixel (0, 1, ...): the entries of one pixel are adjacent here
        new_pixel = torch.ones(total, dtype=torch.bool)
        new_pixel[1:] = offs[1:] != offs[:-1]
        pos = torch.arange(total)
        start = torch.cummax(torch.where(new_pixel, pos, torch.zeros_like(pos)), 0).values
        return (*out, pos - start)

    def dense_masks(self, image_ids: torch.Tensor, concepts: torch.Tensor | None = None) -> torch.Tensor:
        """Dense masks (B, C', sh, sw) bool of the given images for the given concepts (all when None)."""
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        concepts = torch.arange(self.num_concepts) if concepts is None else torch.as_tensor(concepts, dtype=torch.int64)
        lut = torch.full((self.num_concepts,), -1, dtype=torch.int64)
        lut[concepts] = torch.arange(len(concepts))
        out = torch.zeros(len(image_ids), len(concepts), self.pixel_size, dtype=torch.bool)
        b, pix, con = self._entries(image_ids)
        k = lut[con]
        keep = k >= 0
        out[b[keep], k[keep], pix[keep]] = True
        img_level = self.image_concepts[image_ids][:, concepts]  # (B, C')
        out |= img_level[:, :, None]
        return out.view(len(image_ids), len(concepts), *self.mask_shape)

    # ------------------------------------------------------------------ intersections
    def intersections(self, bitmaps: torch.Tensor, image_ids: torch.Tensor, max_elements: int = 1 << 26) -> torch.Tensor:
        """Pixel intersections of unit bitmaps with every concept, summed over the given images.

        One sparse (C x B*H) by dense (B*H x U) product, chunked over units so that the dense operand stays
        under ``max_elements`` floats. Exact: every partial sum is an integer below 2**24.

        Args:
            bitmaps: (B, U, H) bool (or (B, U, sh, sw)), one bitmap per image and unit on the mask grid.
            image_ids: (B,) dataset indices of the images.

        Returns:
            (U, C) int64 with ``out[u, c] = sum_b |bitmap[b, u] & mask_c[b]|``.
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        bsz, units = bitmaps.shape[0], bitmaps.shape[1]
        if bsz * self.pixel_size >= 1 << 24:
            raise ValueError("intersections: pass at most 2**24 pixels per call (split the batch)")
        flat = bitmaps.reshape(bsz, units, self.pixel_size)
        out = torch.zeros(units, self.num_concepts, dtype=torch.int64)
        b, pix, con = self._entries(image_ids)
        if b.numel():
            order = torch.argsort(con, stable=True)
            rows = torch.zeros(self.num_concepts + 1, dtype=torch.int64)
            rows[1:] = torch.cumsum(torch.bincount(con, minlength=self.num_concepts), 0)
            cols = (b * self.pixel_size + pix)[order]
            incidence = torch.sparse_csr_tensor(
                rows, cols, torch.ones(len(cols), dtype=torch.float32), size=(self.num_concepts, bsz * self.pixel_size), check_invariants=False
            )
            step = max(1, max_elements // (bsz * self.pixel_size))
            for u0 in range(0, units, step):
                dense = flat[:, u0 : u0 + step].permute(0, 2, 1).reshape(bsz * self.pixel_size, -1).to(torch.float32)
                out[u0 : u0 + step] = (incidence @ dense).T.round().to(torch.int64)
        img_level = self.image_concepts[image_ids]  # (B, C)
        if bool(img_level.any()):
            areas = flat.sum(-1).to(torch.float64)  # (B, U)
            out += (areas.T @ img_level.to(torch.float64)).round().to(torch.int64)
        return out

    def label_planes(self, image_ids: torch.Tensor, max_entries: int | None = None) -> torch.Tensor:
        """Dense (B, depth, H) int32 concept ids of the given images, -1 where a pixel has fewer concepts.

        ``depth`` is the largest number of (pixel-level) concepts on one pixel in the dataset (a handful for
        Broden: colour, object, parts, material), so this is a small dense view of a batch of images (4 bytes
        per pixel and plane). The entries are laid out in groups of images of at most ``max_entries`` (default
        :data:`BLOCK`) entries: the slot computation holds about ten int64 values per entry (80 bytes, twenty
        times the planes), so a whole batch at once would cost far more than its planes.
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        planes = torch.full((len(image_ids), max(self.depth, 1), self.pixel_size), -1, dtype=torch.int32)
        for s, e in self._image_groups(image_ids, max_entries):  # bounded temporaries whatever the batch
            b, pix, con, slot = self._entries(image_ids[s:e], with_slots=True)
            planes[s + b, slot, pix] = con.to(torch.int32)
        return planes

    def _on_pixel_labels(self, bitmaps: torch.Tensor, image_ids: torch.Tensor,
                         planes: tuple[torch.Tensor, torch.Tensor] | None = None,
                         on: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For the set pixels of (P, H) bitmaps: (pair index (n,), concept ids (n, depth) int64, -1 padding).

        ``planes`` may pass ``(sorted image ids (B,), label_planes of them)`` covering every pair's image, and
        ``on`` the bitmaps' ``nonzero(as_tuple=True)``, when the caller has them already.
        """
        if planes is None:
            uniq, inverse = torch.unique(image_ids, return_inverse=True)
            layout = self.label_planes(uniq)  # (B, depth, H)
        else:
            uniq, layout = planes
            inverse = torch.searchsorted(uniq, image_ids)
        p, q = set_pixels(bitmaps) if on is None else on
        return p, layout[inverse[p], :, q].to(torch.int64)

    def pair_intersections(self, bitmaps: torch.Tensor, image_ids: torch.Tensor, pair_units: torch.Tensor,
                           num_units: int, planes: tuple[torch.Tensor, torch.Tensor] | None = None,
                           on: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Intersections summed per unit for sparse (image, unit) pairs.

        When only a few (image, unit) pairs can be active (NetDissect's top-0.5 % threshold), tallying just
        those pairs beats materialising every unit's bitmap on every image. The pairs' images are laid out as
        dense label planes; each set pixel of a pair's bitmap looks up its concepts there, and one bincount
        over (unit, concept) keys sums everything. Cost: set pixels x planes. Memory: the pairs' bitmaps and
        their images' planes (the caller bounds the number of pairs per call).

        Args:
            bitmaps: (P, H) bool, the bitmap of each pair on the mask grid.
            image_ids: (P,) dataset index of each pair's image (repeats allowed).
            pair_units: (P,) unit position (0..num_units-1) of each pair.
            num_units: U.
            planes: optional ``(sorted image ids, label_planes(those ids))`` covering the pairs' images.
            on: optional ``bitmaps.nonzero(as_tuple=True)``.

        Returns:
            (U, C) int64 with ``out[u, c] = sum_{p: unit u} |bitmap[p] & mask_c[image p]|``.
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        pair_units = torch.as_tensor(pair_units, dtype=torch.int64)
        bitmaps = bitmaps.flatten(1)
        c = self.num_concepts
        out = torch.zeros(num_units * c, dtype=torch.int64)
        if on is None:
            on = set_pixels(bitmaps)
        if self.depth:
            p, labels = self._on_pixel_labels(bitmaps, image_ids, planes, on)
            key = pair_units[p][:, None] * c + labels
            out += torch.bincount(key[labels >= 0], minlength=num_units * c)
        out = out.view(num_units, c)
        img_level = self.image_concepts[image_ids]  # (P, C)
        if bool(img_level.any()):
            areas = torch.bincount(on[0], minlength=len(image_ids))  # set pixels per pair
            out.index_add_(0, pair_units, areas[:, None] * img_level.to(torch.int64))
        return out

    def pair_category_hits(self, bitmaps: torch.Tensor, image_ids: torch.Tensor, concept_category: torch.Tensor,
                           num_categories: int, planes: tuple[torch.Tensor, torch.Tensor] | None = None,
                           on: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(P, K) bool: per (image, unit) pair, whether its bitmap covers a concept of category k (see
        :meth:`category_hits`)."""
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        concept_category = torch.as_tensor(concept_category, dtype=torch.int64)
        bitmaps = bitmaps.flatten(1)
        k = num_categories
        out = torch.zeros(len(image_ids) * k, dtype=torch.int64)
        if self.depth and len(image_ids):
            p, labels = self._on_pixel_labels(bitmaps, image_ids, planes, on)
            valid = labels >= 0
            key = p[:, None] * k + concept_category[labels.clamp(min=0)]
            out += torch.bincount(key[valid], minlength=len(image_ids) * k)
        onehot = torch.nn.functional.one_hot(concept_category, k).to(torch.float32)
        img_cat = (self.image_concepts[image_ids].to(torch.float32) @ onehot) > 0
        return (out.view(-1, k) > 0) | img_cat

    def per_image_intersections(self, bitmaps: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """(B, U, C) int64 ``|bitmap[b, u] & mask_c[b]|`` per image (for per-sample metrics and heuristics).

        Memory is O(B * U * C); call it with few units (a formula's bitmap, a handful of units).
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        bsz, units = bitmaps.shape[0], bitmaps.shape[1]
        flat = bitmaps.reshape(bsz, units, self.pixel_size)
        b, pix, con = self._entries(image_ids)
        out = torch.zeros(bsz * self.num_concepts, units, dtype=torch.int64)
        if b.numel():
            key = b * self.num_concepts + con
            for u in range(units):  # units are few here; each step is one vectorised scatter over all entries
                out[:, u] = torch.bincount(key[flat[b, u, pix]], minlength=bsz * self.num_concepts)
        out = out.view(bsz, self.num_concepts, units).permute(0, 2, 1).contiguous()
        img_level = self.image_concepts[image_ids]  # (B, C)
        if bool(img_level.any()):
            areas = flat.sum(-1).to(torch.int64)  # (B, U)
            out = torch.where(img_level[:, None, :], areas[:, :, None], out)
        return out

    def category_hits(self, bitmaps: torch.Tensor, image_ids: torch.Tensor, concept_category: torch.Tensor,
                      num_categories: int) -> torch.Tensor:
        """(B, U, K) bool: whether a bitmap covers some pixel of a concept of category k in that image.

        Image-level concepts of category k count when present in the image. This is NetDissect-Lite's
        per-image category presence under the activation, used for its category-restricted union.

        Args:
            bitmaps: (B, U, H) bool unit bitmaps.
            image_ids: (B,) dataset indices.
            concept_category: (C,) int64 category code of each concept.
            num_categories: K.
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        concept_category = torch.as_tensor(concept_category, dtype=torch.int64)
        bsz, units = bitmaps.shape[0], bitmaps.shape[1]
        flat = bitmaps.reshape(bsz, units, self.pixel_size)
        hits = torch.zeros(bsz * num_categories, units, dtype=torch.float32)
        b, pix, con = self._entries(image_ids)
        if b.numel():
            rows = b * num_categories + concept_category[con]
            cols = b * self.pixel_size + pix
            key = torch.unique(rows * (bsz * self.pixel_size) + cols)  # one entry per (image, category, pixel)
            rows, cols = key // (bsz * self.pixel_size), key % (bsz * self.pixel_size)
            incidence = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows)),
                                                (bsz * num_categories, bsz * self.pixel_size),
                                                check_invariants=False).to_sparse_csr()
            hits = incidence @ flat.permute(0, 2, 1).reshape(bsz * self.pixel_size, units).to(torch.float32)
        out = hits.view(bsz, num_categories, units).permute(0, 2, 1) > 0
        img_level = self.image_concepts[image_ids].to(torch.float32)  # (B, C)
        onehot = torch.nn.functional.one_hot(concept_category, num_categories).to(torch.float32)  # (C, K)
        img_cat = (img_level @ onehot) > 0  # (B, K)
        return out | img_cat[:, None, :]

    # ------------------------------------------------------------------ persistence
    def fingerprint(self) -> str:
        """Content hash, used in cache keys of everything derived from this index."""
        h = hashlib.sha256()
        for t in (self.pixel_offsets, self.pixel_concepts, self.image_concepts):
            a = t.contiguous().numpy()
            h.update(memoryview(a.reshape(-1).view(np.uint8)))  # the same bytes as tobytes(), without a copy
        h.update(repr(self.mask_shape).encode())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file + rename): a killed run never leaves a readable half file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    pixel_offsets=self.pixel_offsets.numpy(),
                    pixel_concepts=self.pixel_concepts.numpy(),  # int32 already: no copy
                    image_concepts=np.packbits(self.image_concepts.numpy(), axis=1),
                    num_concepts=np.int64(self.num_concepts),
                    mask_shape=np.asarray(self.mask_shape, dtype=np.int64),
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "ConceptIndex":
        """Read an index written by :meth:`save`.

        With ``mmap`` (the default) the two per-entry arrays are memory-mapped from the file (copy-on-write) instead
        of read into memory: they are the index's only part that grows with the annotated pixels (12 bytes per
        entry), and mapped they live in the page cache, shared by every process of a run and paged in as queries
        touch them, like the activation store. Their zip CRCs are checked by a streamed read of the file, as
        ``np.load`` checks them. Any member that cannot be mapped (a compressed archive) is read instead.
        """
        maps = _npz_maps(path, ("pixel_offsets", "pixel_concepts")) if mmap else None
        with np.load(path) as z:
            c = int(z["num_concepts"])
            img = np.unpackbits(z["image_concepts"], axis=1, count=c).astype(bool)
            offsets = maps["pixel_offsets"] if maps else z["pixel_offsets"]
            concepts = maps["pixel_concepts"] if maps else z["pixel_concepts"]
            return cls(
                torch.from_numpy(offsets.astype(np.int64, copy=False)),
                torch.from_numpy(concepts.astype(np.int32, copy=False)),
                torch.from_numpy(img),
                tuple(int(x) for x in z["mask_shape"]),
            )


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    """[(s, e)] covering range(n) in steps of ``step``."""
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _blocks_all(x: torch.Tensor, lag: int, ok) -> bool:
    """Whether ``ok(x[i : i + k], x[i + lag : i + lag + k])`` holds for every block of the pairs (x[j], x[j + lag]),
    in blocks of :data:`BLOCK` pairs (no temporary of the length of x)."""
    m = x.numel() - lag
    return all(ok(x[s:e], x[s + lag : e + lag]) for s, e in _spans(max(m, 0), BLOCK))


def _npz_maps(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Copy-on-write memory maps of 1-D members of an uncompressed ``.npz`` (each member's bytes lie contiguous in
    the file after its zip local header and its ``.npy`` header), after checking each member's CRC-32 by reading
    the file in 16 MiB pieces (through the page cache, not this process's memory). None when a member is
    compressed, not 1-D or not C-ordered; raises ``zipfile.BadZipFile`` on a CRC mismatch."""
    import struct
    import zipfile
    import zlib

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for name in names:
            info = zf.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"{path}: bad local header of {info.filename}")
            start = info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30]))
            f.seek(start)
            crc, left = 0, info.file_size
            while left:
                buf = f.read(min(left, 1 << 24))
                if not buf:
                    raise zipfile.BadZipFile(f"{path}: {info.filename} is truncated")
                crc, left = zlib.crc32(buf, crc), left - len(buf)
            if crc != info.CRC:
                raise zipfile.BadZipFile(f"{path}: bad CRC-32 of {info.filename}")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if len(shape) != 1 or fortran or dtype.hasobject:
                return None
            offset = f.tell()
            if offset - start + shape[0] * dtype.itemsize != info.file_size:
                raise zipfile.BadZipFile(f"{path}: {info.filename} has the wrong size")
            out[name] = np.memmap(path, dtype=dtype, mode="c", shape=shape, offset=offset) if shape[0] else \
                np.zeros(shape, dtype)
    return out
