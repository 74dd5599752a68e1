"""Generation speed of the synthetic concept world (single process).

    python bench/synthetic_world.py [--images 5000] [--image-size 64] [--mask-size 32]

Generates a world into a temporary folder and prints a markdown table: wall and CPU seconds, images/s,
files written, bytes on disk. CPU seconds matter on a shared machine: wall time there also counts other
processes' load (file creation in particular), CPU time does not.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from lit_explain.synth.world import generate_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--mask-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_world_"))
    try:
        t, c = time.perf_counter(), time.process_time()
        root = generate_world(tmp / "world", num_images=args.images, image_size=args.image_size,
                              mask_size=args.mask_size, seed=args.seed)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        files = [p for p in root.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.images
    print(f"| images | size | wall s | images/s (wall) | CPU s | images/s (CPU) | files | MB |")
    print(f"|---|---|---|---|---|---|---|---|")
    print(f"| {n} | {args.image_size}/{args.mask_size} | {wall:.2f} | {n / wall:.0f} | {cpu:.2f} | {n / cpu:.0f} | "
          f"{len(files)} | {size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
