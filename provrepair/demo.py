"""The README's main job: a short end-to-end comparison on a zoo model (under 2 minutes on a CPU).

The shipped MNIST CNN misclassifies many fogged digits. The demo takes the first ``n_points`` fogged
training images it gets wrong as the repair set and runs, through the comparison harness:

* ``aprnn``: APRNN point repair at the last layer with a keep-set of 10,000 training images
  (``--keep-from mnist:train:10000 --margin 5``), certified by the independent point check;
* ``finetune``: fine-tuning on fogged training data (no guarantee);
* ``finetune+aprnn``: the fine-tuned network polished by the LP at its last layer, so that every
  repair point is certified.

It writes a run folder (``results.json``, ``report.md``, plots) and prints where the report is.
Everything it needs ships with the package (the zoo model) or its dependencies (MNIST).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import InputError

DEMO_MODEL = "mnist_cnn"
DEMO_CORRUPTION, DEMO_SEVERITY = "fog", 3
DEMO_METHODS = "aprnn,finetune,finetune+aprnn"
#: the LP at the last layer with a keep-set: 10,000 training images it classifies right must stay
#: right (they enter the LP only when the repair would flip them), and a repair margin that carries
#: the fix over to fog images it has not seen (benchmarks/keep_repair.py)
DEMO_OPTIONS = {"aprnn": {"layer": "-1", "keep_from": "mnist:train:10000", "margin": 5.0, "keep_margin": 1.0,
                          "time_limit": 60},
                "finetune": {"epochs": 2}}


def run_demo(out_dir: str | Path = "provrepair-demo", n_points: int = 50, quiet: bool = False) -> int:
    import torch

    from .evaluate.harness import compare
    from .evaluate.registry import resolve_methods
    from .evaluate.report import fmt
    from .evaluate.tasks import TaskConfig

    if isinstance(n_points, bool) or not isinstance(n_points, int) or not 1 <= n_points <= 500:
        raise InputError(f"--points must be between 1 and 500, got {n_points!r}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    task = TaskConfig(model=DEMO_MODEL, dataset="mnist", corruption=DEMO_CORRUPTION, severity=DEMO_SEVERITY,
                      repair_points=n_points, heldout=500, test_limit=2000, train_limit=2000, val_limit=200,
                      severities=(1, 3, 5))
    say(f"{DEMO_MODEL}: repairing the first {n_points} {DEMO_CORRUPTION} (severity {DEMO_SEVERITY}) training images "
        f"it misclassifies with {DEMO_METHODS.replace(',', ', ')}")
    run = compare([task], resolve_methods(DEMO_METHODS), [0], run_dir=out_dir, options=DEMO_OPTIONS,
                  executor="serial", threads=torch.get_num_threads(), progress=say)
    summary = run.results["summary"][task.name]
    orig = summary["original"]
    lines = [f"original: test accuracy {fmt(orig['test_accuracy'], 'pct')}, accuracy under {DEMO_CORRUPTION} "
             f"{fmt(orig.get('robustness_mean'), 'pct')} (severities 1, 3, 5)"]
    for name, row in summary["methods"].items():
        if row["failed"]:
            lines.append(f"{name}: no network ({', '.join(row['statuses'])})")
            continue
        lines.append(f"{name}: repair set {fmt(row['efficacy'], 'pct')} right, {fmt(row['certified_efficacy'], 'pct')} "
                     f"certified; test accuracy {fmt(row['test_accuracy'], 'pct')} (drawdown "
                     f"{fmt(row['drawdown_pp'], 'f2')} pp); held-out {DEMO_CORRUPTION} failures fixed "
                     f"{fmt(row['generalization'], 'pct')}; {fmt(row['seconds'], 'f1')} s")
    cells = {c["method"]: c for c in run.results["cells"]}
    keep = ((cells.get("aprnn") or {}).get("details") or {}).get("lp", {}).get("keep")
    if keep:
        lines.append(f"  (aprnn's keep-set: {keep['kept']} of {keep['points']} training images kept, {keep['entered']} "
                     f"entered the LP; without it the repair would have flipped {keep['flipped_without']})")
    print("\n".join(lines))
    print(f"\nreport: {run.report} (results.json and plots/ beside it)")
    ok = all(cells[m]["metrics"] and cells[m]["metrics"]["certified"] for m in ("aprnn", "finetune+aprnn"))
    return 0 if ok else 1
