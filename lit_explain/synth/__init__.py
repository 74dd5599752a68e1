"""The synthetic concept world: a deterministic Broden-format dataset with known concepts and class rules,
and planted-unit models whose units detect its concepts by construction.

* :func:`generate_world` writes a world (``index.csv``, ``label.csv``, ... plus ``classes.csv``,
  ``instances.jsonl`` and ``world.json``); :func:`read_world`, :func:`load_instances`, :func:`load_scene`,
  :func:`instance_masks` and :func:`load_classes` read it back.
* :func:`planted_model` builds a fixed-weight model with concept-detector units (``python:lit_explain.synth.planted:planted_model``).
* :mod:`.concepts` defines the concepts and their pixel signatures; :mod:`.formula` the rule/unit grammar.
"""

from .concepts import CATEGORIES, DEFAULT_CLASSES, world_concepts
from .world import (SUBSET, WorldMismatchError, generate_world, instance_masks, is_complete_world, load_classes,
                    load_instances, load_scene, read_world)

__all__ = ["generate_world", "read_world", "is_complete_world", "load_instances", "load_scene", "instance_masks",
           "load_classes", "WorldMismatchError", "SUBSET", "planted_model", "DEFAULT_UNITS", "world_concepts",
           "CATEGORIES", "DEFAULT_CLASSES"]


def __getattr__(name: str):
    # planted models need torch; import them on first use so that the generator (and its worker processes)
    # stays numpy-only
    if name in ("planted_model", "DEFAULT_UNITS"):
        from . import planted

        return getattr(planted, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
