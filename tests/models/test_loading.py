"""load_model / model_fingerprint: every checkpoint format written here in its on-disk layout; never any network."""

from __future__ import annotations

import copy
import socket
import sys
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Mapping

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseLayer

from lit_explain.errors import ConfigError, MissingFileError
from lit_explain.models import load_model, model_fingerprint, read_state_dict

NETS_MODULE = "lx_test_nets"
NETS_SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_net(num_classes=10, width=4):
    return TinyNet(num_classes=num_classes, width=width)


class TinyAlex(nn.Module):
    """AlexNet's layout in miniature: features / avgpool / classifier.N."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def not_a_model(**kwargs):
    return 3
'''


@pytest.fixture(scope="module", autouse=True)
def nets_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nets")
    (folder / f"{NETS_MODULE}.py").write_text(textwrap.dedent(NETS_SOURCE))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(NETS_MODULE, None)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection or download attempt fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)


def _assert_same_state(model: nn.Module, reference: Mapping) -> None:
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


# ---------------------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------------------
def test_torchvision_random_init_passes_num_classes():
    model = load_model("torchvision:resnet18", num_classes=365)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 365
    assert model.training  # eval mode is the caller's decision
    assert load_model("torchvision:resnet18", weights="none").fc.out_features == 1000


def test_timm_random_init_passes_kwargs():
    model = load_model("timm:vit_tiny_patch16_224", num_classes=7, img_size=32, depth=2)
    assert isinstance(model, timm.models.VisionTransformer)
    assert len(model.blocks) == 2 and model.head.out_features == 7
    assert tuple(model.patch_embed.img_size) == (32, 32)


def test_python_factory_function_and_class():
    fn = load_model(f"python:{NETS_MODULE}:tiny_net", num_classes=7, width=3)
    assert (fn.conv.out_channels, fn.fc.out_features) == (3, 7)
    cls = load_model(f"python:{NETS_MODULE}:TinyNet")
    assert type(cls).__name__ == "TinyNet" and cls.fc.out_features == 10


@pytest.mark.parametrize(
    "spec, error, fragment",
    [
        (f"python:{NETS_MODULE}", ValueError, "python:<module>:<factory>"),
        ("python:no_such_module_xyz:f", ValueError, "no_such_module_xyz"),
        (f"python:{NETS_MODULE}:tiny_nte", ValueError, "tiny_net"),
        (f"python:{NETS_MODULE}:not_a_model", TypeError, "not an nn.Module"),
        ("torchvision:resnet81", ValueError, "resnet18"),
        ("timm:vit_tiny_patch16", ValueError, "vit_tiny_patch16_224"),
        ("torchvison:resnet18", FileNotFoundError, "torchvision:"),
        ("", ValueError, "non-empty"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, error, fragment):
    with pytest.raises(error) as info:
        load_model(spec)
    assert fragment in str(info.value)


def test_torchscript_and_pickled_module_files(tmp_path):
    torch.manual_seed(0)
    net = load_model(f"python:{NETS_MODULE}:tiny_net").eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        torch.jit.save(torch.jit.trace(net, x), tmp_path / "net.ts.pt")
        scripted = load_model(str(tmp_path / "net.ts.pt"))
    torch.save(net, tmp_path / "net_pickled.pt")
    pickled = load_model(f"file:{tmp_path / 'net_pickled.pt'}")
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert type(pickled).__name__ == "TinyNet"
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(pickled(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fixes its architecture"):
        load_model(str(tmp_path / "net_pickled.pt"), num_classes=3)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not a model"):
        load_model(str(tmp_path / "sd.pt"))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint formats
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mobilenet_reference() -> OrderedDict:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.num_batches_tracked.fill_(7)
    return model.state_dict()


def _optimizer_state() -> dict:
    return {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1, 2]}]}


def _lightning(state: Mapping, prefix: str, extra: Mapping) -> dict:
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {**{prefix + k: v for k, v in state.items()}, **extra},
        "hyper_parameters": {"lr": 0.01, "arch": "mobilenet_v3_small"},
        "optimizer_states": [_optimizer_state()],
        "lr_schedulers": [],
        "loops": {},
        "callbacks": {},
    }


FORMATS = {
    "plain": lambda sd: dict(sd),
    "state_dict_key": lambda sd: {"epoch": 5, "state_dict": dict(sd)},
    "model_key": lambda sd: {"model": dict(sd), "optimizer": _optimizer_state(), "epoch": 5},
    "model_state_dict_key": lambda sd: {"model_state_dict": dict(sd), "optimizer_state_dict": _optimizer_state()},
    "lightning_model_prefix": lambda sd: _lightning(sd, "model.", {"criterion.pos_weight": torch.ones(3)}),
    "lightning_nested_prefix": lambda sd: _lightning(sd, "model.backbone.", {"model.head.weight": torch.ones(2, 4)}),
    "dataparallel": lambda sd: {"module." + k: v for k, v in sd.items()},
    "dataparallel_features_only": lambda sd: {k.replace("features.", "features.module.", 1): v for k, v in sd.items()},
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_checkpoint_formats_load_exactly(tmp_path, mobilenet_reference, fmt):
    path = tmp_path / f"{fmt}.ckpt"
    torch.save(FORMATS[fmt](mobilenet_reference), path)
    fresh = load_model("torchvision:mobilenet_v3_small", num_classes=10)
    assert not torch.equal(fresh.state_dict()["features.0.0.weight"], mobilenet_reference["features.0.0.weight"])
    model = load_model("torchvision:mobilenet_v3_small", weights=str(path), num_classes=10)
    _assert_same_state(model, mobilenet_reference)


def test_safetensors_torchscript_and_whole_model_as_weights(tmp_path, mobilenet_reference):
    torch.manual_seed(2)
    tiny = load_model(f"python:{NETS_MODULE}:tiny_net", num_classes=6).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(tiny, torch.zeros(1, 3, 8, 8)), tmp_path / "w.ts")
        from_script = load_model(f"python:{NETS_MODULE}:tiny_net", weights=str(tmp_path / "w.ts"))
    _assert_same_state(from_script, tiny.state_dict())  # 6 classes inferred
    reference = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    reference.load_state_dict(mobilenet_reference)
    save_file({k: v.contiguous() for k, v in mobilenet_reference.items()}, str(tmp_path / "w.safetensors"))
    torch.save(reference, tmp_path / "whole.pt")
    _assert_same_state(
        load_model("torchvision:mobilenet_v3_small", weights=str(tmp_path / "w.safetensors")), mobilenet_reference
    )
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = load_model("torchvision:mobilenet_v3_small", weights=str(tmp_path / "whole.pt"))
    _assert_same_state(model, mobilenet_reference)  # num_classes=10 inferred from classifier.3


def test_places365_resnet18_pth_tar_infers_365_classes(tmp_path):
    """Layout of resnet18_places365.pth.tar: legacy serialisation, {'epoch','arch','state_dict','best_prec1'},
    keys prefixed 'module.' (DataParallel), no BatchNorm counters (saved before torch 0.4.1), fc of 365 classes."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(num_classes=365).eval()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    state = {"module." + k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save(
        {"epoch": 90, "arch": "resnet18", "state_dict": state, "best_prec1": 54.74},
        path,
        _use_new_zipfile_serialization=False,
    )
    model = load_model("torchvision:resnet18", weights=str(path)).eval()
    assert model.fc.out_features == 365
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_places365_alexnet_layout_features_dataparallel(tmp_path):
    """alexnet_places365.pth.tar wraps only `features` in DataParallel: keys 'features.module.0.weight'."""
    torch.manual_seed(4)
    reference = load_model(f"python:{NETS_MODULE}:TinyAlex", num_classes=365).eval()
    state = {k.replace("features.", "features.module.", 1): v for k, v in reference.state_dict().items()}
    assert "features.module.0.weight" in state
    torch.save({"epoch": 90, "arch": "alexnet", "state_dict": state}, tmp_path / "alexnet_places365.pth.tar")
    model = load_model(f"python:{NETS_MODULE}:TinyAlex", weights=str(tmp_path / "alexnet_places365.pth.tar"))
    assert model.classifier[3].out_features == 365  # inferred from the last layer
    _assert_same_state(model, reference.state_dict())


def _to_old_densenet(model: DenseNet) -> DenseNet:
    """A copy whose dense layers carry pre-0.3 torchvision names: norm.1, relu.1, conv.1, norm.2, relu.2, conv.2."""
    old = copy.deepcopy(model)
    for module in old.modules():
        if isinstance(module, _DenseLayer):
            module._modules = OrderedDict(
                (name[:-1] + "." + name[-1] if name[-1] in "12" else name, sub) for name, sub in module._modules.items()
            )
    return old


def test_whole_pickled_densenet_places_file_with_old_key_names(tmp_path):
    """whole_densenet161_places365_python36.pth.tar is a pickled model with old names; here a miniature DenseNet."""
    kwargs = dict(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2)
    torch.manual_seed(5)
    reference = DenseNet(num_classes=365, **kwargs).eval()
    old = _to_old_densenet(reference)
    assert "features.denseblock1.denselayer1.norm.1.weight" in old.state_dict()
    assert "features.denseblock1.denselayer1.conv.2.weight" in old.state_dict()
    path = tmp_path / "whole_densenet161_places365_python36.pth.tar"
    torch.save(old, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = load_model("python:torchvision.models.densenet:DenseNet", weights=str(path), **kwargs).eval()
    assert model.classifier.out_features == 365
    _assert_same_state(model, reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.slow
def test_whole_pickled_densenet161_full_size(tmp_path):
    torch.manual_seed(6)
    reference = torchvision.models.densenet161(num_classes=365).eval()
    path = tmp_path / "whole_densenet161_places365_python36.pth.tar"
    torch.save(_to_old_densenet(reference), path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = load_model("torchvision:densenet161", weights=str(path))
    _assert_same_state(model, reference.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint errors
# ---------------------------------------------------------------------------------------------------------------------
def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model("torchvision:resnet18", weights=str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(missing)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(str(missing))


def test_key_mismatch_lists_missing_unexpected_and_the_file(tmp_path):
    torch.manual_seed(0)
    small = load_model(f"python:{NETS_MODULE}:tiny_net")
    path = tmp_path / "tiny.pth"
    torch.save({**small.state_dict(), "extra.weight": torch.ones(1)}, path)
    with pytest.raises(ValueError) as info:
        load_model("torchvision:resnet18", weights=str(path))
    message = str(info.value)
    missing = message.split("missing (first 5): ")[1].split(";")[0].split(", ")
    unexpected = message.split("unexpected (first 5): ")[1].split(";")[0].split(", ")
    assert "tiny.pth" in message and "\n" not in message  # one line
    assert missing == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert unexpected == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean"]

    with pytest.raises(ValueError, match=r"unexpected.*extra\.weight"):  # extra keys are not silently dropped
        load_model(f"python:{NETS_MODULE}:tiny_net", weights=str(path))


def test_explicit_num_classes_conflicting_with_checkpoint(tmp_path):
    torch.manual_seed(0)
    torch.save(load_model(f"python:{NETS_MODULE}:tiny_net", num_classes=365).state_dict(), tmp_path / "c.pth")
    with pytest.raises(ValueError) as info:
        load_model(f"python:{NETS_MODULE}:tiny_net", weights=str(tmp_path / "c.pth"), num_classes=10)
    assert "fc.weight: checkpoint (365, 4) vs model (10, 4)" in str(info.value)


def test_unreadable_or_stateless_checkpoints(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pth"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "garbage.pth"))
    torch.save({"epoch": 3, "note": "no weights here"}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"No state dict found.*meta\.pth|meta\.pth.*No state dict"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "meta.pth"))


# ---------------------------------------------------------------------------------------------------------------------
# weights="default", offline
# ---------------------------------------------------------------------------------------------------------------------
def test_torchvision_default_weights_offline_name_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    with pytest.raises(FileNotFoundError) as info:
        load_model("torchvision:resnet18", weights="default")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message


def test_torchvision_default_weights_read_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(9)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, folder / "resnet18-f37072fd.pth")
    model = load_model("torchvision:resnet18", weights="default")
    _assert_same_state(model, state)


def test_timm_default_weights_offline_name_cache_and_overlay(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError) as info:
        load_model("timm:test_vit", weights="default")
    message = str(info.value)
    assert "model.safetensors" in message
    assert str(tmp_path / "hf" / "models--timm--test_vit.r160_in1k") in message
    assert "pretrained_cfg_overlay" in message
    with pytest.raises(FileNotFoundError) as info:
        load_model("timm:resnet18", weights="default")  # has a URL too: the torch hub file name is named
    assert "resnet18_a1_0-d63eafa0.pth" in str(info.value)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in str(info.value)


def test_timm_default_weights_read_from_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--timm--test_vit.r160_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(10)
    state = timm.create_model("test_vit").state_dict()
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    model = load_model("timm:test_vit", weights="default")
    _assert_same_state(model, state)


def test_default_weights_for_own_models_or_unknown_names_is_an_error():
    with pytest.raises(ValueError, match="no library weights"):
        load_model(f"python:{NETS_MODULE}:tiny_net", weights="default")
    with pytest.raises(ValueError, match="vit_tiny_patch16_224"):
        load_model("timm:vit_tiny_patch16", weights="default")
    with pytest.raises(ValueError, match="resnet18"):
        load_model("torchvision:resnet81", weights="default")


# ---------------------------------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------------------------------
def test_fingerprint_tracks_every_tensor_and_nothing_else():
    torch.manual_seed(0)
    a = load_model("torchvision:resnet18")
    torch.manual_seed(0)
    b = load_model("torchvision:resnet18")
    fp = model_fingerprint(a)
    assert fp == model_fingerprint(a) == model_fingerprint(b)
    assert fp == model_fingerprint(b.eval())  # mode does not count
    with torch.no_grad():
        b.layer3[1].conv2.weight[5, 7, 1, 1] += 1e-3
    changed_weight = model_fingerprint(b)
    assert changed_weight != fp
    with torch.no_grad():
        b.layer3[1].conv2.weight[5, 7, 1, 1] -= 1e-3
        b.layer3[1].conv2.weight.copy_(a.layer3[1].conv2.weight)
    assert model_fingerprint(b) == fp
    b.bn1.running_var[0] = 2.0  # a buffer
    assert model_fingerprint(b) not in {fp, changed_weight}
    torch.manual_seed(0)
    other = torchvision.models.resnet18()
    other.fc = nn.Sequential(other.fc)  # same numbers, different module tree
    assert model_fingerprint(other) != fp


# ---------------------------------------------------------------------------------------------------------------------
# Messages: one line, a project error type, the fix
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("corrupt", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_one_line_without_torch_advice(tmp_path, corrupt):
    """torch's own message for a non-checkpoint asks the user to "file an issue" with PyTorch and spans lines."""
    path = tmp_path / f"{corrupt}.pth"
    if corrupt == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "whole.pth")
        data = (tmp_path / "whole.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    for call in (lambda: load_model("torchvision:resnet18", weights=str(path)), lambda: load_model(str(path))):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert "file an issue" not in message.lower()
        assert "corrupt" in message  # the likely cause and the fix
        assert "save it again" in message


def test_missing_files_are_project_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingFileError, match="resnet18-f37072fd.pth"):
        load_model("torchvision:resnet18", weights="default")
    with pytest.raises(MissingFileError, match="nope.pth"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "nope.pth"))
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(ConfigError, ValueError)


def test_python_spec_not_importable_says_pythonpath(tmp_path, monkeypatch):
    """The module exists on disk but not on the path: the message names PYTHONPATH; once its folder is on the path
    (what the advice says to do) the same spec builds."""
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "lx_user_net.py").write_text("from torch import nn\n\ndef net():\n    return nn.Conv2d(3, 2, 1)\n")
    with pytest.raises(ConfigError) as info:
        load_model("python:lx_user_net:net")
    message = str(info.value)
    assert "PYTHONPATH" in message and "lx_user_net" in message and "pip install -e" in message
    assert "\n" not in message
    monkeypatch.syspath_prepend(str(folder))
    try:
        assert isinstance(load_model("python:lx_user_net:net"), nn.Conv2d)
    finally:
        sys.modules.pop("lx_user_net", None)


def test_python_spec_whose_module_imports_a_missing_package(tmp_path, monkeypatch):
    (tmp_path / "lx_needs_pkg.py").write_text("import lx_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_model("python:lx_needs_pkg:net")
    message = str(info.value)
    assert "lx_no_such_dependency_xyz" in message and "not installed" in message
    assert "PYTHONPATH" not in message  # the user's module was found: the path is not the problem
