"""The synthetic world is byte-identical across processes (string hashing, hence set order, varies per process)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_with_different_hash_seeds_write_the_same_world(tmp_path):
    code = "import sys; from lit_explain.synth.world import generate_world; generate_world(sys.argv[1], num_images=40)"
    for k, seed in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"w{k}")], check=True, env=env, timeout=300)
    a, b = _digest(tmp_path / "w0"), _digest(tmp_path / "w1")
    assert a.keys() == b.keys() and len(a) > 40
    assert [k for k in a if a[k] != b[k]] == []
