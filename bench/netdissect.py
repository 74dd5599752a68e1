"""Speed and memory of NetDissect on the synthetic concept world, against a NetDissect-Lite-style loop.

    python bench/netdissect.py [--images 8000] [--layer layer3] [--ref-images 300]
    python bench/netdissect.py --memory 250,500,1000 [--memory-model torchvision:resnet18 --layer layer4]

Measures, in one run on the same data:

* activation extraction (data loading + forward + writes to the fp16 activation store), images/s;
* the forward pass alone (model compute on preloaded batches), images/s;
* thresholds (exact per-unit 0.995 quantile over the cache);
* the IoU tally (upsampling, bitmaps, sparse concept incidence x unit bitmaps), images/s, and its cost as a
  fraction of the forward pass;
* two references, each checked to give the same intersections: NetDissect-Lite's tally, a Python loop per
  image and per unit that skips units whose map stays below the threshold (timed on ``--ref-images`` images and
  scaled to the dataset), and the straightforward per-unit dense loop (each unit's bitmap on every image against
  dense concept masks; timed on ``--dense-units`` units and scaled to all units);
* peak resident memory and the cache size against the fp16 size N*U*h*w*2.

Prints a markdown table (paste it into the README).

``--memory N1,N2,...`` measures instead how NetDissect's memory grows with the number of images: it writes a
Broden-format folder of 224x224 images where every pixel carries a colour, an object and a part label (112x112
label maps, a scene label per image: the densest annotation, the worst case for the concept index), then runs
the real predict loop (data module, activation capture, thresholds, tally, result writer; random weights, cold
caches) on the first N images, once per N, each in a fresh process. Per run it reports the peak resident memory
(the kernel's ``ru_maxrss``: it includes the resident pages of the memory-mapped files, the activation cache and
the concept index, which the kernel can drop and re-read) and the peak anonymous memory (``RssAnon`` polled by
the parent every 2 ms: the process's own memory); then the growth per image between the smallest and the
largest N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_modules.broden import BrodenDataModule
from lit_explain.activations.bitmaps import unit_bitmaps
from lit_explain.activations.stats import store_unit_quantiles
from lit_explain.activations.store import ActivationStore, cache_key
from lit_explain.methods.netdissect import tally_iou
from lit_explain.metrics.dissection_iou import DissectionIoU
from lit_explain.models.probe import LayerProbe
from lit_explain.models.synthetic_cnn import synthetic_cnn
from lit_explain.synth.world import generate_world


def netdissect_lite_tally(acts: torch.Tensor, thresholds: np.ndarray, planes: list[np.ndarray],
                          image_labels: list[list[int]], label_to_concept: np.ndarray, num_concepts: int,
                          mask_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The straightforward reference: per image, per unit, in Python (NetDissect-Lite's tally_job)."""
    n, u = acts.shape[:2]
    h = mask_shape[0] * mask_shape[1]
    inter = np.zeros((u, num_concepts), np.int64)
    unit_area = np.zeros(u, np.int64)
    concept_area = np.zeros(num_concepts, np.int64)
    for i in range(n):
        p = planes[i].reshape(len(planes[i]), h) if len(planes[i]) else np.zeros((0, h), np.int64)
        con = label_to_concept[np.clip(p, 0, len(label_to_concept) - 1)]
        present = np.zeros((num_concepts, h), bool)  # OR over planes (parts), as compexp and CCE do
        for row in con:
            ok = row >= 0
            present[row[ok], np.arange(h)[ok]] = True
        img_level = [label_to_concept[x] for x in image_labels[i] if 0 < x < len(label_to_concept)]
        img_level = [c for c in img_level if c >= 0]
        present[img_level] = True
        concept_area += present.sum(1)
        for k in range(u):
            fmap = acts[i, k]
            if float(fmap.max()) <= thresholds[k]:
                continue
            up = F.interpolate(fmap[None, None], size=mask_shape, mode="bilinear", align_corners=False)[0, 0]
            on = (up > float(thresholds[k])).flatten().numpy()
            unit_area[k] += on.sum()
            inter[k] += present[:, on].sum(1)
    return inter, unit_area, concept_area


def broden_scale(images: int, ref_images: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """The tally alone at Broden scale: random Broden-like label planes (112x112 masks, ~1,200 concepts over
    colour/object/part/material planes plus an image-level scene) and random post-ReLU activations of 512 units
    on a 7x7 grid (ResNet-18 layer4); the vectorised pair tally against NetDissect-Lite's loop."""
    from types import SimpleNamespace

    from lit_explain.concepts.index import ConceptIndex

    g = np.random.default_rng(seed)
    sh = sw = 112
    pools = [np.arange(1, 12), np.arange(12, 600), np.arange(600, 800), np.arange(800, 830)]
    planes, labels = [], []
    for _ in range(images):
        ps = []
        for k, pool in enumerate(pools):
            blocks = g.choice(np.concatenate([np.zeros(3 if k >= 2 else 0, np.int64), pool[g.integers(0, len(pool), 12)]]),
                              size=(7, 7))
            ps.append(np.kron(blocks, np.ones((16, 16), dtype=np.int64)))
        planes.append(np.stack(ps))
        labels.append([int(g.integers(830, 1230))])
    lut = np.arange(1231) - 1  # label id l -> concept l - 1
    t = time.perf_counter()
    index = ConceptIndex.from_label_planes(planes, labels, lut, 1230, (sh, sw))
    t_index = time.perf_counter() - t
    acts = torch.relu(torch.randn(images, 512, 7, 7, generator=torch.Generator().manual_seed(seed))).half().numpy()
    entry = SimpleNamespace(acts=acts, maxes=acts.astype(np.float32).reshape(images, 512, -1).max(-1))
    thr = store_unit_quantiles(acts, 0.995)
    t = time.perf_counter()
    tally_iou(entry, torch.arange(images), torch.arange(512), thr, index)
    t_tally = time.perf_counter() - t
    m = min(ref_images, images)
    t = time.perf_counter()
    ref_inter, _, _ = netdissect_lite_tally(torch.from_numpy(acts[:m].astype(np.float32)), thr.numpy(), planes[:m],
                                           labels[:m], lut, 1230, (sh, sw))
    t_ref = (time.perf_counter() - t) / m * images
    check = tally_iou(entry, torch.arange(m), torch.arange(512), thr, index)
    assert np.array_equal(check.intersection.numpy(), ref_inter), "Broden-scale tally differs from the reference"
    # the forward pass this tally follows in a real dissection: ResNet-18 up to layer4 on 224x224 images
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
    probe = LayerProbe(net, ["layer4"])
    batch = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    probe(batch[:4])  # warm-up
    t = time.perf_counter()
    probe(batch)
    t_fwd = (time.perf_counter() - t) / len(batch) * images
    return [
        ("ResNet-18 forward to layer4, 224x224 (timed on 32 images)", f"{images / t_fwd:,.1f} img/s", f"{t_fwd:.1f} s"),
        (f"Broden-scale tally ({images} images, 512 units 7x7 -> 112x112, 1,230 concepts)",
         f"{images / t_tally:,.0f} img/s", f"{t_tally:.1f} s"),
        (f"NetDissect-Lite loop at that scale (timed on {m} images)", f"{images / t_ref:,.1f} img/s", f"{t_ref:.1f} s"),
        ("speed-up over the NetDissect-Lite loop", f"{t_ref / t_tally:,.0f}x", ""),
        ("tally cost / ResNet-18 forward at that scale", f"{t_tally / t_fwd:.0%}", ""),
        ("concept index build (from decoded planes)", f"{images / t_index:,.0f} img/s", f"{t_index:.1f} s"),
    ]


# ---------------------------------------------------------------------------------------------- memory growth
def write_dense_broden(root: Path, images: int, image_size: int = 224, mask_size: int = 112, seed: int = 0) -> Path:
    """A Broden-format folder of ``images`` rows where every pixel has a colour, an object and a part label
    (random 16x16-pixel regions), plus a scene label per image; reused when already complete."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{images} {image_size} {mask_size} {seed}":
        return root
    (root / "images" / "dense").mkdir(parents=True, exist_ok=True)
    pools = {"color": [1, 2, 3], "object": [4, 5, 6, 7, 8], "part": [9, 10, 11, 12, 13]}
    names = {1: "red-c", 2: "green-c", 3: "blue-c", 4: "wall", 5: "floor", 6: "sky", 7: "car", 8: "tree",
             9: "head", 10: "leg", 11: "wheel", 12: "door", 13: "window", 14: "street-s", 15: "kitchen-s"}
    cat = {n: ("color" if n <= 3 else "object" if n <= 8 else "part" if n <= 13 else "scene") for n in names}
    g = np.random.default_rng(seed)
    rows = []
    for i in range(images):
        stem = f"dense/img_{i:06d}"
        rgb = np.kron(g.integers(0, 256, (image_size // 8, image_size // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.jpg", quality=90)
        cells = []
        for c, pool in pools.items():
            blocks = -(-mask_size // 16)
            ids = np.kron(g.choice(pool, size=(blocks, blocks)), np.ones((16, 16), np.int64))[:mask_size, :mask_size]
            png = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
            Image.fromarray(png, "RGB").save(root / "images" / f"{stem}_{c}.png")
            cells.append(f"{stem}_{c}.png")
        rows.append(f"{stem}.jpg,train,{image_size},{image_size},{mask_size},{mask_size},{','.join(cells)},{14 + i % 2}")
    (root / "index.csv").write_text("image,split,ih,iw,sh,sw,color,object,part,scene\n" + "\n".join(rows) + "\n")
    (root / "label.csv").write_text("number,name,category,frequency,coverage,syns\n" + "".join(
        f"{n},{name},{cat[n]}({images}),{images},1.0,\n" for n, name in names.items()))
    (root / "category.csv").write_text("name,first,last,count,frequency\n" + "".join(
        f"{c},{min(k for k in names if cat[k] == c)},{max(k for k in names if cat[k] == c)},"
        f"{sum(cat[k] == c for k in names)},{images}\n" for c in ("color", "object", "part", "scene")))
    done.write_text(f"{images} {image_size} {mask_size} {seed}")
    return root


def _first_rows(src: Path, dst: Path, n: int) -> Path:
    """A Broden folder holding the first n rows of ``src`` (its other files linked)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("index.csv", ".complete") and not (dst / f.name).exists():
            os.symlink(f.resolve(), dst / f.name)
    lines = (src / "index.csv").read_text().splitlines(keepends=True)
    (dst / "index.csv").write_text("".join(lines[: n + 1]))
    return dst


def memory_child(root: str, cache: str, model: str, layer: str) -> None:
    """One NetDissect predict run as the CLI does it; prints ``MEMORY {json}`` (its memory is measured from the
    parent, so that no sampling thread of its own changes how the allocator behaves)."""
    from lightning.pytorch import Trainer

    import lit_explain
    from callbacks import default_callbacks
    from lit_explain.methods.netdissect import NetDissect

    t = time.perf_counter()
    dm = BrodenDataModule(root=root, categories=None, batch_size=32, cache_dir=cache)
    method = NetDissect(model=model, weights="none", layer=layer, cache_dir=cache, output_dir=f"{cache}/out")
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=default_callbacks(method))
    trainer.predict(method, datamodule=dm, return_predictions=False)
    print("MEMORY " + json.dumps({"code": str(Path(lit_explain.__file__).parent.parent), "images": len(dm.dataset),
                                  "entries": int(method.concept_index.pixel_offsets.numel()),
                                  "seconds": time.perf_counter() - t}))


def _run_measured(cmd: list[str], **kw) -> tuple[str, str, int, float, float]:
    """Run ``cmd``; return (stdout, stderr, exit status, peak RSS MB from the kernel's ru_maxrss, peak anonymous
    MB polled from /proc/<pid>/status every 2 ms)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kw)
        anon = 0
        while True:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                anon = max(anon, int(re.search(r"RssAnon:\s+(\d+)", status).group(1)))
            except (OSError, AttributeError):
                pass
            done, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.002)
        proc.returncode = os.waitstatus_to_exitcode(code)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), proc.returncode, usage.ru_maxrss / 1024, anon / 1024


def memory_growth(sizes: list[int], root: Path, model: str, layer: str) -> None:
    """Run :func:`memory_child` on the first N images for each N (cold caches, fresh processes); print a table
    and the growth per image."""
    import shutil

    full = write_dense_broden(root / f"dense_{max(sizes)}", max(sizes))
    runs = []
    for n in sizes:
        data = _first_rows(full, root / f"dense_{max(sizes)}_first_{n}", n)
        cache = root / f"dense_cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        repo = Path(__file__).resolve().parent.parent  # this checkout's code, whatever the environment points at
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        stdout, stderr, code, rss, anon = _run_measured(
            [sys.executable, __file__, "--memory-child", str(data), str(cache), model, layer], cwd=repo, env=env)
        line = [x for x in stdout.splitlines() if x.startswith("MEMORY ")]
        if code or not line:
            raise RuntimeError(f"memory run on {n} images failed:\n{stderr[-3000:]}")
        runs.append({**json.loads(line[-1][len("MEMORY "):]), "peak_rss_mb": rss, "peak_anon_mb": anon})
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\nNetDissect memory (code in {runs[0]['code']}), {model} (random weights) {layer}, 224x224 images, every pixel labelled "
          f"(colour, object, part; 112x112), cold caches, {os.environ.get('OMP_NUM_THREADS', 'default')} threads\n")
    print("| images | index entries | peak RSS (incl. mapped files) | peak anonymous | time |\n|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['images']:,} | {r['entries']:,} | {r['peak_rss_mb']:,.0f} MB | {r['peak_anon_mb']:,.0f} MB | "
              f"{r['seconds']:.0f} s |")
    a, b = runs[0], runs[-1]
    dn = b["images"] - a["images"]
    if dn > 0:
        print(f"\ngrowth per image from {a['images']:,} to {b['images']:,} images: peak RSS "
              f"{(b['peak_rss_mb'] - a['peak_rss_mb']) / dn * 1024:,.0f} KB, peak anonymous "
              f"{(b['peak_anon_mb'] - a['peak_anon_mb']) / dn * 1024:,.0f} KB "
              f"(index: {(b['entries'] - a['entries']) / dn * 12 / 1024:,.0f} KB of entries per image)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--ref-images", type=int, default=300)
    ap.add_argument("--dense-units", type=int, default=4, help="units timed in the per-unit dense loop")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--mask-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--root", default="data/bench")
    ap.add_argument("--broden-images", type=int, default=500, help="images of the Broden-scale tally (0: skip)")
    ap.add_argument("--memory", default="", help="comma-separated image counts: measure memory growth instead")
    ap.add_argument("--memory-model", default="torchvision:resnet18", help="model of the --memory runs")
    ap.add_argument("--memory-child", nargs=4, metavar=("ROOT", "CACHE", "MODEL", "LAYER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.memory:
        memory_growth(sorted(int(x) for x in args.memory.split(",")), Path(args.root), args.memory_model, args.layer)
        return
    torch.manual_seed(0)
    root = Path(args.root)

    t = time.perf_counter()
    world = generate_world(root / f"world_{args.images}_{args.image_size}", num_images=args.images,
                           image_size=args.image_size, mask_size=args.mask_size)
    t_world = time.perf_counter() - t
    dm = BrodenDataModule(root=str(world), categories=None, batch_size=args.batch_size, cache_dir=str(root / "cache"))
    dm.setup("predict")
    ds = dm.dataset
    index = dm.concept_index()
    torch.manual_seed(0)  # the same random network whether the world was just generated or found on disk
    net = synthetic_cnn(width=args.width).eval().requires_grad_(False)
    probe = LayerProbe(net, [args.layer])

    # extraction: loading + forward + store writes
    loader = dm.predict_dataloader()
    store = ActivationStore(root / "cache" / "activations")
    first = next(iter(loader))
    shape = probe(first["image"][:1])[args.layer].shape
    key = cache_key(bench=time.time())
    writer = store.writer(key, (len(ds), *shape[1:]))
    batches = []
    t = time.perf_counter()
    for batch in loader:
        acts = probe(batch["image"])[args.layer]
        writer.write(batch["index"], acts)
        if len(batches) < 8:
            batches.append(batch["image"])
    entry = writer.commit()
    t_extract = time.perf_counter() - t
    # forward alone, on preloaded batches
    n_fwd = sum(len(b) for b in batches)
    t = time.perf_counter()
    for b in batches:
        probe(b)
    t_forward = (time.perf_counter() - t) / n_fwd * len(ds)

    t = time.perf_counter()
    thr = store_unit_quantiles(entry.acts, 0.995)
    t_thr = time.perf_counter() - t

    units = entry.shape[1]
    t = time.perf_counter()
    metric = tally_iou(entry, torch.arange(len(ds)), torch.arange(units), thr, index)
    iou = metric.compute()
    t_tally = time.perf_counter() - t
    # the dense variant (every unit's bitmap on every image), for comparison
    dense = DissectionIoU(units, index.num_concepts)
    chunk = max(1, min(256, (1 << 25) // (units * index.pixel_size)))
    t = time.perf_counter()
    for s in range(0, len(ds), chunk):
        ids = torch.arange(s, min(s + chunk, len(ds)))
        dense.update(unit_bitmaps(entry.rows(ids.numpy()), index.mask_shape, thr.float()), ids, index)
    t_dense = time.perf_counter() - t
    assert torch.equal(dense.intersection, metric.intersection), "pair tally differs from the dense tally"

    # reference on a subset, checked against the vectorised tally on the same subset
    m = min(args.ref_images, len(ds))
    ann = [ds.annotations(i) for i in range(m)]
    vocab = ds.vocabulary
    lut = np.full(max(vocab.label_ids) + 1, -1, np.int64)
    lut[list(vocab.label_ids)] = np.arange(len(vocab))
    sub = entry.rows(np.arange(m))
    t = time.perf_counter()
    ref_inter, ref_ua, ref_ca = netdissect_lite_tally(sub, thr.numpy(), [a[0] for a in ann], [a[1] for a in ann],
                                                      lut, len(vocab), index.mask_shape)
    t_ref = (time.perf_counter() - t) / m * len(ds)
    check = tally_iou(entry, torch.arange(m), torch.arange(units), thr, index)
    assert np.array_equal(check.intersection.numpy(), ref_inter), "vectorised tally differs from the reference"
    assert np.array_equal(check.unit_area.numpy(), ref_ua) and np.array_equal(check.concept_area.numpy(), ref_ca)

    # the straightforward per-unit dense loop: for each unit, its bitmap on every image against dense masks
    ref_units = list(range(min(args.dense_units, units)))
    t = time.perf_counter()
    dense_inter = torch.zeros(len(ref_units), index.num_concepts, dtype=torch.int64)
    for j, u in enumerate(ref_units):
        for s in range(0, len(ds), 256):
            ids = torch.arange(s, min(s + 256, len(ds)))
            bm = unit_bitmaps(entry.rows(ids.numpy())[:, [u]], index.mask_shape, thr[[u]].float())[:, 0]  # (B, H)
            masks = index.dense_masks(ids).flatten(2)  # (B, C, H)
            dense_inter[j] += (masks & bm[:, None, :]).sum((0, 2))
    t_unit_loop = (time.perf_counter() - t) / len(ref_units) * units
    assert torch.equal(dense_inter, metric.intersection[ref_units]), "per-unit loop differs"

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cache_bytes = (entry.path / "acts.bin").stat().st_size
    fp16_bytes = int(np.prod(entry.shape)) * 2
    n = len(ds)
    print(f"\nNetDissect on the synthetic world: {n} images {ds.image_shape}, masks {index.mask_shape}, "
          f"{len(vocab)} concepts, synthetic_cnn width {args.width} {args.layer} {tuple(entry.shape[1:])}; "
          f"{torch.get_num_threads()} threads; world generated in {t_world:.1f} s\n")
    rows = [
        ("activation extraction (load + forward + cache)", f"{n / t_extract:,.0f} img/s", f"{t_extract:.2f} s"),
        ("forward pass alone", f"{n / t_forward:,.0f} img/s", f"{t_forward:.2f} s"),
        ("thresholds (exact quantile, all units)", "", f"{t_thr:.2f} s"),
        ("IoU tally (active pairs, vectorised)", f"{n / t_tally:,.0f} img/s", f"{t_tally:.2f} s"),
        ("IoU tally, dense bitmaps of every unit", f"{n / t_dense:,.0f} img/s", f"{t_dense:.2f} s"),
        ("tally cost / forward pass", f"{t_tally / t_forward:.0%}", ""),
        (f"NetDissect-Lite loop per image and unit (timed on {m} images)", f"{n / t_ref:,.0f} img/s", f"{t_ref:.1f} s"),
        ("speed-up over the NetDissect-Lite loop", f"{t_ref / t_tally:,.1f}x", ""),
        (f"per-unit dense loop (timed on {len(ref_units)} units)", f"{n / t_unit_loop:,.1f} img/s", f"{t_unit_loop:.1f} s"),
        ("speed-up over the per-unit dense loop", f"{t_unit_loop / t_tally:,.0f}x", ""),
        ("peak resident memory", f"{peak_mb:,.0f} MB", ""),
        ("activation cache / fp16 size", f"{cache_bytes / fp16_bytes:.2f}", f"{cache_bytes / 2**20:.1f} MiB"),
        ("units with IoU > 0.04", f"{int((iou.max(1).values > 0.04).sum())} / {units}", "(random init)"),
    ]
    if args.broden_images:
        rows += broden_scale(args.broden_images, min(args.ref_images, 40))
    print("| measure | rate | time |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
