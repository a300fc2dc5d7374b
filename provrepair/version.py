"""The installed version, which ``provrepair --version`` reports and every result records."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("provrepair")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
