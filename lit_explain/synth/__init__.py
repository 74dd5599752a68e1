"""lit_explain.synth."""
