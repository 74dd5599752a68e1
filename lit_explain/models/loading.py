"""Build a vision model from a short spec string, optionally with weights, without touching the network.

A *spec* names where the architecture comes from, a *weights* argument names where the numbers come from:

======================================  ==========================================================================
spec                                    built by
======================================  ==========================================================================
``torchvision:<arch>``                  ``torchvision.models.get_model(arch, ...)``
``timm:<arch>``                         ``timm.create_model(arch, ...)``
``python:<module>:<factory>``           ``importlib.import_module(module).<factory>(**kwargs)`` (function or class)
``file:<path>`` or a bare ``<path>``    a saved TorchScript archive (``torch.jit.load``) or a pickled ``nn.Module``
======================================  ==========================================================================

``weights`` is ``"none"`` (random initialisation), ``"default"`` (the library's own pretrained weights, taken only
from the local cache: a missing file fails fast with the exact file name and folder to put it in), or the path of a
checkpoint. Checkpoints may be a plain state dict, a dict holding it under ``state_dict``/``model``/
``model_state_dict``, a Lightning ``.ckpt`` whose keys carry a module-attribute prefix (``model.``, ``backbone.``),
a DataParallel state dict (``module.`` anywhere in the keys), the Places365 ``*_places365.pth.tar`` files, a whole
pickled model (the Places365 ``whole_densenet161_places365_python36.pth.tar``), a TorchScript archive or a
``.safetensors`` file. See :func:`load_model`.

New spec schemes are added with :func:`register_model_source` (a registry, like timm's ``register_model``).

Security: pickled models (a ``file:`` spec that is not TorchScript, or a checkpoint that cannot be read with
``torch.load(weights_only=True)``) are read with ``weights_only=False``, which runs arbitrary code stored in the
file. Only load such files from sources you trust.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lit_explain.errors import ConfigError, MissingFileError

__all__ = [
    "ModelSource",
    "available_model_sources",
    "load_model",
    "model_fingerprint",
    "read_state_dict",
    "register_model_source",
]

_log = logging.getLogger(__name__)

#: Keys under which training scripts commonly nest the model's state dict, most specific first.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
#: Old torchvision DenseNet layers were registered as ``norm.1``/``relu.1``/``conv.1``/``norm.2``/...
_OLD_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
_SHOW = 5  # how many offending keys an error message lists
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo, in order
_MAX_PREFIXES = 32  # key prefixes tried when matching a checkpoint to a model


# --------------------------------------------------------------------------------------------------------------------
# Registry of spec schemes
# --------------------------------------------------------------------------------------------------------------------
class ModelSource:
    """One spec scheme: how to build an architecture and, if the library has them, its pretrained weights.

    Subclass and decorate with :func:`register_model_source` to add a scheme. ``name`` is the part of the spec after
    ``<scheme>:``.

    Attributes:
        accepts_num_classes: whether ``build`` can set the number of output classes (used to infer it from a
            checkpoint's last layer).
    """

    accepts_num_classes: bool = True

    def build(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        """Build the architecture ``name`` with random weights.

        Args:
            name: the spec after the scheme, e.g. ``"resnet18"``.
            num_classes: output classes, or None for the architecture's default.
            kwargs: extra keyword arguments for the underlying factory.
        """
        raise NotImplementedError

    def build_pretrained(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        """Build ``name`` with the library's default pretrained weights, read from the local cache only.

        Raises:
            FileNotFoundError: the weight file is not cached; the message names the file and the folder.
            ValueError: the scheme has no library weights.
        """
        raise ConfigError(
            f"'{type(self).__name__}' models have no library weights, so weights='default' cannot be used for "
            f"'{name}'. Pass weights='none' or the path of a checkpoint."
        )


_SOURCES: dict[str, ModelSource] = {}


def register_model_source(scheme: str) -> Callable[[type[ModelSource]], type[ModelSource]]:
    """Class decorator registering a :class:`ModelSource` subclass under ``scheme`` (the text before ``:``).

    Example:
        >>> @register_model_source("mylib")
        ... class MyLibSource(ModelSource):
        ...     def build(self, name, num_classes, kwargs):
        ...         return mylib.create(name, num_classes=num_classes or 1000, **kwargs)
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]+", scheme):
        raise ValueError(f"Invalid model source scheme {scheme!r}: use letters, digits, '_', '+' or '-'.")

    def decorate(cls: type[ModelSource]) -> type[ModelSource]:
        _SOURCES[scheme] = cls()
        return cls

    return decorate


def available_model_sources() -> list[str]:
    """Names of the registered spec schemes, sorted."""
    return sorted(_SOURCES)


def _resolve_spec(spec: str) -> tuple[ModelSource, str, str]:
    """Split ``spec`` into (source, name, scheme); anything without a registered scheme is a file path."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"Model spec must be a non-empty string such as 'torchvision:resnet18', got {spec!r}.")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in _SOURCES:
        if not rest:
            raise ConfigError(f"Model spec {spec!r} names no architecture after '{scheme}:'.")
        return _SOURCES[scheme], rest, scheme
    return _SOURCES["file"], spec, "file"


def _close(name: str, choices: list[str], n: int = 5) -> str:
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return ", ".join(matches) if matches else "(no close match)"


def _pop_conflicting(kwargs: dict[str, Any], *names: str) -> None:
    for key in names:
        if key in kwargs:
            raise ConfigError(f"Do not pass {key!r} in the model kwargs: use load_model(weights=...) instead.")


# --------------------------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------------------------
def _torch_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` as torch.hub resolves it now (torch reads the environment on every call)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


@register_model_source("torchvision")
class TorchvisionSource(ModelSource):
    """``torchvision:<arch>``: any name of ``torchvision.models.list_models()``."""

    def _check(self, name: str) -> None:
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            raise ConfigError(
                f"Unknown torchvision architecture {name!r}. Closest: {_close(name, names)}. "
                "All names: torchvision.models.list_models()."
            )

    def build(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        self._check(name)
        _pop_conflicting(kwargs, "weights", "pretrained")
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=None, **extra, **kwargs)

    def build_pretrained(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        self._check(name)
        _pop_conflicting(kwargs, "weights", "pretrained")
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError) as err:
            raise ConfigError(f"torchvision has no pretrained weights for {name!r}: {err}") from err
        folder = _torch_checkpoint_dir()
        file = folder / _url_file_name(weights.url)
        if not file.is_file():
            raise MissingFileError(
                f"Pretrained weights for torchvision:{name} ({weights}) are not in the local cache and this "
                f"library never downloads. Put the file '{file.name}' into the folder '{folder}' "
                f"(that is $TORCH_HOME/hub/checkpoints, torch.hub.get_dir()/checkpoints), e.g. fetched on a "
                f"networked machine from {weights.url}; or pass weights='<path to a checkpoint>'."
            )
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=weights, **extra, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------------------------
def _hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment now (HF_HUB_CACHE, HF_HOME, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


@register_model_source("timm")
class TimmSource(ModelSource):
    """``timm:<arch>[.<tag>]``: any name of ``timm.list_models()`` (a pretrained tag is allowed)."""

    def build(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        _pop_conflicting(kwargs, "pretrained")
        return self._create(name, num_classes, kwargs, pretrained=False)

    @staticmethod
    def _check(name: str) -> None:
        import timm

        arch = name.split(".", 1)[0]
        if not timm.is_model(arch):
            raise ConfigError(
                f"Unknown timm architecture {arch!r}. Closest: {_close(arch, timm.list_models())}. "
                "All names: timm.list_models()."
            )

    def _create(self, name: str, num_classes: int | None, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
        import timm

        self._check(name)
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=pretrained, **extra, **kwargs)

    def build_pretrained(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        import dataclasses

        from timm.models import get_pretrained_cfg

        _pop_conflicting(kwargs, "pretrained", "pretrained_cfg")
        self._check(name)
        try:
            cfg_obj = get_pretrained_cfg(name)
        except RuntimeError as err:  # an invalid pretrained tag
            raise ConfigError(f"timm:{name}: {err}") from err
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        cfg = {**(dataclasses.asdict(cfg_obj) if cfg_obj is not None else {"architecture": name}), **overlay}
        found, expected = self._find_local(cfg)
        if found is None:
            raise MissingFileError(
                f"Pretrained weights for timm:{name} are not in the local cache and this library never downloads: "
                + "; or ".join(expected)
                + ". Alternatively pass weights='<path to a checkpoint>' or "
                "pretrained_cfg_overlay=dict(file='<path>') in the model kwargs."
            )
        overlay.update(found)
        return self._create(name, num_classes, {**kwargs, "pretrained_cfg_overlay": overlay}, pretrained=True)

    @staticmethod
    def _find_local(cfg: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
        """Locate cached weights for a timm pretrained config without any network access.

        Returns:
            (overlay, expected): ``overlay`` is a ``pretrained_cfg_overlay`` pointing timm at the local file (None
            when nothing is cached); ``expected`` describes where the file would have to be.
        """
        expected: list[str] = []
        if cfg.get("file"):
            file = Path(cfg["file"]).expanduser()
            if file.is_file():
                return {"file": str(file)}, expected
            raise MissingFileError(f"timm pretrained_cfg file '{file}' does not exist.")
        hub_id = cfg.get("hf_hub_id")
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = hub_id.partition("@")
            cache = _hf_hub_cache_dir()
            names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HF_WEIGHT_FILES)
            for fname in names:
                hit = try_to_load_from_cache(repo, fname, cache_dir=cache, revision=revision or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    # Hub files are native state dicts: the custom (e.g. JAX .npz) loader must not run on them.
                    return {"file": hit, "custom_load": False}, expected
            repo_folder = "models--" + repo.replace("/", "--")
            expected.append(
                f"put '{names[0]}' of the Hugging Face repo '{repo}' into the HF hub cache "
                f"'{cache / repo_folder}/snapshots/<commit>/{names[0]}' with '{cache / repo_folder}/refs/"
                f"{revision or 'main'}' holding <commit> (huggingface_hub.snapshot_download on a networked machine, "
                f"then copy the folder)"
            )
        url = cfg.get("url")
        if url:
            folder = _torch_checkpoint_dir()
            file = folder / _url_file_name(url)
            if file.is_file():
                return {"file": str(file)}, expected
            expected.append(f"put the file '{file.name}' into the folder '{folder}' (from {url})")
        if not expected:
            expected.append(f"timm lists no pretrained weights for '{cfg.get('architecture', '?')}'")
        return None, expected


# --------------------------------------------------------------------------------------------------------------------
# python:<module>:<factory>
# --------------------------------------------------------------------------------------------------------------------
def _import_error(spec_rest: str, module_name: str, err: ModuleNotFoundError) -> ConfigError:
    """The fix for a ``python:`` spec whose module cannot be imported: the module itself is not on the path
    (add its folder to PYTHONPATH or install it), or it imports a package that is not installed."""
    missing = err.name or ""
    if missing and not (module_name == missing or module_name.startswith(missing + ".")):
        return ConfigError(
            f"Spec 'python:{spec_rest}': module '{module_name}' was found but imports '{missing}', which is not "
            f"installed; install it in this environment (pip install <the package that provides {missing}>)."
        )
    top = module_name.split(".", 1)[0]
    return ConfigError(
        f"Spec 'python:{spec_rest}': cannot import module '{module_name}' (not on the Python path of this process, "
        f"working directory '{os.getcwd()}'); add the folder that holds '{top}.py' or the package '{top}/' to "
        f"PYTHONPATH (e.g. PYTHONPATH=/path/to/that/folder python trainer_cli.py ...) or install your project "
        f"with 'pip install -e <project>'."
    )


@register_model_source("python")
class PythonSource(ModelSource):
    """``python:<module>:<factory>``: your own model; ``factory`` is a function or an ``nn.Module`` class.

    ``num_classes``, when given, is passed as a keyword argument, together with the model kwargs.
    """

    def build(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        module_name, sep, attr = name.rpartition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(
                f"Spec 'python:{name}' must look like 'python:<module>:<factory>', "
                "e.g. 'python:lit_explain.models.synthetic_cnn:synthetic_cnn'."
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise _import_error(name, module_name, err) from err
        factory = module
        for part in attr.split("."):
            if not hasattr(factory, part):
                public = [n for n in dir(module) if not n.startswith("_")]
                raise ConfigError(
                    f"Spec 'python:{name}': module '{module_name}' has no attribute '{attr}'. "
                    f"Closest: {_close(attr, public)}."
                )
            factory = getattr(factory, part)
        if not callable(factory):
            raise ConfigError(f"Spec 'python:{name}': '{attr}' is not callable.")
        extra = {} if num_classes is None else {"num_classes": num_classes}
        model = factory(**extra, **kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Spec 'python:{name}': the factory returned {type(model).__name__}, not an nn.Module.")
        return model


# --------------------------------------------------------------------------------------------------------------------
# file:<path>  (TorchScript archive or pickled nn.Module)
# --------------------------------------------------------------------------------------------------------------------
def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files holding ``<name>/code/`` and ``<name>/constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _torch_load(path: Path, trusted: bool) -> Any:
    """``torch.load`` on CPU; on failure raise a ValueError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError:
        raise
    except Exception as err:  # corrupt zip, truncated file, unknown class in a pickle
        raise _unreadable(path, err) from err


def _torch_reason(err: BaseException) -> str:
    """The informative part of a torch.load error, on one line, without torch's advice to file an issue."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    else:
        text = text.split(". ", 1)[0]
    text = " ".join(text.split())
    return text[:200] if text else type(err).__name__


def _unreadable(path: Path, err: BaseException) -> ConfigError:
    return ConfigError(
        f"Cannot read '{path}' with torch.load ({_torch_reason(err)}): the file is not a PyTorch checkpoint or is "
        "truncated or corrupt; copy or save it again, check the path, or use weights='none'."
    )


@register_model_source("file")
class FileSource(ModelSource):
    """``file:<path>`` or a bare path: a TorchScript archive or a pickled ``nn.Module`` (``torch.save(model)``).

    Warning:
        A pickled module is read with ``torch.load(weights_only=False)``, which executes code stored in the
        file. Only load files from sources you trust. TorchScript models cannot be probed with forward hooks.
    """

    accepts_num_classes = False

    def build(self, name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
        path = Path(name).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"Model file '{path}' does not exist (the spec has no registered scheme, so it was read as a file "
                f"path; registered schemes: {', '.join(s + ':' for s in available_model_sources())})."
            )
        if num_classes is not None or kwargs:
            raise ConfigError(
                f"A saved model file ('{path}') fixes its architecture: num_classes and model kwargs cannot be "
                "applied to it."
            )
        if _is_torchscript_archive(path):
            return torch.jit.load(str(path), map_location="cpu")
        try:
            obj = _torch_load(path, trusted=True)
        except pickle.UnpicklingError as err:
            raise _unreadable(path, err) from err
        if not isinstance(obj, nn.Module):
            raise ConfigError(
                f"'{path}' holds a {type(obj).__name__}, not a model. A state dict or checkpoint is loaded with "
                "load_model('<scheme>:<arch>', weights='<this file>')."
            )
        return obj


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())
    )


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module) or _is_state_dict(inner):
                return _extract_state_dict(inner, path)
        shown = ", ".join(repr(k) for k in list(obj)[:10])
        raise ConfigError(
            f"No state dict found in checkpoint '{path}'. Top-level keys: {shown}. Expected a state dict, or one "
            f"under any of {list(_NESTED_STATE_KEYS)}, or a pickled nn.Module."
        )
    raise ConfigError(f"Checkpoint '{path}' holds a {type(obj).__name__}; expected a state dict or an nn.Module.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the model state dict stored in a checkpoint file, whatever its wrapping.

    Handles plain state dicts, dicts nesting them under ``state_dict``/``model_state_dict``/``model``/``module``/
    ``net`` (Lightning ``.ckpt``, Places365 ``.pth.tar``), whole pickled models, TorchScript archives and
    ``.safetensors`` files. Keys are returned as stored (no prefix handling; see :func:`load_model`).

    The file is first read with ``torch.load(weights_only=True)``; if that is refused (a whole pickled model, a
    checkpoint with custom objects in its hyper-parameters) it is re-read with ``weights_only=False`` and a
    ``UserWarning`` is emitted: that executes code from the file, so only load files you trust.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"Checkpoint file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ConfigError(f"Cannot read safetensors file '{path}': {err}") from err
    if _is_torchscript_archive(path):
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        obj = _torch_load(path, trusted=False)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a refused class, just not a pickle: never unpickle it
            raise _unreadable(path, err) from err
        warnings.warn(
            f"'{path}' cannot be read with torch.load(weights_only=True) (it holds pickled Python objects); "
            "reading it with weights_only=False, which runs code from the file. Only do this for trusted files.",
            UserWarning,
            stacklevel=2,
        )
        try:
            obj = _torch_load(path, trusted=True)
        except pickle.UnpicklingError as err2:
            raise _unreadable(path, err2) from err2
    return _extract_state_dict(obj, path)


def _rename_old_densenet(state: Mapping[str, Any]) -> dict[str, Any]:
    """``...denselayer3.norm.1.weight`` -> ``...denselayer3.norm1.weight`` (pre-0.3 torchvision DenseNet names)."""
    return {_OLD_DENSENET_KEY.sub(r"\1\2.", k): v for k, v in state.items()}


def _drop_module_components(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove every ``module`` path component (DataParallel on the whole model or on ``features`` only)."""
    return {".".join(p for p in k.split(".") if p != "module"): v for k, v in state.items()}


def _optional(key: str) -> bool:
    # BatchNorm fills a missing counter itself (checkpoints from torch < 0.4.1, e.g. the Places365 files).
    return key.endswith("num_batches_tracked")


def _key_diff(keys: Iterable[str], model_keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys, in the model's and the checkpoint's order."""
    keys, model_keys = list(keys), list(model_keys)
    key_set, model_set = set(keys), set(model_keys)
    missing = [k for k in model_keys if k not in key_set and not _optional(k)]
    unexpected = [k for k in keys if k not in model_set]
    return missing, unexpected


def _candidates(state: dict[str, Any], model_keys: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Key-fixing variants of ``state`` in order of preference, each with a description."""
    bases = [("as stored", state)]
    dropped = _drop_module_components(state)
    if dropped.keys() != state.keys():
        bases.append(("'module.' removed", dropped))
    for desc, base in bases:
        yield desc, base
    anchors = [k for k in model_keys if not _optional(k)][:3]
    for desc, base in bases:
        prefixes: list[str] = []
        for key in base:
            for anchor in anchors:
                if key.endswith("." + anchor):
                    prefix = key[: len(key) - len(anchor)]
                    if prefix not in prefixes:
                        prefixes.append(prefix)
        for prefix in prefixes[:_MAX_PREFIXES]:
            yield (
                f"{desc}, prefix '{prefix}' stripped",
                {k[len(prefix) :]: v for k, v in base.items() if k.startswith(prefix)},
            )


def _match_state_dict(state: dict[str, Any], model: nn.Module) -> tuple[dict[str, Any] | None, str, list[str]]:
    """Find the key-fixed variant of ``state`` whose keys are exactly the model's.

    Returns:
        (matched, description, tried): ``matched`` is None when no variant fits, in which case ``description``
        names the closest variant and ``matched`` should be reported via :func:`_mismatch_error`.
    """
    model_keys = list(model.state_dict().keys())
    key_set = set(model_keys)
    state = _rename_old_densenet(state)
    tried: list[str] = []
    best: tuple[int, str] = (-1, "as stored")
    for desc, cand in _candidates(state, model_keys):
        tried.append(desc)
        missing, unexpected = _key_diff(cand, model_keys)
        if not missing and not unexpected:
            return cand, desc, tried
        overlap = len(key_set & set(cand))
        if overlap > best[0]:
            best = (overlap, desc)
    return None, best[1], tried


def _head_key(model: nn.Module) -> str | None:
    """State-dict key of the classifier weight: the last weight of ndim >= 2 in registration order."""
    last = None
    for key, value in model.state_dict().items():
        if key.endswith("weight") and isinstance(value, torch.Tensor) and value.ndim >= 2:
            last = key
    return last


def _shape_mismatches(state: Mapping[str, Any], model: nn.Module) -> list[tuple[str, tuple, tuple]]:
    out = []
    for key, value in model.state_dict().items():
        other = state.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and other.shape != value.shape:
            out.append((key, tuple(other.shape), tuple(value.shape)))
    return out


def _infer_num_classes(state: Mapping[str, Any], model: nn.Module) -> int | None:
    """The checkpoint's class count when the only shape differences are the classifier's output size."""
    mismatches = _shape_mismatches(state, model)
    head = _head_key(model)
    if not mismatches or head is None or head not in state:
        return None
    head_module = head.rsplit(".", 1)[0] + "." if "." in head else ""
    for key, ckpt_shape, model_shape in mismatches:
        if not key.startswith(head_module) or ckpt_shape[1:] != model_shape[1:]:
            return None
    return int(state[head].shape[0])


def _mismatch_error(
    path: Path, spec: str, model: nn.Module, state: Mapping[str, Any], desc: str, tried: list[str]
) -> ConfigError:
    """One line: the counts, then the first missing / unexpected keys and shape mismatches, each part ending in ';'."""
    missing, unexpected = _key_diff(state, model.state_dict())
    shapes = _shape_mismatches(state, model)
    parts = [
        f"Checkpoint '{path}' does not fit {spec} ({type(model).__name__}): {len(missing)} missing keys, "
        f"{len(unexpected)} unexpected keys, {len(shapes)} shape mismatches (closest key variant: {desc});",
    ]
    if missing:
        parts.append(f"missing (first {_SHOW}): {', '.join(missing[:_SHOW])};")
    if unexpected:
        parts.append(f"unexpected (first {_SHOW}): {', '.join(unexpected[:_SHOW])};")
    if shapes:
        shown = ", ".join(f"{k}: checkpoint {c} vs model {m}" for k, c, m in shapes[:_SHOW])
        parts.append(f"shape mismatches (first {_SHOW}): {shown};")
    parts.append(f"key fixes tried: {' | '.join(tried)};")
    parts.append(
        "fix: use the spec of the architecture the checkpoint was trained with, and num_classes=None (inferred "
        "from the last layer) or the checkpoint's class count."
    )
    return ConfigError(" ".join(parts))


def _load_checkpoint(
    source: ModelSource, name: str, spec: str, num_classes: int | None, kwargs: dict[str, Any], path: Path
) -> nn.Module:
    state = read_state_dict(path)
    model = source.build(name, num_classes, dict(kwargs))
    matched, desc, tried = _match_state_dict(state, model)
    if matched is None:
        raise _mismatch_error(path, spec, model, _rename_old_densenet(state), desc, tried)
    if num_classes is None and source.accepts_num_classes:
        inferred = _infer_num_classes(matched, model)
        if inferred is not None:
            _log.info("%s: %d classes inferred from the last layer of %s", spec, inferred, path)
            model = source.build(name, inferred, dict(kwargs))
    if _shape_mismatches(matched, model):
        raise _mismatch_error(path, spec, model, matched, desc, tried)
    if desc == "as stored" and hasattr(state, "_metadata") and set(matched) == set(model.state_dict()):
        matched = OrderedDict(matched)
        matched._metadata = state._metadata  # type: ignore[attr-defined]  # keeps module version upgrades
    try:
        model.load_state_dict(matched, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"Loading checkpoint '{path}' into {spec} failed: {err}") from err
    return model


def load_model(spec: str, weights: str = "none", num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model from a spec and load its weights, never touching the network.

    The model is returned in whatever mode its factory leaves it (usually training mode): call ``.eval()``.

    Args:
        spec: where the architecture comes from: ``"torchvision:<arch>"``, ``"timm:<arch>"``,
            ``"python:<module>:<factory>"`` (a function or class returning an ``nn.Module``), or the path of a
            saved model (TorchScript archive or pickled ``nn.Module``; optionally written ``"file:<path>"``).
            Schemes are a registry (:func:`register_model_source`).
        weights: ``"none"``: random initialisation. ``"default"``: the library's pretrained weights
            (torchvision ``Weights.DEFAULT``, timm ``pretrained=True``), read only from the local cache; a missing
            file raises FileNotFoundError naming the file and the folder to put it in (torchvision:
            ``torch.hub.get_dir()/checkpoints``; timm: the Hugging Face hub cache or the torch hub folder).
            Otherwise the path of a checkpoint: a plain state dict; a dict nesting it under ``state_dict``,
            ``model_state_dict``, ``model``, ``module`` or ``net``; a Lightning ``.ckpt`` whose keys carry an
            attribute prefix (``model.``, ``backbone.``: the prefix is found by matching the model's keys and
            stripped, keys outside it such as loss buffers are dropped); DataParallel keys (``module.`` anywhere,
            e.g. the Places365 ``alexnet_places365.pth.tar`` has ``features.module.0.weight``); whole pickled
            models; TorchScript archives; ``.safetensors``. Pre-0.3 torchvision DenseNet names (``norm.1``,
            ``conv.1``, ``norm.2``, ``conv.2`` inside ``denselayerN``, as in the Places365
            ``whole_densenet161_places365_python36.pth.tar``) are renamed to ``norm1``, ``conv1``, ..., so that file
            loads with ``load_model("torchvision:densenet161", weights=<file>)``. BatchNorm counters missing from old
            checkpoints are filled in by torch.
        num_classes: output classes of the classifier. None: the architecture's default, or with a checkpoint the
            size of the checkpoint's last layer (e.g. 365 for ``resnet18_places365.pth.tar``).
        **kwargs: passed to the factory (``torchvision.models.get_model``, ``timm.create_model``, the python factory),
            e.g. ``img_size=64`` for a timm ViT.

    Returns:
        The model, on CPU.

    Raises:
        MissingFileError: (a FileNotFoundError) a missing model, checkpoint or cached weight file (the message
            names it and where it is expected).
        ConfigError: (a ValueError) unknown architecture, malformed spec, a ``python:`` module that cannot be
            imported (the message says to add its folder to PYTHONPATH), an unreadable checkpoint, or a checkpoint
            whose keys or shapes do not fit the model (the message lists the first missing/unexpected keys and the
            file). Both are :mod:`lit_explain.errors` types: the command line prints them as one line.

    Warning:
        Pickled models and checkpoints that need ``weights_only=False`` execute code stored in the file when read.
        Only load files from sources you trust.
    """
    source, name, scheme = _resolve_spec(spec)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be 'none', 'default' or a checkpoint path, got {type(weights).__name__}.")
    keyword = str(weights).strip().lower()
    if keyword == "none":
        return source.build(name, num_classes, dict(kwargs))
    if keyword == "default":
        return source.build_pretrained(name, num_classes, dict(kwargs))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"Checkpoint file '{path}' does not exist (weights must be 'none', 'default' or a checkpoint path)."
        )
    return _load_checkpoint(source, name, f"{scheme}:{name}", num_classes, kwargs, path)


# --------------------------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def model_fingerprint(model: nn.Module) -> str:
    """A content hash of a model: its architecture and every parameter and buffer, for activation cache keys.

    Hashes (SHA-256) the class of the model and of every submodule with its name, then each parameter and buffer's
    name, dtype, shape and raw bytes. Two models agree iff they have the same module tree and bit-identical
    tensors; training mode and hooks do not count. About 1 GB/s (resnet18: ~50 ms).

    Args:
        model: any ``nn.Module`` (TorchScript modules included).

    Returns:
        A 32-character hex string.
    """
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        kind = getattr(module, "original_name", None) or f"{type(module).__module__}.{type(module).__qualname__}"
        digest.update(f"m:{name}:{kind};".encode())
    for prefix, tensors in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, tensor in tensors:
            if tensor is None:
                continue
            digest.update(f"{prefix}:{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:32]
