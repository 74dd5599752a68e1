"""A randomly initialised copy of a model: the null-baseline network of dissection methods.

NetDissect (Bau et al. 2017, §3.2) and its successors compare a trained network's explanations with those of the
same architecture at random initialisation: whatever a random network's unit "explains" is what the concept masks
and the activation geometry give for free. :func:`random_init_copy` builds that network deterministically from a
seed, so every DDP rank (and every rerun) gets bit-identical weights and the activation cache can be shared.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lit_explain.models.loading import _infer_num_classes, _resolve_spec, load_model, model_fingerprint

__all__ = ["random_init_copy", "reset_parameters"]


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        not isinstance(v, torch.Tensor) or (isinstance(sb[k], torch.Tensor) and sb[k].shape == v.shape)
        for k, v in sa.items())


def reset_parameters(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Re-initialise ``model`` in place with PyTorch's default initialisation of each layer.

    Every submodule with a ``reset_parameters`` method (convolutions, linear layers, norms: BatchNorm also resets
    its running statistics) re-draws its own tensors. Parameters owned directly by a module without one (a ViT's
    ``cls_token`` or ``pos_embed``, a layer-scale ``gamma``) are drawn from a truncated normal with ``std`` (the
    timm convention) when they have 2 or more dimensions, and set to zeros (biases) or ones (scales named
    ``gamma``/``weight``) otherwise.

    Args:
        model: an ``nn.Module`` (not TorchScript: its submodules do not expose ``reset_parameters``).
        std: standard deviation for the leftover parameters.

    Returns:
        ``model``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("a TorchScript model cannot be re-initialised layer by layer; give the architecture as a "
                        "'python:<module>:<factory>', 'torchvision:<arch>' or 'timm:<arch>' spec instead")
    covered: set[int] = set()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in covered:
                    continue
                if p.ndim >= 2:
                    nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
                elif name in ("weight", "gamma") or name.endswith("_scale"):
                    p.fill_(1.0)
                else:
                    p.zero_()
    return model


def random_init_copy(model: nn.Module, spec: str | None = None, seed: int = 0, **model_kwargs: Any) -> nn.Module:
    """A copy of ``model``'s architecture with random weights drawn from ``seed``, in eval mode.

    When ``spec`` names a constructible architecture (``torchvision:``, ``timm:``, ``python:``), the copy is built
    by the factory with ``weights='none'``, i.e. with the architecture's own initialisation (kaiming for
    torchvision ResNets, timm's truncated normals); if the factory's default head does not match ``model`` (a
    checkpoint with 365 classes), the factory is called again with the model's class count. Otherwise (a saved
    model file, no spec, or a factory that always returns the same weights, such as one with a fixed internal
    seed), ``model`` is deep-copied and :func:`reset_parameters` re-draws its weights.

    The global random state is left untouched (``torch.random.fork_rng``), and the same seed gives bit-identical
    weights on every process.

    Args:
        model: the trained model whose architecture is copied.
        spec: the spec ``model`` was loaded from (see :func:`lit_explain.models.loading.load_model`), or None.
        seed: seed of the random weights.
        **model_kwargs: the factory keyword arguments ``model`` was built with.

    Returns:
        A new module with the same state-dict keys and shapes as ``model``.

    Raises:
        TypeError: ``model`` is TorchScript and ``spec`` cannot rebuild it.
        ValueError: ``model`` has no parameters (a hand-built detector), so no random copy differs from it.
    """
    trained = model_fingerprint(model)
    with torch.random.fork_rng(devices=[]):
        fresh: nn.Module | None = None
        if spec is not None and _resolve_spec(spec)[2] != "file":
            torch.manual_seed(seed)
            fresh = load_model(spec, weights="none", **model_kwargs)
            if not _same_shapes(fresh, model) and "num_classes" not in model_kwargs:
                n = _infer_num_classes(model.state_dict(), fresh)
                torch.manual_seed(seed)
                fresh = load_model(spec, weights="none", num_classes=n, **model_kwargs) if n is not None else None
            if fresh is not None and (not _same_shapes(fresh, model) or model_fingerprint(fresh) == trained):
                fresh = None  # another head, or a factory that always builds the same weights (a fixed seed)
        if fresh is None:
            torch.manual_seed(seed)
            fresh = reset_parameters(copy.deepcopy(model))
            if model_fingerprint(fresh) == trained:
                raise ValueError(f"{spec or type(model).__name__} has no parameters to randomise, so a randomly "
                                 "initialised copy would be the model itself; drop the random-model baseline")
    fresh.eval().requires_grad_(False)
    return fresh
