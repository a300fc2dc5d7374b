"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    """The benchmark assets folder ``../shared/bench`` beside the repository (skip when absent)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "bench"
    if not path.is_dir():
        pytest.skip("needs ../shared/bench (benchmark assets); CI provides it")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored afterwards: the two shared cores are
    oversubscribed by torch's thread pool (use with ``pytest.mark.usefixtures``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
