"""Hand-worked checks of the NMF method's tensor helpers (lit_explain/methods/nmf_ops.py)."""

from __future__ import annotations

import torch

from lit_explain.methods.nmf_ops import (LayerHead, component_shares, crop_cells, fill_corner, image_codes,
                                         matching_score, paste_patch, select_class_images, top_loadings)
from lit_explain.models.synthetic_cnn import synthetic_cnn


def test_selection_is_seeded_capped_and_per_class():
    preds = torch.tensor([2, 0, 2, 1, 2, 2, 0, -1, 2])
    a = select_class_images(preds, [0, 2, 1], cap=3, seed=5)
    assert sorted(a[0].tolist()) == [1, 6] and sorted(a[2].tolist()) == [3]
    assert len(a[1]) == 3 and set(a[1].tolist()) <= {0, 2, 4, 5, 8}
    # the same class gets the same images whatever other classes are asked for, and the seed changes the draw
    assert select_class_images(preds, [2], 3, 5)[0].tolist() == a[1].tolist()
    draws = {tuple(select_class_images(preds, [2], 3, s)[0].tolist()) for s in range(8)}
    assert len(draws) > 1


def test_layer_head_equals_the_network():
    torch.manual_seed(0)
    net = synthetic_cnn(num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    captured = {}
    h = net.layer3.register_forward_hook(lambda m, i, o: captured.setdefault("a", o.clone()))
    with torch.no_grad():
        want = net(x)
    h.remove()
    head = LayerHead(net, net.layer3, (3, 32, 32))
    torch.testing.assert_close(head(captured["a"]), want)
    # a 1-column strip runs too (global pooling), giving the network's logits of that feature map
    assert head(captured["a"][:, :, :, :1]).shape == (3, 5)


def test_codes_shares_and_loadings_by_hand():
    W = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0]])  # 2 images x 2 pixels, k = 2
    torch.testing.assert_close(image_codes(W, 2, 2), torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    H = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # mass of component t: (Σ W[:, t]) (Σ H[t]) = 6·2 = 12 and 8·2 = 16
    torch.testing.assert_close(component_shares(W[None], H[None]), torch.tensor([[12 / 28, 16 / 28]]))
    units, loads = top_loadings(torch.tensor([0.0, 3.0, 4.0, 0.0]), 3)  # norm 5; tie at 0: smaller unit
    assert units == [2, 1, 0] and loads == [0.8, 0.6, 0.0]
    # matching: class 0's planted units 0 and 2; the first component is e_0, the best cosine with e_2 is 2/√5
    Hm = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]]])
    assert abs(float(matching_score(Hm, [[0, 2]])[0]) - (1 + 2 / 5 ** 0.5) / 2) < 1e-6


def test_crops_and_corner_edits():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crops = crop_cells(img, torch.tensor([1, 0]), torch.tensor([0, 3]), (2, 4))  # cells of 4 x 2 pixels
    assert torch.equal(crops[0], img[0, :, 4:8, 0:2]) and torch.equal(crops[1], img[1, :, 0:4, 6:8])
    patch = torch.full((3, 2, 3), -7.0)
    out = paste_patch(img, patch)
    assert torch.equal(out[:, :, 6:, 5:], patch.expand(2, 3, 2, 3)) and torch.equal(out[:, :, :6], img[:, :, :6])
    out = fill_corner(img, (2, 3), 0.0)
    assert float(out[:, :, 6:, 5:].abs().sum()) == 0 and torch.equal(out[:, :, :, :5], img[:, :, :, :5])
