"""Benchmark: compositional search (length 3, beam 5) with exact vectorised scoring vs dense evaluation.

Builds a synthetic Broden-like concept index directly (vectorised; no files): N images on an (S, S) mask grid,
each with a background colour covering the image, up to three rectangular objects with their own colour and a
part on their top third, an image-level scene and sometimes an image-level texture (about 1.4 pixel labels per
pixel, as Broden's colour + object + part planes). Units are noisy planted formulas (compositions of objects,
colours, parts and scenes with a few percent of pixels flipped), i.e. (unit, range) bitmaps of realistic
sparsity.

For the same (unit, range) bitmaps it times ``beam_search(length=3, beam_size=5)`` with

* ``exact``: the exact all-candidate scoring of :func:`lit_explain.concepts.tally.formula_stats` (the default),
* ``mmesh``: CCE's MMESH heuristic pruning dense evaluations (its leaf geometry cache timed separately),
* ``none``: exhaustive dense evaluation of every candidate (CCE heuristic "none"),

asserts that all three return the same formula and IoU, records the peak extra memory of each search
(resident-set sampling), and re-times ``exact`` (and ``mmesh``) on a dataset with twice the images. Prints a
markdown table and writes it to ``bench/results/compexp.md`` (plus ``compexp.json``).

    python bench/compexp.py                       # 10,000 images, 112x112 masks
    python bench/compexp.py --images 2000 --mask 56 --units 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_explain.concepts.formulas import And, Leaf, Not, Or  # noqa: E402
from lit_explain.concepts.heuristics import LeafGeometry  # noqa: E402
from lit_explain.concepts.index import ConceptIndex  # noqa: E402
from lit_explain.concepts.search import SearchContext, SearchSettings, beam_search  # noqa: E402

from bench._world import Vocabulary, dense_of, label_planes, noisy  # noqa: E402

N_COLORS, N_OBJECTS, N_PARTS, N_SCENES, N_TEXTURES = 11, 20, 10, 10, 5
COLOR0 = OBJECT0 = PART0 = SCENE0 = TEXTURE0 = NUM_CONCEPTS = 0


def set_vocabulary(objects: int = 20, parts: int = 10, scenes: int = 10) -> None:
    """Vocabulary sizes (11 colours and 5 textures always). Exhaustive dense evaluation costs 3 * |L| dense
    evaluations per beam formula while the exact scorer's cost barely depends on |L|, so the speed-up grows with
    the vocabulary: Broden has 1,197 labels (ADE20k subset ~600 present), the default here only 56."""
    global N_OBJECTS, N_PARTS, N_SCENES, COLOR0, OBJECT0, PART0, SCENE0, TEXTURE0, NUM_CONCEPTS
    if objects < 13 or parts < 6 or scenes < 5:
        raise ValueError("the planted units need at least 13 objects, 6 parts and 5 scenes")
    N_OBJECTS, N_PARTS, N_SCENES = objects, parts, scenes
    COLOR0, OBJECT0 = 0, N_COLORS
    PART0 = OBJECT0 + N_OBJECTS
    SCENE0 = PART0 + N_PARTS
    TEXTURE0 = SCENE0 + N_SCENES
    NUM_CONCEPTS = TEXTURE0 + N_TEXTURES


set_vocabulary()


def concept_names() -> list[str]:
    return ([f"color{i}" for i in range(N_COLORS)] + [f"object{i}" for i in range(N_OBJECTS)]
            + [f"part{i}" for i in range(N_PARTS)] + [f"scene{i}-s" for i in range(N_SCENES)]
            + [f"texture{i}" for i in range(N_TEXTURES)])


def make_planes(n: int, size: int, seed: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Label planes (n, 3, H) int16 (colour, object, part; -1 = none) and image-level labels (n, C) bool.

    Image i depends only on (seed, start + i), so a dataset of 2N images extends the one of N images.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + start)
    voc = Vocabulary(N_COLORS, N_OBJECTS, N_PARTS, N_SCENES, N_TEXTURES)  # the ids of set_vocabulary
    planes, image_level = label_planes(n, size, voc, g)
    return planes.to(torch.int16), image_level


def make_index(n: int, size: int, seed: int, chunk: int = 1000) -> tuple[ConceptIndex, torch.Tensor]:
    """The concept index and, for building unit bitmaps, the label planes (n, 3, H) int16.

    Two passes over the (deterministic) chunks: count the entries, then fill preallocated arrays, so the peak
    memory is the index itself plus one chunk.
    """
    h = size * size
    planes_all = torch.empty(n, 3, h, dtype=torch.int16)
    levels = torch.empty(n, NUM_CONCEPTS, dtype=torch.bool)
    total = 0
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        planes, image_level = make_planes(m, size, seed, s)
        planes_all[s : s + m] = planes
        levels[s : s + m] = image_level
        total += int((planes >= 0).sum())
    offs = torch.empty(total, dtype=torch.int64)
    cons = torch.empty(total, dtype=torch.int64)
    pos = 0
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        flat = planes_all[s : s + m].permute(0, 2, 1).reshape(-1)  # pixel-major: entries sorted by offset
        keep = torch.nonzero(flat >= 0).flatten()
        k = len(keep)
        offs[pos : pos + k] = keep // 3 + s * h
        cons[pos : pos + k] = flat[keep].to(torch.int64)
        pos += k
    return ConceptIndex(offs, cons, levels, (size, size)), planes_all


def units(planes: torch.Tensor, image_level: torch.Tensor, count: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Noisy planted (unit, range) bitmaps (N, H) bool."""
    specs = [
        And(Or(Leaf(OBJECT0 + 3), Leaf(OBJECT0 + 7)), Not(Leaf(COLOR0 + 2))),
        Or(And(Leaf(SCENE0 + 4), Leaf(COLOR0 + 6)), Leaf(OBJECT0 + 1)),
        And(Leaf(OBJECT0 + 5), Not(Leaf(PART0 + 5))),
        And(Or(Leaf(PART0 + 1), Leaf(OBJECT0 + 12)), Not(Leaf(SCENE0 + 2))),
        And(Or(Leaf(OBJECT0 + 9), Leaf(OBJECT0 + 10)), Leaf(COLOR0 + 4)),
    ]
    g = torch.Generator().manual_seed(seed)
    out = []
    for f in specs[:count]:
        out.append((f.to_str(concept_names()), noisy(dense_of(planes, image_level, f), g)))
    return out


# ---------------------------------------------------------------------- measurement
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = False

        def poll():
            while not self._stop:
                self.peak = max(self.peak, rss_bytes())
                time.sleep(0.002)

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.base


def timed_search(ctx, bitmap, scorer):
    """(result, wall seconds, CPU seconds of this process, peak extra resident bytes)."""
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        res = beam_search(ctx, bitmap, SearchSettings(length=3, beam_size=5, scorer=scorer))
        dt, dc = time.perf_counter() - t, time.process_time() - c
    return res, dt, dc, mem.extra


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--mask", type=int, default=112, help="mask grid side (Broden 224: 112)")
    ap.add_argument("--units", type=int, default=2, help="(unit, range) bitmaps timed with every scorer")
    ap.add_argument("--none-units", type=int, default=None,
                    help="time the exhaustive 'none' scorer on only the first k bitmaps (it is the slow one)")
    ap.add_argument("--objects", type=int, default=20, help="object classes (Broden: ~580)")
    ap.add_argument("--parts", type=int, default=10, help="part classes (Broden: ~230)")
    ap.add_argument("--scenes", type=int, default=10, help="scene classes (Broden: ~470)")
    ap.add_argument("--double-scorers", default="exact", help="scorers re-timed with twice the images")
    ap.add_argument("--scorers", default="exact,mmesh,none")
    ap.add_argument("--no-double", action="store_true", help="skip the 2x images run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    set_vocabulary(args.objects, args.parts, args.scenes)
    if args.threads:
        torch.set_num_threads(args.threads)
    scorers = args.scorers.split(",")
    names = concept_names()
    rows, doubling = [], []
    sizes = [args.images] if args.no_double else [args.images, 2 * args.images]
    argv = sys.argv[1:] if argv is None else list(argv)
    info: dict = {"images": args.images, "mask": args.mask, "concepts": NUM_CONCEPTS, "threads": torch.get_num_threads(),
                  "command": " ".join(["python bench/compexp.py", *argv]),
                  "vocabulary": dict(colors=N_COLORS, objects=N_OBJECTS, parts=N_PARTS, scenes=N_SCENES,
                                     textures=N_TEXTURES)}
    for n in sizes:
        t0 = time.perf_counter()
        index, planes = make_index(n, args.mask, args.seed)
        bitmaps = units(planes, index.image_concepts, args.units, args.seed)
        del planes
        ctx = SearchContext(index)
        info.setdefault("build_s", {})[n] = time.perf_counter() - t0
        t = time.perf_counter()
        ctx.pixel_pairs()  # the exact scorer's only index-level cache (concept co-occurrence)
        info.setdefault("cooc_s", {})[n] = time.perf_counter() - t
        index_bytes = sum(t.numel() * t.element_size() for t in (index.pixel_offsets, index.pixel_concepts, index.image_concepts))
        dense_per_concept = NUM_CONCEPTS * n * args.mask * args.mask
        info.setdefault("entries", {})[n] = int(index.pixel_offsets.numel())
        info.setdefault("index_bytes", {})[n] = index_bytes
        info.setdefault("dense_masks_bytes", {})[n] = dense_per_concept
        print(f"[{n} images] index: {index.pixel_offsets.numel():,} entries, {index_bytes / 2**20:.0f} MiB; "
              f"dense bool masks of all {NUM_CONCEPTS} concepts would take {dense_per_concept / 2**30:.2f} GiB", flush=True)
        todo = scorers if n == args.images else [s for s in args.double_scorers.split(",") if s]
        if "mmesh" in todo:
            with PeakRSS() as mem:
                t = time.perf_counter()
                ctx.geometry = LeafGeometry.from_index(index)
                geo_s = time.perf_counter() - t
            info.setdefault("mmesh_cache_s", {})[n] = geo_s
            info.setdefault("mmesh_cache_bytes", {})[n] = mem.extra
            print(f"  mmesh leaf geometry cache: {geo_s:.1f} s", flush=True)
        if "none" in todo or "mmesh" in todo:
            t = time.perf_counter()
            ctx._concept_postings()
            info.setdefault("postings_s", {})[n] = time.perf_counter() - t
        for ui, (label, a) in enumerate(bitmaps):
            results = {}
            for sc in todo:
                if sc == "none" and args.none_units is not None and ui >= args.none_units:
                    continue
                res, dt, dc, extra = timed_search(ctx, a, sc)
                results[sc] = res
                row = dict(images=n, unit=label, scorer=sc, seconds=dt, cpu_seconds=dc, visited=res.visited, iou=res.iou,
                           formula=res.to_str(names), peak_extra_mib=extra / 2**20, active=int(a.sum()))
                (rows if n == args.images else doubling).append(row)
                out_dir = Path(args.out)
                out_dir.mkdir(parents=True, exist_ok=True)  # partial results survive a crash of a later run
                (out_dir / "compexp.partial.json").write_text(json.dumps({"info": info, "rows": rows,
                                                                        "doubling": doubling}, indent=1, default=str))
                print(f"  {label:45s} {sc:6s} {dt:8.2f} s (cpu {dc:8.2f} s)  visited {res.visited:6d}  iou {res.iou:.4f}  "
                      f"{res.to_str(names)}  (+{extra / 2**20:.0f} MiB)", flush=True)
            ref = results[todo[0]]
            for sc, r in results.items():
                assert r.iou == ref.iou, (sc, r.iou, ref.iou)
                if sc in ("exact", "none", "mmesh", "cfh"):
                    assert r.formula.key == ref.formula.key, (sc, r.to_str(names), ref.to_str(names))
        del ctx, index, bitmaps, a, results, res
    table = render(rows, doubling, info, scorers)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compexp.md").write_text(table)
    (out / "compexp.json").write_text(json.dumps({"info": info, "rows": rows, "doubling": doubling}, indent=1, default=str))
    (out / "compexp.partial.json").unlink(missing_ok=True)  # the complete results supersede it


def render(rows, doubling, info, scorers) -> str:
    n = info["images"]
    lines = [f"### Compositional search, length 3, beam 5: {n:,} images, {info['mask']}x{info['mask']} masks, "
             f"{info['concepts']} concepts ({', '.join(f'{v} {k}' for k, v in info['vocabulary'].items())}), "
             f"{info['threads']} CPU threads", "", f"`{info['command']}`", ""]
    lines += ["| (unit, range) bitmap | scorer | wall s | CPU s | visited | IoU | formula | peak extra MiB |",
              "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['unit']} | {r['scorer']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['visited']} | "
                     f"{r['iou']:.4f} | {r['formula']} | {r['peak_extra_mib']:.0f} |")

    def mean(sc, rs, key="seconds", units=None):
        sel = [r[key] for r in rs if r["scorer"] == sc and (units is None or r["unit"] in units)]
        return sum(sel) / max(1, len(sel))

    lines += ["", "| scorer | (unit, range) bitmaps | mean wall s / (unit, range) | mean CPU s | exact is faster by "
              "(wall / CPU, same bitmaps) | max peak extra MiB |", "|---|---:|---:|---:|---:|---:|"]
    for sc in scorers:
        units = {r["unit"] for r in rows if r["scorer"] == sc}
        m, mc = mean(sc, rows), mean(sc, rows, "cpu_seconds")
        ex, exc = mean("exact", rows, units=units), mean("exact", rows, "cpu_seconds", units=units)
        peak = max((r["peak_extra_mib"] for r in rows if r["scorer"] == sc), default=0)
        lines.append(f"| {sc} | {len(units)} | {m:.2f} | {mc:.2f} | {m / ex:.0f}x / {mc / exc:.0f}x | {peak:.0f} |")
    if doubling:
        lines += ["", f"| scorer | wall (CPU) s at {n:,} images | at {2 * n:,} images | ratio wall (CPU) |",
                  "|---|---:|---:|---:|"]
        for sc in sorted({r["scorer"] for r in doubling}, key=scorers.index):
            a, b = mean(sc, rows), mean(sc, doubling)
            ac, bc = mean(sc, rows, "cpu_seconds"), mean(sc, doubling, "cpu_seconds")
            lines.append(f"| {sc} | {a:.2f} ({ac:.2f}) | {b:.2f} ({bc:.2f}) | {b / a:.2f} ({bc / ac:.2f}) |")
    lines += ["", f"Index: {info['entries'][n]:,} sparse entries ({info['index_bytes'][n] / 2**20:.0f} MiB); dense bool "
              f"masks of every concept would take {info['dense_masks_bytes'][n] / 2**20:.0f} MiB."]
    lines.append(f"Exact scorer's index-level cache (concept co-occurrence, one pass over the entries): "
                 f"{info['cooc_s'][n]:.1f} s.")
    if "mmesh_cache_s" in info:
        lines.append(f"MMESH leaf geometry cache (boxes + inscribed rectangles, once per dataset): "
                     f"{info['mmesh_cache_s'][n]:.1f} s; dense-mask postings: {info.get('postings_s', {}).get(n, 0):.1f} s.")
    lines.append("All scorers returned the same formula and IoU for every bitmap (asserted).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
