"""The concept vocabulary: which concepts a run explains with, and how they map to dataset label ids.

Every dissection-style method scores units against a list of concepts. Codebases disagree on that list
(NetDissect-Lite drops `material`, compexp keeps only labels present in the subset, detacc drops labels seen
in fewer than 5 images, CCE keeps every label number). ``lit_explain`` makes the list explicit: it is built
by the data module from its config, recorded in every output, and indexed densely ``0 .. C-1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ConceptVocabulary", "read_word_list"]


def read_word_list(path: str | os.PathLike) -> list[str]:
    """The words or phrases of a word-list file, one per line, in file order.

    Blank lines and lines starting with ``#`` are ignored; spaces inside a phrase are collapsed to one. A word
    listed twice is an error naming the file and both lines: a repeat is almost always an editing mistake (two
    lists pasted together, a typo fixed in one copy only), and dropping it silently would hide that.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a word or phrase appears on two lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-list file not found: {path} (expected one word or phrase per line)")
    words: dict[str, int] = {}
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        word = " ".join(raw.split())
        if not word or word.startswith("#"):
            continue
        if word in words:
            raise ValueError(f"{path}:{line}: {word!r} is already listed on line {words[word]}; list each word or "
                             "phrase once (remove the repeat)")
        words[word] = line
    return list(words)


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
        for what, values in (("name", self.names), ("label id", self.label_ids)):
            first: dict[Any, int] = {}
            for i, v in enumerate(values):
                if v in first:
                    raise ValueError(f"ConceptVocabulary: concept {what} {v!r} appears twice (positions {first[v]} and "
                                     f"{i}); a vocabulary names each concept and each label id once")
                first[v] = i

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
