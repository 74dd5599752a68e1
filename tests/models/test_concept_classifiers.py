"""Multi-head concept classifiers: the losses against hand values and sklearn's definitions, and the batched
all-concepts fit equal to one fit per concept (same steps, same batches)."""

from __future__ import annotations

import pytest
import torch

from lit_explain.models.concept_classifiers import (ConceptClassifiers, hinge, modified_huber, multi_head_loss,
                                                    per_concept_accuracy)


def test_losses_hand_values():
    z = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert hinge(z).tolist() == [4.0, 2.0, 1.0, 0.5, 0.0, 0.0]
    assert modified_huber(z).tolist() == [12.0, 4.0, 1.0, 0.25, 0.0, 0.0]


def test_multi_head_loss_hand_worked():
    scores = torch.tensor([[2.0, -0.5], [0.5, 0.0], [-1.0, 3.0]])
    targets = torch.tensor([[1, 0], [0, -1], [-1, 1]], dtype=torch.int8)
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    total, per = multi_head_loss(scores, targets, w, "hinge", alpha=0.1)
    # concept 0: pixels 0 (+, f=2 -> 0) and 1 (-, f=.5 -> 1.5): mean .75, + .05 * 5
    # concept 1: pixels 0 (-, f=-.5 -> .5) and 2 (+, f=3 -> 0): mean .25, + .05 * 1
    torch.testing.assert_close(per, torch.tensor([1.0, 0.3]))
    torch.testing.assert_close(total, torch.tensor(1.3))
    correct, count = per_concept_accuracy(scores, targets)
    assert correct.tolist() == [1, 2] and count.tolist() == [2, 2]


@pytest.mark.parametrize("loss", ["hinge", "modified_huber"])
def test_batched_fit_equals_one_fit_per_concept(loss):
    g = torch.Generator().manual_seed(0)
    n, C, K = 240, 6, 4
    x = torch.randn(n, C, generator=g, dtype=torch.float64)
    true_w = torch.randn(K, C, generator=g, dtype=torch.float64)
    targets = ((x @ true_w.T) > 0).to(torch.int8)
    targets[torch.rand(n, K, generator=g) < 0.3] = -1  # each concept sees its own subset of pixels
    multi = ConceptClassifiers(C, [f"c{k}" for k in range(K)], loss=loss).double()
    singles = [ConceptClassifiers(C, [f"c{k}"], loss=loss).double() for k in range(K)]
    opt = torch.optim.SGD(multi.parameters(), lr=0.05)
    opts = [torch.optim.SGD(s.parameters(), lr=0.05) for s in singles]
    for epoch in range(5):
        for start in range(0, n, 32):
            xb, tb = x[start:start + 32], targets[start:start + 32]
            opt.zero_grad()
            multi.loss(xb, tb)[0].backward()
            opt.step()
            for k, (s, o) in enumerate(zip(singles, opts)):
                o.zero_grad()
                s.loss(xb, tb[:, k:k + 1])[0].backward()
                o.step()
    torch.testing.assert_close(multi.weight.detach(), torch.cat([s.weight.detach() for s in singles]))
    torch.testing.assert_close(multi.bias.detach(), torch.cat([s.bias.detach() for s in singles]))
    # the fit learned something: accuracy on the labelled pixels is well above chance
    correct, count = per_concept_accuracy(multi(x), targets)
    assert (correct.double() / count).min() > 0.8


def test_concept_maps_are_a_1x1_convolution():
    clf = ConceptClassifiers(3, ["a", "b"])
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
        clf.bias.copy_(torch.tensor([0.0, -1.0]))
    f = torch.randn(2, 3, 4, 5)
    ref = torch.nn.functional.conv2d(f, clf.weight[:, :, None, None], clf.bias)
    torch.testing.assert_close(clf.concept_maps(f), ref)
    assert clf.proba(torch.tensor([-2.0, 0.0, 0.5, 3.0])).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_argument_errors():
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        ConceptClassifiers(0, ["a"])
    with pytest.raises(ValueError, match="unique"):
        ConceptClassifiers(3, ["a", "a"])
    with pytest.raises(ValueError, match=r"loss must be one of \('hinge', 'modified_huber'\)"):
        ConceptClassifiers(3, ["a"], loss="log")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        ConceptClassifiers(3, ["a"], alpha=-1)
