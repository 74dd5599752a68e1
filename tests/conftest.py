"""Shared pytest fixtures (each engineer adds theirs; keep them small and independent)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module whose tensors are tiny: on a shared 2-core machine, thread hand-offs
    cost more than they save. Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- Broden
@pytest.fixture(scope="session")
def broden_miniature(tmp_path_factory):
    """A read-only miniature Broden root (tests.fixtures.broden_writer.make_miniature); do not modify its files."""
    from tests.fixtures.broden_writer import make_miniature

    return make_miniature(tmp_path_factory.mktemp("broden_miniature"))


@pytest.fixture
def broden_copy(tmp_path):
    """A fresh miniature Broden root per test, free to be damaged."""
    from tests.fixtures.broden_writer import make_miniature

    return make_miniature(tmp_path / "broden1_224")
