"""Layer-selection benchmark: how well does each heuristic predict the brute-force best layer?

Repair tasks on the ERAN MNIST 9x100 network (fog "8"s, 10-100 points), the zoo MNIST MLP and
CNN (training mistakes, fog/contrast-corrupted test mistakes), the zoo Fashion CNN and ACAS Xu
N2,9 (runner-up advisory at random points). Brute force (repair at
every candidate layer, score by drawdown on 2,000 held-out test images) is the ground truth. For
each heuristic: how often its first choice is the best layer, its drawdown regret, how often its
first choice is infeasible, and its time (scoring + repairs until one certifies, as --layer auto
does) relative to brute force. Brute force runs with 1 worker and with 2, side by side.

    python benchmarks/layer_selection.py      # ~12 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"
REGRET_PP = 0.5


def build_tasks(bench: Path) -> list[dict]:
    import provrepair
    from provrepair.data import corrupt, load_dataset
    from provrepair.evaluate.metrics import predictions
    from provrepair.zoo import load_zoo

    tasks = []

    def add(name, net, x, y, val):
        tasks.append({"name": name, "net": net, "spec": provrepair.PointSpec.from_arrays(x, labels=y),
                      "validation": val})

    mx, my = load_dataset("mnist", "test")
    mval = (mx[8000:].reshape(2000, -1), my[8000:])
    mval_img = (mx[8000:], my[8000:])
    if (bench / "mnist_relu_9_100.tf").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eran = provrepair.load_model(bench / "mnist_relu_9_100.tf")
        d = np.load(bench / "mnist_fog8_points.npz")
        for g in (0, 1):
            pts, lab = d["points"][d["group"] == g], d["labels"][d["group"] == g]
            for start, n in ((0, 10), (10, 10), (20, 25), (50, 25), (0, 50 if g == 0 else 100)):
                add(f"eran9x100_fog8_g{g}_{start}+{n}", eran, pts[start:start + n], lab[start:start + n], mval)
    if (bench / "ACASXU_run2a_2_9_batch_2000.nnet").exists():
        tasks.extend(acas_tasks(bench / "ACASXU_run2a_2_9_batch_2000.nnet"))
    mlp, cnn = load_zoo("mnist_mlp"), load_zoo("mnist_cnn")
    tx, ty = load_dataset("mnist", "train-full")
    for net_name, net, flat, val in (("mlp", mlp, True, mval), ("cnn", cnn, False, mval_img)):
        shape = (-1, 784) if flat else (-1, 1, 28, 28)
        wrong = np.flatnonzero(predictions(net, tx.reshape(shape)) != ty)
        add(f"{net_name}_train_mistakes_10", net, tx[wrong[:10]].reshape(shape), ty[wrong[:10]], val)
        add(f"{net_name}_train_mistakes_25", net, tx[wrong[10:35]].reshape(shape), ty[wrong[10:35]], val)
        for corruption in ("fog", "contrast"):
            cx = corrupt(mx[:8000], corruption, 3, seed=0)
            bad = np.flatnonzero(predictions(net, cx.reshape(shape)) != my[:8000])
            for n in (10, 25):
                idx = bad[:n] if n == 10 else bad[10:10 + n]
                add(f"{net_name}_{corruption}3_{n}", net, cx[idx].reshape(shape), my[:8000][idx], val)
    fash = load_zoo("fashion_cnn")
    fx, fy = load_dataset("fashion-mnist", "test")
    fval = (fx[8000:], fy[8000:])
    cx = corrupt(fx[:8000], "fog", 3, seed=0)
    bad = np.flatnonzero(predictions(fash, cx) != fy[:8000])
    for n in (10, 25):
        idx = bad[:n] if n == 10 else bad[10:10 + n]
        add(f"fashion_cnn_fog3_{n}", fash, cx[idx], fy[:8000][idx], fval)
    return tasks


def acas_tasks(path: Path) -> list[dict]:
    """ACAS Xu N2,9: at random in-domain points, make the runner-up advisory the advice (the
    advisory is the *lowest* score: rows y_c - y_j <= 0). Drawdown here is locality: the share of
    2,000 other in-domain points whose highest-scoring output changed."""
    import torch

    import provrepair
    net = provrepair.load_model(path)
    extra = provrepair.models.get_meta(net).extra
    lo, hi = np.array(extra["input_min"]), np.array(extra["input_max"])
    rng = np.random.default_rng(0)
    val_x = rng.uniform(lo, hi, size=(2000, 5)).astype(np.float32)
    with torch.no_grad():
        val_y = net(torch.tensor(val_x)).argmax(1).numpy()
    out = []
    for n in (10, 25):
        x = rng.uniform(lo, hi, size=(n, 5))
        with torch.no_grad():
            y = net(torch.tensor(x, dtype=torch.float32)).numpy()
        target = np.argsort(y, axis=1)[:, 1]  # runner-up advisory
        A = np.zeros((n, 4, 5))
        for p in range(n):
            others = [j for j in range(5) if j != target[p]]
            A[p, np.arange(4), target[p]] = 1.0
            A[p, np.arange(4), others] = -1.0
        spec = provrepair.PointSpec.from_arrays(x, A=A, b=np.zeros((n, 4)))
        out.append({"name": f"acas_n29_runner_up_{n}", "net": net, "spec": spec, "validation": (val_x, val_y)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "layer_selection.json")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per candidate repair")
    ap.add_argument("--limit", type=int, help="first N tasks only")
    args = ap.parse_args(argv)

    import torch

    from provrepair.heuristics.brute_force import best_layer, brute_force_many, make_executor
    from provrepair.heuristics.scorers import NEEDS, SCORERS, rank
    from provrepair.heuristics.select import candidate_layers
    from provrepair.api import repair
    from provrepair.fileio import write_text_atomic

    torch.set_num_threads(1)
    tasks = build_tasks(args.bench)[: args.limit]
    print(f"{len(tasks)} tasks", flush=True)
    for t in tasks:
        t["candidates"] = candidate_layers(t["net"], t["spec"])
    jobs = [(t["net"], t["spec"], t["candidates"], t["validation"]) for t in tasks]
    opts = {"time_limit": args.time_limit}

    timings = {}
    t0 = time.perf_counter()
    serial = brute_force_many(repair, jobs, workers=1, options=opts)
    timings["brute_force_1_worker"] = time.perf_counter() - t0
    print(f"brute force, 1 worker: {timings['brute_force_1_worker']:.1f} s", flush=True)
    with make_executor(2) as pool:
        pool.submit(int).result()  # workers started before the clock, as a long-lived pool would be
        t0 = time.perf_counter()
        brute_force_many(repair, jobs, executor=pool, options=opts)
        timings["brute_force_2_workers"] = time.perf_counter() - t0
    timings["parallel_speedup"] = timings["brute_force_1_worker"] / timings["brute_force_2_workers"]
    print(f"brute force, 2 workers: {timings['brute_force_2_workers']:.1f} s "
          f"({timings['parallel_speedup']:.2f}x)", flush=True)

    per_heuristic = {name: {"tasks": 0, "solvable": 0, "best_pick": 0, "within": 0, "infeasible_first": 0, "regret": [],
                            "seconds": 0.0, "brute_seconds": 0.0, "failed": 0} for name in SCORERS}
    rows = []
    for t, outcomes in zip(tasks, serial):
        by_layer = {o.layer: o for o in outcomes}
        best = best_layer(outcomes)
        brute_seconds = sum(o.seconds for o in outcomes)
        row = {"task": t["name"], "points": len(t["spec"]), "candidates": t["candidates"],
               "brute_force": [o.to_dict() for o in outcomes], "best_layer": best.layer if best else None,
               "best_drawdown_pp": best.drawdown_pp if best else None, "heuristics": {}}
        labels = t["spec"].labels
        labels = labels if labels is not None and (labels >= 0).all() else None
        for name, scorer in SCORERS.items():
            if NEEDS.get(name) == "pairs" or (NEEDS.get(name) == "labels" and labels is None):
                continue  # no clean/perturbed pairs in these tasks; ACAS points have constraints, not labels
            s0 = time.perf_counter()
            order = rank(scorer(t["net"], t["spec"].inputs, labels=labels), t["candidates"])
            seconds = time.perf_counter() - s0
            pick = None
            for k in order:  # what --layer auto does: try in order until one certifies
                seconds += by_layer[k].seconds
                if by_layer[k].usable:
                    pick = by_layer[k]
                    break
            h = per_heuristic[name]
            h["tasks"] += 1
            h["brute_seconds"] += brute_seconds
            h["seconds"] += seconds
            h["infeasible_first"] += int(not by_layer[order[0]].usable)
            entry = {"ranking": order, "pick": pick.layer if pick else None, "seconds": seconds}
            h["solvable"] += int(best is not None)
            if best is None:
                pass
            elif pick is None:
                h["failed"] += 1
            else:
                regret = (pick.drawdown_pp or 0.0) - (best.drawdown_pp or 0.0)
                h["regret"].append(regret)
                h["best_pick"] += int(pick.layer == best.layer)
                h["within"] += int(regret <= REGRET_PP)
                entry["regret_pp"] = regret
            row["heuristics"][name] = entry
        rows.append(row)
        print(f"{t['name']:<32} best {row['best_layer']} ({row['best_drawdown_pp']}) "
              + " ".join(f"{n}:{e['pick']}" for n, e in row["heuristics"].items()), flush=True)

    summary = {}
    for name, h in per_heuristic.items():
        if not h["tasks"]:
            continue
        solvable = h["solvable"]  # tasks this heuristic could run on that have a certified layer
        summary[name] = {
            "tasks": h["tasks"], "solvable_tasks": solvable,
            "picks_brute_force_best": h["best_pick"] / max(solvable, 1),
            "within_0.5pp": h["within"] / max(solvable, 1),
            "mean_regret_pp": float(np.mean(h["regret"])) if h["regret"] else None,
            "first_choice_infeasible": h["infeasible_first"],
            "no_certified_layer": h["failed"],
            "time_vs_brute_force": h["seconds"] / max(h["brute_seconds"], 1e-9),
        }
    best_h = max(summary, key=lambda n: (summary[n]["within_0.5pp"], -summary[n]["time_vs_brute_force"]))
    print("\nheuristic        best-pick  within0.5pp  mean-regret  1st-infeasible  time/brute")
    for name, s in summary.items():
        print(f"{name:<16} {s['picks_brute_force_best']:9.0%} {s['within_0.5pp']:12.0%} "
              f"{(s['mean_regret_pp'] or 0):11.2f} {s['first_choice_infeasible']:15d} {s['time_vs_brute_force']:11.2f}")
    print(f"best heuristic: {best_h}")
    payload = {"benchmark": "layer_selection", "tasks": rows, "summary": summary, "best_heuristic": best_h,
               "timings": timings, "regret_threshold_pp": REGRET_PP, "time_limit_per_candidate": args.time_limit}
    write_text_atomic(args.out, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
