"""Box repair benchmark: how the provable repair's time grows with the number of box vertices.

Network ``mnist_relu_9_100.tf``. The image is the first MNIST test image that the network gets right
when clean and wrong when fogged (fog severity 2 from the corruption suite, applied to the whole
test set with seed 0, as in ``mnist_polytopes.py``). The pixels are the ones the misclassification
is most sensitive to: sorted by ``|d(y[label] - y[predicted]) / dx|`` at the fogged image, so the
``n``-pixel set is contained in the ``n+1``-pixel set. For ``n = 5 .. 12`` the region is the L-infinity
box of radius 0.1 over the first ``n`` of those pixels (others fixed, clipped to [0, 1]):
``2**n`` vertices; required: the true label. ``provrepair.repair(net, spec, layer=K)`` (default
K = 8, the last affine layer) repairs it and the certification engine certifies it.

Per size: status, time per stage (shift LPs, assert LP, certification), the LP sizes, certified
or not (and by which step), MNIST test drawdown. Each size runs in its own process with a
wall-clock cap (``--cap``, default 240 s) and an address-space limit (``--memory-gb``); a size that
hits either is reported as capped, and the larger sizes are then skipped (time only grows).

Both box encodings run side by side: ``generators`` (the default for such boxes: centre plus one
generator per free pixel, rows linear in n) and ``corners`` (2^n vertices); the summary has the
time ratio corners/generators per size where both finished.

Writes benchmarks/results/box_repair.json.

    python benchmarks/box_repair.py                  # sizes 5..12, both box encodings
    python benchmarks/box_repair.py --sizes 5 6 7    # only those
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"
RESULTS = HERE / "results" / "box_repair.json"

SEVERITY = 2
RADIUS = 0.1
DEFAULT_SIZES = tuple(range(5, 13))
DEFAULT_LAYER = 8


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def setup(bench: Path):
    """The network, the test set, the chosen fogged image, its label and the pixel ranking."""
    import warnings

    import numpy as np
    import torch

    import provrepair
    from provrepair.data import corrupt, load_dataset
    from provrepair.evaluate.metrics import predictions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trailing ReLU on the logits is dropped, as documented
        net = provrepair.load_model(bench / "mnist_relu_9_100.tf")
    x, y = load_dataset("mnist", "test")
    fog = corrupt(x, "fog", SEVERITY, seed=0)
    wrong = np.flatnonzero((predictions(net, x) == y) & (predictions(net, fog) != y))
    i = int(wrong[0])
    img, label = fog[i], int(y[i])
    xt = torch.tensor(img.reshape(1, -1), requires_grad=True)
    out = net(xt)
    pred = int(out.argmax())
    (out[0, label] - out[0, pred]).backward()
    ranking = np.argsort(-xt.grad.abs().numpy().reshape(-1), kind="stable")
    return net, x, y, {"test_index": i, "label": label, "predicted": pred, "image": img, "ranking": ranking}


def run_size(n: int, layer: int, bench: Path, encoding: str) -> dict:
    import numpy as np
    import torch

    import provrepair
    from provrepair.evaluate.metrics import accuracy
    from provrepair.specs import RegionSpec, pixel_box

    torch.set_num_threads(1)
    net, x, y, chosen = setup(bench)
    pixels = chosen["ranking"][:n]
    box = pixel_box(chosen["image"], pixels, RADIUS)
    spec = RegionSpec((box,), (None,), labels=np.array([chosen["label"]]))
    t0 = time.perf_counter()
    result = provrepair.repair(net, spec, layer=layer, box_encoding=encoding)
    wall = time.perf_counter() - t0
    stages = [{k: s.get(k) for k in ("stage", "layer", "status", "size", "seconds", "rounds") if k in s}
              for s in result.lp.get("stages", [])]
    lp_stages = [s for s in stages if s.get("size")]
    row = {"pixels": n, "vertices": 2 ** n, "encoding": encoding, "free_coordinates": int(np.count_nonzero(box.upper > box.lower)),
           "layer": layer, "status": result.status, "certified": result.certified, "message": result.message,
           "stages": stages, "timings": result.timings, "wall_seconds": wall,
           "shift_seconds": sum(s.get("seconds") or 0.0 for s in stages if s["stage"] == "shift"),
           "assert_seconds": sum(s.get("seconds") or 0.0 for s in stages if s["stage"] == "assert"),
           "certify_seconds": result.timings.get("certify", 0.0),
           "shift_lps_needed": sum(1 for s in stages if s["stage"] == "shift" and s["status"] != "not needed"),
           "lp_nonzeros_total": int(sum(s["size"].get("nonzeros", 0) for s in lp_stages)),
           "largest_lp": max((s for s in lp_stages), key=lambda s: s["size"].get("nonzeros", 0), default=None),
           "delta": result.delta, "solver": {k: v for k, v in result.solver.items() if k != "options"},
           "pixel_indices": [int(p) for p in pixels]}
    if result.certificate is not None:
        v = result.certificate.verdicts[0]
        row["certificate"] = {"status": v.status, "method": v.method, "margin": v.margin, "seconds": v.seconds}
    if result.model is not None:
        before, after = accuracy(net, x, y), accuracy(result.model, x, y)
        row["test_accuracy"] = {"before": before, "after": after}
        row["drawdown_pp"] = 100.0 * (before - after)
    row["peak_memory_mb"] = _peak_mb()
    return row


def _limit_memory(gb: float):
    def apply():
        limit = int(gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _spawn(n: int, layer: int, bench: Path, cap: float, memory_gb: float, encoding: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), "--layer", str(layer),
           "--bench", str(bench), "--encoding", encoding]
    t0 = time.perf_counter()
    base = {"pixels": n, "vertices": 2 ** n, "layer": layer, "encoding": encoding}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, check=False,
                              preexec_fn=_limit_memory(memory_gb) if memory_gb else None)
    except subprocess.TimeoutExpired:
        return dict(base, status="capped", reason=f"wall-clock cap of {cap:.0f} s reached",
                    wall_seconds=time.perf_counter() - t0)
    if proc.returncode != 0:
        err = proc.stderr[-1500:]
        memory = "MemoryError" in err or "bad_alloc" in err or proc.returncode in (-9, 137)
        return dict(base, status="capped" if memory else "crashed",
                    reason=f"address-space limit of {memory_gb:g} GB reached" if memory else "worker failed",
                    error=err, wall_seconds=time.perf_counter() - t0)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0
    return res


def _row(r: dict) -> str:
    if r["status"] in ("capped", "crashed", "skipped"):
        return f"{r['encoding']:<10} {r['pixels']:>3} {r['vertices']:>6}  {r['status']:<13} {r.get('reason', '')}"
    big = (r.get("largest_lp") or {}).get("size", {})
    return (f"{r['encoding']:<10} {r['pixels']:>3} {r['vertices']:>6}  {r['status']:<13} shift {r['shift_seconds']:7.1f} s "
            f"({r['shift_lps_needed']} LPs)  assert {r['assert_seconds']:6.1f} s  certify {r['certify_seconds']:5.1f} s  "
            f"total {r['wall_seconds']:7.1f} s  largest LP {big.get('variables', '-')} x {big.get('rows', '-')} "
            f"({big.get('nonzeros', 0) / 1e6:.1f} M nnz)  drawdown {r.get('drawdown_pp', float('nan')):5.2f} pp  "
            f"{(r.get('certificate') or {}).get('method', '')}")


def summarize(rows: list[dict], encodings: list[str]) -> dict:
    """Time per vertex count per encoding, growth ratios, corners/generators ratios, acceptance."""
    finished = lambda r: "wall_seconds" in r and r["status"] not in ("capped", "crashed", "skipped", "error")
    summary = {"time_vs_vertices": {}, "growth": {}}
    for encoding in encodings:
        mine = [r for r in rows if r["encoding"] == encoding]
        summary["time_vs_vertices"][encoding] = [
            {"vertices": r["vertices"], "status": r["status"], "seconds": r.get("wall_seconds") if finished(r) else None}
            for r in mine]
        done = [r for r in mine if finished(r)]
        summary["growth"][encoding] = [{"from_vertices": a["vertices"], "to_vertices": b["vertices"],
                                        "time_ratio": b["wall_seconds"] / max(a["wall_seconds"], 1e-9)}
                                       for a, b in itertools.pairwise(done)]
    if {"generators", "corners"} <= set(encodings):
        by = {(r["encoding"], r["pixels"]): r for r in rows}
        sizes = sorted({r["pixels"] for r in rows})
        summary["corners_over_generators"] = [
            {"vertices": 2 ** n, "time_ratio": by[("corners", n)]["wall_seconds"] / by[("generators", n)]["wall_seconds"]}
            for n in sizes if finished(by[("corners", n)]) and finished(by[("generators", n)])]
    default = encodings[0]
    at_1024 = next((r for r in rows if r["vertices"] == 1024 and r["encoding"] == default), None)
    summary["acceptance_1024_under_120s"] = bool(at_1024 and at_1024["status"] == "certified"
                                                 and at_1024["wall_seconds"] < 120.0)
    summary["all_certified"] = {e: all(r.get("certified") for r in rows if r["encoding"] == e) for e in encodings}
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with the benchmark assets")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES), help="pixel counts (2^n vertices)")
    ap.add_argument("--layer", type=int, default=DEFAULT_LAYER, help=f"assert layer (default {DEFAULT_LAYER})")
    ap.add_argument("--cap", type=float, default=240.0, help="wall-clock seconds per size (default 240)")
    ap.add_argument("--memory-gb", type=float, default=10.0, help="address-space limit per size (default 10 GB)")
    ap.add_argument("--encodings", nargs="*", default=["generators", "corners"],
                    help="box encodings to time side by side (default: generators corners)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--encoding", default="generators", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    if args.worker is not None:
        print(json.dumps(run_size(args.worker, args.layer, args.bench, args.encoding), default=float))
        return 0
    if not (args.bench / "mnist_relu_9_100.tf").exists():
        print(f"benchmark assets not found in {args.bench}; pass --bench DIR", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    import numpy as np
    _, _, _, chosen = setup(args.bench)
    print(f"image: test {chosen['test_index']} fogged (severity {SEVERITY}), label {chosen['label']}, predicted "
          f"{chosen['predicted']}; pixels by |gradient|: {chosen['ranking'][:max(args.sizes)].tolist()}", flush=True)
    print("encoding     n  verts  status        time per stage, LP size, drawdown", flush=True)
    rows = []
    for encoding in args.encodings:
        capped = None
        for n in sorted(args.sizes):
            if capped is not None:
                r = {"pixels": n, "vertices": 2 ** n, "layer": args.layer, "encoding": encoding, "status": "skipped",
                     "reason": f"{capped} pixels already hit the cap; time only grows with the vertex count"}
            else:
                r = _spawn(n, args.layer, args.bench, args.cap, args.memory_gb, encoding)
                if r["status"] in ("capped", "crashed", "error"):
                    capped = n
            print(_row(r), flush=True)
            rows.append(r)
    summary = summarize(rows, args.encodings)
    import highspy
    import torch

    from provrepair.fileio import write_text_atomic
    payload = {
        "benchmark": "box_repair", "network": "mnist_relu_9_100.tf",
        "image": {"test_index": chosen["test_index"], "label": chosen["label"], "fogged_prediction": chosen["predicted"],
                  "corruption": "fog", "severity": SEVERITY, "corruption_seed": 0},
        "boxes": {"radius": RADIUS, "clip": [0.0, 1.0],
                  "pixels": "the n pixels with the largest |d(y[label] - y[predicted]) / dx| at the fogged image "
                            "(nested: each size adds the next pixel)",
                  "ranking": chosen["ranking"][:max(args.sizes)].tolist(), "property": "true label"},
        "layer": args.layer, "cap_seconds": args.cap, "memory_limit_gb": args.memory_gb,
        "summary": summary, "sizes": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": 1},
        "versions": {"highspy": getattr(highspy, "__version__", "?"), "torch": torch.__version__,
                     "numpy": np.__version__},
        "total_seconds": time.perf_counter() - t_start,
    }
    write_text_atomic(args.out, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {args.out} ({payload['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
