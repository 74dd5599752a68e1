"""Constructor arguments of the data modules: every out-of-range setting is refused in ``__init__`` with the
accepted range, and the shared instance arguments (defined once on InstanceDataModule) still reach the CLI with
their documentation and each module's own defaults."""

from __future__ import annotations

import contextlib
import inspect
import io

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from data_modules._instances import InstanceDataModule
from data_modules.coco import CocoDataModule
from data_modules.synthetic import SyntheticWorldDataModule
from data_modules.synthetic_instances import SyntheticInstancesDataModule
from data_modules.visual_genome import VisualGenomeDataModule

SHARED = [  # (kwargs, message) refused by every instance data module: the base validates them once
    ({"image_size": 0}, r"image_size must be an integer >= 1"),
    ({"resize_size": -5}, r"resize_size must be an integer >= 1 \(or null\), got -5"),
    ({"scale_min": 0.0}, r"scale_min must be a finite number in \(0\.0, 1\.0\], got 0\.0"),
    ({"interpolation": "cubic"}, r"interpolation must be one of 'bicubic', 'bilinear', 'nearest', got 'cubic'"),
    ({"mean": (0.5, float("nan"), 0.5)}, r"mean must be three finite numbers"),
    ({"std": (0.2, -0.1, 0.2)}, r"std must be three finite numbers .*all > 0"),
    ({"seen_fraction": 0.0}, r"seen_fraction must be a finite number in \(0\.0, 1\.0\], got 0\.0"),
    ({"seen_fraction": 1.5}, r"seen_fraction must be a finite number in \(0\.0, 1\.0\], got 1\.5"),
    ({"split_seed": -1}, r"split_seed must be an integer >= 0, got -1"),
    ({"predict_split": "test"}, r"predict_split must be one of 'val', 'train', 'all', got 'test'"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"predict_batch_size": 0}, r"predict_batch_size must be an integer >= 1 \(or null\), got 0"),
    ({"num_workers": -1}, r"num_workers must be an integer >= 0, got -1"),
    ({"max_bad_annotation_fraction": 1.5}, r"max_bad_annotation_fraction must be a finite number in \[0\.0, 1\.0\]"),
]
OWN = {
    VisualGenomeDataModule: [
        ({"merge_by": "lemma"}, r"merge_by must be one of 'synset', 'head_token', 'name', got 'lemma'"),
        ({"min_images": -1}, r"min_images must be an integer >= 0, got -1"),
        ({"min_count_by": "boxes"}, r"min_count_by must be one of 'images', 'instances'"),
        ({"on_missing_image": "ignore"}, r"on_missing_image must be one of 'error', 'skip'"),
        ({"val_fraction": 1.0}, r"val_fraction must be a finite number in \[0\.0, 1\.0\), got 1\.0"),
        ({"image_dirs": []}, r"image_dirs must be a non-empty list of non-empty strings"),
        ({"objects_file": ""}, r"objects_file must be a file or folder path"),
    ],
    CocoDataModule: [
        ({"label_mode": "words"}, r"label_mode must be one of 'category', 'token', got 'words'"),
        ({"crowd": "drop"}, r"crowd must be one of 'eval_only', 'skip', 'include', got 'drop'"),
        ({"min_area": -1.0}, r"min_area must be a finite number >= 0\.0, got -1\.0"),
        ({"on_missing_image": "warn"}, r"on_missing_image must be one of 'error', 'skip'"),
    ],
    SyntheticInstancesDataModule: [
        ({"format": "voc"}, r"format must be one of 'vg', 'coco', got 'voc'"),
        ({"num_images": 0}, r"num_images must be an integer >= 1, got 0"),
        ({"world_image_size": 8}, r"world_image_size must be an integer >= 16, got 8"),
        ({"mask_size": 80}, r"mask_size must be an integer in \[4, 64\], got 80"),
        ({"noise": -0.1}, r"noise must be a finite number >= 0\.0"),
        ({"val_fraction": 1.2}, r"val_fraction must be a finite number in \[0\.0, 1\.0\], got 1\.2"),
        ({"seed": -3}, r"seed must be an integer >= 0, got -3"),
        ({"export_root": ""}, r"export_root must be a file or folder path \(a non-empty string\) or null, got ''"),
    ],
    SyntheticWorldDataModule: [
        ({"num_images": 0}, r"num_images must be an integer >= 1, got 0"),
        ({"image_size": 8}, r"image_size must be an integer >= 16, got 8"),
        ({"mask_size": 2}, r"mask_size must be an integer in \[4, 64\], got 2"),
        ({"generation_workers": 0}, r"generation_workers must be an integer >= 1, got 0"),
        ({"val_fraction": -0.1}, r"val_fraction must be a finite number in \[0\.0, 1\.0\]"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"split": "testing"}, r"split must be one of 'train', 'val', None, got 'testing'"),
    ],
}
INSTANCE_MODULES = (VisualGenomeDataModule, CocoDataModule, SyntheticInstancesDataModule)
CASES = [(cls, kw, msg) for cls in INSTANCE_MODULES for kw, msg in SHARED] + \
        [(cls, kw, msg) for cls, cases in OWN.items() for kw, msg in cases]


@pytest.mark.parametrize("cls, kw, msg", CASES, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in CASES])
def test_out_of_range_arguments_are_refused_by_the_constructor(cls, kw, msg, tmp_path):
    # no file exists under root: the settings are checked before anything is read or generated
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: {msg}"):
        cls(root=str(tmp_path / "nowhere"), **kw)
    assert not (tmp_path / "nowhere").exists()


def _help(cls) -> str:
    """What ``--data.help <class>`` prints (LightningCLI builds its ``--data`` group the same way)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(["--data.help", f"{cls.__module__}.{cls.__name__}"])
    return out.getvalue()


@pytest.mark.parametrize("cls", INSTANCE_MODULES)
def test_shared_arguments_reach_the_cli_documented(cls):
    text = " ".join(_help(cls).split())
    shared = [p for p in inspect.signature(InstanceDataModule.__init__).parameters if p != "self"]
    for name in shared:  # every shared argument, with the base class's documentation
        assert f"--data.{name} " in text, name
    assert "largest share of annotations (boxes, polygons)" in text
    assert "--data.pin_memory {true,false} DataLoader pin_memory." in text


def test_each_module_keeps_its_own_defaults():
    # (module, argument) -> the default the module had before the shared arguments moved to the base
    expected = {(VisualGenomeDataModule, "seen_fraction"): 0.7, (VisualGenomeDataModule, "augment"): False,
                (CocoDataModule, "augment"): True, (CocoDataModule, "union_per_category"): False,
                (CocoDataModule, "seen_fraction"): 1.0, (SyntheticInstancesDataModule, "batch_size"): 64,
                (SyntheticInstancesDataModule, "scale_min"): 0.35, (SyntheticInstancesDataModule, "seen_fraction"): 0.7}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    for (cls, name), value in expected.items():
        cfg = parser.parse_args(["--data", f"{cls.__module__}.{cls.__name__}"])
        assert cfg.data.init_args[name] == value, (cls.__name__, name)
    dm = CocoDataModule(root="nowhere", batch_size=5)
    assert dm.batch_size == 5 and dm.hparams["batch_size"] == 5 and dm.seen_fraction == 1.0 and dm.augment
