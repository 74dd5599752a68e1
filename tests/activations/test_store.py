"""ActivationStore: round trip, atomic commit, and partial or damaged entries never read as valid."""

import numpy as np
import torch

from lit_explain.activations.store import ActivationStore, cache_key


def test_roundtrip_and_maxes(tmp_path):
    store = ActivationStore(tmp_path)
    key = cache_key(model="m", layer="l")
    acts = torch.randn(5, 3, 2, 2)
    w = store.writer(key, (5, 3, 2, 2), "float16")
    assert store.get(key) is None  # nothing visible before commit
    w.write(torch.tensor([4, 0, 2]), acts[[4, 0, 2]])
    w.write(torch.tensor([1, 3]), acts[[1, 3]])
    entry = w.commit()
    half = acts.half().float()
    assert torch.equal(entry.rows(np.arange(5)), half)
    assert torch.equal(torch.from_numpy(np.asarray(entry.maxes)), half.flatten(2).amax(-1))
    assert store.get(key) is not None and not (tmp_path / f"{key}.partial").exists()


def test_killed_run_is_not_read_and_is_restarted(tmp_path):
    store = ActivationStore(tmp_path)
    key = cache_key(model="m")
    w = store.writer(key, (4, 2, 1, 1))
    w.write(torch.tensor([0]), torch.ones(1, 2, 1, 1))
    w.flush()  # the process dies here: no commit
    assert store.get(key) is None
    w2 = store.writer(key, (4, 2, 1, 1))  # a new run starts over from a clean partial entry
    w2.write(torch.arange(4), torch.full((4, 2, 1, 1), 2.0))
    assert store.get(key) is None
    entry = w2.commit()
    assert float(entry.rows(np.arange(4)).min()) == 2.0


def test_truncated_entry_is_rejected(tmp_path):
    store = ActivationStore(tmp_path)
    key = cache_key(x=1)
    w = store.writer(key, (3, 2, 2, 2))
    w.write(torch.arange(3), torch.zeros(3, 2, 2, 2))
    entry = w.commit()
    with open(entry.path / "acts.bin", "r+b") as f:
        f.truncate(10)
    assert store.get(key) is None


def test_key_depends_on_every_part():
    base = dict(model="a", layer="l", dataset="d", dtype="float16")
    keys = {cache_key(**base)} | {cache_key(**{**base, k: "other"}) for k in base}
    assert len(keys) == 1 + len(base)


def test_interrupted_run_resumes_with_the_rows_it_wrote(tmp_path):
    store = ActivationStore(tmp_path)
    key = cache_key(model="resume")
    acts = torch.randn(6, 2, 2, 2)
    w = store.writer(key, (6, 2, 2, 2), "float32")
    w.write(torch.tensor([0, 3]), acts[[0, 3]])
    del w  # killed: no commit, no close
    w2 = store.writer(key, (6, 2, 2, 2), "float32")
    assert w2.done.tolist() == [True, False, False, True, False, False]
    w2.write(torch.tensor([1, 2, 4, 5]), acts[[1, 2, 4, 5]])
    entry = w2.commit()
    assert torch.equal(entry.rows(np.arange(6)), acts)
    # another layout (or resume=False) starts afresh
    w3 = store.writer(cache_key(model="resume2"), (6, 2, 2, 2), "float32", resume=False)
    assert not w3.done.any()


def test_commit_refuses_missing_rows(tmp_path):
    store = ActivationStore(tmp_path)
    w = store.writer("k", (3, 1, 1, 1))
    w.write(torch.tensor([0, 2]), torch.zeros(2, 1, 1, 1))
    import pytest

    with pytest.raises(RuntimeError, match="never written"):
        w.commit()
    assert store.get("k") is None
