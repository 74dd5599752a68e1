"""lit_explain.models."""
