"""Exact per-unit quantiles against numpy.quantile (linear interpolation)."""

import numpy as np
import pytest
import torch

from lit_explain.activations.stats import store_unit_quantiles, unit_quantiles


@pytest.mark.parametrize("kind", ["normal", "relu_half", "ties"])
@pytest.mark.parametrize("q", [0.995, 994 / 999, 0.3, 0.0, 1.0])
def test_streaming_quantiles_are_exact(kind, q):
    g = torch.Generator().manual_seed(hash((kind, q)) % 1000)
    n, u = 3001, 5
    x = {"normal": torch.randn(n, u, generator=g),
         "relu_half": torch.relu(torch.randn(n, u, generator=g)).half().float(),
         "ties": torch.randint(0, 4, (n, u), generator=g).float()}[kind]
    got = unit_quantiles(lambda: iter(x.split(411)), q, bins=8, gather_cap=40)
    ref = np.quantile(x.double().numpy(), q, axis=0)
    np.testing.assert_array_equal(got.numpy(), ref)


@pytest.mark.parametrize("q", [0.995, 0.5])
def test_store_quantiles_are_exact(q):
    x = torch.relu(torch.randn(40, 6, 3, 4, generator=torch.Generator().manual_seed(1))).half().numpy()
    units = torch.tensor([5, 0, 3])
    got = store_unit_quantiles(x, q, units, max_elements=1000)
    ref = np.quantile(x.astype(np.float64)[:, units.numpy()].transpose(1, 0, 2, 3).reshape(3, -1), q, axis=1)
    np.testing.assert_array_equal(got.numpy(), ref)
