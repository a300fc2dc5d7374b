"""CLI start-up: ``provrepair --help`` and ``provrepair certify --help`` against ``python -c pass``.

Every ``provrepair`` call pays its start-up before any work, so the CLI must not import torch,
numpy or the repairers to build its parser. Runs each command ``--runs`` times (median), side by
side in one process, and optionally the same commands at another git revision (``--rev``, checked
out in a temporary worktree) for a before/after ratio.

Writes benchmarks/results/cli_startup.json.

    python benchmarks/cli_startup.py                 # this checkout
    python benchmarks/cli_startup.py --rev 62ebb26   # and the revision before the lazy imports
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "cli_startup.json"
COMMANDS = {"python -c pass": ["-c", "pass"], "provrepair --help": ["-m", "provrepair", "--help"],
            "provrepair certify --help": ["-m", "provrepair", "certify", "--help"]}


def median_seconds(args: list[str], root: Path, runs: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=root, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(root: Path, runs: int) -> dict:
    out = {name: median_seconds(args, root, runs) for name, args in COMMANDS.items()}
    base = out["python -c pass"]
    return {"seconds": out, "ratio_to_python": {k: v / base for k, v in out.items() if k != "python -c pass"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rev", help="also measure this git revision (e.g. the one before a change)")
    args = ap.parse_args()
    result = {"runs": args.runs, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "current": measure(ROOT, args.runs)}
    if args.rev:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "worktree", "add", "--detach", tmp, args.rev], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                result["revision"] = {"rev": args.rev, **measure(Path(tmp), args.runs)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, capture_output=True)
        result["speedup"] = {k: result["revision"]["seconds"][k] / v
                             for k, v in result["current"]["seconds"].items() if k != "python -c pass"}
    for k, v in result["current"]["seconds"].items():
        line = f"{k:<28} {v:6.3f} s"
        if k in result["current"]["ratio_to_python"]:
            line += f"  ({result['current']['ratio_to_python'][k]:.2f}x python -c pass)"
        if args.rev:
            line += f"  at {args.rev}: {result['revision']['seconds'][k]:6.3f} s"
        print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
