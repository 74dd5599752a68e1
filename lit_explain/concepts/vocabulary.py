"""The concept vocabulary: which concepts a run explains with, and how they map to dataset label ids.

Every dissection-style method scores units against a list of concepts. Codebases disagree on that list
(NetDissect-Lite drops `material`, compexp keeps only labels present in the subset, detacc drops labels seen
in fewer than 5 images, CCE keeps every label number). ``lit_explain`` makes the list explicit: it is built
by the data module from its config, recorded in every output, and indexed densely ``0 .. C-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class ConceptVocabulary:
    """An ordered list of concepts.

    Args:
        label_ids: the dataset's global label id of each concept (Broden ``label.csv`` ``number``), length C.
        names: concept names, length C, unique.
        categories: the primary category of each concept (``color``, ``object``, ``part``, ``scene`` ...).
        image_level: for each concept, True when it is annotated per image (Broden scene/texture), not per pixel.
    """

    label_ids: tuple[int, ...]
    names: tuple[str, ...]
    categories: tuple[str, ...]
    image_level: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_ids", tuple(int(i) for i in self.label_ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        if not self.image_level:
            object.__setattr__(self, "image_level", (False,) * len(self.label_ids))
        object.__setattr__(self, "image_level", tuple(bool(b) for b in self.image_level))
        n = len(self.label_ids)
        if not (len(self.names) == len(self.categories) == len(self.image_level) == n):
            raise ValueError("ConceptVocabulary: label_ids, names, categories and image_level must have equal lengths")
        if len(set(self.names)) != n:
            dup = sorted({x for x in self.names if self.names.count(x) > 1})
            raise ValueError(f"ConceptVocabulary: duplicate concept names {dup[:10]}")
        if len(set(self.label_ids)) != n:
            raise ValueError("ConceptVocabulary: duplicate label ids")

    def __len__(self) -> int:
        return len(self.label_ids)

    @property
    def category_names(self) -> list[str]:
        """Distinct categories in first-appearance order."""
        return list(dict.fromkeys(self.categories))

    def category_codes(self) -> list[int]:
        """Per concept, the position of its category in :attr:`category_names`."""
        order = {c: i for i, c in enumerate(self.category_names)}
        return [order[c] for c in self.categories]

    def index_of(self, name: str) -> int:
        """Dense index of a concept name; raises a KeyError listing close names."""
        try:
            return self.names.index(name)
        except ValueError:
            close = [n for n in self.names if name.lower() in n.lower() or n.lower() in name.lower()][:10]
            raise KeyError(f"unknown concept {name!r}; similar names: {close or list(self.names[:10])}") from None

    def subset(self, keep: Sequence[int]) -> "ConceptVocabulary":
        """The vocabulary restricted to the dense indices ``keep`` (in that order)."""
        keep = list(keep)
        return ConceptVocabulary(
            tuple(self.label_ids[i] for i in keep),
            tuple(self.names[i] for i in keep),
            tuple(self.categories[i] for i in keep),
            tuple(self.image_level[i] for i in keep),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, written into every result file."""
        return {
            "label_ids": list(self.label_ids),
            "names": list(self.names),
            "categories": list(self.categories),
            "image_level": list(self.image_level),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConceptVocabulary":
        return cls(tuple(d["label_ids"]), tuple(d["names"]), tuple(d["categories"]), tuple(d.get("image_level", ())))
