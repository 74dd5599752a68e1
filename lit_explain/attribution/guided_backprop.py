"""Hidden-layer saliency by guided backpropagation, for a whole batch in one backward pass.

HINT's step 1 needs, for every image, the feature map A = the output of a probed layer (C, h, w) and the
"saliency map" S = the gradient of the image's ground-truth logit with respect to A (same shape). Because
image i's logit depends only on image i (the model is run in eval mode: no batch statistics), the gradient
of ``sum_i logits[i, target_i]`` with respect to the batch's layer output is exactly the stack of the
per-image gradients, so one forward and one backward serve the whole batch (the original ran one pass per
image and registered new hooks each time, which piled up).

Guided backprop replaces every ReLU's backward by ``1[input > 0] * max(grad, 0)``. Supported: ``nn.ReLU``
modules (in-place or not). A forward hook on each ReLU passes its output through an identity whose backward
clamps the incoming gradient at 0; the ReLU's own backward then applies ``1[input > 0]``. Functional calls
(``F.relu``, ``torch.relu``, ``x.relu_()``) and other activations are not hooked and keep their plain gradient;
a model without any ``nn.ReLU`` module is refused when ``guided=True`` (use ``guided=False`` for vanilla
gradients). Hooks are registered once per call inside :func:`guided_relu` and always removed, also when the
forward or backward raises.

The probed layer's output is replaced (by a forward hook) by a copy, so an in-place op right after the layer
(VGG's ``ReLU(inplace=True)`` after ``features.30``) cannot overwrite the values or the gradient: A and S are
those of the layer's own output (pre-ReLU for a Conv2d).

Only the part of the network after the layer is differentiated. The forward runs without autograd until the
layer; its hook turns autograd on and hands the rest of the network a fresh leaf A, so nothing below the layer
is recorded, and the backward starts at the logits and stops at A. The guided clamp is applied only to ReLUs
that run after the layer (the ones the gradient passes). The original backpropagated every image to the input
pixels; the saliency at the layer is the same, the work below it is skipped.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["LayerSaliency", "layer_saliency", "guided_relu"]


class _ClampGrad(torch.autograd.Function):
    """Identity forward (a copy, so in-place ops downstream are safe); backward: max(grad, 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


@contextmanager
def guided_relu(model: nn.Module, active: Callable[[], bool] | None = None) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of ``model`` backpropagates ``1[x > 0] * max(grad, 0)``.

    Yields the number of hooked ReLU modules. The hooks are removed on exit, whatever happens inside.
    ``active``: called at each ReLU's forward; the ReLU is guided only when it returns True (None: always), e.g.
    only after the probed layer has run, the ReLUs that a gradient stopping at that layer passes through.

    Raises:
        ValueError: the model has no ``nn.ReLU`` module (functional relu cannot be guided).
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"guided backprop: {type(model).__name__} has no nn.ReLU module; only nn.ReLU modules can be "
                         "guided (functional F.relu / torch.relu and other activations cannot). Use guided=False for "
                         "vanilla gradients, or build the model with nn.ReLU modules")
    handles = []
    try:
        def guide(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
            return _ClampGrad.apply(output) if active is None or active() else None

        for m in relus:
            handles.append(m.register_forward_hook(guide))
        yield len(relus)
    finally:
        for h in handles:
            h.remove()


@dataclass
class LayerSaliency:
    """One batch's result.

    Attributes:
        activations: (B, C, h, w) the probed layer's output (detached; any trailing shape of the layer output).
        saliency: (B, C, h, w) d logits[i, targets[i]] / d activations[i] (guided or vanilla), detached.
        logits: (B, K) the model's outputs (detached), e.g. for Top-1 checks.
    """

    activations: torch.Tensor
    saliency: torch.Tensor
    logits: torch.Tensor


def layer_saliency(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   guided: bool = True, layer_name: str | None = None) -> LayerSaliency:
    """Saliency of each image's target logit at ``layer``: one forward and one backward for the batch.

    Args:
        model: maps (B, 3, H, W) images to (B, K) logits; put it in eval mode first (batch norm in train mode
            mixes images, and dropout makes the pass random).
        layer: a submodule of ``model`` that runs exactly once per forward.
        images: (B, 3, H, W) float.
        targets: (B,) int64 class indices in [0, K).
        guided: guided backprop (True, HINT's default) or the vanilla gradient.
        layer_name: the layer's name, only for error messages.

    Returns:
        :class:`LayerSaliency` with activations and saliency of shape (B, *layer output shape[1:]).

    Raises:
        ValueError: bad shapes or targets, batch norm / dropout in training mode, a layer that does not run (or
            runs twice) in the forward, a layer whose output does not reach the logits (no gradient path), or no
            nn.ReLU with ``guided=True``.
    """
    name = layer_name or type(layer).__name__
    if images.ndim < 2 or targets.ndim != 1 or targets.shape[0] != images.shape[0]:
        raise ValueError(f"layer_saliency: images (B, ...) and targets (B,) must agree, got {tuple(images.shape)} "
                         f"and {tuple(targets.shape)}")
    training = [n for n, m in model.named_modules() if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))]
    if training:
        raise ValueError(f"layer_saliency: {training[:3]} are in training mode (batch statistics mix the images of a "
                         "batch, dropout is random); call model.eval() first")
    if not any(m is layer for m in model.modules()):
        raise ValueError(f"layer_saliency: layer {name!r} is not a submodule of {type(model).__name__}")
    captured: list[torch.Tensor] = []

    def capture(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"layer_saliency: layer {name!r} returns {type(out).__name__}, not a tensor")
        captured.append(out.detach().clone().requires_grad_(True))  # the leaf A the backward stops at
        torch.set_grad_enabled(True)  # record from here on; the outer no_grad restores the mode on exit
        return captured[-1].clone()  # later in-place ops (ReLU(inplace=True)) change this copy, not A

    guard = guided_relu(model, active=lambda: bool(captured)) if guided else _nullcontext()
    handle = layer.register_forward_hook(capture)
    try:
        with guard:
            with torch.no_grad():  # nothing below the layer is recorded (the hook turns recording on)
                logits = model(images.detach())
            if len(captured) != 1:
                raise ValueError(f"layer_saliency: layer {name!r} ran {len(captured)} times in one forward; it must "
                                 "run exactly once (pick a layer on the main path)")
            if logits.ndim != 2:
                raise ValueError(f"layer_saliency: the model must return (B, K) logits, got {tuple(logits.shape)}")
            t = targets.to(device=logits.device, dtype=torch.long)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= logits.shape[1]):
                raise ValueError(f"layer_saliency: targets must be in [0, {logits.shape[1]}), got range "
                                 f"[{int(t.min())}, {int(t.max())}]")
            act = captured[0]
            with torch.enable_grad():
                score = logits.gather(1, t[:, None]).sum()
                if not score.requires_grad:
                    raise ValueError(f"layer_saliency: the logits do not depend on layer {name!r} (no gradient path: "
                                     "the logits are computed without gradient, e.g. under the model's own no_grad); "
                                     "probe a layer the logits use")
                (grad,) = torch.autograd.grad(score, act, allow_unused=True)
            if grad is None:
                raise ValueError(f"layer_saliency: the logits do not depend on layer {name!r} (no gradient path: the "
                                 "layer's output is detached or unused downstream); probe a layer the logits use")
    finally:
        handle.remove()
    return LayerSaliency(act.detach(), grad.detach(), logits.detach())


@contextmanager
def _nullcontext() -> Iterator[int]:
    yield 0
