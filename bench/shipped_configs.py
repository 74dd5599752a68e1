"""Run every shipped config and record a digest of each result table, to prove a refactor changes no result.

Synthetic configs run as shipped (the synthetic world, its CNN, every dissection and LaViSE config). The real-data
configs (Broden, Visual Genome, COCO) need files nobody can download here, so they run on the miniature fixtures
of ``tests/fixtures`` written in the exact on-disk format, with a randomly initialised backbone (``weights: none``)
and, for LaViSE, a miniature GloVe file: the code paths are the shipped ones, only the inputs are small.

Each run starts from an empty ``cache/`` so the extraction, thresholds and searches are recomputed, not reused.
The tables compared are the CSV files every method writes and the rows of its JSON (the JSON's other keys hold
paths and configuration, which may legitimately change).

    python bench/shipped_configs.py --workdir /tmp/before                    # trains the CNN, writes digests.json
    python bench/shipped_configs.py --workdir /tmp/after --world-from /tmp/before --compare /tmp/before/digests.json

``--world-from`` reuses another workdir's synthetic world and trained CNN (training is deterministic on one
machine, but reusing it saves two minutes and isolates the comparison to the explaining code).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (subcommand, config, extra CLI args, output folder); order matters (LaViSE predict needs its fit).
SYNTHETIC = [
    ("netdissect_synthetic", "predict", "netdissect_synthetic.yaml", [], "outputs/netdissect_synthetic"),
    ("compexp_synthetic", "predict", "compexp_synthetic.yaml", [], "outputs/compexp_synthetic"),
    ("cce_synthetic", "predict", "cce_synthetic.yaml", [], "outputs/cce_synthetic"),
    # one epoch: the comparison is of the predict pass given one trained explainer (--lavise-from reuses it)
    ("lavise_synthetic_fit", "fit", "lavise_synthetic.yaml", ["--trainer.max_epochs", "1"], None),
    ("lavise_synthetic", "predict", "lavise_synthetic.yaml",
     ["--ckpt_path", "outputs/lavise_synthetic/checkpoints/last.ckpt"], "outputs/lavise_synthetic"),
]
BRODEN_DATA = ["--data.init_args.root", "data/broden_miniature", "--data.init_args.num_workers", "0",
               "--data.init_args.batch_size", "8", "--trainer.accelerator", "cpu",
               "--model.init_args.weights", "none"]
REAL = [
    ("netdissect_broden", "predict", "netdissect_broden.yaml", BRODEN_DATA, "outputs/netdissect_broden"),
    ("compexp_broden", "predict", "compexp_broden.yaml",
     BRODEN_DATA + ["--model.init_args.random_units", "4"], "outputs/compexp_broden"),
    ("cce_broden", "predict", "cce_broden.yaml",  # the miniature has no material labels
     BRODEN_DATA + ["--model.init_args.random_units", "4", "--data.init_args.categories",
                    "[object, part, scene, texture, color]"], "outputs/cce_broden"),
]


def run(workdir: Path, sub: str, config: str, extra: list[str], log: Path) -> float:
    cmd = [sys.executable, str(REPO / "trainer_cli.py"), sub, "--config", str(REPO / "configs" / config), *extra]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=workdir, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _value(cell: str) -> str:
    """A CSV cell with numbers at 6 significant digits (the coarsest float format a table was ever written in)."""
    try:
        return f"{float(cell):.6g}"
    except ValueError:
        return cell


LAVISE_CKPT = "outputs/lavise_synthetic/checkpoints/last.ckpt"
#: arguments renamed since a checkpoint may have been written (old name -> new name)
RENAMED = {"layer_target": "layer"}


def _import_checkpoint(src: Path, dst: Path) -> None:
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    for old, new in RENAMED.items():
        if old in hp:
            hp[new] = hp.pop(old)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every CSV under ``folder`` (not TensorBoard), of its values at 6 significant digits (``:values``,
    which survives a change of float format), and of the ``rows`` of every result JSON."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.startswith(("tensorboard", "jobs", "checkpoints")):
            continue
        if p.suffix == ".csv":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            with open(p, newline="") as f:
                cells = [[_value(c) for c in row] for row in csv.reader(f)]
            out[rel + ":values"] = hashlib.sha256(json.dumps(cells).encode()).hexdigest()
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            if isinstance(data, dict) and "rows" in data:
                out[rel + ":rows"] = hashlib.sha256(json.dumps(data["rows"], sort_keys=True).encode()).hexdigest()
            elif p.name == "recall.json":
                out[rel] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return out


def prepare_real(workdir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.broden_writer import make_miniature

    root = workdir / "data" / "broden_miniature"
    if not (root / "index.csv").is_file():
        make_miniature(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--world-from", type=Path, help="workdir whose data/ and trained CNN are reused")
    ap.add_argument("--compare", type=Path, help="digests.json of another run: exit 1 on any difference")
    ap.add_argument("--only", default="", help="comma-separated names to run (default: all)")
    ap.add_argument("--lavise-from", type=Path, help="workdir whose trained LaViSE checkpoint is reused (no fit); "
                    "its hyper-parameters are renamed to today's argument names (layer_target -> layer)")
    ap.add_argument("--digest-only", action="store_true", help="recompute digests.json from the outputs, run nothing")
    args = ap.parse_args(argv)
    wd = args.workdir.resolve()
    if args.digest_only:
        digests = {name: digest(wd / out) for name, _, _, _, out in SYNTHETIC + REAL if out and (wd / out).is_dir()}
        return _finish(wd, digests, args.compare)
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(wd / "cache", ignore_errors=True)
    if args.world_from:
        src = args.world_from.resolve()
        (wd / "outputs").mkdir(exist_ok=True)
        for rel in ("data/synthetic_world", "outputs/synthetic_classifier"):
            if not (wd / rel).exists():
                (wd / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src / rel, wd / rel, symlinks=True)
    elif not (wd / "outputs/synthetic_classifier/checkpoints/last.ckpt").is_file():
        secs = run(wd, "fit", "synthetic_classifier.yaml", [], wd / "logs" / "synthetic_classifier.log")
        print(f"synthetic_classifier fit: {secs:.0f} s", flush=True)
    prepare_real(wd)
    if args.lavise_from:
        _import_checkpoint(args.lavise_from.resolve() / LAVISE_CKPT, wd / LAVISE_CKPT)
    only = {s for s in args.only.split(",") if s}
    digests: dict[str, dict[str, str]] = {}
    for name, sub, config, extra, out in SYNTHETIC + REAL:
        if only and name not in only and name.removesuffix("_fit") not in only:
            continue
        if sub == "fit" and args.lavise_from:
            continue
        if out:  # results of an earlier run go; a checkpoint that the predict step reads stays
            for p in (wd / out).glob("*") if (wd / out).is_dir() else []:
                if p.name != "checkpoints":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        secs = run(wd, sub, config, extra, wd / "logs" / f"{name}.log")
        print(f"{name} {sub}: {secs:.0f} s", flush=True)
        if out:
            digests[name] = digest(wd / out)
    return _finish(wd, digests, args.compare)


def _finish(wd: Path, digests: dict[str, dict[str, str]], compare: Path | None) -> int:
    """Write digests.json; with ``compare``, list every table whose bytes differ and say whether its values do."""
    (wd / "digests.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if not compare:
        return 0
    ref = json.loads(compare.read_text())
    same_bytes, same_values, bad = [], [], []
    for name, files in digests.items():
        for rel, h in files.items():
            if rel.endswith(":values"):  # a CSV's companion, consulted below; ":rows" (a JSON's rows) is compared
                continue
            key = f"{name}/{rel}"
            if ref.get(name, {}).get(rel) == h:
                same_bytes.append(key)
            elif ref.get(name, {}).get(rel + ":values") == files.get(rel + ":values"):
                same_values.append(key)
            else:
                bad.append(key)
        bad += [f"{name}/{rel} (missing)" for rel in ref.get(name, {}) if rel not in files]
    print(f"byte-identical: {len(same_bytes)} tables: {', '.join(same_bytes)}")
    if same_values:
        print(f"same values, other bytes (float format): {', '.join(same_values)}")
    if bad:
        print("DIFFERENT: " + ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
