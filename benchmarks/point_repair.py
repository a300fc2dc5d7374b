"""Point-repair benchmark (issue 18): every affine layer of the networks we ship, with HiGHS.

Rows (``--only NAME ...`` runs some; each task runs in a fresh process so that its peak memory
and its timing are its own):

* ERAN MNIST 9x100 (``mnist_relu_9_100.tf``), 100 fog-corrupted "8"s (group 0 of
  ``mnist_fog8_points.npz``): layer 5 (``layer5_100``; also 10 and 50 points, layers 6 and 7) and
  every affine layer 0-8 (``9x100_layer{k}``); APRNN's own encoding side by side at layer 5
  (``reference_layer5_100``, benchmarks/reference_lp.py).
* ERAN MNIST 9x200 (``mnist_relu_9_200.onnx``, loaded as is) at layer 6, 100 fog failures that
  ``fog_failures`` selects from the MNIST test images (``9x200_layer6``; reference:
  ``reference_9x200_layer6``).
* The zoo 784-100-100-10 MLP (``mnist_mlp``), 100 fog failures, layers 1 and 0 (``mlp_layer1``, ``mlp_layer0``).
* Zoo ``mnist_cnn`` / ``fashion_cnn``, 50 fog failures, every affine layer (``mnist_cnn_layer{k}``,
  ``fashion_cnn_layer{k}``).

Each row prints the LP size per round, rounds, solver and algorithm, time, certified, and the
drawdown on the full 10,000-image test set. Results: benchmarks/results/point_repair.json.

    python benchmarks/point_repair.py                       # everything (a quiet machine, ~30 min)
    python benchmarks/point_repair.py --only mlp_layer1     # one row
    python benchmarks/point_repair.py --no-reference        # skip the APRNN-encoding baselines
    python benchmarks/point_repair.py --calibrate           # refit heuristics' time model from the JSON
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

ERAN100 = {"net": "mnist_relu_9_100.tf", "points": "fog8"}
CNN_LIMIT = 120.0  # seconds: the bound for the zoo CNNs
WIDE_LIMIT = 600.0  # seconds: ERAN 9x100's first two layers (784x100 and, under seven ReLU layers, 100x100)
TASKS = [
    {"name": "layer5_100", "kind": "ours", "layer": 5, "n": 100, **ERAN100},
    {"name": "layer6_100", "kind": "ours", "layer": 6, "n": 100, **ERAN100},
    {"name": "layer7_100", "kind": "ours", "layer": 7, "n": 100, **ERAN100},
    {"name": "layer5_10", "kind": "ours", "layer": 5, "n": 10, **ERAN100},
    {"name": "layer5_50", "kind": "ours", "layer": 5, "n": 50, **ERAN100},
    {"name": "reference_layer5_100", "kind": "reference", "layer": 5, "n": 100, **ERAN100},
    *[{"name": f"9x100_layer{k}", "kind": "ours", "layer": k, "n": 100, **ERAN100,
       **({"time_limit": WIDE_LIMIT} if k < 2 else {})} for k in range(9)],
    {"name": "9x200_layer6", "kind": "ours", "layer": 6, "n": 100, "net": "mnist_relu_9_200.onnx", "points": "fog",
     "time_limit": WIDE_LIMIT},
    {"name": "reference_9x200_layer6", "kind": "reference", "layer": 6, "n": 100, "net": "mnist_relu_9_200.onnx",
     "points": "fog"},
    {"name": "mlp_layer1", "kind": "ours", "layer": 1, "n": 100, "net": "zoo:mnist_mlp", "points": "fog"},
    {"name": "mlp_layer0", "kind": "ours", "layer": 0, "n": 100, "net": "zoo:mnist_mlp", "points": "fog",
     "time_limit": WIDE_LIMIT},
    # the L∞ term by epigraph rows / by a search over its bound, where the default (--linf auto) takes the other
    {"name": "mlp_layer1_rows", "kind": "ours", "layer": 1, "n": 100, "net": "zoo:mnist_mlp", "points": "fog",
     "linf": "rows"},
    {"name": "layer5_100_search", "kind": "ours", "layer": 5, "n": 100, "linf": "search", **ERAN100},
    *[{"name": f"{z}_layer{k}", "kind": "ours", "layer": k, "n": 50, "net": f"zoo:{z}", "points": "fog",
       "time_limit": CNN_LIMIT} for z in ("mnist_cnn", "fashion_cnn") for k in range(4)],
    # the same with a subset of the layer's rows/channels (APRNN's way to large layers)
    *[{"name": f"{z}_layer{k}_rows{r}", "kind": "ours", "layer": k, "n": 50, "net": f"zoo:{z}", "points": "fog",
       "rows": f"0:{r}", "time_limit": CNN_LIMIT} for z in ("mnist_cnn", "fashion_cnn") for k, r in ((0, 4), (1, 4), (2, 16))],
]
#: Test images searched for fog failures, and the severities tried (lowest first).
FOG_SEARCH = 10000
FOG_SEVERITIES = (1, 2, 3, 4, 5)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_net(task: dict, bench: Path):
    """The task's network: an ERAN file from ``bench`` or a zoo model (``zoo:NAME``)."""
    import warnings

    import provrepair
    from provrepair.zoo import load_zoo

    if task["net"].startswith("zoo:"):
        return load_zoo(task["net"][4:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trailing ReLU on the logits is dropped, as documented
        return provrepair.load_model(bench / task["net"])


def dataset_of(task: dict) -> str:
    return "fashion-mnist" if "fashion" in task["net"] else "mnist"


def fog_failures(net, dataset: str, n: int):
    """The first ``n`` test images (of the first ``FOG_SEARCH``) that ``net`` misclassifies under
    fog, at the lowest severity that gives at least ``n`` (the selection, not the points, ships).
    Returns (points in the model's input shape, labels, severity)."""
    import numpy as np

    from provrepair.data import corrupt, load_dataset
    from provrepair.evaluate.metrics import predictions
    from provrepair.models import get_meta

    x, y = load_dataset(dataset, "test")
    x, y = x[:FOG_SEARCH], y[:FOG_SEARCH]
    shape = get_meta(net).input_shape or (784,)
    for sev in FOG_SEVERITIES:
        xc = corrupt(x, "fog", sev, seed=0).reshape((len(x),) + tuple(shape))
        wrong = np.flatnonzero(predictions(net, xc) != y)
        if wrong.size >= n:
            pick = wrong[:n]
            return xc[pick], y[pick], sev
    raise RuntimeError(f"fewer than {n} fog failures at every severity")


def run_task(task: dict, bench: Path) -> dict:
    import numpy as np
    import torch

    import provrepair
    from provrepair.data import load_dataset
    from provrepair.evaluate.metrics import accuracy, predictions
    from provrepair.models import get_meta

    torch.set_num_threads(2)
    net = load_net(task, bench)
    out = dict(task)
    x_gen = y_gen = None
    if task["points"] == "fog8":
        data = np.load(bench / "mnist_fog8_points.npz")
        points, labels, group = data["points"], data["labels"], data["group"]
        x_rep, y_rep = points[group == 0][: task["n"]], labels[group == 0][: task["n"]]
        x_gen, y_gen = points[group == 1], labels[group == 1]
    else:
        x_rep, y_rep, out["fog_severity"] = fog_failures(net, dataset_of(task), task["n"])
    if task["kind"] == "reference":
        sys.path.insert(0, str(HERE))
        from reference_lp import reference_point_repair
        r = reference_point_repair(net, x_rep, y_rep, task["layer"], method="ipm", time_limit=task.get("limit"))
        out.update(status=r["status"], objective=r["objective"], lp=r["lp"], solver=r["solver"],
                   timings={"build": r["build_time"], "solve": r["solve_time"], "total": r["total_time"]},
                   peak_memory_mb=_peak_mb())
        return out
    x_test, y_test = load_dataset(dataset_of(task), "test")
    x_test = x_test.reshape((len(x_test),) + tuple(get_meta(net).input_shape or (784,)))
    spec = provrepair.PointSpec.from_arrays(x_rep, labels=y_rep)
    kw = {k: task[k] for k in ("rows", "channels", "time_limit", "linf") if k in task}
    result = provrepair.repair(net, spec, layer=task["layer"], **kw)
    out.update(status=result.status, certified=result.certified, objective=result.solver.get("objective"),
               lp=result.lp, timings=result.timings, delta=result.delta,
               solver={k: v for k, v in result.solver.items() if k != "objective"})
    before_test = accuracy(net, x_test, y_test)
    out["efficacy_before"] = accuracy(net, x_rep, y_rep)
    if result.model is not None:
        rep = result.model
        out["efficacy"] = float((predictions(rep, x_rep) == y_rep).mean())
        out["certified_fraction"] = result.certificate.n_passed / result.certificate.n_points
        out["min_margin"] = result.certificate.min_margin
        after_test = accuracy(rep, x_test, y_test)
        out["test_accuracy"] = {"before": before_test, "after": after_test}
        out["drawdown_pp"] = 100.0 * (before_test - after_test)
        if x_gen is not None:
            out["generalization"] = {"before": accuracy(net, x_gen, y_gen), "after": accuracy(rep, x_gen, y_gen)}
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
    solver = r.get("solver", {})
    opts = solver.get("options", {}) if isinstance(solver, dict) else {}
    algo = opts.get("solver", opts.get("method", "?")) if isinstance(opts, dict) else "?"
    line = (f"{r['name']:<24} {r.get('status', '?'):<13} total {t.get('total', float('nan')):7.2f} s  "
            f"solve {t.get('solve', float('nan')):7.2f} s  LP {size.get('variables', '-')} x {size.get('rows', '-')} "
            f"({size.get('nonzeros', '-')} nnz)  rounds {len(lp.get('rounds', [])) or '-'}  "
            f"{solver.get('name', '?') if isinstance(solver, dict) else solver}/{algo}  "
            f"drawdown {r.get('drawdown_pp', float('nan')):.2f} pp  peak {r.get('peak_memory_mb', float('nan')):.0f} MB")
    for rd in lp.get("rounds", []):
        line += (f"\n    round {rd['round']}: {rd['status']}, {rd['rows']} rows, {rd['nonzeros']} nnz, "
                 f"{rd.get('pattern_rows', 0)} pattern rows, {rd['solve_time']:.2f} s, "
                 f"{rd.get('violated_patterns', '-')} violated")
    if r.get("error"):
        line += "\n    " + r["error"].strip().splitlines()[-1]
    return line


def calibrate(path: Path) -> int:
    """The measurements behind ``heuristics.analysis.TIMING_MEASUREMENTS`` (``--layer auto``'s time
    model): each finished row's first-round LP nonzeros and total seconds, and their log-log fit.
    Paste the tuples into TIMING_MEASUREMENTS after a full run on a quiet machine."""
    import numpy as np

    rows = []
    for r in json.loads(path.read_text())["tasks"]:
        rounds = r.get("lp", {}).get("rounds") if isinstance(r.get("lp"), dict) else None
        if r.get("kind") == "ours" and rounds and r.get("status") in ("certified", "infeasible"):
            rows.append((r["name"], int(rounds[0]["nonzeros"]), float(r["timings"]["total"])))
    for name, nnz, secs in rows:
        print(f"    ({nnz:_}, {secs:.1f}),  # {name}")
    if len(rows) >= 2:
        b, log_a = np.polyfit(np.log([n for _, n, _ in rows]), np.log([t for *_, t in rows]), 1)
        print(f"fit: seconds = {np.exp(log_a):.3g} * nonzeros ** {b:.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with the benchmark assets")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "point_repair.json")
    ap.add_argument("--no-reference", action="store_true", help="skip the APRNN-encoding baseline")
    ap.add_argument("--only", nargs="*", help="task names to run")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the time model's measurements (first-round nonzeros, seconds) from --out and their fit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.calibrate:
        return calibrate(args.out)
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
    by = {r["name"]: r for r in results}  # this run's rows: the speed-ups compare rows of one run only
    summary = {}
    if args.only and args.out.exists():  # a partial run updates its rows (and ratios) and keeps the others
        before = json.loads(args.out.read_text())
        names = {t["name"] for t in TASKS}  # rows of tasks that no longer exist are dropped
        old = {r["name"]: r for r in before.get("tasks", []) if r["name"] in names}
        results = list({**old, **by}.values())
        summary = {k: v for k, v in before.get("summary", {}).items() if k not in by}
    for ours_name, ref_name in (("layer5_100", "reference_layer5_100"), ("9x200_layer6", "reference_9x200_layer6")):
        ours, ref = by.get(ours_name), by.get(ref_name)
        if ours and ref and ref.get("status") == "optimal" and ours.get("objective") is not None:
            speed = ref["timings"]["total"] / ours["timings"]["total"]
            diff = abs(ours["objective"] - ref["objective"]) / abs(ref["objective"])
            summary[ours_name] = {"speedup_vs_reference": speed, "objective_relative_difference": diff}
            print(f"{ours_name}: {speed:.1f}x faster than the APRNN encoding (objective relative difference {diff:.1e})")
    import platform

    import highspy
    import torch
    payload = {"benchmark": "point_repair", "networks": sorted({t["net"] for t in TASKS}),
               "repair_sets": "9x100: mnist_fog8_points.npz group 0 (generalization: group 1); others: fog "
                              "failures among the first FOG_SEARCH test images (fog_failures)",
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
