"""random_init_copy / reset_parameters: the random-initialisation null model of the dissection baselines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_explain.models import load_model
from lit_explain.models.random_copy import random_init_copy, reset_parameters

TINY = "python:tests.methods.tiny_models:tiny_cnn"


class WithTokens(nn.Module):
    """Parameters owned by a module without ``reset_parameters`` (like a ViT's tokens), beside ordinary layers."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.full((1, 1, 8), 5.0))
        self.gamma = nn.Parameter(torch.full((8,), 5.0))
        self.offset = nn.Parameter(torch.full((8,), 5.0))
        self.norm = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 4)


def _trained_resnet(num_classes: int = 1000) -> nn.Module:
    """A resnet18 whose weights are not any seed's initialisation (stands in for a trained checkpoint)."""
    net = load_model("torchvision:resnet18", num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
    return net


def _tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if v.dtype.is_floating_point}


def test_factory_copy_is_the_architectures_init_deterministic_and_leaves_global_rng_alone():
    trained = _trained_resnet()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = random_init_copy(trained, "torchvision:resnet18", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = random_init_copy(trained, "torchvision:resnet18", seed=7)
    c = random_init_copy(trained, "torchvision:resnet18", seed=8)
    torch.manual_seed(7)
    reference = load_model("torchvision:resnet18")  # what the factory draws from the seed, computed directly
    ta, tb, tc, tr, tt = map(_tensors, (a, b, c, reference, trained))
    assert ta.keys() == tt.keys()
    for k in ta:
        assert ta[k].shape == tt[k].shape
        assert torch.equal(ta[k], tb[k]) and torch.equal(ta[k], tr[k]), k
    conv = "layer1.0.conv1.weight"
    assert not torch.equal(ta[conv], tc[conv]) and not torch.equal(ta[conv], tt[conv])
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_checkpoint_head_size_is_kept():
    trained = _trained_resnet(num_classes=365)  # e.g. resnet18_places365.pth.tar
    copy = random_init_copy(trained, "torchvision:resnet18", seed=0)
    assert copy.fc.weight.shape == (365, 512)


def test_fixed_seed_factory_falls_back_to_reset_parameters():
    trained = load_model(TINY)  # tiny_cnn always builds the same weights from its own generator
    copy = random_init_copy(trained, TINY, seed=0)
    w, w0 = copy.conv1.weight, trained.conv1.weight
    assert not torch.equal(w, w0)
    bound = 1 / math.sqrt(3 * 3 * 3)  # PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(w.abs().max()) <= bound
    assert torch.equal(copy.conv1.weight, random_init_copy(trained, TINY, seed=0).conv1.weight)


def test_saved_file_and_leftover_parameters_are_redrawn(tmp_path):
    model = WithTokens()
    with torch.no_grad():
        model.norm.running_var.fill_(9.0)
        model.fc.weight.fill_(5.0)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = load_model(str(path))
    copy = random_init_copy(loaded, str(path), seed=3)
    assert float(copy.cls_token.abs().max()) <= 0.04 and float(copy.cls_token.std()) > 0  # trunc normal, std .02
    assert torch.equal(copy.gamma, torch.ones(8)) and torch.equal(copy.offset, torch.zeros(8))
    assert torch.equal(copy.norm.running_var, torch.ones(8)) and torch.equal(copy.norm.weight, torch.ones(8))
    assert float(copy.fc.weight.abs().max()) <= 1 / math.sqrt(8)
    assert float(loaded.fc.weight[0, 0]) == 5.0  # the original is not touched


def test_models_without_parameters_and_torchscript_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no parameters"):
        random_init_copy(nn.Sequential(nn.ReLU()), None)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="TorchScript"):
        reset_parameters(scripted)
