"""LaViSE's explainer network: a frozen backbone cut at the explained layer, and the trainable head.

The authors' ``model_loader.py`` builds the explainer by editing a torchvision classifier: the top-level module
named ``layer_classifier`` (``fc``, ``classifier``) is replaced by the head, and every top-level module strictly
between the explained layer and the classifier is replaced by Identity *unless its name ends in "pool"*, so the
network's own pooling (ResNet's global ``avgpool``, AlexNet's adaptive 6×6 ``avgpool``) stays. The path is
therefore: layer output F (B, C, h', w') → kept pooling → flatten → head. :class:`CutBackbone` reproduces that
path without editing the network (forward hooks stop the pass at the explained layer), so a masked or
attention-weighted F can be fed to the same pooling.

Unlike the original, the head's input width d is measured by a dummy forward through that path (the original read
it from the classifier's ``in_features``, so ResNet ``layer3`` or ``layer2`` could not be explained: 1024 channels
against fc's 2048).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_explain.models.probe import LayerProbe

__all__ = ["CutBackbone", "ExplainerHead"]


class CutBackbone(nn.Module):
    """A frozen network evaluated up to ``layer_target``, with its own pooling modules kept for the head.

    The network's parameters are frozen and the module stays in eval mode whatever ``train()`` is called with,
    so its BatchNorm layers always use their running statistics (as the authors' ``set_bn_eval``).

    Args:
        model: the network (e.g. from :func:`~lit_explain.models.loading.load_model`).
        layer_target: dotted path of the explained layer (``layer4``, ``layer3``, ``features``, ``layer4.1``).
        layer_classifier: name of the top-level classification module the head replaces (``fc``,
            ``classifier``); it must come after the explained layer's top-level module.

    Raises:
        ValueError: unknown layer names (the message lists close names), a classifier that is not top-level, or a
            classifier that does not come after the target.
    """

    def __init__(self, model: nn.Module, layer_target: str, layer_classifier: str) -> None:
        super().__init__()
        LayerProbe.resolve(model, layer_target)
        names = [n for n, _ in model.named_children()]
        if layer_classifier not in names:
            LayerProbe.resolve(model, layer_classifier)  # a typo: lists close names
            raise ValueError(
                f"layer_classifier {layer_classifier!r} must be a top-level module of {type(model).__name__} "
                f"(one of {names}): the explainer head replaces that whole module."
            )
        top = layer_target.split(".")[0]
        i_target, i_classifier = names.index(top), names.index(layer_classifier)
        if i_target >= i_classifier:
            raise ValueError(
                f"layer_target {layer_target!r} must come before layer_classifier {layer_classifier!r} in "
                f"{type(model).__name__}'s top-level modules {names}."
            )
        self.model = model
        self.layer_target = layer_target
        self.layer_classifier = layer_classifier
        #: top-level modules between target and classifier that are kept (their name ends in "pool")
        self.pool_names: tuple[str, ...] = tuple(n for n in names[i_target + 1 : i_classifier] if n.endswith("pool"))
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "CutBackbone":  # noqa: D102 - frozen: always eval
        super().train(False)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images → (B, C, h', w') output of ``layer_target`` (the pass stops there)."""
        # a probe per call: hooks never stay on the network, which keeps it picklable (ddp_spawn) and copyable
        with LayerProbe(self.model, [self.layer_target], stop_early=True) as probe:
            return probe(images)[self.layer_target]

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h', w') → (B, d): the network's kept pooling modules in order, then flatten."""
        for name in self.pool_names:
            feats = getattr(self.model, name)(feats)
        return feats.flatten(1)

    @torch.no_grad()
    def shapes(self, image_size: int) -> tuple[tuple[int, int, int], int]:
        """((C, h', w'), d) for a square image of side ``image_size``, from one dummy forward."""
        p = next(self.model.parameters(), None)
        dummy = torch.zeros(1, 3, image_size, image_size, dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else "cpu")
        f = self.features(dummy)
        return tuple(f.shape[1:]), int(self.pool(f).shape[1])  # type: ignore[return-value]


class ExplainerHead(nn.Module):
    """The paper's feature explainer: BN1d(d) → Dropout → Linear(d, d) → ReLU → BN1d(d) → Dropout → Linear(d, D).

    Args:
        in_dim: d, the pooled feature width.
        out_dim: D, the word-embedding size (300 for GloVe, 384 for MiniLM, 512 for CLIP ViT-B).
        dropout: dropout probability (0.1 in the paper's code).
        bn_eval: keep the head's BatchNorm layers in eval mode during training too. The authors apply
            ``set_bn_eval`` to the whole model, head included, so these BN layers never update their running
            statistics (mean 0, var 1) and act as learnable affine maps (their batch size was one image). True
            reproduces that; False trains them as ordinary BatchNorm.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1, bn_eval: bool = True) -> None:
        super().__init__()
        self.bn_eval = bool(bn_eval)
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, in_dim),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, out_dim),
        )

    def train(self, mode: bool = True) -> "ExplainerHead":  # noqa: D102
        super().train(mode)
        if mode and self.bn_eval:
            for m in self.net:
                if isinstance(m, nn.BatchNorm1d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled features → (B, D) word-space predictions."""
        return self.net(x)
