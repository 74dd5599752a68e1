"""lit_explain.viz."""
