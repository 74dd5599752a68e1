"""Relevance of a probed layer's activations for a target class: DeepLift with SmoothGrad, or gradient x activation.

The NMF concept method weights each pixel of a layer's activations by how much it supports the class being
explained before factorising them. The paper uses captum's ``LayerDeepLift`` (multipliers times the difference
to a baseline image) averaged over noisy copies of the image (SmoothGrad), one image at a time. Here every call
takes a batch: DeepLift's rules act per example and the model runs in eval mode (no batch statistics), so the
attribution of image i does not depend on the other images of its batch.

Functions (``images`` (B, 3, H, W), ``targets`` (B,) class indices; output R (B, C, h, w) = the probed layer's
output shape; the target is the class's *logit*, as in the paper):

* :func:`gradient_x_activation`: A ⊙ ∂logit_t/∂A, one forward and one backward for the whole batch (fast).
* :func:`deeplift_smoothgrad`: mean over ``n_samples`` noisy copies x + ε (ε ~ N(0, stdevs²) per pixel) of
  captum ``LayerDeepLift(multiply_by_inputs=True)`` against a constant ``baseline`` image.

  Noise (``noise``): ``shared`` (default) draws the n_samples noise images once from a generator seeded with
  ``seed`` and adds the same ε_s to every image, so the relevance of an image does not depend on its batch,
  its position in it or the number of processes (each image still averages n independent draws; only the
  estimates of different images are correlated). ``captum`` uses captum's ``NoiseTunnel(nt_type="smoothgrad")``
  exactly as the paper did, with the global RNG seeded from ``seed`` for the call: reproducible for the same
  batches, but an image's noise then depends on its batch.
* :func:`deeplift_compatible`: a copy of a model that captum's DeepLift accepts. DeepLift needs each
  ``nn.ReLU`` module to be called once per forward; torchvision's ResNet blocks call one ``ReLU(inplace=True)``
  two or three times, which captum refuses ("module is being used more than once"). The copy replaces each
  reused ReLU by a dispatcher that sends its i-th call of a forward to its own fresh ``nn.ReLU()``, so every
  nonlinearity gets its own DeepLift multiplier; outputs are unchanged. ReLUs called as functions (``F.relu``)
  are invisible to captum and are treated as linear (an approximation the paper also made).
* :func:`spatial_relevance`, :func:`weight_activations`: the per-pixel weight r = mean_c ReLU(R) (B, 1, h, w)
  and r ⊙ A, the matrix the NMF factorises.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["NOISE_MODES", "gradient_x_activation", "deeplift_smoothgrad", "deeplift_compatible",
           "spatial_relevance", "weight_activations", "smoothgrad_noise"]

NOISE_MODES = ("shared", "captum")


def _check_inputs(fn: str, model: nn.Module, layer: nn.Module, images: torch.Tensor, targets) -> torch.Tensor:
    if not isinstance(model, nn.Module) or not isinstance(layer, nn.Module):
        raise TypeError(f"{fn}: model and layer must be torch modules, got {type(model).__name__}, "
                        f"{type(layer).__name__}")
    if not any(m is layer for m in model.modules()):
        raise ValueError(f"{fn}: layer {type(layer).__name__} is not a submodule of the model; pass the module "
                         "object taken from this model (e.g. model.layer3[5])")
    if model.training:
        raise ValueError(f"{fn}: the model is in training mode; call model.eval() first (batch-norm statistics "
                         "would mix the images of a batch and dropout would make relevance random)")
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] < 1:
        raise ValueError(f"{fn}: images must be a (B, ...) tensor with B >= 1, got {getattr(images, 'shape', None)}")
    targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{fn}: targets must hold one class index per image: {targets.shape[0]} for "
                         f"{images.shape[0]} images")
    return targets


@contextmanager
def _capture(layer: nn.Module) -> Iterator[dict]:
    """Replace the layer's output by a copy (so in-place ops after it cannot alter it) and record it."""
    store: dict = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the probed layer returns {type(out).__name__}, not a tensor; probe a module whose "
                            "output is one tensor")
        out = out.clone()
        store["act"] = out
        return out

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def gradient_x_activation(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets) -> torch.Tensor:
    """A ⊙ ∂logit_target/∂A at the output A of ``layer``, for the whole batch in one backward.

    Image i's logit depends only on image i (eval mode), so the gradient of Σ_i logit_i[target_i] with respect
    to the batch's A is the stack of the per-image gradients.

    Args:
        model: eval-mode network, images -> logits (B, K).
        layer: a submodule of ``model`` whose output is one tensor.
        images: (B, ...) inputs.
        targets: (B,) class indices in 0..K-1.

    Returns:
        (B, *layer output shape[1:]) relevance, detached.
    """
    targets = _check_inputs("gradient_x_activation", model, layer, images, targets)
    # Lightning's predict loop runs under inference mode, whose tensors autograd refuses: step out of it and
    # work on ordinary copies.
    with torch.inference_mode(False), torch.enable_grad(), _capture(layer) as store:
        x = images.detach().clone().requires_grad_(True)
        targets = targets.clone()
        logits = model(x)
        _check_targets("gradient_x_activation", logits, targets)
        act = store["act"]
        sel = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(sel, act)
    return (act * grad).detach()


def _check_targets(fn: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{fn}: the model must return (B, K) logits, got {tuple(logits.shape)}")
    if bool(((targets < 0) | (targets >= logits.shape[1])).any()):
        raise ValueError(f"{fn}: targets must be class indices in 0..{logits.shape[1] - 1}, got "
                         f"{targets.min().item()}..{targets.max().item()}")


def smoothgrad_noise(shape: tuple[int, ...], n_samples: int, stdevs: float, seed: int,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_samples, *shape) Gaussian noise of std ``stdevs`` from a CPU generator seeded with ``seed``.

    Drawn on the CPU so that the same seed gives the same noise on every device.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"smoothgrad_noise: n_samples must be an int >= 1, got {n_samples!r}")
    if not stdevs >= 0:
        raise ValueError(f"smoothgrad_noise: stdevs must be >= 0, got {stdevs!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return (torch.randn((n_samples, *shape), generator=g) * stdevs).to(device=device, dtype=dtype)


def deeplift_smoothgrad(
    model: nn.Module,
    layer: nn.Module,
    images: torch.Tensor,
    targets,
    *,
    baseline: float | torch.Tensor = 1.0,
    n_samples: int = 20,
    stdevs: float = 0.25,
    noise: str = "shared",
    seed: int = 0,
    samples_per_pass: int = 4,
) -> torch.Tensor:
    """SmoothGrad-averaged captum LayerDeepLift relevance of ``layer`` for each image's target logit.

    Args:
        model: eval-mode network accepted by captum's DeepLift (see :func:`deeplift_compatible`).
        layer: submodule of ``model`` to attribute to (its output).
        images: (B, 3, H, W) normalised images.
        targets: (B,) class indices.
        baseline: the reference image: a scalar (constant image; the paper's 1.0 in normalised space) or a
            (3, H, W) / (1, 3, H, W) tensor.
        n_samples: noisy copies per image, >= 1 (the paper: 20 on GPU, 5 on CPU).
        stdevs: noise standard deviation in normalised input units, >= 0 (the paper: 0.25; 0 = plain DeepLift).
        noise: ``shared`` (default, batch-independent) or ``captum`` (NoiseTunnel); see the module docstring.
        seed: seed of the noise, >= 0.
        samples_per_pass: noisy copies of the batch attributed in one captum call (memory: B x this), >= 1.

    Returns:
        (B, C, h, w) relevance (the layer output's shape), detached.
    """
    targets = _check_inputs("deeplift_smoothgrad", model, layer, images, targets)
    for name, value, low in (("n_samples", n_samples, 1), ("samples_per_pass", samples_per_pass, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"deeplift_smoothgrad: {name} must be an int >= {low}, got {value!r}")
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or not stdevs >= 0:
        raise ValueError(f"deeplift_smoothgrad: stdevs must be a number >= 0, got {stdevs!r}")
    if noise not in NOISE_MODES:
        raise ValueError(f"deeplift_smoothgrad: noise must be one of {NOISE_MODES}, got {noise!r}")
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.to(images)
        if baseline.dim() == images.dim() - 1:
            baseline = baseline[None]
        if baseline.shape[1:] != images.shape[1:] or baseline.shape[0] != 1:
            raise ValueError(f"deeplift_smoothgrad: a tensor baseline must be {tuple(images.shape[1:])} or "
                             f"(1, {', '.join(map(str, images.shape[1:]))}), got {tuple(baseline.shape)}")
    elif isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"deeplift_smoothgrad: baseline must be a number or an image tensor, got {baseline!r}")
    with torch.no_grad():
        _check_targets("deeplift_smoothgrad", model(images[:1]), targets)

    # Lightning's predict loop runs under inference mode, whose tensors autograd refuses: step out of it and
    # work on ordinary copies.
    with torch.inference_mode(False), torch.enable_grad():
        images, targets = images.detach().clone(), targets.clone()
        if isinstance(baseline, torch.Tensor):
            baseline = baseline.detach().clone()
        return _deeplift_smoothgrad(model, layer, images, targets, baseline, n_samples, float(stdevs), noise, seed,
                                    samples_per_pass)


def _deeplift_smoothgrad(model, layer, images, targets, baseline, n_samples, stdevs, noise, seed, samples_per_pass):
    from captum.attr import LayerDeepLift, NoiseTunnel

    dl = LayerDeepLift(model, layer, multiply_by_inputs=True)
    B = images.shape[0]
    if noise == "captum":
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            if images.device.type == "cuda":
                torch.cuda.manual_seed(int(seed))
            out = NoiseTunnel(dl).attribute(images, nt_type="smoothgrad", nt_samples=n_samples, stdevs=float(stdevs),
                                            nt_samples_batch_size=samples_per_pass, baselines=baseline,
                                            target=targets)
        return out.detach()

    eps = smoothgrad_noise(tuple(images.shape[1:]), n_samples, float(stdevs), seed, images.dtype, images.device)
    total = None
    for s0 in range(0, n_samples, samples_per_pass):
        e = eps[s0 : s0 + samples_per_pass]  # (S, 3, H, W)
        S = e.shape[0]
        noisy = (images[None] + e[:, None]).reshape(S * B, *images.shape[1:])
        base = baseline if not isinstance(baseline, torch.Tensor) else baseline.expand(S * B, *images.shape[1:])
        r = dl.attribute(noisy, baselines=base, target=targets.repeat(S)).detach()
        r = r.reshape(S, B, *r.shape[1:]).sum(0)
        total = r if total is None else total + r
    return total / n_samples


def spatial_relevance(R: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """(B, 1, h, w) per-pixel relevance: mean over channels of ReLU(R) (or of R when ``relu`` is False).

    The paper applies the ReLU before the channel mean for the NMF and (effectively) not for the hyperplane
    data; ``relu`` keeps that choice explicit.
    """
    if R.dim() != 4:
        raise ValueError(f"spatial_relevance: R must be (B, C, h, w), got {tuple(R.shape)}")
    return (R.clamp(min=0) if relu else R).mean(dim=1, keepdim=True)


def weight_activations(acts: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) activations A scaled per pixel by r (B, 1, h, w): the matrix rows the NMF factorises."""
    if acts.dim() != 4 or r.shape != (acts.shape[0], 1, *acts.shape[2:]):
        raise ValueError(f"weight_activations: acts (B, C, h, w) and r (B, 1, h, w) do not fit: "
                         f"{tuple(acts.shape)}, {tuple(r.shape)}")
    return acts * r


class _ReLUDispatch(nn.Module):
    """Stands in for one ReLU module called ``n`` times per forward: call i goes to its own ``relus[i]``."""

    def __init__(self, n: int):
        super().__init__()
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(n))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls >= len(self.relus):
            raise RuntimeError(f"a ReLU was called more than the {len(self.relus)} times seen when the model was "
                               "prepared by deeplift_compatible; prepare it with an input of the same kind")
        out = self.relus[self.calls](x)
        self.calls += 1
        return out


def deeplift_compatible(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode deep copy of ``model`` in which every ``nn.ReLU`` module runs once per forward.

    One forward of ``example`` (e.g. one image, (1, 3, H, W)) counts how often each ReLU module is called;
    a module called more than once is replaced by a dispatcher holding that many fresh ``nn.ReLU()``, each
    used once per forward (a pre-hook on the copy resets the call counters), and single-use ReLUs lose
    ``inplace``. The copy computes the same outputs; submodules keep their names, so fetch the probed layer
    from the copy by name (``copy.get_submodule("layer3.5")``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deeplift_compatible: model must be a torch module, got {type(model).__name__}")
    m = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}
    handles = []
    for name, mod in m.named_modules():
        if type(mod) is nn.ReLU:
            counts[name] = 0

            def hook(_m, _i, _o, name=name):
                counts[name] += 1

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            m(example)
    finally:
        for h in handles:
            h.remove()
    dispatchers = []
    for name, n in counts.items():
        parent_name, _, attr = name.rpartition(".")
        parent = m.get_submodule(parent_name) if parent_name else m
        if n > 1:
            d = _ReLUDispatch(n)
            dispatchers.append(d)
            setattr(parent, attr, d)
        else:
            getattr(parent, attr).inplace = False

    def reset(_m, _inp):
        for d in dispatchers:
            d.calls = 0

    m.register_forward_pre_hook(reset)
    return m
