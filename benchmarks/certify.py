"""Certification benchmark: ACAS Xu N2,9 properties and L∞ robustness of the ERAN MNIST 9x100 net.

(a) ACAS Xu N2,9, properties φ1, φ2, φ3, φ4, φ8 (benchmarks/acasxu/*.vnnlib): verdict, the step
    that decided it and its time, with ``method=auto``.
(b) mnist_relu_9_100.tf on the first 100 MNIST test images, L∞ boxes of radius 0.005, 0.01, 0.02
    (clipped to [0, 1]), required: the true label: fraction certified by IBP, by CROWN and by the
    complete check (auto: falsification, bounds, then the MILP with a per-image budget), and the
    time per image of each; CROWN also timed one image at a time.
(c) the mean output-bound width of IBP and CROWN on the same boxes.

Writes benchmarks/results/certify.json.

    python benchmarks/certify.py                      # everything (about 15-25 minutes on 2 cores)
    python benchmarks/certify.py --skip-milp          # (b) without the complete check
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"
RESULTS = HERE / "results" / "certify.json"
ACAS_PROPERTIES = (1, 2, 3, 4, 8)
RADII = (0.005, 0.01, 0.02)


def acas(bench: Path, timeout: float) -> list[dict]:
    import provrepair
    from provrepair.specs import read_vnnlib

    net = provrepair.load_model(bench / "ACASXU_run2a_2_9_batch_2000.nnet")
    rows = []
    for k in ACAS_PROPERTIES:
        spec = read_vnnlib(HERE / "acasxu" / f"prop_{k}.vnnlib")
        t0 = time.perf_counter()
        cert = provrepair.certify(net, spec, method="auto", timeout=timeout)
        seconds = time.perf_counter() - t0
        v = cert.verdicts[0]
        row = {"property": f"phi{k}", "verdict": v.status, "decided_by": v.method, "seconds": seconds,
               "reason": v.reason, "stats": v.stats}
        if v.counterexample is not None:
            row["counterexample"] = v.counterexample.reshape(-1).tolist()
            row["output"] = v.output.tolist()
            row["revalidated"] = bool(spec.properties[0].violated(v.output[None])[0] >= 0)
        print(f"ACAS N2,9 phi{k}: {v.status} by {v.method or '-'} in {seconds:.2f} s  {v.stats or ''}", flush=True)
        rows.append(row)
    return rows


def mnist(bench: Path, n: int, timeout: float, skip_milp: bool, single: int) -> dict:
    import provrepair
    from provrepair.certify.bounds import BoundPropagator, InputSet
    from provrepair.data import load_dataset
    from provrepair.specs import RegionSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trailing ReLU on the logits is dropped, as documented
        net = provrepair.load_model(bench / "mnist_relu_9_100.tf")
    x, y = load_dataset("mnist", "test")
    x = x[:n].reshape(n, -1).astype(np.float64)
    y = y[:n].astype(np.int64)
    with torch.no_grad():
        clean = net(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    out = {"images": n, "clean_correct": int((clean == y).sum()), "radii": {}}
    prop = BoundPropagator(net)
    for eps in RADII:
        lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
        spec = RegionSpec.boxes(lo, hi, labels=y, n_outputs=10)
        row = {}
        for method in ("ibp", "crown"):
            t0 = time.perf_counter()
            cert = provrepair.certify(net, spec, method=method)
            dt = time.perf_counter() - t0
            c = cert.counts
            row[method] = {"certified": c["certified"] / n, "violated": c["violated"] / n,
                           "seconds_per_image": dt / n}
        # CROWN one image at a time, the bounds alone (no falsification), as a user calling it per image
        t0 = time.perf_counter()
        for i in range(single):
            C = np.delete(np.eye(10)[y[i]] - np.eye(10), y[i], axis=0)
            prop.bounds(InputSet.box(lo[i:i + 1], hi[i:i + 1]), C, method="crown")
        row["crown_bounds_single_image_seconds"] = (time.perf_counter() - t0) / single
        # (c) widths of the 10 output bounds
        inp = InputSet.box(lo, hi)
        w_ibp = prop.bounds(inp, method="ibp")
        w_crown = prop.bounds(inp, method="crown")
        wi = float((w_ibp.upper - w_ibp.lower).mean())
        wc = float((w_crown.upper - w_crown.lower).mean())
        row["mean_output_width"] = {"ibp": wi, "crown": wc, "ibp_over_crown": wi / wc}
        if not skip_milp:
            t0 = time.perf_counter()
            cert = provrepair.certify(net, spec, method="auto", timeout=timeout)
            dt = time.perf_counter() - t0
            c = cert.counts
            by = {}
            for v in cert.verdicts:
                key = f"{v.status}:{v.method or '-'}"
                by[key] = by.get(key, 0) + 1
            milp_times = [v.seconds for v in cert.verdicts if "milp" in (v.method or "") or v.status == "unknown"]
            row["complete"] = {"certified": c["certified"] / n, "violated": c["violated"] / n,
                               "unknown": c["unknown"] / n, "seconds_per_image": dt / n, "decided_by": by,
                               "timeout_per_image": timeout,
                               "milp_seconds_max": max(milp_times) if milp_times else 0.0}
        out["radii"][str(eps)] = row
        print(f"MNIST 9x100 eps={eps}: " + json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=10.0, help="complete-check seconds per MNIST image")
    ap.add_argument("--acas-timeout", type=float, default=300.0, help="complete-check seconds per ACAS property")
    ap.add_argument("--single", type=int, default=20, help="images timed one at a time with CROWN")
    ap.add_argument("--skip-milp", action="store_true")
    ap.add_argument("--skip-acas", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    # one thread: on a shared 2-core machine two torch threads were up to 100x slower on these
    # small matrices (they spin while the other core is busy)
    torch.set_num_threads(1)
    from provrepair import solvers

    result = {"machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "highs": solvers.create("highs").version},
              "options": {"images": args.images, "timeout_per_image": args.timeout,
                          "acas_timeout": args.acas_timeout}}
    t0 = time.perf_counter()
    if not args.skip_acas:
        result["acas"] = acas(args.bench, args.acas_timeout)
        result["acas_total_seconds"] = sum(r["seconds"] for r in result["acas"])
    result["mnist"] = mnist(args.bench, args.images, args.timeout, args.skip_milp, args.single)
    result["total_seconds"] = time.perf_counter() - t0
    from provrepair.fileio import write_text_atomic
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
