"""Capture the outputs of named layers of a network as (B, C, h, w) grids in one forward pass.

:class:`LayerProbe` registers forward hooks on modules given by dotted paths (``layer4``, ``layer4.1.conv2``,
``features.28``, ``blocks.11``, ``encoder.layers.encoder_layer_11``), runs the model once and returns every requested
output as a spatial grid, whatever the layer type:

* 4-D conv maps (B, C, h, w) are returned as they are (``token_layout="nhwc"`` permutes channels-last maps
  (B, h, w, C), e.g. timm Swin stages, to (B, C, h, w));
* 3-D transformer tokens (B, T, D) lose their prefix tokens (CLS, register and distillation tokens, kept in
  :attr:`LayerProbe.prefix_tokens`) and the T - n_prefix patch tokens are laid out row-major on the (h, w) patch grid;
* 2-D vectors (B, C) become (B, C, 1, 1);
* tuple/list outputs use their first tensor (e.g. ``nn.MultiheadAttention``).

With ``stop_early`` the forward pass is aborted as soon as every requested layer has fired, so probing ``layer2`` of
a ResNet does not pay for ``layer3``, ``layer4`` and the head.
"""

from __future__ import annotations

import difflib
import math
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["LayerProbe", "layer_shapes", "tokens_to_grid"]

_TOKEN_LAYOUTS = ("auto", "nchw", "nhwc")


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once every requested layer has produced its output."""


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _ancestors(model: nn.Module, path: str) -> Iterator[nn.Module]:
    """The modules on the path from ``path``'s parent up to the root, deepest first."""
    parts = path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        yield model.get_submodule(".".join(parts[:depth])) if depth else model


def _as_pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _token_context(model: nn.Module, path: str) -> tuple[int | None, tuple[int, int] | None]:
    """(num_prefix_tokens, patch_size) declared by the nearest ancestor of ``path`` that declares them.

    timm vision transformers declare ``num_prefix_tokens`` and ``patch_embed.patch_size``; torchvision's
    ``VisionTransformer`` declares ``patch_size`` only.
    """
    n_prefix: int | None = None
    patch: tuple[int, int] | None = None
    for module in _ancestors(model, path):
        if n_prefix is None and isinstance(getattr(module, "num_prefix_tokens", None), int):
            n_prefix = int(module.num_prefix_tokens)
        if patch is None:
            embed = getattr(module, "patch_embed", None)
            patch = _as_pair(getattr(embed, "patch_size", None)) or _as_pair(getattr(module, "patch_size", None))
        if n_prefix is not None and patch is not None:
            break
    return n_prefix, patch


def _grid_candidates(patch: tuple[int, int] | None, image_hw: tuple[int, int] | None) -> list[tuple[int, int]]:
    if patch is None or image_hw is None:
        return []
    (ph, pw), (height, width) = patch, image_hw
    floor = (height // ph, width // pw)
    ceil = (-(-height // ph), -(-width // pw))  # timm's dynamic_img_pad pads up to a whole patch
    return [floor] if floor == ceil else [floor, ceil]


def _factor_grid(n: int, image_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """(h, w) with h * w == n: the square root if n is square, else the factorisation nearest the image aspect."""
    root = math.isqrt(n)
    if root * root == n:
        return (root, root)
    if image_hw is None:
        return None
    aspect = image_hw[0] / image_hw[1]
    pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
    return min(pairs, key=lambda hw: abs(math.log((hw[0] / hw[1]) / aspect)))


def tokens_to_grid(
    tokens: torch.Tensor,
    num_prefix_tokens: int | None = None,
    patch_size: tuple[int, int] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (B, T, D) tokens into prefix tokens (B, n_prefix, D) and a (B, D, h, w) patch grid.

    Patch tokens follow the prefix tokens in row-major order (token ``n_prefix + i * w + j`` is grid cell (i, j)),
    as timm and torchvision lay them out.

    The prefix count: when the patch grid is known (``patch_size`` and ``image_hw``), ``num_prefix_tokens`` if
    T minus it is the grid's cell count, else T minus the cell count (so the output of a patch embedding, which
    has no prefix tokens yet, is read right although the model declares some); otherwise ``num_prefix_tokens`` if
    given, else T minus the largest square <= T. The grid is the one implied by ``patch_size`` and ``image_hw``
    when it has the right number of cells, else the square, else the factorisation closest to the image aspect.

    Args:
        tokens: (B, T, D) tokens.
        num_prefix_tokens: the model's prefix token count (timm's ``model.num_prefix_tokens``), if known.
        patch_size: (ph, pw) of the patch embedding, if known.
        image_hw: (H, W) of the input images, if known.

    Returns:
        (grid (B, D, h, w), prefix (B, n_prefix, D)).

    Raises:
        ValueError: no grid fits (pass ``num_prefix_tokens`` or use a square input).
    """
    batch, count, dim = tokens.shape
    grids = _grid_candidates(patch_size, image_hw)
    n_prefix = None
    if num_prefix_tokens is not None and any(count - num_prefix_tokens == h * w for h, w in grids):
        n_prefix = num_prefix_tokens
    if n_prefix is None:
        n_prefix = next((count - h * w for h, w in grids if 0 <= count - h * w < h * w), None)
    if n_prefix is None:
        n_prefix = num_prefix_tokens if num_prefix_tokens is not None else count - math.isqrt(count) ** 2
    n_patch = count - n_prefix
    if n_patch <= 0:
        raise ValueError(f"{count} tokens with {n_prefix} prefix tokens leave no patch tokens.")
    grid = next(((h, w) for h, w in grids if h * w == n_patch), None) or _factor_grid(n_patch, image_hw)
    if grid is None:
        raise ValueError(
            f"Cannot lay {n_patch} patch tokens ({count} tokens minus {n_prefix} prefix tokens) on a grid: not a "
            "square. Pass num_prefix_tokens= to LayerProbe, or probe with a tensor image batch so the grid can be "
            "derived from the image size and the model's patch size."
        )
    h, w = grid
    prefix = tokens[:, :n_prefix]
    patches = tokens[:, n_prefix:].reshape(batch, h, w, dim).permute(0, 3, 1, 2).contiguous()
    return patches, prefix


class LayerProbe:
    """Forward hooks that capture named layers of ``model`` as (B, C, h, w) grids in one forward pass.

    Hooks are registered on construction and stay inert except during :meth:`probe` / :meth:`probe_with_output`,
    so the model can be used normally in between. Remove them with :meth:`close` or by using the probe as a context
    manager; they are also removed when the probe is garbage collected.

    The forward runs under the caller's grad mode. Under ``torch.no_grad()``/``inference_mode`` (dissection) an
    output captured while the forward goes on is copied, so later in-place ops (ResNet's ``out += identity`` after
    ``bn2``, ``ReLU(inplace=True)``) cannot alter it. With grad enabled the captured tensors are the graph's own
    (``torch.autograd.grad(logit, grid)`` works for 4-D NCHW outputs, returned as they are) and a warning is
    raised if one was modified in place. A module called several times in one forward (e.g. the shared ``relu`` of
    a torchvision ``BasicBlock``) is captured at its first call, with a warning.

    Example:
        >>> with LayerProbe(model, ["layer3", "layer4"]) as probe, torch.no_grad():
        ...     grids = probe(images)          # {"layer3": (B,256,14,14), "layer4": (B,512,7,7)}

    Args:
        model: the network. TorchScript modules cannot be probed (they do not support forward hooks).
        layers: dotted module paths as in ``model.named_modules()``, e.g. ``"layer4"``, ``"layer4.1.conv2"``,
            ``"features.28"``, ``"blocks.11"``, ``"encoder.layers.encoder_layer_11"``. A single string is one
            layer. List them with :meth:`available_layers`.
        stop_early: abort the forward pass once every requested layer has fired (saves the rest of the network).
        token_layout: how to read layer outputs: ``"auto"`` (4-D is (B, C, h, w), 3-D is (B, T, D) tokens,
            2-D is (B, C)), ``"nchw"`` (same as auto) or ``"nhwc"`` (4-D outputs are channels-last (B, h, w, C));
            one value for all layers, or a ``{layer: layout}`` dict (unlisted layers are ``"auto"``).
        num_prefix_tokens: prefix (CLS/register/distillation) tokens at the start of 3-D token outputs, overriding
            what the model declares. None: the nearest ancestor's ``num_prefix_tokens`` (timm). Either way the count
            is checked against the patch grid when the model declares a patch size (timm ``patch_embed.patch_size``,
            torchvision ``patch_size``) and the input is an image tensor; without any of these it is T minus the
            largest square <= T (see :func:`tokens_to_grid`).

    Attributes:
        prefix_tokens: after a call, for each token layer, its prefix tokens (B, n_prefix, D).
        raw_shapes: after a call, the shape of each layer's raw output (before the grid conversion).

    Raises:
        ValueError: an unknown layer name (the message lists the closest valid names), an empty layer list, or an
            unknown ``token_layout``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str,
        stop_early: bool = True,
        token_layout: str | Mapping[str, str] = "auto",
        num_prefix_tokens: int | None = None,
    ) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError(
                "TorchScript modules do not support forward hooks, so they cannot be probed. Save the model as a "
                "state dict (load it with a 'torchvision:'/'timm:'/'python:' spec) or as a pickled nn.Module."
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("LayerProbe needs at least one layer name.")
        layouts = dict(token_layout) if isinstance(token_layout, Mapping) else dict.fromkeys(names, token_layout)
        for layer, layout in layouts.items():
            if layout not in _TOKEN_LAYOUTS:
                raise ValueError(f"token_layout must be one of {_TOKEN_LAYOUTS}, got {layout!r} for {layer!r}.")
            if layer not in names:
                raise ValueError(f"token_layout names layer {layer!r}, which is not requested (layers: {names}).")
        self.model = model
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.stop_early = bool(stop_early)
        self.token_layout = token_layout
        self._layouts = {name: layouts.get(name, "auto") for name in names}
        self.num_prefix_tokens = num_prefix_tokens
        self.prefix_tokens: dict[str, torch.Tensor] = {}
        self.raw_shapes: dict[str, tuple[int, ...]] = {}
        modules = {name: self.resolve(model, name) for name in self.layers}  # all names checked before any hook
        self._token_info = {name: _token_context(model, name) for name in self.layers}
        self._active = False
        self._full = False
        self._captured: dict[str, Any] = {}
        self._pending: set[str] = set()
        self._repeated: set[str] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        ref = weakref.ref(self)
        try:
            for name, module in modules.items():
                self._handles.append(module.register_forward_hook(_make_hook(ref, name)))
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------------------------------
    @staticmethod
    def available_layers(model: nn.Module) -> list[str]:
        """Every probe-able dotted module path of ``model`` in registration order (the root excluded)."""
        return [name for name, _ in model.named_modules() if name]

    @staticmethod
    def resolve(model: nn.Module, name: str) -> nn.Module:
        """The submodule at dotted path ``name``.

        Raises:
            ValueError: no such module; the message lists the closest valid names and how to list all of them.
        """
        if isinstance(name, str) and name:
            try:
                return model.get_submodule(name)
            except AttributeError:
                pass
        valid = LayerProbe.available_layers(model)
        close = difflib.get_close_matches(str(name), valid, n=8, cutoff=0.4)
        top = [n for n, _ in model.named_children()]
        hint = f"Closest valid names: {', '.join(close)}." if close else "No close match."
        raise ValueError(
            f"Layer {name!r} is not a submodule of {type(model).__name__}. {hint} Top-level modules: "
            f"{', '.join(top[:20])}{' ...' if len(top) > 20 else ''}. List all {len(valid)} names with "
            "LayerProbe.available_layers(model)."
        )

    # ---------------------------------------------------------------------------------------------------------------
    def __call__(self, images: Any) -> dict[str, torch.Tensor]:
        """Same as :meth:`probe`."""
        return self.probe(images)

    def probe(self, images: Any) -> dict[str, torch.Tensor]:
        """Run the model on ``images`` and return every requested layer as a grid.

        Args:
            images: the model input, usually a (B, 3, H, W) tensor (anything ``model`` accepts works; the image size
                then cannot help to lay out transformer tokens).

        Returns:
            ``{layer: (B, C, h, w) tensor}`` in the order of ``layers``.

        Raises:
            RuntimeError: the probe is closed, or a requested layer did not run during the forward pass.
        """
        _, grids = self._run(images, full=not self.stop_early)
        return grids

    def probe_with_output(self, images: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run the whole model (never stopping early) and return ``(model output, grids)``.

        For methods that need both, e.g. gradients of a class logit with respect to a layer (run with grad enabled).
        """
        return self._run(images, full=True)

    def _run(self, images: Any, full: bool) -> tuple[Any, dict[str, torch.Tensor]]:
        if not self._handles:
            raise RuntimeError("This LayerProbe is closed; create a new one.")
        if self._active:
            raise RuntimeError("LayerProbe calls cannot be nested.")
        image_hw = tuple(images.shape[-2:]) if isinstance(images, torch.Tensor) and images.ndim == 4 else None
        batch = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim >= 1 else None
        self._captured, self._pending, self._repeated = {}, set(self.layers), set()
        self._full = full
        self._active = True
        output = None
        try:
            output = self.model(images)
        except _StopForward:
            pass
        finally:
            self._active = False
            captured, self._captured = self._captured, {}
        if self._pending:
            missing = [n for n in self.layers if n in self._pending]
            raise RuntimeError(
                f"Layers {missing} did not run during the forward pass of {type(self.model).__name__} (modules that "
                "forward() never calls, such as an unused head, cannot be probed)."
            )
        if self._repeated:
            warnings.warn(
                f"Layers {sorted(self._repeated)} were called more than once in one forward pass; their first call "
                "was captured. Probe a module that runs once (e.g. the block instead of its shared activation).",
                UserWarning,
                stacklevel=3,
            )
        modified = [n for n in self.layers if captured[n][1] is not None and captured[n][0]._version != captured[n][1]]
        if modified:
            warnings.warn(
                f"The outputs of {modified} were modified in place later in the forward pass (e.g. `out += identity` "
                "after a BatchNorm, or ReLU(inplace=True)), so the captured values are the modified ones. Probe "
                "under torch.no_grad() (outputs are then copied) or with stop_early on that layer alone.",
                UserWarning,
                stacklevel=3,
            )
        self.prefix_tokens, self.raw_shapes = {}, {}
        grids = {name: self._to_grid(name, captured[name][0], batch, image_hw) for name in self.layers}
        return output, grids

    def _on_output(self, name: str, output: Any) -> None:
        if not self._active:
            return
        if name in self._captured:
            self._repeated.add(name)
            return
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(f"Layer {name!r} returned {type(output).__name__} with no tensor in it.")
        self._pending.discard(name)
        stop = not self._pending and not self._full
        if stop or torch.is_grad_enabled():
            # Nothing runs after a stopping hook; with grad on, graph identity matters (in-place edits are warned of).
            self._captured[name] = (tensor, tensor._version if not tensor.is_inference() else None)
        else:
            # Later in-place ops (ResNet's `out += identity`, ReLU(inplace=True)) would overwrite the output.
            self._captured[name] = (tensor.clone(), None)
        if stop:
            raise _StopForward

    def _to_grid(
        self, name: str, tensor: torch.Tensor, batch: int | None, image_hw: tuple[int, int] | None
    ) -> torch.Tensor:
        self.raw_shapes[name] = tuple(tensor.shape)
        if tensor.ndim == 2:
            return tensor[:, :, None, None]
        if tensor.ndim == 3:
            if batch is not None and tensor.shape[0] != batch and tensor.shape[1] == batch:
                tensor = tensor.transpose(0, 1)  # sequence-first (T, B, D) layouts
            n_prefix, patch = self._token_info[name]
            if self.num_prefix_tokens is not None:
                n_prefix = self.num_prefix_tokens
            try:
                grid, prefix = tokens_to_grid(tensor, n_prefix, patch, image_hw)
            except ValueError as err:
                raise ValueError(f"Layer {name!r}: {err}") from err
            self.prefix_tokens[name] = prefix
            return grid
        if tensor.ndim == 4:
            if self._layouts[name] == "nhwc":
                return tensor.permute(0, 3, 1, 2).contiguous()
            return tensor
        raise ValueError(
            f"Layer {name!r} output has shape {tuple(tensor.shape)}; expected (B, C), (B, T, D) tokens or a 4-D map."
        )

    # ---------------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        handles, self._handles = getattr(self, "_handles", []), []
        for handle in handles:
            handle.remove()

    def __enter__(self) -> LayerProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._handles else "closed"
        model = type(self.model).__name__
        return f"LayerProbe({model}, layers={list(self.layers)}, stop_early={self.stop_early}, {state})"


def _make_hook(ref: weakref.ReferenceType[LayerProbe], name: str):  # noqa: ANN202
    """A forward hook holding only a weak reference, so a forgotten probe can be collected and unhook itself."""

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        probe = ref()
        if probe is not None:
            probe._on_output(name, output)

    return hook


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each module's own flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def layer_shapes(
    model: nn.Module,
    layers: Sequence[str] | str,
    input_size: Sequence[int] = (3, 224, 224),
    token_layout: str | Mapping[str, str] = "auto",
    num_prefix_tokens: int | None = None,
) -> dict[str, tuple[int, int, int]]:
    """Each layer's grid shape (C, h, w) for one image of ``input_size``, from one dummy forward pass.

    Runs a zero image of batch size 1 on the model's device and dtype, in eval mode and without gradients (the
    model's own train/eval flags are restored), stopping after the last requested layer.

    Args:
        model: the network.
        layers: dotted module paths (see :class:`LayerProbe`).
        input_size: (C, H, W) of one input image.
        token_layout: see :class:`LayerProbe`.
        num_prefix_tokens: see :class:`LayerProbe`.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}.")
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.zeros(()))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    dummy = torch.zeros((1, *input_size), device=reference.device, dtype=dtype)
    with LayerProbe(model, layers, True, token_layout, num_prefix_tokens) as probe, _eval_mode(model), torch.no_grad():
        grids = probe(dummy)
    return {name: tuple(grid.shape[1:]) for name, grid in grids.items()}
