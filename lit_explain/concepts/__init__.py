"""Concept vocabularies and the sparse concept index shared by every dissection-style method."""

from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.vocabulary import ConceptVocabulary

__all__ = ["ConceptIndex", "ConceptVocabulary"]
