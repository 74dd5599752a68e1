"""List the probe-able layers of a model, with each one's output shape from one dummy forward pass.

Every method explains the units of one layer named by its dotted module path (``layer4``, ``features.28``,
``blocks.11``). :func:`list_layers` gives every such path with the module's type and, when one forward pass of a
zero image works, the shape of its output for one image (channels first for convolution maps: the number of units
is the first number of a 3-D shape). ``python trainer_cli.py predict --config x.yaml --print_layers`` prints it
for the configured model without running the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_explain.models.probe import LayerProbe

__all__ = ["LayerRow", "format_layers", "list_layers"]


@dataclass(frozen=True)
class LayerRow:
    """One probe-able layer: dotted path, module type and output shape for one image (None if not run)."""

    name: str
    kind: str
    shape: tuple[int, ...] | None


def _shape(output: object) -> tuple[int, ...] | None:
    """Shape without the batch dimension of the output's first tensor (tuple/list/dict outputs included)."""
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    if isinstance(output, (tuple, list)):
        items = output
    elif isinstance(output, dict):
        items = list(output.values())
    else:
        return None
    for item in items:
        found = _shape(item)
        if found is not None:
            return found
    return None


def list_layers(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> tuple[list[LayerRow], str | None]:
    """Every probe-able layer of ``model`` in registration order, with output shapes from one forward pass.

    The pass runs a zero image of batch size 1 in eval mode without gradients on the model's device and dtype (the
    model's train/eval flags are restored). A layer that does not run in that pass has no shape.

    Args:
        model: the network.
        input_size: (C, H, W) of one input image.

    Returns:
        (rows, problem): ``problem`` is None, or one line saying why no shapes could be taken (the forward pass
        failed for this input size, or the model is TorchScript, which takes no hooks).
    """
    names = LayerProbe.available_layers(model)
    kinds = {name: getattr(module, "original_name", None) or type(module).__name__
             for name, module in model.named_modules() if name}
    shapes: dict[str, tuple[int, ...] | None] = {}
    if isinstance(model, torch.jit.ScriptModule):
        return [LayerRow(n, kinds[n], None) for n in names], "TorchScript model: no shapes (it takes no hooks)"

    def hook_for(name: str):  # noqa: ANN202 - a forward hook
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            shapes.setdefault(name, _shape(output))

        return hook

    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.zeros(()))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    dummy = torch.zeros((1, *input_size), device=reference.device, dtype=dtype)
    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    modes = [(m, m.training) for m in model.modules()]
    problem = None
    try:
        model.eval()
        with torch.no_grad():
            model(dummy)
    except Exception as err:  # noqa: BLE001 - any failure only costs the shapes, reported in one line
        problem = (f"the forward pass of a 1x{'x'.join(map(str, input_size))} zero image failed "
                   f"({type(err).__name__}: {' '.join(str(err).split())[:160]}); shapes of the layers it reached")
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return [LayerRow(n, kinds[n], shapes.get(n)) for n in names], problem


def format_layers(rows: list[LayerRow], title: str, problem: str | None = None) -> str:
    """A table of ``rows`` under ``title``: path, type and output shape (``-`` when the layer did not run)."""
    width = max([len(r.name) for r in rows] + [5])
    kind_width = max([len(r.kind) for r in rows] + [4])
    lines = [title]
    if problem:
        lines.append(f"note: {problem}")
    lines.append(f"  {'layer':<{width}}  {'type':<{kind_width}}  output (one image)")
    for r in rows:
        shape = "x".join(map(str, r.shape)) if r.shape is not None else "-"
        lines.append(f"  {r.name:<{width}}  {r.kind:<{kind_width}}  {shape}")
    return "\n".join(lines)
