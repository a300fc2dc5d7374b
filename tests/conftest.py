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
