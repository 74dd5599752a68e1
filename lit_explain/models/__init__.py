"""Models: build networks from spec strings with local weights, and probe their layers.

* :func:`load_model` -- ``"torchvision:<arch>"``, ``"timm:<arch>"``, ``"python:<module>:<factory>"`` or a saved-model
  path, with ``weights="none" | "default" | <checkpoint path>`` (never downloads).
* :func:`model_fingerprint` -- content hash of architecture and tensors (activation cache keys).
* :class:`LayerProbe` -- forward hooks returning named layers as (B, C, h, w) grids; :func:`layer_shapes`.
"""

from lit_explain.models.loading import (
    ModelSource,
    available_model_sources,
    load_model,
    model_fingerprint,
    read_state_dict,
    register_model_source,
)
from lit_explain.models.probe import LayerProbe, layer_shapes, tokens_to_grid

__all__ = [
    "LayerProbe",
    "ModelSource",
    "available_model_sources",
    "layer_shapes",
    "load_model",
    "model_fingerprint",
    "read_state_dict",
    "register_model_source",
    "tokens_to_grid",
]
