"""Small open_clip models for 64-pixel images, and the file format every open_clip consumer loads.

No pretrained CLIP can be downloaded here, so the embedded default trains one on the synthetic world
(:mod:`lit_explain.models.clip_trainer`). :data:`TINY_CLIP_CONFIG` is an open_clip model config (the dict of
an ``open_clip/model_configs/*.json`` file): open_clip's ModifiedResNet image tower at width 16 (one bottleneck
per stage, attention pooling) for 64 x 64 images and a 2-block text transformer over open_clip's own BPE
tokenizer (vocabulary 49,408, shipped with open_clip). Measured on the synthetic world, 100 steps of batch 64
(one epoch, 1 CPU thread): this ResNet reached a mean zero-shot concept AUROC of 0.73 where a 3-block ViT
(8-pixel patches, width 64) reached 0.68 in 150 steps.

A saved model is a folder (:func:`save_clip`):

* ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ...}``, so
  ``open_clip.create_model_and_transforms("local-dir:<folder>")`` builds the model, loads the weights and
  gives the matching preprocessing, and ``open_clip.get_tokenizer("local-dir:<folder>")`` the tokenizer;
* ``open_clip_pytorch_model.bin``: the state dict;
* ``<name>.json``: the bare model config, for ``open_clip.add_model_config(<folder>/<name>.json)`` followed by
  ``open_clip.create_model(<name>, pretrained=<folder>/open_clip_pytorch_model.bin)`` (this is how
  :class:`lit_explain.text.encoders.OpenClipEncoder` reads it: ``model_name=<name>``,
  ``pretrained_path=<folder>/open_clip_pytorch_model.bin``, ``model_config_path=<folder>/<name>.json``).

:func:`load_clip` reads such a folder (or a real open_clip checkpoint file with its architecture name) and fails
with one clear message when it is missing or holds another architecture.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from lit_explain.atomic import atomic_write, atomic_write_json

__all__ = ["TINY_CLIP_CONFIG", "CONFIG_FILE", "WEIGHTS_FILE", "build_clip", "save_clip", "load_clip",
           "check_model_config"]

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"

#: open_clip model config of the synthetic world's CLIP (4.6 M parameters: image tower 1.3 M, token table 3.2 M).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 56, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                 "mlp_ratio": 2.0},
}

_HOW_TO_TRAIN = "python trainer_cli.py fit --config configs/clip_synthetic.yaml"


def check_model_config(cfg: dict) -> dict:
    """Return a deep copy of an open_clip model config after checking the keys open_clip needs.

    Raises:
        ValueError: a missing ``embed_dim`` / ``vision_cfg`` / ``text_cfg`` or a bad value, named.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"model_config must be an open_clip model config dict, got {type(cfg).__name__}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"model_config lacks {missing}: an open_clip config needs embed_dim, vision_cfg and "
                         f"text_cfg (see lit_explain.models.clip_files.TINY_CLIP_CONFIG)")
    if int(cfg["embed_dim"]) < 1:
        raise ValueError(f"model_config.embed_dim must be >= 1, got {cfg['embed_dim']}")
    ctx = int(cfg["text_cfg"].get("context_length", 77))
    if ctx < 8:
        raise ValueError(f"model_config.text_cfg.context_length must be >= 8 tokens, got {ctx}")
    return copy.deepcopy(cfg)


def build_clip(model_config: dict | None = None) -> torch.nn.Module:
    """A randomly initialised ``open_clip.CLIP`` of ``model_config`` (default :data:`TINY_CLIP_CONFIG`),
    returning dicts (``image_features``, ``text_features``, ``logit_scale``) from ``forward``."""
    import open_clip

    cfg = check_model_config(TINY_CLIP_CONFIG if model_config is None else model_config)
    return open_clip.CLIP(**cfg, output_dict=True)


def save_clip(model: torch.nn.Module, model_config: dict, folder: str | os.PathLike, name: str = "synth-clip",
              mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
              extra: dict | None = None) -> Path:
    """Write ``model`` as an open_clip model folder (see the module docstring); returns the folder.

    Args:
        model: an ``open_clip.CLIP`` built from ``model_config``.
        model_config: its open_clip model config.
        folder: target folder (created); files are written atomically.
        name: architecture name for ``open_clip.add_model_config`` (the ``<name>.json`` file).
        mean, std: the image normalisation the model was trained with (the preprocessing open_clip returns).
        extra: more JSON-serialisable facts stored under ``"lit_explain"`` in ``open_clip_config.json``.
    """
    cfg = check_model_config(model_config)
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"name must be a non-empty file stem without '/', '\\' or spaces, got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda f: torch.save(state, f))
    preprocess = {"size": int(cfg["vision_cfg"].get("image_size", 224)), "mean": list(map(float, mean)),
                  "std": list(map(float, std)), "interpolation": "bilinear", "resize_mode": "shortest"}
    atomic_write_json(folder / f"{name}.json", cfg)
    atomic_write_json(folder / CONFIG_FILE, {"model_cfg": cfg, "preprocess_cfg": preprocess,
                                             "lit_explain": {"name": name, **(extra or {})}})
    return folder


class _DropRandomInitNotice(logging.Filter):
    """open_clip announces "No pretrained weights loaded ... initialized randomly" when a model is built without
    weights; :func:`load_clip` loads them right after (checking every key and shape), so the notice is wrong there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init():
    notice = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"CLIP model not found: {path}. There is no download here. For the synthetic world, train it with "
        f"`{_HOW_TO_TRAIN}` (writes outputs/clip_synthetic/model/); for real data, put an open_clip checkpoint "
        "(e.g. ViT-B-32 open_clip_pytorch_model.bin fetched on a machine with network) at that path and give "
        "its architecture name.")


def load_clip(path: str | os.PathLike, model_name: str | None = None, device: str | torch.device = "cpu"
              ) -> tuple[torch.nn.Module, Any, dict]:
    """Load a CLIP for inference: ``(model in eval mode, tokenizer, preprocess_cfg)``.

    Args:
        path: a folder written by :func:`save_clip` (or any open_clip ``local-dir`` folder), or a checkpoint
            file of a registered open_clip architecture (then ``model_name`` is required, e.g. "ViT-B-32").
        model_name: architecture of a checkpoint file; with a folder it must match the stored name if given.
        device: where the model goes.

    Returns:
        The ``open_clip`` model (``encode_image`` / ``encode_text``), its tokenizer (strings -> (n, context)
        int64) and the preprocessing dict (size, mean, std).

    Raises:
        FileNotFoundError: nothing at ``path`` (the message says how to train or where to put a checkpoint).
        ValueError: the weights are of another architecture than the config (names the mismatched keys).
    """
    import open_clip

    path = Path(path)
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not a saved CLIP: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                                    f"(written by lit_explain.models.clip_files.save_clip; `{_HOW_TO_TRAIN}`)")
        try:
            meta = json.loads(cfg_file.read_text())
            cfg = check_model_config(meta["model_cfg"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{cfg_file}: not an open_clip config with a 'model_cfg' entry ({exc})") from exc
        stored = meta.get("lit_explain", {}).get("name")
        if model_name is not None and stored is not None and model_name != stored:
            raise ValueError(f"{path} holds the CLIP architecture {stored!r}, not {model_name!r}; pass "
                             f"model_name={stored!r} or None")
        with _quiet_random_init():
            model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
        preprocess = meta.get("preprocess_cfg", {})
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        where = weights
    else:
        if model_name is None:
            raise ValueError(f"{path} is a checkpoint file: pass its open_clip architecture as model_name "
                             "(e.g. 'ViT-B-32'), or give a folder written by save_clip")
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"unknown open_clip architecture {model_name!r}; register its config with "
                             "open_clip.add_model_config(<json>) first")
        with _quiet_random_init():
            model = open_clip.create_model(model_name, pretrained=None)
        preprocess = {"size": cfg["vision_cfg"].get("image_size", 224), "mean": list(open_clip.OPENAI_DATASET_MEAN),
                      "std": list(open_clip.OPENAI_DATASET_STD)}
        tokenizer = open_clip.get_tokenizer(model_name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        where = path
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        raise ValueError(f"{where} holds weights of another CLIP architecture than its config: "
                         f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                         f"{len(shape)} of another shape {shape[:3]}; give the matching architecture/config")
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer, preprocess
