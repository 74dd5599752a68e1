"""LayerProbe and layer_shapes against hand-run forward passes and hand-laid token grids (no downloads)."""

from __future__ import annotations

import gc
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from lit_explain.models import LayerProbe, layer_shapes


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode BN is not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))  # layer4: 2 x 2


def _stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.maxpool(m.relu(m.bn1(m.conv1(x))))


# ---------------------------------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------------------------------
def test_resolves_dotted_paths_of_common_architectures(resnet):
    with torch.device("meta"):  # structure only: no memory, no init cost
        vgg = torchvision.models.vgg16()
        tv_vit = torchvision.models.vit_b_16()
        timm_vit = timm.create_model("vit_base_patch16_224")
    assert LayerProbe.resolve(resnet, "layer4") is resnet.layer4
    assert LayerProbe.resolve(resnet, "layer4.1.conv2") is resnet.layer4[1].conv2
    assert LayerProbe.resolve(vgg, "features.28") is vgg.features[28]
    assert LayerProbe.resolve(tv_vit, "encoder.layers.encoder_layer_11") is tv_vit.encoder.layers[11]
    assert LayerProbe.resolve(timm_vit, "blocks.11") is timm_vit.blocks[11]
    names = LayerProbe.available_layers(resnet)
    assert "layer4.1.conv2" in names and "fc" in names and "" not in names
    assert len(names) == len(list(resnet.modules())) - 1


@pytest.mark.parametrize("typo, expected", [("layr4", "layer4"), ("layer4.1.conv3", "layer4.1.conv2"), ("fc1", "fc")])
def test_unknown_layer_lists_nearest_valid_names(resnet, typo, expected):
    with pytest.raises(ValueError) as info:
        LayerProbe(resnet, ["layer1", typo])
    message = str(info.value)
    assert repr(typo) in message
    closest = message.split("Closest valid names: ")[1].split(". Top-level")[0].split(", ")
    assert expected in closest
    assert "LayerProbe.available_layers(model)" in message
    assert _no_hooks(resnet)  # the valid first name got no hook either


def test_bad_arguments(resnet):
    with pytest.raises(ValueError, match="at least one layer"):
        LayerProbe(resnet, [])
    with pytest.raises(ValueError, match="token_layout"):
        LayerProbe(resnet, ["layer4"], token_layout="nlc")
    with pytest.raises(ValueError, match="not a submodule"):
        LayerProbe(resnet, [""])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 1)))
    with pytest.raises(TypeError, match="TorchScript"):
        LayerProbe(scripted, ["0"])


# ---------------------------------------------------------------------------------------------------------------------
# Captured values
# ---------------------------------------------------------------------------------------------------------------------
def test_activations_equal_a_hand_run_forward(resnet, images):
    m = resnet
    with torch.no_grad():
        x1 = m.layer1(_stem(m, images))
        x2 = m.layer2(x1)
        x3 = m.layer3(x2)
        x40 = m.layer4[0](x3)
        b = m.layer4[1]
        conv2 = b.conv2(b.relu(b.bn1(b.conv1(x40))))
        x4 = b(x40)
        pooled = m.avgpool(x4)
        logits = m.fc(torch.flatten(pooled, 1))
    calls = []
    m.conv1.register_forward_hook(lambda *a: calls.append(1))
    with LayerProbe(m, ["layer4.1.conv2", "layer2", "layer4", "avgpool", "fc"]) as probe, torch.no_grad():
        grids = probe(images)
    assert list(grids) == ["layer4.1.conv2", "layer2", "layer4", "avgpool", "fc"]
    assert len(calls) == 1  # all five layers from one forward pass
    torch.testing.assert_close(grids["layer2"], x2, rtol=0, atol=0)
    torch.testing.assert_close(grids["layer4.1.conv2"], conv2, rtol=0, atol=0)
    torch.testing.assert_close(grids["layer4"], x4, rtol=0, atol=0)
    torch.testing.assert_close(grids["avgpool"], pooled, rtol=0, atol=0)
    assert grids["fc"].shape == (2, 1000, 1, 1)
    torch.testing.assert_close(grids["fc"][:, :, 0, 0], logits, rtol=0, atol=0)
    assert probe.raw_shapes["fc"] == (2, 1000)


def test_outputs_modified_in_place_later_are_copied_under_no_grad(resnet, images):
    # BasicBlock does `out = bn2(out); out += identity`: the bn2 output tensor itself is overwritten afterwards.
    m = resnet
    with torch.no_grad():
        x40 = m.layer4[0](m.layer3(m.layer2(m.layer1(_stem(m, images)))))
        b = m.layer4[1]
        bn2 = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x40)))))
    with LayerProbe(m, ["layer4.1.bn2", "fc"]) as probe, torch.no_grad():
        grids = probe(images)
    torch.testing.assert_close(grids["layer4.1.bn2"], bn2, rtol=0, atol=0)
    with LayerProbe(m, ["layer4.1.bn2", "fc"]) as probe, pytest.warns(UserWarning, match="modified in place"):
        probe(images)  # grad enabled: no copy, but the user is told


def test_repeated_module_is_captured_at_first_call_with_warning(resnet, images):
    m = resnet
    with torch.no_grad():
        x40 = m.layer4[0](m.layer3(m.layer2(m.layer1(_stem(m, images)))))
        b = m.layer4[1]
        first_relu = b.relu(b.bn1(b.conv1(x40)))
    with LayerProbe(m, ["layer4.1.relu"], stop_early=False) as probe, torch.no_grad():
        with pytest.warns(UserWarning, match="more than once"):
            grids = probe(images)
    torch.testing.assert_close(grids["layer4.1.relu"], first_relu, rtol=0, atol=0)


def test_stop_early_gives_identical_tensors_and_really_stops(resnet, images):
    m = resnet
    with torch.no_grad(), LayerProbe(m, ["layer2", "layer1"], stop_early=False) as full:
        expected = full(images)
    ran = []
    spy = m.layer3.register_forward_hook(lambda *a: ran.append("layer3"))
    with torch.no_grad(), LayerProbe(m, ["layer2", "layer1"], stop_early=True) as early:
        got = early(images)
    assert ran == []
    spy.remove()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)

    def explode(*args, **kwargs):
        raise AssertionError("layer3 must not run")

    m.layer3.forward = explode
    with torch.no_grad(), LayerProbe(m, ["layer2"], stop_early=True) as early:
        torch.testing.assert_close(early(images)["layer2"], expected["layer2"], rtol=0, atol=0)
    with torch.no_grad(), LayerProbe(m, ["layer2"], stop_early=False) as full:
        with pytest.raises(AssertionError, match="layer3 must not run"):
            full(images)
        assert not full._active  # state reset after the failed forward
    assert _no_hooks(m)


def test_probe_with_output_returns_logits_and_grids(resnet, images):
    with torch.no_grad():
        logits = resnet(images)
    with LayerProbe(resnet, ["layer3"]) as probe, torch.no_grad():
        out, grids = probe.probe_with_output(images)
        alone = probe(images)
    torch.testing.assert_close(out, logits, rtol=0, atol=0)
    torch.testing.assert_close(grids["layer3"], alone["layer3"], rtol=0, atol=0)


def test_gradients_flow_to_captured_conv_maps(resnet, images):
    with LayerProbe(resnet, ["layer4"]) as probe:
        out, grids = probe.probe_with_output(images)
    grad = torch.autograd.grad(out[:, 3].sum(), grids["layer4"])[0]
    # d(logit_3)/d(layer4) of avgpool + fc is fc.weight[3] / (h*w), the same at every cell: worked by hand.
    expected = (resnet.fc.weight[3] / 4).detach()[None, :, None, None].expand(2, -1, 2, 2)
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Hook lifecycle
# ---------------------------------------------------------------------------------------------------------------------
def test_hooks_removed_by_close_context_exit_exception_and_collection(resnet, images):
    m = resnet
    probe = LayerProbe(m, ["layer1", "layer4"])
    assert not _no_hooks(m)
    with torch.no_grad():
        full = m(images)  # hooks are inert outside probe(): the model runs to the end
    assert full.shape == (2, 1000)
    probe.close()
    probe.close()  # idempotent
    assert _no_hooks(m)
    with pytest.raises(RuntimeError, match="closed"):
        probe(images)

    with LayerProbe(m, ["layer1"]):
        assert not _no_hooks(m)
    assert _no_hooks(m)

    with pytest.raises(KeyError):
        with LayerProbe(m, ["layer1"]):
            raise KeyError("user code failed")
    assert _no_hooks(m)

    LayerProbe(m, ["layer2"])  # forgotten: collected, unhooks itself
    gc.collect()
    assert _no_hooks(m)


def test_layer_that_never_runs_is_reported():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.body(x)

    with LayerProbe(Net(), ["body", "unused"]) as probe, pytest.raises(RuntimeError, match=r"\['unused'\]"):
        probe(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------------------
# Tokens, channels-last, tuples
# ---------------------------------------------------------------------------------------------------------------------
def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference raw output of ``module`` via a plain hook (independent of LayerProbe)."""
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _grid_by_hand(tokens: torch.Tensor, n_prefix: int, h: int, w: int) -> torch.Tensor:
    batch, _, dim = tokens.shape
    grid = torch.empty(batch, dim, h, w)
    for i in range(h):
        for j in range(w):
            grid[:, :, i, j] = tokens[:, n_prefix + i * w + j, :]
    return grid


def test_timm_vit_tokens_become_patch_grids_with_prefix_tokens_kept():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=(32, 48), depth=2, reg_tokens=4).eval()
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers
    x = torch.randn(2, 3, 32, 48)
    tokens = _capture(vit, vit.blocks[1], x)
    assert tokens.shape == (2, 5 + 2 * 3, 192)  # 11 tokens: the largest-square rule alone would say 2 prefix tokens
    with LayerProbe(vit, ["blocks.1", "patch_embed"]) as probe, torch.no_grad():
        grids = probe(x)
    assert grids["blocks.1"].shape == (2, 192, 2, 3)
    torch.testing.assert_close(grids["blocks.1"], _grid_by_hand(tokens, 5, 2, 3), rtol=0, atol=0)
    torch.testing.assert_close(probe.prefix_tokens["blocks.1"], tokens[:, :5], rtol=0, atol=0)
    # The patch embedding has no prefix tokens yet; cell (i, j) must be the conv of image patch (i, j).
    with torch.no_grad():
        patches = vit.patch_embed.proj(x)  # (2, 192, 2, 3)
    torch.testing.assert_close(grids["patch_embed"], patches)
    assert probe.prefix_tokens["patch_embed"].shape == (2, 0, 192)


def test_torchvision_vit_encoder_layer_tokens():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=48, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    assert not hasattr(vit, "num_prefix_tokens")
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():  # torchvision's own steps, by hand: patchify, prepend CLS, add positions, run layers
        t = vit._process_input(x)
        t = torch.cat([vit.class_token.expand(3, -1, -1), t], dim=1) + vit.encoder.pos_embedding
        t = vit.encoder.layers.encoder_layer_1(vit.encoder.layers.encoder_layer_0(t))
    with LayerProbe(vit, ["encoder.layers.encoder_layer_1"]) as probe, torch.no_grad():
        grid = probe(x)["encoder.layers.encoder_layer_1"]
    assert grid.shape == (3, 16, 3, 3)
    torch.testing.assert_close(grid, _grid_by_hand(t, 1, 3, 3))
    torch.testing.assert_close(probe.prefix_tokens["encoder.layers.encoder_layer_1"], t[:, :1])


class _Tokens(nn.Module):
    """Emits known tokens value[b, t, d] = 1000 b + 10 t + d, optionally sequence-first."""

    def __init__(self, count: int, dim: int = 4, seq_first: bool = False) -> None:
        super().__init__()
        self.count, self.dim, self.seq_first = count, dim, seq_first
        self.emit = nn.Identity()

    def forward(self, x):
        x = x[0] if isinstance(x, list) else x
        b = torch.arange(x.shape[0])[:, None, None]
        t = torch.arange(self.count)[None, :, None]
        d = torch.arange(self.dim)[None, None, :]
        tokens = (1000 * b + 10 * t + d).float()
        return self.emit(tokens.transpose(0, 1) if self.seq_first else tokens)


def test_hand_made_tokens_prefix_inferred_as_t_minus_largest_square():
    model = _Tokens(count=3 + 9)
    with LayerProbe(model, ["emit"]) as probe:
        grid = probe(torch.zeros(2, 1, 5, 5))["emit"]
    tokens = model(torch.zeros(2, 1, 5, 5))
    torch.testing.assert_close(grid, _grid_by_hand(tokens, 3, 3, 3), rtol=0, atol=0)
    assert grid[1, 2, 0, 1].item() == 1000 + 10 * (3 + 1) + 2  # image 1, channel 2, cell (0, 1) = token 4
    assert probe.prefix_tokens["emit"].shape == (2, 3, 4)


def test_sequence_first_tokens_and_non_square_grid_from_aspect_ratio():
    model = _Tokens(count=2 + 12, seq_first=True)
    images = torch.zeros(2, 1, 30, 40)  # aspect 3:4 -> 12 patches are 3 x 4
    with LayerProbe(model, ["emit"], num_prefix_tokens=2) as probe:
        grid = probe(images)["emit"]
    reference = model(images).transpose(0, 1)
    torch.testing.assert_close(grid, _grid_by_hand(reference, 2, 3, 4), rtol=0, atol=0)
    with LayerProbe(model, ["emit"], num_prefix_tokens=2) as probe, pytest.raises(ValueError, match="emit"):
        probe([images])  # not a tensor: no image size, 12 is not square -> clear error


def test_channels_last_tuple_and_vector_outputs():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.nhwc = nn.Identity()
            self.pair = nn.Identity()
            self.vec = nn.Identity()

        def forward(self, x):
            y = self.conv(x)
            self.nhwc(y.permute(0, 2, 3, 1))
            self.pair((y * 2, "aux"))
            return self.vec(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 3, 6, 7)
    with torch.no_grad():
        y = net.conv(x)
    with LayerProbe(net, ["nhwc", "pair", "vec"], token_layout={"nhwc": "nhwc"}) as probe, torch.no_grad():
        grids = probe(x)
    torch.testing.assert_close(grids["nhwc"], y, rtol=0, atol=0)
    assert grids["nhwc"].is_contiguous()
    torch.testing.assert_close(grids["pair"], y * 2, rtol=0, atol=0)
    torch.testing.assert_close(grids["vec"], y.mean(dim=(2, 3))[:, :, None, None], rtol=0, atol=0)
    with LayerProbe(net, ["nhwc"], token_layout="nhwc") as probe, torch.no_grad():
        torch.testing.assert_close(probe(x)["nhwc"], y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not requested"):
        LayerProbe(net, ["nhwc"], token_layout={"pair": "nhwc"})


# ---------------------------------------------------------------------------------------------------------------------
# layer_shapes
# ---------------------------------------------------------------------------------------------------------------------
def test_layer_shapes_hand_worked_and_modes_restored(resnet):
    resnet.train()
    resnet.layer2.eval()  # a deliberately mixed state must survive
    shapes = layer_shapes(resnet, ["layer1", "layer3", "layer4", "fc"], (3, 64, 64))
    # strides: stem 4 -> 16x16, layer3 16 -> 4x4, layer4 32 -> 2x2; the head is a vector
    assert shapes == {"layer1": (64, 16, 16), "layer3": (256, 4, 4), "layer4": (512, 2, 2), "fc": (1000, 1, 1)}
    assert resnet.training and resnet.layer1.training and not resnet.layer2.training
    assert _no_hooks(resnet)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=(32, 48), depth=1)
    assert layer_shapes(vit, "blocks.0", (3, 32, 48)) == {"blocks.0": (192, 2, 3)}
