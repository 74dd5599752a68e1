"""Tensor math of the NMF concept method, free of Lightning, vectorised over classes, components and pairs.

* :mod:`~lit_explain.decomposition.nmf`: batched non-negative matrix factorisation of many classes at once
  (HALS / multiplicative updates, nndsvd(a) init, per-class convergence, sklearn as a parity backend);
* :mod:`~lit_explain.decomposition.prototypes`: 2x2-pooled grid cells ranked by cosine to each component;
* :mod:`~lit_explain.decomposition.component_prediction`: do a class's components alone still predict it?;
* :mod:`~lit_explain.decomposition.hyperplanes`: logistic-regression hyperplanes between all class pairs in
  one batched loop, and the shifting test along their normals.
"""
