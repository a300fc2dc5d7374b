"""VNN-COMP 2021 ACAS Xu: decide the 186 competition instances in one Python process.

Each network is loaded once; each instance runs ``provrepair.certify`` (the full ladder: falsify ->
IBP -> CROWN -> complete) with a per-region ``--timeout``. The expected verdict comes from the
README's violated list (everything else holds). ``--cli-sample N`` also runs N instances through
``python -m provrepair certify`` subprocesses, to report the start-up separately. If ``maraboupy``
imports, Marabou runs on the same instances with the same timeout (an optional side-by-side
baseline); otherwise the reason is recorded.

    python benchmarks/vnncomp_acasxu.py                      # all 186
    python benchmarks/vnncomp_acasxu.py --only 1_4:1,1_9:7   # network a_b : property
    python benchmarks/vnncomp_acasxu.py --limit 20 --timeout 30 --cli-sample 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench" / "acasxu_vnncomp2021"
OUT = ROOT / "benchmarks" / "results" / "vnncomp_acasxu.json"

#: Violated instances per the README (several independent verifiers agreed in VNN-COMP 2021):
#: property 2 on 39 of the 45 networks, properties 3 and 4 on N1,7 N1,8 N1,9, property 7 on N1,9
#: and property 8 on N2,9. The README does not name the six networks on which property 2 holds;
#: we take N3,3 and N4,2 (the networks of N2..N5 on which the literature reports property 2
#: proved), so the other four are among N1,1..N1,9. Property 2 on N1,x is therefore checked by
#: count: at most four of them may end "holds" (a "violated" is always backed by a re-validated
#: counterexample, a "holds" by a sound proof).
P2_HOLDS = {"3_3", "4_2"}
P2_N1_HOLDS = 4


def expected(net: str, prop: int) -> str:
    if prop == 2:
        if net.startswith("1_"):
            return "either"
        return "holds" if net in P2_HOLDS else "violated"
    if prop in (3, 4) and net in ("1_7", "1_8", "1_9"):
        return "violated"
    if (prop, net) in ((7, "1_9"), (8, "2_9")):
        return "violated"
    return "holds"


def agrees(verdict: str, exp: str) -> bool | None:
    """None when undecided; "either" (property 2 on N1,x) agrees instance by instance, and the
    count of its "holds" is checked in the summary."""
    if verdict == "unknown":
        return None
    return exp == "either" or verdict == exp


def instances() -> list[tuple[str, int, Path, Path]]:
    rows = []
    with open(BENCH / "acasxu_instances.csv") as f:
        for onnx, vnnlib, _ in csv.reader(f):
            net = onnx.split("run2a_")[1].split("_batch")[0]
            prop = int(vnnlib.split("_")[1].split(".")[0])
            rows.append((net, prop, BENCH / onnx, BENCH / vnnlib))
    return rows


def verdict_of(cert) -> tuple[str, str]:
    """holds / violated / unknown of an instance (one or more regions), and the methods that decided."""
    statuses = [v.status for v in cert.verdicts]
    methods = sorted({v.method for v in cert.verdicts if v.method})
    if "violated" in statuses:
        return "violated", "+".join(sorted({v.method for v in cert.verdicts if v.status == "violated"}))
    if all(s == "certified" for s in statuses):
        return "holds", "+".join(methods)
    return "unknown", "+".join(methods)


def run_ours(todo, timeout: float) -> list[dict]:
    import provrepair
    from provrepair.specs import RegionSpec

    nets, specs, rows = {}, {}, []
    for net, prop, onnx, vnnlib in todo:
        if net not in nets:
            nets[net] = provrepair.load_model(str(onnx))
        if prop not in specs:
            specs[prop] = RegionSpec.load(str(vnnlib), kind="vnnlib")
        t0 = time.perf_counter()
        cert = provrepair.certify(nets[net], specs[prop], timeout=timeout)
        sec = time.perf_counter() - t0
        v, how = verdict_of(cert)
        exp = expected(net, prop)
        row = {"network": net, "property": prop, "verdict": v, "method": how, "seconds": round(sec, 3),
               "expected": exp, "agree": agrees(v, exp),
               "reasons": [r.reason for r in cert.verdicts if r.status == "unknown"]}
        rows.append(row)
        print(f"N{net} p{prop}: {v:8s} by {how or '-':12s} {sec:7.2f} s  expected {exp}"
              + ("  DISAGREE" if agrees(v, exp) is False else ""), flush=True)
    return rows


def run_cli(todo, timeout: float) -> dict:
    """Instances through the CLI, one process each; start-up is the time of ``--help``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "provrepair", "--help"], capture_output=True, env=env, check=True)
    startup = time.perf_counter() - t0
    # what a certify process pays before its first instance: the interpreter and the imports
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, provrepair, provrepair.certify, provrepair.specs, provrepair.solvers"],
                   capture_output=True, env=env, check=True)
    imports = time.perf_counter() - t0
    rows = []
    for net, prop, onnx, vnnlib in todo:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "provrepair", "certify", str(onnx), "--vnnlib", str(vnnlib),
                            "--timeout", str(timeout), "--quiet"], check=False, capture_output=True, text=True,
                           env=env)
        sec = time.perf_counter() - t0
        rows.append({"network": net, "property": prop, "returncode": p.returncode, "seconds": round(sec, 3),
                     "output": p.stdout.strip().splitlines()[-1:] if p.stdout else []})
        print(f"CLI N{net} p{prop}: rc {p.returncode} {sec:.2f} s", flush=True)
    total = sum(r["seconds"] for r in rows)
    return {"startup_seconds_help": round(startup, 3), "startup_seconds_imports": round(imports, 3),
            "instances": rows, "total_seconds": round(total, 3),
            "total_minus_import_startup": round(total - imports * len(rows), 3)}


def run_marabou(todo, timeout: float) -> dict:
    try:
        from maraboupy import Marabou  # optional baseline, never a dependency
    except Exception as exc:  # noqa: BLE001 - any import failure is recorded, not fatal
        return {"available": False, "reason": f"maraboupy does not import: {type(exc).__name__}: {exc}"}
    rows = []
    opts = Marabou.createOptions(timeoutInSeconds=int(timeout), verbosity=0)
    for net, prop, onnx, vnnlib in todo:
        t0 = time.perf_counter()
        try:
            network = Marabou.read_onnx(str(onnx))
            res = network.solve(propertyFilename=str(vnnlib), options=opts, verbose=False)
            status = res[0] if isinstance(res, (tuple, list)) else str(res)
            v = {"sat": "violated", "unsat": "holds"}.get(str(status), "unknown")
        except Exception as exc:  # noqa: BLE001
            v = f"error: {type(exc).__name__}: {exc}"
        sec = time.perf_counter() - t0
        rows.append({"network": net, "property": prop, "verdict": v, "seconds": round(sec, 3)})
        print(f"Marabou N{net} p{prop}: {v} {sec:.2f} s", flush=True)
    return {"available": True, "instances": rows, "total_seconds": round(sum(r["seconds"] for r in rows), 3)}


def summary(rows: list[dict]) -> dict:
    by_prop: dict[int, dict] = {}
    for r in rows:
        p = by_prop.setdefault(r["property"], {"instances": 0, "seconds": 0.0, "unknown": 0})
        p["instances"] += 1
        p["seconds"] = round(p["seconds"] + r["seconds"], 3)
        p["unknown"] += r["verdict"] == "unknown"
    slow = sorted(rows, key=lambda r: -r["seconds"])[:10]
    return {"instances": len(rows), "decided": sum(r["verdict"] != "unknown" for r in rows),
            "unknown": sum(r["verdict"] == "unknown" for r in rows),
            "disagree": sum(r["agree"] is False for r in rows),
            "p2_n1_holds": sum(r["property"] == 2 and r["network"].startswith("1_") and r["verdict"] == "holds"
                               for r in rows),
            "p2_n1_holds_allowed": P2_N1_HOLDS,
            "holds": sum(r["verdict"] == "holds" for r in rows),
            "violated": sum(r["verdict"] == "violated" for r in rows),
            "total_seconds": round(sum(r["seconds"] for r in rows), 3),
            "median_seconds": round(float(np.median([r["seconds"] for r in rows])), 3) if rows else None,
            "per_property": {str(k): v for k, v in sorted(by_prop.items())},
            "slowest": [f"N{r['network']} p{r['property']}: {r['seconds']} s ({r['method']})" for r in slow]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated a_b:prop instances, e.g. 1_4:1,1_9:7")
    ap.add_argument("--limit", type=int, help="the first N instances of the CSV")
    ap.add_argument("--timeout", type=float, default=80.0, help="complete-check budget per region (s)")
    ap.add_argument("--cli-sample", type=int, default=0, metavar="N", help="also run N instances via the CLI")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small batched ops run best on one)")
    ap.add_argument("--no-marabou", action="store_true", help="skip the optional Marabou baseline")
    ap.add_argument("--marabou-sample", type=int, default=0, metavar="N",
                    help="run Marabou on N evenly spaced instances only (default: all of them)")
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default {OUT} for full runs)")
    args = ap.parse_args(argv)
    if not BENCH.is_dir():
        print(f"needs {BENCH} (the VNN-COMP 2021 ACAS Xu files)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    todo = instances()
    if args.only:
        want = {(a, int(p)) for a, p in (s.split(":") for s in args.only.split(","))}
        todo = [t for t in todo if (t[0], t[1]) in want]
    if args.limit:
        todo = todo[: args.limit]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = run_ours(todo, args.timeout)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    result = {"benchmark": "VNN-COMP 2021 ACAS Xu (186 instances)", "timeout_per_region": args.timeout,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                          # 1/5/15-minute load averages (the cores may be shared with other work)
                          "load_before": [round(v, 2) for v in load_before],
                          "load_after": [round(v, 2) for v in load_after]},
              "summary": dict(summary(rows), wall_seconds_including_loading=round(wall, 3)), "instances": rows}
    s = result["summary"]
    print(f"\n{s['decided']}/{s['instances']} decided, {s['unknown']} unknown, {s['disagree']} disagree, "
          f"total {s['total_seconds']:.1f} s (median {s['median_seconds']} s)")
    for p, v in s["per_property"].items():
        print(f"  property {p}: {v['instances']} instances, {v['seconds']:.1f} s, {v['unknown']} unknown")
    if args.cli_sample:
        step = max(1, len(todo) // args.cli_sample)
        result["cli_sample"] = run_cli(todo[::step][: args.cli_sample], args.timeout)
        cli = result["cli_sample"]
        same = {(r["network"], r["property"]): r["seconds"] for r in rows}
        for r in cli["instances"]:
            r["in_process_seconds"] = same.get((r["network"], r["property"]))
        print(f"CLI: start-up {cli['startup_seconds_help']:.2f} s for --help, {cli['startup_seconds_imports']:.2f} s "
              "for the imports of certify, per process")
    if not args.no_marabou:
        picked = todo
        if args.marabou_sample:
            step = max(1, len(todo) // args.marabou_sample)
            picked = todo[::step][: args.marabou_sample]
        result["marabou"] = run_marabou(picked, args.timeout)
        m = result["marabou"]
        if m.get("available"):
            keys = {(n, p) for n, p, *_ in picked}
            ours = sum(r["seconds"] for r in rows if (r["network"], r["property"]) in keys)
            m["ours_total_seconds_same_instances"] = round(ours, 3)
            ratio = ours / max(m["total_seconds"], 1e-9)
            m["ratio_ours_over_marabou"] = round(ratio, 3)
            print(f"Marabou on {len(picked)} instances: {m['total_seconds']:.1f} s, ours {ours:.1f} s; "
                  f"ours/Marabou = {ratio:.2f}")
        else:
            print(m["reason"])
    out = args.out or (OUT if not (args.only or args.limit) else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
