"""lit_explain.text."""
