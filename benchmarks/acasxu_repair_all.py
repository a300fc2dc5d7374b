"""ACAS Xu (VNN-COMP 2021): repair the violated instances, each certified on its whole region (issue 21).

Per network, its violated properties (the benchmark README's list: φ3, φ4 on N1,7 N1,8 N1,9, φ7 on
N1,9, φ8 on N2,9, and φ2 on 39 networks, which ones being decided here by the independent check's
"before" step: a φ2 that holds is reported as such) are repaired together with
``repair.property_repair`` (adaptive CROWN partition; one interval-hull LP at the last layer over
up to four pieces per part; 3,000 advisories sampled in the domain, outside where a part's
property fails, kept as soft rows), then

* every repaired property is certified on its **whole** region by ``certify.complete`` (input
  splitting with its own DeepPoly bounds down to exact MILP leaves, from the repaired weights);
* every other property of 1–10 that applies to that network (``acasxu_instances.csv``) is
  certified again by the engine (then by the independent check where the engine ends unknown);
* the share of 100,000 uniform samples of the input domain (φ7's region) whose advisory changed.

One process, one torch thread, HiGHS with one thread. Resumable: each network's record is kept
under ``--work``; ``--budget`` stops starting networks after that many seconds. Writes
``benchmarks/results/acasxu_repair_all.json`` and ``.md``.

    python benchmarks/acasxu_repair_all.py --only 2_9 --budget 600
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench" / "acasxu_vnncomp2021"
RESULTS = HERE / "results" / "acasxu_repair_all.json"
NETS = [f"{a}_{b}" for a in range(1, 6) for b in range(1, 10)]
#: The README's violated instances other than φ2 (network -> properties).
OTHER_VIOLATED = {"1_7": [3, 4], "1_8": [3, 4], "1_9": [3, 4, 7], "2_9": [8]}
#: Which networks first: the φ2-only networks (most of the 47), then N2,9 (φ2 + φ8), then N1,7-N1,9.
ORDER = [n for n in NETS if n not in OTHER_VIOLATED and not n.startswith("1_")] + \
        [n for n in NETS if n.startswith("1_") and n not in OTHER_VIOLATED] + ["2_9", "1_7", "1_8", "1_9"]


def _net(bench: Path, n: str) -> Path:
    return bench / f"ACASXU_run2a_{n}_batch_2000.onnx"


def jobs(bench: Path, only: list[str] | None, options: dict) -> list[dict]:
    import csv

    applicable: dict[str, list[int]] = {}
    with open(bench / "acasxu_instances.csv") as f:
        for row in csv.reader(f):
            if row:
                n = row[0].split("run2a_")[1].split("_batch")[0]
                applicable.setdefault(n, []).append(int(row[1].split("_")[1].split(".")[0]))
    out = []
    for n in ORDER:
        if only and n not in only:
            continue
        targets = [2] + OTHER_VIOLATED.get(n, [])
        preserve = [p for p in sorted(applicable[n]) if p not in targets]
        prop = lambda p: str(bench / f"prop_{p}.vnnlib")
        out.append({"key": f"N{n}", "net": str(_net(bench, n)), "targets": [prop(p) for p in targets],
                    "preserve": [prop(p) for p in preserve], "domain": prop(7), "options": dict(options)})
    return out


def held_before(rec: dict) -> list[dict]:
    """The properties of a network that held before its repair and must still hold: those to
    preserve, and targets that the before step certified (N1,7 phi2 held, and the repair of phi3
    and phi4 broke it: it counted as nothing to preserve)."""
    return [q for q in rec.get("properties", [])
            if q["role"] == "preserve" or (q.get("before") or {}).get("status") == "certified"]


def markdown(records: list[dict]) -> str:
    from provrepair.repair.batch import summary_table

    return summary_table(records)


def main() -> None:
    from dataclasses import asdict

    import torch

    import provrepair
    from provrepair.fileio import write_text_atomic
    from provrepair.repair.batch import run_batch
    from provrepair.repair.property_repair import PropertyRepairOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--work", type=Path, default=Path("/tmp/acasxu_repair_all"),
                    help="per-network records (resumable) and repaired models")
    ap.add_argument("--only", help="networks, e.g. 2_9,3_3 (default: all, in the order of ORDER)")
    ap.add_argument("--budget", type=float, default=float("inf"), help="start no network after this many seconds")
    ap.add_argument("--split-depth", type=int, default=10)
    ap.add_argument("--keep-samples", type=int, default=None, help="kept advisories (default: the options')")
    ap.add_argument("--keep-refine", type=int, default=None, help="refinement LPs (default: the options')")
    ap.add_argument("--max-open", type=int, default=None, help="open parts per level at most (default: the options')")
    ap.add_argument("--certify-timeout", type=float, default=120.0)
    ap.add_argument("--keep-soft", type=float, default=None,
                    help="cost of a broken kept advisory per unit of output slack (default: PropertyRepairOptions')")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--summarize", action="store_true", help="write the results from the records under --work only")
    args = ap.parse_args()
    if not (args.bench / "acasxu_instances.csv").exists():
        raise SystemExit(f"{args.bench} not found: run from a checkout with ../shared beside it, or pass --bench")
    torch.set_num_threads(1)
    options = {"split_depth": args.split_depth, "certify_timeout": args.certify_timeout}
    options.update({k: getattr(args, k) for k in ("keep_soft", "keep_samples", "keep_refine", "max_open")
                    if getattr(args, k) is not None})  # given: else PropertyRepairOptions' default
    todo = jobs(args.bench, args.only.split(",") if args.only else None, options)
    t0 = time.perf_counter()
    records = []
    for job in todo:
        if args.summarize:  # only the records already under --work
            path = args.work / "records" / f"{job['key']}.json"
            if path.exists():
                records.append(json.loads(path.read_text()))
            continue
        if time.perf_counter() - t0 > args.budget:
            print(f"budget of {args.budget:g} s spent: {job['key']} and later not started", flush=True)
            break
        load0 = os.getloadavg()
        path = args.work / "records" / f"{job['key']}.json"
        fresh = not path.exists()
        rec = run_batch([job], args.work, executor="serial")[0]
        if fresh:  # the machine's load average (1, 5, 15 min) when the network started and ended
            rec["load_average"] = {"start": list(load0), "end": list(os.getloadavg())}
            write_text_atomic(path, json.dumps(rec, indent=2, default=str) + "\n")
        records.append(rec)
        print(f"{job['key']}: {rec.get('status')} in {rec.get('seconds', 0):.1f} s: {rec.get('message', '')[:200]}",
              flush=True)
    secs = [r["seconds"] for r in records if r.get("status") != "already holds"]
    instances = []
    for r in records:
        for p in r.get("properties", []):
            if p["role"] == "repair":
                after = p.get("after") or {}
                instances.append({"network": r["key"], "property": p["property"],
                                  "violated_before": p["before"]["status"] == "violated",
                                  "before": p["before"]["status"], "after": after.get("status"),
                                  "decided_by": after.get("decided_by"),
                                  "engine_after": (after.get("engine") or {}).get("status"),
                                  "network_status": r.get("status"), "seconds": r.get("seconds"),
                                  "advisory_changed": (r.get("fidelity") or {}).get("share"),
                                  "preserved_certified": all((q.get("after") or {}).get("status") == "certified"
                                                             for q in held_before(r))})
    for i in instances:  # the acceptance, per instance (the 45 s is a median, reported below)
        if i["network_status"] == "infeasible":  # a later round failed: no model, whatever round 1 certified
            i["after"] = i["engine_after"] = None
        i["meets_acceptance"] = bool(i["after"] == "certified" and i["preserved_certified"]
                                     and i["advisory_changed"] is not None and i["advisory_changed"] <= 0.01)
    violated = [i for i in instances if i["before"] != "certified"]
    summary = {
        "networks_run": len(records), "networks_planned": len(todo),
        "instances_needing_repair": len(violated),
        "instances_repaired_and_certified": sum(i["after"] == "certified" for i in violated),
        "instances_already_holding": sum(i["before"] == "certified" for i in instances),
        "instances_certified_by_the_engine_only": sum(i["after"] != "certified" and i["engine_after"] == "certified"
                                                      for i in violated),
        "instances_lp_failed": sum(i["after"] is None for i in violated),
        "preserved_all_certified": all(all((p.get("after") or {}).get("status") == "certified" for p in held_before(r))
                                       for r in records if r.get("status") == "certified"),
        "instances_meeting_acceptance": sum(i["meets_acceptance"] for i in violated),
        "advisory_changed": [r["fidelity"]["share"] for r in records if r.get("fidelity")],
        "advisory_changed_at_most_1_percent": sum(r["fidelity"]["share"] <= 0.01 for r in records if r.get("fidelity")),
        "seconds_per_repaired_network": {"median": statistics.median(secs) if secs else None,
                                         "max": max(secs) if secs else None, "total": sum(secs)},
        # every network's seconds, the ones whose target already held included (the 30 min)
        "all_networks_seconds": sum(r.get("seconds", 0.0) for r in records),
        "this_invocation_seconds": time.perf_counter() - t0,  # a --summarize or --only run: not the benchmark
    }
    result = {"benchmark": "acasxu_repair_all", "summary": summary, "instances": instances,
              "options": {**options, **{k: v for k, v in asdict(PropertyRepairOptions()).items()
                                        if k not in options and k != "domain"}},
              "machine": (f"{os.cpu_count()} cores; each network in one process, one torch thread, HiGHS one "
                          "thread (runs may share the cores: see the load average at each network's start and "
                          "end, records[*].load_average)"),
              "load_average_per_network": {r["key"]: r.get("load_average") for r in records},
              "records": records, "versions": {"torch": torch.__version__, "provrepair": provrepair.__version__}}
    write_text_atomic(args.out, json.dumps(result, indent=2, default=str) + "\n")
    md = (f"# ACAS Xu repair (issue 21)\n\n{summary['networks_run']} of {len(todo)} planned networks run; "
          f"{summary['instances_repaired_and_certified']} of {summary['instances_needing_repair']} instances that "
          f"needed repair repaired and certified on their whole region; {summary['instances_already_holding']} "
          "targets already held (the independent check, or the engine where it was unknown).\n\n" + markdown(records))
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
