"""Atomic writes: complete files only, no temporaries left, the usual permissions."""

import os
import stat

import pytest

from lit_explain.atomic import atomic_write, atomic_write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})

    def boom(f):
        f.write(b'{"a": 2, "partial')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text().strip() == '{\n "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", [1])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
