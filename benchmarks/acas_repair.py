"""ACAS Xu N2,9: repair the violations of φ2 and φ8 over boxes, then certify φ1-φ4 and φ8.

Following the APRNN evaluation, each property's input region is cut into a grid of small boxes
and the certification engine sorts them:

* φ2: CROWN (with falsification) on every box, then the complete check (``--box-timeout`` s per
  box) on the rest. Every box that is not certified (violated, or undecided) is repaired, so the
  repaired boxes cover the whole violating part of φ2's region (``--cover counterexamples``:
  only the boxes with a counterexample).
* φ8: its disjunctive property defeats CROWN on boxes of any size we can afford (0 of 256 boxes
  certified at this grid, and a uniform split reaches 40k open boxes by depth 16), so with the
  default cover every box is repaired and φ8 ends up certified on its whole region;
  ``--cover counterexamples`` repairs only the boxes where falsification finds a counterexample.

By default both sets are repaired in one network at its last layer over interval hulls
(``--hull interval``: each box's CROWN bounds at the last layer's input, no shift LP), keeping
the advisory of ``--keep`` points sampled in the input domain outside the repaired boxes.
``--hull exact`` runs APRNN's shift and assert LPs instead, one network per property at the
layers of ``--layers`` (or all together with ``--joint K``). Then φ1, φ2, φ3, φ4 and φ8 are
certified by the engine on every repaired box (its intersection with each property's region);
as regression checks φ1, φ3, φ4 on their whole regions, and each repaired property again on the
boxes of its grid that were certified before the repair. Drawdown: the fraction of points
sampled in the boxes that were not repaired whose advisory (the minimal score) changed, and the
same over the whole input domain.

Writes benchmarks/results/acas_repair.json.

    python benchmarks/acas_repair.py                        # defaults
    python benchmarks/acas_repair.py --hull exact --layers 2:6,8:1 --cover counterexamples
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"
RESULTS = HERE / "results" / "acas_repair.json"
PROPERTIES = (1, 2, 3, 4, 8)


def grid(region, splits):
    from provrepair.specs import Box

    lo, hi = region.bounds()
    edges = [np.linspace(lo[d], hi[d], s + 1) for d, s in enumerate(splits)]
    return [Box(np.array([edges[d][i] for d, i in enumerate(idx)]), np.array([edges[d][i + 1] for d, i in enumerate(idx)]))
            for idx in itertools.product(*[range(s) for s in splits])]


def intersect(box, region):
    from provrepair.specs import Box

    lo = np.maximum(box.lower, region.bounds()[0])
    hi = np.minimum(box.upper, region.bounds()[1])
    return Box(lo, hi) if np.all(lo <= hi) else None


def advisory(net, x):
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=torch.float32)).argmin(1).numpy()



def sort_boxes(net, boxes, prop, *, complete: bool, box_timeout: float):
    """CROWN (with falsification) on every box, then, if ``complete``, the complete check on the
    boxes CROWN leaves open. Returns (verdict statuses per box, counts per step)."""
    import provrepair
    from provrepair.specs import RegionSpec

    spec = RegionSpec(tuple(boxes), tuple([prop] * len(boxes)))
    t0 = time.perf_counter()
    crown = provrepair.certify(net, spec, method="crown")
    status = [v.status for v in crown.verdicts]
    steps = {"crown": dict(crown.counts, seconds=time.perf_counter() - t0)}
    print(f"  CROWN: {crown.summary()}", flush=True)
    open_ = [i for i, s in enumerate(status) if s == "unknown"]
    if complete and open_:
        t0 = time.perf_counter()
        rest = provrepair.certify(net, spec.subset(open_), method="auto", timeout=box_timeout)
        for i, v in zip(open_, rest.verdicts):
            status[i] = v.status
        steps["complete"] = dict(rest.counts, boxes=len(open_), seconds=time.perf_counter() - t0)
        print(f"  complete check on the {len(open_)} open boxes: {rest.summary()}", flush=True)
    return status, steps


def certify_parts(net, boxes, region, prop, box_timeout: float) -> dict:
    """The property on each box's intersection with its region (boxes that miss it are skipped)."""
    import provrepair
    from provrepair.specs import RegionSpec

    parts = [b for b in (intersect(box, region) for box in boxes) if b is not None]
    if not parts:
        return {"boxes": 0, "certified": 0, "note": "no repaired box meets this property's region"}
    cert = provrepair.certify(net, RegionSpec(tuple(parts), tuple([prop] * len(parts))), method="auto",
                              timeout=box_timeout)
    return dict(cert.counts, boxes=len(parts), seconds=cert.seconds)


def run_repair(net, props, ks, layer, repair_boxes, repair_props, kept_boxes, args, keep) -> dict:
    """Repair the boxes of properties ``ks`` at ``layer``, then certify all five properties on
    them (φ1, φ3, φ4 also on their whole regions) and measure drawdown on the boxes left alone."""
    import provrepair
    from provrepair.specs import RegionSpec

    sel = [i for i, (_, k) in enumerate(repair_props) if k in ks]
    boxes = [repair_boxes[i] for i in sel]
    out: dict = {"layer": layer, "boxes": len(boxes), "properties": [f"phi{k}" for k in ks]}
    print(f"repair of {', '.join(out['properties'])} ({len(boxes)} boxes) at layer {layer}", flush=True)
    t0 = time.perf_counter()
    res = provrepair.repair(net, RegionSpec(tuple(boxes), tuple(repair_props[i][0] for i in sel)), layer=layer,
                            hull=args.hull, keep=keep, delta_bound=args.delta_bound,
                            shift_delta_bound=args.delta_bound, time_limit=args.time_limit,
                            progress=lambda m: print("  " + m, flush=True))
    out["repair"] = {"status": res.status, "message": res.message, "seconds": time.perf_counter() - t0,
                     "delta": res.delta,
                     "lp": {k: res.lp.get(k) for k in ("stages", "vertices", "generators", "disjunctions", "kept")},
                     "certificate": None if res.certificate is None else res.certificate.counts}
    print(f"  {res.status}: {res.message} ({out['repair']['seconds']:.1f} s)", flush=True)
    if res.model is None:
        return out
    repaired = res.model
    t0 = time.perf_counter()
    after, whole = {}, {}
    for k in PROPERTIES:
        region, prop = props[k]
        after[f"phi{k}"] = certify_parts(repaired, boxes, region, prop, args.box_timeout)
        print(f"  phi{k} on the repaired boxes: {after[f'phi{k}']}", flush=True)
    for k in (1, 3, 4):
        region, prop = props[k]
        cert = provrepair.certify(repaired, RegionSpec((region,), (prop,)), method="auto", timeout=60)
        whole[f"phi{k}"] = {"status": cert.verdicts[0].status, "seconds": cert.seconds,
                            "decided_by": cert.verdicts[0].method}
        print(f"  phi{k} on its whole region: {whole[f'phi{k}']}", flush=True)
    for k in ks:  # the boxes that were certified before the repair, and were not repaired
        region, prop = props[k]
        before = [b for kk, b, st in kept_boxes if kk == k and st == "certified"]
        if before:
            status, _ = sort_boxes(repaired, before, prop, complete=True, box_timeout=args.box_timeout)
            whole[f"phi{k}_other_boxes"] = {"boxes": len(before), **{s: status.count(s) for s in
                                                                    ("certified", "violated", "unknown")}}
            print(f"  phi{k} on the {len(before)} boxes certified before: {whole[f'phi{k}_other_boxes']}", flush=True)
    out["certified_after"] = after
    out["whole_regions_after"] = whole
    out["certify_after_seconds"] = time.perf_counter() - t0
    out["all_repaired_boxes_certified"] = all(v["certified"] == v["boxes"] for v in after.values())
    rng = np.random.default_rng(0)
    drawdown = {}
    for k in ks:
        mine = [b for kk, b, _ in kept_boxes if kk == k]
        if mine:
            pts = np.concatenate([b.sample(args.samples, rng) for b in mine])
            changed = advisory(net, pts) != advisory(repaired, pts)
            drawdown[f"phi{k}"] = {"boxes": len(mine), "points": len(pts),
                                   "advisory_changed": float(changed.mean())}
            print(f"  drawdown phi{k}: {changed.mean():.4%} of {len(pts)} points in {len(mine)} boxes", flush=True)
    domain = domain_box(net)
    pts = domain.sample(args.samples * 1000, rng)
    changed = advisory(net, pts) != advisory(repaired, pts)
    drawdown["domain"] = {"points": len(pts), "advisory_changed": float(changed.mean())}
    print(f"  drawdown over the input domain: {changed.mean():.4%} of {len(pts)} points", flush=True)
    out["drawdown"] = drawdown
    return out


def domain_box(net):
    """The network's input domain, as the .nnet file states it (physical units)."""
    from provrepair.models import get_meta
    from provrepair.specs import Box

    extra = get_meta(net).extra
    return Box(np.asarray(extra["input_min"], dtype=np.float64), np.asarray(extra["input_max"], dtype=np.float64))


def keep_points(net, repaired_boxes, n: int, rng):
    """``n`` points sampled in the input domain outside the repaired boxes, each held to its
    current advisory (its minimal score stays below every other score)."""
    from provrepair.specs import PointSpec

    pts = domain_box(net).sample(4 * n, rng)
    inside = np.zeros(len(pts), dtype=bool)
    for b in repaired_boxes:
        inside |= np.all((pts >= b.lower) & (pts <= b.upper), axis=1)
    pts = pts[~inside][:n]
    adv = advisory(net, pts)
    n_out = 5
    A = np.zeros((len(pts), n_out - 1, n_out))
    for i, a in enumerate(adv):
        others = [j for j in range(n_out) if j != a]
        A[i, np.arange(n_out - 1), a] = 1.0
        A[i, np.arange(n_out - 1), others] = -1.0
    return PointSpec.from_arrays(pts, A=A, b=np.zeros((len(pts), n_out - 1)), source="acas keep points")


def main() -> None:
    import provrepair
    from provrepair.fileio import write_text_atomic
    from provrepair.specs import read_vnnlib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--grid2", default="2,32,16,1,1", help="splits of φ2's region per input")
    ap.add_argument("--grid8", default="4,8,2,2,2", help="splits of φ8's region per input")
    ap.add_argument("--hull", choices=("interval", "exact"), default="interval",
                    help="interval: last layer over CROWN interval hulls, both properties in one network; "
                         "exact: APRNN's shift and assert LPs")
    ap.add_argument("--layers", default="2:6,8:1", help="--hull exact: assert layer (affine index) per property")
    ap.add_argument("--joint", type=int, help="--hull exact: repair φ2's and φ8's boxes together at this layer")
    ap.add_argument("--keep", type=int, default=1000,
                    help="points sampled in the input domain outside the repaired boxes whose advisory the repair "
                         "keeps (0: none)")
    ap.add_argument("--properties", default="2,8", help="whose violations to repair: 2, 8 or 2,8")
    ap.add_argument("--cover", choices=("undecided", "counterexamples"), default="undecided",
                    help="the repair sets: every box not certified, or only boxes with a counterexample")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per LP")
    ap.add_argument("--delta-bound", type=float, default=10.0, help="bound on every weight change (shift and assert)")
    ap.add_argument("--box-timeout", type=float, default=2.0, help="complete-check seconds per box")
    ap.add_argument("--samples", type=int, default=100, help="drawdown samples per box that is not repaired")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    net_path = args.bench / "ACASXU_run2a_2_9_batch_2000.nnet"
    if not net_path.exists():
        raise SystemExit(f"{net_path} not found: run from a checkout with ../shared beside it, or pass --bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = provrepair.load_model(net_path)
    props = {k: read_vnnlib(HERE / "acasxu" / f"prop_{k}.vnnlib")[0] for k in PROPERTIES}
    result: dict = {"benchmark": "acas_repair", "network": net_path.name,
                    "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    # 1. cut φ2's and φ8's regions into boxes and sort them
    repair_boxes, repair_props, kept_boxes, partition = [], [], [], {}
    t0 = time.perf_counter()
    wanted = [int(k) for k in args.properties.split(",")]
    cover = args.cover == "undecided"
    for k, splits, complete in ((2, args.grid2, cover), (8, args.grid8, False)):
        if k not in wanted:
            continue
        region, prop = props[k]
        boxes = grid(region, [int(s) for s in splits.split(",")])
        print(f"phi{k}: {len(boxes)} boxes", flush=True)
        status, steps = sort_boxes(net, boxes, prop, complete=complete, box_timeout=args.box_timeout)
        chosen = [i for i, s in enumerate(status) if s != "certified"] if cover else \
            [i for i, s in enumerate(status) if s == "violated"]
        counts = {s: status.count(s) for s in ("certified", "violated", "unknown")}
        partition[f"phi{k}"] = {"grid": splits, "boxes": len(boxes), "verdicts": counts, "steps": steps,
                                "repaired": len(chosen),
                                "repair_set": "every box not certified" if cover else "boxes with a counterexample"}
        chosen_set = set(chosen)
        repair_boxes += [boxes[i] for i in chosen]
        repair_props += [(prop, k)] * len(chosen)
        kept_boxes += [(k, boxes[i], status[i]) for i in range(len(boxes)) if i not in chosen_set]
    result["partition"] = partition
    result["partition_seconds"] = time.perf_counter() - t0
    print(f"repair set: {len(repair_boxes)} boxes", flush=True)

    # 2. the repairs: one network per property, or one for both with --joint
    layers = dict(kv.split(":") for kv in args.layers.split(","))
    both = "+".join(f"phi{k}" for k in wanted)
    if args.hull == "interval":
        plans = [(both, -1, wanted)]
    elif args.joint is not None:
        plans = [(both, args.joint, wanted)]
    else:
        plans = [(f"phi{k}", int(layers[str(k)]), [k]) for k in wanted]
    keep = keep_points(net, repair_boxes, args.keep, np.random.default_rng(1)) if args.keep else None
    result["keep"] = {"points": 0 if keep is None else len(keep.inputs),
                      "sampled_in": "the network's input domain, outside the repaired boxes"}
    result["repairs"] = {}
    for name, layer, ks in plans:
        result["repairs"][name] = run_repair(net, props, ks, layer, repair_boxes, repair_props, kept_boxes, args,
                                             keep)
    result["all_repaired_boxes_certified"] = all(r.get("all_repaired_boxes_certified", False)
                                                 for r in result["repairs"].values())
    result["total_seconds"] = time.perf_counter() - t_all
    print(f"total {result['total_seconds']:.1f} s", flush=True)
    result["versions"] = {"torch": torch.__version__, "provrepair": getattr(provrepair, "__version__", "?")}
    write_text_atomic(args.out, json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
