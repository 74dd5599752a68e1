"""lit_explain.text: text encoders mapping category words to embedding vectors (GloVe, sentence-transformers, CLIP)."""

from lit_explain.text.encoders import GloveEncoder, OpenClipEncoder, SentenceTransformerEncoder, TextEncoder

__all__ = ["GloveEncoder", "OpenClipEncoder", "SentenceTransformerEncoder", "TextEncoder"]
