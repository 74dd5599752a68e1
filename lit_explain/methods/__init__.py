"""lit_explain.methods."""
