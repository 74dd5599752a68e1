"""lit_explain.activations."""
