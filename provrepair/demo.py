"""The README's main job: repair the shipped MNIST MLP on its own training mistakes and report.

Everything it needs ships with the package (the zoo model) or its dependencies (MNIST), so it
runs on a fresh clone with no other files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .api import repair
from .data import load_mnist
from .evaluate.metrics import accuracy, predictions
from .fileio import write_text_atomic
from .models import save_model
from .specs import PointSpec
from .zoo import load_zoo

DEMO_MODEL = "mnist_mlp"
DEMO_LAYER = 1  # the hidden 100x100 layer: feasible for dozens of points, small drawdown


def run_demo(out_dir: str | Path = "provrepair-demo", n_points: int = 50, quiet: bool = False) -> int:
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    net = load_zoo(DEMO_MODEL)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    wrong = np.flatnonzero(predictions(net, x_train) != y_train)
    if n_points < 1 or n_points > wrong.size:
        from .errors import InputError
        raise InputError(f"--points must be between 1 and {wrong.size} (the model's training mistakes)")
    pick = wrong[:n_points]
    say(f"{DEMO_MODEL}: {wrong.size} of {len(y_train)} training images misclassified; repairing the first "
        f"{n_points} at layer {DEMO_LAYER}")
    spec = PointSpec.from_arrays(x_train[pick], labels=y_train[pick])
    result = repair(net, spec, layer=DEMO_LAYER, progress=say)
    test_wrong = predictions(net, x_test) != y_test
    report = {"model": DEMO_MODEL, "layer": DEMO_LAYER, "repair_points": int(n_points), **result.to_dict()}
    lines = [f"# provrepair demo: {DEMO_MODEL}", "", f"Repair set: the first {n_points} misclassified MNIST "
             f"training images. Layer {DEMO_LAYER}. Outcome: **{result.status}** ({result.message}).", ""]
    if result.model is not None:
        rep = result.model
        before, after = accuracy(net, x_test, y_test), accuracy(rep, x_test, y_test)
        fixed = float((predictions(rep, x_test[test_wrong]) == y_test[test_wrong]).mean())
        metrics = {"efficacy": float((predictions(rep, spec.inputs) == spec.labels).mean()),
                   "test_accuracy_before": before, "test_accuracy_after": after,
                   "drawdown_pp": 100 * (before - after), "test_mistakes_fixed": fixed}
        report["metrics"] = metrics
        t = result.timings
        lines += ["| metric | value |", "|---|---|",
                  f"| repair points correct (certified) | {metrics['efficacy']:.0%} "
                  f"({result.certificate.n_passed}/{result.certificate.n_points}) |",
                  f"| smallest certified margin | {result.certificate.min_margin:.2e} |",
                  f"| test accuracy before -> after | {before:.2%} -> {after:.2%} |",
                  f"| drawdown | {metrics['drawdown_pp']:.2f} pp |",
                  f"| test mistakes now right (generalization) | {fixed:.1%} of {int(test_wrong.sum())} |",
                  f"| parameters changed | {result.delta['l0']} of {result.delta['count']}, "
                  f"max change {result.delta['linf']:.3g} |",
                  f"| LP | {result.lp['final']['variables']} variables, {result.lp['final']['rows']} rows, "
                  f"{len(result.lp['rounds'])} rounds |",
                  f"| time | {t['total']:.1f} s (solve {t['solve']:.1f} s) |"]
        save_model(rep, out / f"{DEMO_MODEL}_repaired.pt")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    print(f"\nreport: {out / 'report.md'} (and report.json)")
    return 0 if result.certified else 1
