"""JobCache: resumable per-job results keyed on their spec (hits, misses, stale specs, atomic files)."""

from __future__ import annotations

import json
import math

import pytest

from lit_explain.job_cache import JobCache, code_digest, spec_digest


def test_stored_result_is_loaded_only_for_the_same_spec(tmp_path):
    cache = JobCache(tmp_path / "jobs")
    spec = {"unit": 3, "range": [0.5, math.inf], "settings": (3, 5)}
    assert cache.load("u00003_r0", spec) is None and cache.misses == 1
    row = {"unit": 3, "iou": 0.125, "label": "sky OR grass", "range_hi": math.inf}
    path = cache.store("u00003_r0", spec, row)
    assert path.parent == tmp_path / "jobs" and path.name.startswith("u00003_r0_") and path.suffix == ".json"
    again = JobCache(tmp_path / "jobs")  # a rerun, e.g. after an interruption
    assert again.load("u00003_r0", spec) == row and again.hits == 1  # tuples and inf survive the round trip
    assert again.load("u00003_r0", {**spec, "unit": 4}) is None  # another spec: another file
    assert again.load("u00003_r1", spec) is None  # another stem
    assert again.hits == 1 and again.misses == 2


def test_a_file_with_another_spec_or_unreadable_content_is_a_miss(tmp_path):
    cache = JobCache(tmp_path)
    spec = {"seed": 0}
    path = cache.store("job", spec, [1, 2])
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "spec": {"seed": 1}}))  # same name, stale content (renamed by hand)
    assert cache.load("job", spec) is None
    path.write_text('{"spec": {"seed": 0}, "res')  # truncated: never happens with atomic writes, still a miss
    assert cache.load("job", spec) is None
    cache.store("job", spec, [1, 2])
    assert cache.load("job", spec) == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_disabled_cache_recomputes_but_still_writes(tmp_path):
    off = JobCache(tmp_path, enabled=False)
    off.store("job", {"a": 1}, {"x": 1})
    assert off.load("job", {"a": 1}) is None
    assert JobCache(tmp_path).load("job", {"a": 1}) == {"x": 1}


def test_digest_depends_on_content_not_key_order(tmp_path):
    assert spec_digest({"a": 1, "b": [2]}) == spec_digest({"b": [2], "a": 1})
    assert spec_digest({"a": 1}) != spec_digest({"a": 2})
    with pytest.raises(ValueError, match="stem"):
        JobCache(tmp_path).path("a/b", {})


def test_code_digest_follows_every_source_file_of_a_module_or_package(tmp_path, monkeypatch):
    pkg = tmp_path / "jobpkg_probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "solver.py").write_text("STEP = 1\n")
    (pkg / "sub" / "deep.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = {"pkg": code_digest("jobpkg_probe"), "mod": code_digest("jobpkg_probe.solver")}
    code_digest.cache_clear()
    assert code_digest("jobpkg_probe") == first["pkg"]  # deterministic
    (pkg / "sub" / "deep.py").write_text("X = 2\n")  # a file deep in the package, not imported by anyone
    code_digest.cache_clear()
    assert code_digest("jobpkg_probe") != first["pkg"]
    assert code_digest("jobpkg_probe.solver") == first["mod"]  # a module: only its own file
    (pkg / "solver.py").write_text("STEP = 2\n")
    code_digest.cache_clear()
    assert code_digest("jobpkg_probe.solver") != first["mod"]
    code_digest.cache_clear()
