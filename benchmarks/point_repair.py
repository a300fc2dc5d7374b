"""Point-repair benchmark: the ERAN MNIST 9x100 network on 100 fog-corrupted "8"s.

Runs provrepair's LP repair at affine layer 5 (and 6, 7; and with 10 and 50 points) and, side by
side in the same run, the same LP in APRNN's own encoding (benchmarks/reference_lp.py), and
writes benchmarks/results/point_repair.json. Each task runs in a fresh process so that its peak
memory is its own.

    python benchmarks/point_repair.py                 # everything (about 5 minutes on 2 cores)
    python benchmarks/point_repair.py --no-reference  # skip the ~3-minute baseline
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"

TASKS = [
    {"name": "layer5_100", "kind": "ours", "layer": 5, "n": 100},
    {"name": "layer6_100", "kind": "ours", "layer": 6, "n": 100},
    {"name": "layer7_100", "kind": "ours", "layer": 7, "n": 100},
    {"name": "layer5_10", "kind": "ours", "layer": 5, "n": 10},
    {"name": "layer5_50", "kind": "ours", "layer": 5, "n": 50},
    {"name": "reference_layer5_100", "kind": "reference", "layer": 5, "n": 100},
]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_task(task: dict, bench: Path) -> dict:
    import warnings

    import numpy as np
    import torch

    import provrepair
    from provrepair.data import load_mnist
    from provrepair.evaluate.metrics import accuracy, predictions

    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trailing ReLU on the logits is dropped, as documented
        net = provrepair.load_model(bench / "mnist_relu_9_100.tf")
    data = np.load(bench / "mnist_fog8_points.npz")
    points, labels, group = data["points"], data["labels"], data["group"]
    x_rep, y_rep = points[group == 0][: task["n"]], labels[group == 0][: task["n"]]
    x_gen, y_gen = points[group == 1], labels[group == 1]
    out = dict(task)
    if task["kind"] == "reference":
        sys.path.insert(0, str(HERE))
        from reference_lp import reference_point_repair
        r = reference_point_repair(net, x_rep, y_rep, task["layer"], method="ipm", time_limit=task.get("limit"))
        out.update(status=r["status"], objective=r["objective"], lp=r["lp"], solver=r["solver"],
                   timings={"build": r["build_time"], "solve": r["solve_time"], "total": r["total_time"]},
                   peak_memory_mb=_peak_mb())
        return out
    x_test, y_test = load_mnist("test")
    spec = provrepair.PointSpec.from_arrays(x_rep, labels=y_rep)
    result = provrepair.repair(net, spec, layer=task["layer"])
    out.update(status=result.status, certified=result.certified, objective=result.solver.get("objective"),
               lp=result.lp, timings=result.timings, delta=result.delta,
               solver={k: v for k, v in result.solver.items() if k != "objective"})
    before_test = accuracy(net, x_test, y_test)
    before_gen = accuracy(net, x_gen, y_gen)
    out["efficacy_before"] = accuracy(net, x_rep, y_rep)
    if result.model is not None:
        rep = result.model
        out["efficacy"] = float((predictions(rep, x_rep) == y_rep).mean())
        out["certified_fraction"] = result.certificate.n_passed / result.certificate.n_points
        out["min_margin"] = result.certificate.min_margin
        after_test = accuracy(rep, x_test, y_test)
        out["test_accuracy"] = {"before": before_test, "after": after_test}
        out["drawdown_pp"] = 100.0 * (before_test - after_test)
        out["generalization"] = {"before": before_gen, "after": accuracy(rep, x_gen, y_gen)}
    out["build_share"] = result.timings["build"] / result.timings["total"]
    out["peak_memory_mb"] = _peak_mb()
    return out


def _spawn(task: dict, bench: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task), "--bench", str(bench)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(task, status="crashed", error=proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_time"] = time.perf_counter() - t0
    return res


def _row(r: dict) -> str:
    t = r.get("timings", {})
    lp = r.get("lp", {})
    size = lp.get("final", lp)
    return (f"{r['name']:<22} {r.get('status', '?'):<13} total {t.get('total', float('nan')):7.2f} s  "
            f"solve {t.get('solve', float('nan')):7.2f} s  LP {size.get('variables', '-')} x {size.get('rows', '-')} "
            f"({size.get('nonzeros', '-')} nnz)  drawdown {r.get('drawdown_pp', float('nan')):.2f} pp  "
            f"peak {r.get('peak_memory_mb', float('nan')):.0f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with the benchmark assets")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "point_repair.json")
    ap.add_argument("--no-reference", action="store_true", help="skip the APRNN-encoding baseline")
    ap.add_argument("--only", nargs="*", help="task names to run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_task(json.loads(args.worker), args.bench), default=float))
        return 0
    if not (args.bench / "mnist_relu_9_100.tf").exists():
        print(f"benchmark assets not found in {args.bench}; pass --bench DIR", file=sys.stderr)
        return 2
    tasks = [t for t in TASKS if not (args.no_reference and t["kind"] == "reference")]
    if args.only:
        tasks = [t for t in tasks if t["name"] in args.only]
    results = []
    for task in tasks:
        r = _spawn(task, args.bench)
        print(_row(r), flush=True)
        results.append(r)
    by = {r["name"]: r for r in results}
    summary = {}
    ours, ref = by.get("layer5_100"), by.get("reference_layer5_100")
    if ours and ref and ref.get("status") == "optimal" and ours.get("objective") is not None:
        summary["speedup_vs_reference"] = ref["timings"]["total"] / ours["timings"]["total"]
        summary["objective_relative_difference"] = abs(ours["objective"] - ref["objective"]) / abs(ref["objective"])
        print(f"layer 5, 100 points: {summary['speedup_vs_reference']:.1f}x faster than the APRNN encoding "
              f"(objective relative difference {summary['objective_relative_difference']:.1e})")
    import platform

    import highspy
    import torch
    payload = {"benchmark": "point_repair", "network": "mnist_relu_9_100.tf",
               "repair_set": "mnist_fog8_points.npz group 0", "generalization_set": "group 1",
               "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
               "versions": {"highspy": getattr(highspy, "__version__", "?"), "torch": torch.__version__},
               "summary": summary, "tasks": results}
    sys.path.insert(0, str(HERE.parent))
    from provrepair.fileio import write_text_atomic
    write_text_atomic(args.out, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
