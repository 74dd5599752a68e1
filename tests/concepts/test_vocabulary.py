"""ConceptVocabulary and word-list files: a repeated concept, id or word is refused with where it repeats."""

from __future__ import annotations

import pytest

from lit_explain.concepts.vocabulary import ConceptVocabulary, read_word_list


def test_repeated_name_or_label_id_is_refused_with_positions():
    with pytest.raises(ValueError, match=r"concept name 'wall' appears twice \(positions 0 and 2\)"):
        ConceptVocabulary((1, 2, 3), ("wall", "floor", "wall"), ("object",) * 3)
    with pytest.raises(ValueError, match=r"concept label id 7 appears twice \(positions 1 and 2\)"):
        ConceptVocabulary((1, 7, 7), ("wall", "floor", "door"), ("object",) * 3)
    v = ConceptVocabulary((1, 7, 9), ("wall", "floor", "door"), ("object",) * 3)
    assert ConceptVocabulary.from_dict(v.to_dict()) == v


def test_word_list_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("# colours\nred\n\n  traffic   light \nblue\n")
    assert read_word_list(p) == ["red", "traffic light", "blue"]
    p.write_text("red\ntraffic light\n# again\nblue\ntraffic  light\n")
    with pytest.raises(ValueError, match=r"words\.txt:5: 'traffic light' is already listed on line 2"):
        read_word_list(p)
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_word_list(tmp_path / "nope.txt")
