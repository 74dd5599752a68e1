"""Text encoders: a tiny GloVe file written here (expected vectors computed independently), the packaged
all-MiniLM-L6-v2 loaded offline, and a tiny randomly initialised open_clip model saved to a file here."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from lit_explain.text import GloveEncoder, OpenClipEncoder, SentenceTransformerEncoder

GLOVE = {  # file order = frequency order in real GloVe files
    "the": [0.1, 0.2, 0.3, 0.4],
    "red": [3.0, 4.0, 0.0, 0.0],
    "crimson": [2.5, 4.5, 0.5, 0.0],
    "traffic": [0.0, 0.0, 6.0, 8.0],
    "light": [1.0, 0.0, 0.0, 0.0],
    "t-shirt": [0.0, 1.0, 1.0, 0.0],
    "shirt": [0.0, 2.0, 0.0, 0.0],
    "blue": [-1.0, 0.0, 0.0, 1.0],
}


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _write_glove(path, table=GLOVE):
    path.write_text("".join(f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in table.items()))
    return path


@pytest.fixture
def glove(tmp_path):
    return _write_glove(tmp_path / "glove.tiny.4d.txt")


# ---------------------------------------------------------------------------------------------- GloVe
def test_glove_vectors_and_multiword_average(glove, tmp_path):
    enc = GloveEncoder(str(glove), cache_dir=str(tmp_path / "cache"))
    assert enc.dim == 4
    out = enc.encode(["red", "Traffic Light", "traffic_light", "t-shirt", "blue"])
    assert out.shape == (5, 4) and out.dtype == torch.float32
    expected = np.stack([
        _unit(GLOVE["red"]),
        _unit(_unit(GLOVE["traffic"]) + _unit(GLOVE["light"])),  # mean of unit vectors, re-normalised
        _unit(_unit(GLOVE["traffic"]) + _unit(GLOVE["light"])),
        _unit(GLOVE["t-shirt"]),  # the hyphenated token itself exists
        _unit(GLOVE["blue"]),
    ])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_glove_streams_only_needed_words(glove, tmp_path):
    enc = GloveEncoder(str(glove), cache_dir=None)
    enc.encode(["red", "light"])
    assert set(enc._vectors) == {"red", "light"}
    enc.encode(["crimson"])
    assert set(enc._vectors) == {"red", "light", "crimson"}


def test_glove_open_vocabulary(glove, tmp_path, caplog):
    enc = GloveEncoder(str(glove), vocabulary_size=3, cache_dir=None)
    assert enc.vocabulary() == ["the", "red", "crimson"]
    assert GloveEncoder(str(glove), cache_dir=None).vocabulary() == list(GLOVE)
    words = tmp_path / "words.txt"
    words.write_text("# my words\nblue\nnotaword\nred\n\n")
    enc = GloveEncoder(str(glove), vocabulary=str(words), cache_dir=None)
    with caplog.at_level(logging.WARNING):
        assert enc.vocabulary() == ["blue", "red"]
    assert "notaword" in caplog.text
    v = enc.encode(enc.vocabulary())
    np.testing.assert_allclose(v.numpy(), np.stack([_unit(GLOVE["blue"]), _unit(GLOVE["red"])]), atol=1e-6)


def test_glove_missing_words_error_or_logged_skip(glove, caplog):
    strict = GloveEncoder(str(glove), cache_dir=None)
    with pytest.raises(KeyError, match="zzyzx"):
        strict.encode(["red", "zzyzx"])
    lax = GloveEncoder(str(glove), on_missing="skip", cache_dir=None)
    with caplog.at_level(logging.WARNING):
        out, found = lax.encode(["red", "zzyzx", "red zzyzx"], return_found=True)
    assert found.tolist() == [True, False, True]
    assert torch.all(out[1] == 0)
    np.testing.assert_allclose(out[2].numpy(), _unit(GLOVE["red"]), atol=1e-6)  # the known word only
    assert "zzyzx" in caplog.text


def test_glove_missing_or_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"glove\.6B\.300d\.txt"):
        GloveEncoder(str(tmp_path / "nope.txt")).encode(["red"])
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 2 3\nblue 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        GloveEncoder(str(bad), cache_dir=None).encode(["blue"])


def test_glove_disk_cache_reused_and_keyed_by_content(glove, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = GloveEncoder(str(glove), cache_dir=str(cache)).encode(["red", "traffic light"])
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def boom(self, *a, **k):
        raise AssertionError("file streamed again")

    monkeypatch.setattr(GloveEncoder, "_stream", boom)
    again = GloveEncoder(str(glove), cache_dir=str(cache)).encode(["red", "traffic light"])
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="streamed again"):
        GloveEncoder(str(glove), cache_dir=str(cache)).encode(["red", "blue"])
    monkeypatch.undo()
    changed = dict(GLOVE, red=[0.0, 0.0, 0.0, 5.0])
    _write_glove(glove, changed)  # same path, other vectors: the cache must not serve the old ones
    new = GloveEncoder(str(glove), cache_dir=str(cache)).encode(["red", "traffic light"])
    np.testing.assert_allclose(new[0].numpy(), [0, 0, 0, 1], atol=1e-6)
    assert not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temporary files left


# ---------------------------------------------------------------------------------------------- MiniLM
def test_minilm_offline_similar_words_closer(tmp_path):
    enc = SentenceTransformerEncoder(cache_dir=str(tmp_path / "cache"))
    words = ["red", "crimson", "triangle", "dog", "puppy", "airplane", "car", "automobile", "banana",
             "traffic light"]
    e = enc.encode(words)
    assert e.shape == (10, 384) == (len(words), enc.dim)
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
    s = e @ e.T
    i = {w: k for k, w in enumerate(words)}
    for a, near, far in [("red", "crimson", "triangle"), ("dog", "puppy", "airplane"),
                         ("car", "automobile", "banana")]:
        assert s[i[a], i[near]] > s[i[a], i[far]] + 0.1, (a, near, far)
    # a cache hit does not even load the model
    again = SentenceTransformerEncoder(cache_dir=str(tmp_path / "cache"))
    assert torch.allclose(again.encode(words), e)
    assert again._model is None
    with pytest.raises(KeyError):
        enc.encode(["dog", "  "])


def test_sentence_transformer_missing_model_is_clear(tmp_path):
    enc = SentenceTransformerEncoder(model=str(tmp_path / "no_such_model"), cache_dir=None)
    with pytest.raises(OSError, match="local"):
        enc.encode(["dog"])


# ---------------------------------------------------------------------------------------------- open_clip
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg_path = d / "lit-explain-tiny-clip.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("lit-explain-tiny-clip").eval()
    weights = d / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return model, weights, cfg_path


def test_open_clip_text_tower_from_local_file(tiny_clip, tmp_path):
    import open_clip

    model, weights, cfg_path = tiny_clip
    enc = OpenClipEncoder("lit-explain-tiny-clip", str(weights), model_config_path=str(cfg_path),
                          template="a photo of a {}.", cache_dir=str(tmp_path / "cache"))
    assert enc.dim == 16
    words = ["red", "traffic light", "dog"]
    out = enc.encode(words)
    tok = open_clip.get_tokenizer("lit-explain-tiny-clip")
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {w}." for w in words]))
    ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # another template is another embedding (and another cache entry)
    plain = OpenClipEncoder("lit-explain-tiny-clip", str(weights), model_config_path=str(cfg_path),
                            cache_dir=str(tmp_path / "cache")).encode(words)
    assert not torch.allclose(plain, out)


def test_open_clip_bad_inputs(tiny_clip, tmp_path):
    _, weights, cfg_path = tiny_clip
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        OpenClipEncoder("lit-explain-tiny-clip", str(tmp_path / "missing.pt"), cache_dir=None).encode(["dog"])
    with pytest.raises(ValueError, match="unknown open_clip model"):
        OpenClipEncoder("no-such-arch", str(weights), cache_dir=None).encode(["dog"])
    with pytest.raises(ValueError, match="template"):
        OpenClipEncoder("lit-explain-tiny-clip", str(weights), template="no slot")
