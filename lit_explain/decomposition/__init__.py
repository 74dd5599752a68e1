"""Tensor math of the NMF concept method, free of Lightning: batched NMF, pairwise hyperplanes, prototypes."""
