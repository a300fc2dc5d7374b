"""Provable point repair with keep-sets against fine-tuning, on the tasks of issue 19.

    python benchmarks/keep_repair.py                       # every task (about 20 min on 2 cores)
    python benchmarks/keep_repair.py --tasks demo --keep 0,2000,10000

Per task and configuration: certified share of the repair set, drawdown on the full clean test set
(10,000 images), generalization (held-out failures of the same corruption fixed), clean test
predictions changed, L∞/L0 of the parameter change, seconds, final LP size and the keep points that
entered the LP. Rows: the LP alone (no keep-set), the LP with keep-sets of N correctly classified
training images (``keep_from=mnist:train:N``, disjoint from the repair set), fine-tuning, and
``finetune+aprnn`` (fine-tuning polished by the LP, so certified). Fine-tuning runs with ``--seeds``;
the LP is deterministic.

Tasks: ``demo`` (zoo mnist_cnn, 50 fog failures, the demo's task), ``fashion`` (zoo fashion_cnn, 50
fog failures), ``mlp`` (zoo mnist_mlp, 784-100-100-10, 100 fog failures at layer 1) and ``eran``
(ERAN 9x100, layer 5, group 0 of ../shared/bench/mnist_fog8_points.npz; generalization on group 1;
skipped without ../shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
OUT = ROOT / "benchmarks" / "results" / "keep_repair.json"

#: task -> model, dataset, repair points, layer, and the repair/keep margins used with a keep-set
#: (chosen on the demo and fashion tasks by hand: a larger repair margin generalizes further, until
#: it contradicts the keep points: fashion_cnn's last layer is infeasible at margin 1 with 10,000)
TASKS = {
    "demo": dict(model="mnist_cnn", dataset="mnist", points=50, layer=-1, margin=5.0, keep_margin=1.0),
    "fashion": dict(model="fashion_cnn", dataset="fashion-mnist", points=50, layer=-1, margin=0.5, keep_margin=0.2),
    "mlp": dict(model="mnist_mlp", dataset="mnist", points=100, layer=1, margin=1e-3, keep_margin=0.1),
    "eran": dict(model="eran", dataset="mnist", points=100, layer=5, margin=1e-3, keep_margin=0.1),
}


def task_data(name: str):
    """((net, repair x, repair y, held-out x, held-out y, test x, test y), the harness's task data or
    None where the task is not a harness task: the ERAN network and its shipped points)."""
    from provrepair.evaluate.tasks import TaskConfig, build_task
    from provrepair.models import load_model

    t = TASKS[name]
    if t["model"] == "eran":
        net = load_model(BENCH / "mnist_relu_9_100.tf")
        d = np.load(BENCH / "mnist_fog8_points.npz")
        g = d["group"]
        from provrepair.data import load_dataset

        xt, yt = load_dataset("mnist", "test", flat=True)
        return (net, d["points"][g == 0][:t["points"]].astype(np.float32), d["labels"][g == 0][:t["points"]],
                d["points"][g == 1].astype(np.float32), d["labels"][g == 1], xt, yt), None
    cfg = TaskConfig(model=t["model"], dataset=t["dataset"], corruption="fog", severity=3, repair_points=t["points"],
                     heldout=500, test_limit=10000, train_limit=2000, val_limit=200, severities=(3,))
    data = build_task(cfg)
    return (data.net, *data.repair, *data.heldout, *data.test), data


def _measure(net, model, x_rep, y_rep, x_held, y_held, x_test, y_test) -> dict:
    from provrepair.certify import certify_points
    from provrepair.models.inference import predictions
    from provrepair.specs import PointSpec

    p0, p1 = predictions(net, x_test), predictions(model, x_test)
    cert = certify_points(model, PointSpec.from_arrays(x_rep, labels=y_rep))
    d = [(b.detach().double() - a.detach().double()).reshape(-1) for a, b in zip(net.parameters(), model.parameters())]
    delta = torch.cat(d)
    return {"certified_pct": 100.0 * cert.n_passed / cert.n_points,
            "certified": bool(cert.certified),
            "repair_right_pct": 100.0 * float((predictions(model, x_rep) == y_rep).mean()),
            "drawdown_pp": 100.0 * float((p0 == y_test).mean() - (p1 == y_test).mean()),
            "generalization_pct": 100.0 * float((predictions(model, x_held) == y_held).mean()),
            "changed_clean_pct": 100.0 * float((p0 != p1).mean()),
            "delta_linf": float(delta.abs().max()), "delta_l0": int((delta != 0).sum())}


def run_lp(net, x_rep, y_rep, layer, keep: int, dataset: str, options: dict) -> tuple[object, dict]:
    import provrepair
    from provrepair.specs import PointSpec

    kw = dict(options)
    if keep:
        kw["keep_from"] = f"{dataset}:train:{keep}"
    t0 = time.perf_counter()
    res = provrepair.repair(net, PointSpec.from_arrays(x_rep, labels=y_rep), layer=layer, threads=1, **kw)
    info = {"status": res.status, "seconds": time.perf_counter() - t0, "lp": res.lp.get("final"),
            "layer": res.layer}
    if "keep" in res.lp:
        info["keep"] = {k: v for k, v in res.lp["keep"].items() if k not in ("entered_index", "rounds")}
        info["keep"]["rounds"] = len(res.lp["keep"]["rounds"])
    return res.model, info


def run_finetune(data, seed: int, polish: bool):
    from provrepair.evaluate.methods import run_method
    from provrepair.evaluate.registry import get_method
    from provrepair.repair.registry import get_repairer

    t0 = time.perf_counter()
    out = run_method(get_method("finetune"), data.net, data, seed=seed, options={"epochs": 2})
    info = {"status": out.status, "seconds": time.perf_counter() - t0, "seed": seed}
    model = out.model
    if polish and model is not None:
        res = get_repairer("polish").run(model, data.spec())
        info.update(status=res.status, seconds=time.perf_counter() - t0, lp=res.lp.get("final") if res.lp else None)
        model = res.model
    return model, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="demo,fashion,mlp,eran")
    ap.add_argument("--keep", default="0,500,2000,10000", help="keep-set sizes (0: no keep-set)")
    ap.add_argument("--margin", type=float, help="LP margin of the repair points with a keep-set (default: per task)")
    ap.add_argument("--keep-margin", type=float, help="default: per task")
    ap.add_argument("--objective", default="linf+l1", help="LP objective of the keep-set rows (linf+l1 or outputs)")
    ap.add_argument("--seeds", default="0", help="fine-tuning seeds")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    from provrepair.errors import ProvRepairError

    torch.set_num_threads(1)
    results = {"settings": vars(args), "machine": "2-core CPU (shared)", "tasks": {}}
    for name in args.tasks.split(","):
        if TASKS[name]["model"] == "eran" and not BENCH.exists():
            print(f"{name}: skipped ({BENCH} missing)", flush=True)
            continue
        (net, x_rep, y_rep, x_held, y_held, x_test, y_test), data = task_data(name)
        rows = []
        for keep in [int(k) for k in args.keep.split(",")]:
            opts = {"time_limit": args.time_limit}
            if keep:
                opts.update(objective=args.objective, margin=args.margin or TASKS[name]["margin"],
                            keep_margin=args.keep_margin or TASKS[name]["keep_margin"])
            model, info = run_lp(net, x_rep, y_rep, TASKS[name]["layer"], keep, TASKS[name]["dataset"], opts)
            label = "" if args.objective == "linf+l1" else f" ({args.objective})"
            row = {"method": "aprnn" if not keep else f"aprnn+keep{keep}{label}", **info}
            if model is not None:
                row.update(_measure(net, model, x_rep, y_rep, x_held, y_held, x_test, y_test))
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        if data is not None and not args.no_finetune:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for polish in (False, True):
                    try:
                        model, info = run_finetune(data, seed, polish)
                    except ProvRepairError as exc:  # e.g. the corruptions need images, not flat vectors
                        rows.append({"method": "finetune+aprnn" if polish else "finetune", "status": "error",
                                     "message": str(exc)})
                        break
                    row = {"method": "finetune+aprnn" if polish else "finetune", **info}
                    if model is not None:
                        row.update(_measure(net, copy.deepcopy(model).float(), x_rep, y_rep, x_held, y_held,
                                            x_test, y_test))
                    rows.append(row)
                    print(name, json.dumps(row), flush=True)
        results["tasks"][name] = {**TASKS[name], "rows": rows}
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
