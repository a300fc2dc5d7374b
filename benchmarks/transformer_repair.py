"""Point repair of the zoo ViTs at their piecewise-linear head, behind the frozen transformer front.

Usage::

    python benchmarks/transformer_repair.py [--models mnist_vit fashion_vit] [--corruptions fog gaussian_noise]
        [--sizes 100 1000 10000] [--layers -1 -2] [--time-limit 300] [--keep N] [--no-finetune]
        [--pool 10000] [--formulation auto|u|substituted] [--delta-bound B] [--note TEXT] [--append]
        [--out benchmarks/results/transformer_repair.json]

For every zoo ViT, corruption, repair-set size and head layer (``-1`` = the head's last affine
layer, ``-2`` = the one before it; the head is Linear-ReLU-Linear after the frozen front), one row:

* the repair set: ``size`` failures (corrupted test images the ViT misclassifies), drawn from the
  *repair half* of the test set (a seeded half of the 10,000 test images), over severities 1-5 and,
  where one corruption seed gives too few failures (gaussian noise), further corruption seeds;
* APRNN point repair at that layer (HiGHS, default options, ``--time-limit`` seconds) and the
  independent exact point check; certified % = points the check passes;
* drawdown = clean accuracy on the full 10,000-image test set before minus after (percentage points);
* generalization = accuracy on held-out failures of the same corruption, from the *other* half of the
  test set (images never in any repair set; at most ``HELD_OUT_CAP`` of them), which the original
  network gets all wrong;
* time (build, solve, check, certify, total) and LP size (final and full);
* fine-tuning the head (the back: every layer after the front) on the same points, side by side:
  Adam, cross-entropy, until every repair point is classified correctly or ``FT_MAX_STEPS`` steps.

The front (patch embedding, attention blocks, LayerNorm, GELU) is never changed by either method;
its features are computed once per image set and the metrics run the back on them (the full network
is evaluated once per row as a check). ``--keep N`` adds a keep-set of N correctly classified clean
training images where the point repairer supports one (recorded as an error otherwise).

Timings depend on the machine's load (2 shared cores in the runs recorded); every row says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import provrepair
from provrepair.data.corruptions import corrupt
from provrepair.models import affine_layers, front_of
from provrepair.specs import PointSpec
from provrepair.zoo import card, load_zoo

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "transformer_repair.json"

SEED = 0
SEVERITIES = (1, 2, 3, 4, 5)
MAX_CORRUPTION_SEEDS = 12
HELD_OUT_CAP = 5000
FT_LR = 1e-3
FT_MAX_STEPS = 3000
FT_BATCH = 128
DATASETS = {"mnist_vit": "mnist", "fashion_vit": "fashion-mnist"}


def _test_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "mnist":
        from provrepair.data import load_mnist

        return load_mnist("test", flat=False)
    from provrepair.data.datasets import load_dataset

    return load_dataset(dataset, "test")


def _train_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "mnist":
        from provrepair.data import load_mnist

        return load_mnist("train", flat=False)
    from provrepair.data.datasets import load_dataset

    return load_dataset(dataset, "train-full")


@torch.no_grad()
def _features(front: nn.Module, x: np.ndarray, batch: int = 1000) -> torch.Tensor:
    return torch.cat([front(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


@torch.no_grad()
def _acc(back: nn.Module, h: torch.Tensor, y: np.ndarray) -> float:
    return float((back(h).argmax(1).numpy() == y).mean()) if len(y) else float("nan")


def failure_pool(net: nn.Module, x: np.ndarray, y: np.ndarray, base: np.ndarray, corruption: str, need: int,
                 log=print) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Failures of ``net`` on corrupted images ``x[base]``: severities 1-5, corruption seeds 0.. until
    ``need`` failures (or ``MAX_CORRUPTION_SEEDS`` seeds). Returns inputs, labels and where they came from."""
    front = front_of(net)
    back = nn.Sequential(*list(net)[1:]).eval()
    xs, ys, origin = [], [], []
    count = 0
    for seed in range(MAX_CORRUPTION_SEEDS):
        for sev in SEVERITIES:
            xc = corrupt(x[base], corruption, sev, seed=seed)
            with torch.no_grad():
                pred = back(_features(front, xc)).argmax(1).numpy()
            wrong = np.flatnonzero(pred != y[base])
            xs.append(xc[wrong])
            ys.append(y[base][wrong])
            origin.append({"seed": seed, "severity": sev, "failures": int(wrong.size)})
            count += wrong.size
        log(f"  {corruption}: {count} failures after corruption seed {seed}")
        if count >= need:
            break
    return np.concatenate(xs), np.concatenate(ys), origin


def finetune_back(net: nn.Module, h: torch.Tensor, y: np.ndarray, *, seed: int = SEED) -> tuple[nn.Module, dict]:
    """Fine-tune every layer after the front on the repair features until all are correct."""
    torch.manual_seed(seed)
    back = copy.deepcopy(nn.Sequential(*list(net)[1:])).train()
    opt = torch.optim.Adam(back.parameters(), lr=FT_LR)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    epochs = steps = 0
    while steps < FT_MAX_STEPS:
        epochs += 1
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), FT_BATCH):
            idx = perm[i:i + FT_BATCH]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(back(h[idx]), yt[idx]).backward()
            opt.step()
            steps += 1
        with torch.no_grad():
            if bool((back(h).argmax(1) == yt).all()):
                break
    back.eval()
    return back, {"epochs": epochs, "steps": steps, "seconds": time.perf_counter() - t0, "lr": FT_LR,
                  "batch_size": FT_BATCH, "max_steps": FT_MAX_STEPS, "optimiser": "Adam",
                  "trains": "every layer after the front", "stops": "all repair points correct, or max_steps"}


def _keep_spec(dataset: str, net: nn.Module, n: int) -> PointSpec:
    x, y = _train_set(dataset)
    rng = np.random.RandomState(SEED + 1)
    idx = rng.permutation(len(y))[: 4 * n]
    with torch.no_grad():
        pred = net(torch.from_numpy(x[idx])).argmax(1).numpy()
    ok = idx[pred == y[idx]][:n]
    return PointSpec.from_arrays(x[ok], y[ok])


def _finetune_row(net, xs, ys, h_test, y_test, h_held, y_held, base_acc, log=print) -> dict:
    h_rep = _features(front_of(net), xs)
    back, info = finetune_back(net, h_rep, ys)
    acc = _acc(back, h_test, y_test)
    out = dict(info, repair_set_correct_percent=100.0 * _acc(back, h_rep, ys), clean_accuracy=acc,
               drawdown_pp=100.0 * (base_acc - acc), generalization=_acc(back, h_held, y_held),
               certified="not applicable (no certificate; repair-set accuracy measured exactly)")
    log(f"    fine-tuning: {out['repair_set_correct_percent']:.1f}% of the repair set, drawdown "
        f"{out['drawdown_pp']:.2f} pp, gen {out['generalization']:.3f} in {info['seconds']:.1f} s")
    return out


def _repair_set(data, size):
    (x_rep, y_rep) = data[0]
    pick = np.random.RandomState(SEED).permutation(len(y_rep))[:size]
    return x_rep[pick], y_rep[pick]


def run_row(net, data, model_name, corruption, size, layer, args, log=print) -> dict:
    _, (h_test, y_test), (h_held, y_held), base_acc = data
    xs, ys = _repair_set(data, size)
    spec = PointSpec.from_arrays(xs, ys)
    row: dict = {"model": model_name, "corruption": corruption, "size": int(len(ys)), "requested_size": size,
                 "layer": layer, "layer_back_index": affine_layers(net).index(affine_layers(net)[layer]),
                 "machine_load": "2 shared CPU cores, other sessions running; timings are indicative"}
    if args.note:
        row["note"] = args.note
    if len(ys) < size:
        row["note"] = f"only {len(ys)} failures available in the repair half"
    kw = {"time_limit": args.time_limit}
    if args.formulation != "auto":
        kw["formulation"] = row["formulation"] = args.formulation
    if args.delta_bound is not None:
        kw["delta_bound"] = row["delta_bound"] = args.delta_bound
    if args.keep:
        try:
            kw["keep"] = _keep_spec(DATASETS[model_name], net, args.keep)
            row["keep"] = args.keep
        except Exception as exc:  # pragma: no cover - the keep-set builder is best effort
            row["keep_error"] = str(exc)
    row["load_average_before"] = list(os.getloadavg())  # 1, 5, 15 min; 2 cores shared with other sessions
    t0 = time.perf_counter()
    try:
        result = provrepair.repair(net, spec, layer=layer, **kw)
        err = None
    except Exception as exc:
        result, err = None, f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    row["load_average_after"] = list(os.getloadavg())
    rep: dict = {"wall_seconds": wall}
    if result is None:
        rep["status"] = "error"
        rep["error"] = err
    else:
        rep.update(status=result.status, message=result.message, timings=result.timings, lp=result.lp,
                   solver=result.solver, layer=result.layer)
        if result.delta:
            rep["delta"] = result.delta
        cert = result.certificate
        if cert is not None:
            rep["certified_percent"] = 100.0 * cert.n_passed / cert.n_points
            rep["certified"] = bool(cert.certified)
        if result.model is not None:
            back = nn.Sequential(*list(result.model)[1:]).eval()
            acc = _acc(back, h_test, y_test)
            rep.update(clean_accuracy=acc, drawdown_pp=100.0 * (base_acc - acc),
                       generalization=_acc(back, h_held, y_held))
            with torch.no_grad():  # the whole repaired network once, as a user runs it
                full = result.model(torch.from_numpy(xs[:256])).argmax(1).numpy()
            rep["full_forward_agrees"] = bool((full == back(_features(front_of(net), xs[:256])).argmax(1).numpy()).all())
    row["aprnn"] = rep
    log(f"  {model_name} {corruption} n={len(ys)} layer {layer}: {rep.get('status')} "
        f"certified {rep.get('certified_percent', float('nan')):.1f}% drawdown {rep.get('drawdown_pp', float('nan')):.2f} pp "
        f"gen {rep.get('generalization', float('nan')):.3f} in {wall:.1f} s")
    if not args.no_finetune and layer == args.layers[0]:
        row["finetune"] = _finetune_row(net, xs, ys, h_test, y_test, h_held, y_held, base_acc, log)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DATASETS), choices=sorted(DATASETS))
    ap.add_argument("--corruptions", nargs="+", default=["fog", "gaussian_noise"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[100, 1000, 10000])
    ap.add_argument("--layers", nargs="+", type=int, default=[-1, -2],
                    help="head layers (affine layers of the back; -1 = last); fine-tuning runs with the first")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per repair (the LP's time limit)")
    ap.add_argument("--keep", type=int, default=0, help="keep-set of N correct clean training images (0: none)")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--finetune-only", action="store_true",
                    help="re-run only the fine-tuning of the rows already in --out (same repair sets)")
    ap.add_argument("--max-points-layer", nargs="*", default=[], metavar="LAYER=N",
                    help="skip rows of LAYER with more than N points (e.g. -2=1000 on a slow machine)")
    ap.add_argument("--pool", type=int, default=0,
                    help="failures to collect before drawing repair sets (default: the largest size; give 10000 "
                         "to draw the same sets as a run with every size)")
    ap.add_argument("--formulation", default="auto", choices=["auto", "u", "substituted"],
                    help="the point LP's formulation (PointRepairOptions.formulation)")
    ap.add_argument("--delta-bound", type=float, default=None, help="the LP's delta bound (default: the option's)")
    ap.add_argument("--note", default="", help="a note recorded in every row of this run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--append", action="store_true", help="add the rows to the existing file (same key: replaced)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    caps = {int(k): int(v) for k, v in (s.split("=") for s in args.max_points_layer)}
    doc = {"benchmark": "transformer_repair", "issue": 22, "seed": SEED, "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "rows": [], "skipped": [],
           "setup": {"severities": list(SEVERITIES), "held_out_cap": HELD_OUT_CAP,
                     "split": "test images split in two seeded halves: repair sets from one, held-out failures "
                              "from the other", "repair_options": "defaults (HiGHS, delta bound 3, margin 1e-3, "
                              "objective linf+l1, constraint generation) plus time_limit"}}
    if (args.append or args.finetune_only) and args.out.exists():
        doc = json.loads(args.out.read_text())
    key = lambda r: (r["model"], r["corruption"], r["requested_size"], r["layer"], r.get("keep", 0),  # noqa: E731
                     r.get("formulation", "auto"), r.get("delta_bound"))

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        tmp.replace(args.out)

    for model_name in args.models:
        net = load_zoo(model_name)
        front = front_of(net)
        back = nn.Sequential(*list(net)[1:]).eval()
        x, y = _test_set(DATASETS[model_name])
        perm = np.random.RandomState(SEED).permutation(len(y))
        rep_base, held_base = np.sort(perm[: len(y) // 2]), np.sort(perm[len(y) // 2:])
        h_test = _features(front, x)
        base_acc = _acc(back, h_test, y)
        doc.setdefault("models", {})[model_name] = {"clean_accuracy": base_acc, "card_test_accuracy": card(model_name)["test_accuracy"],
                                                    "layers": [type(m).__name__ for m in net]}
        print(f"{model_name}: clean accuracy {base_acc:.4f}")
        for corruption in args.corruptions:
            x_rep, y_rep, origin = failure_pool(net, x, y, rep_base, corruption, args.pool or max(args.sizes))
            x_held, y_held, _ = failure_pool(net, x, y, held_base, corruption, 1)
            take = np.random.RandomState(SEED + 2).permutation(len(y_held))[:HELD_OUT_CAP]
            h_held, y_held = _features(front, x_held[take]), y_held[take]
            doc.setdefault("pools", {})[f"{model_name}/{corruption}"] = {
                "repair_half_failures": int(len(y_rep)), "held_out_failures_used": int(len(y_held)), "origin": origin}
            data = ((x_rep, y_rep), (h_test, y), (h_held, y_held), base_acc)
            if args.finetune_only:
                for row in doc["rows"]:
                    if row["model"] == model_name and row["corruption"] == corruption and "finetune" in row:
                        xs, ys = _repair_set(data, row["requested_size"])
                        row["finetune"] = _finetune_row(net, xs, ys, h_test, y, h_held, y_held, base_acc)
                        save()
                continue
            for size in args.sizes:
                for layer in args.layers:
                    if layer in caps and size > caps[layer]:
                        doc["skipped"].append({"model": model_name, "corruption": corruption, "size": size,
                                               "layer": layer, "why": f"--max-points-layer {layer}={caps[layer]}"})
                        continue
                    row = run_row(net, data, model_name, corruption, size, layer, args)
                    doc["rows"] = [r for r in doc["rows"] if key(r) != key(row)] + [row]
                    save()
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
