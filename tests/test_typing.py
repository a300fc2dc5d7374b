"""The typed public API stays clean under ``mypy --strict`` (the files and options are pyproject.toml's
``[tool.mypy]``). The first run reads numpy's and torch's stubs (about half a minute); later runs
reuse .mypy_cache and take a second or two."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_public_api_is_clean_under_mypy_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from mypy import api
    except ImportError:
        pytest.skip("mypy is not installed (pip install -e '.[test]' installs it)")
    monkeypatch.chdir(ROOT)  # mypy reads [tool.mypy] from ./pyproject.toml
    stdout, stderr, status = api.run([])
    assert status == 0 and "Success: no issues found" in stdout, f"mypy reports:\n{stdout}{stderr}"
