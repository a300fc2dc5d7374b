"""MNIST polytope repair benchmark: rotation hulls of misclassified fog-corrupted test images.

Network ``mnist_relu_9_100.tf`` (ERAN 9x100). The MNIST test images are fogged with the corruption
suite (``provrepair.data.corrupt(x, 'fog', SEVERITY, seed=0)`` on the whole 10k test set, as
``provrepair data build`` makes it; a corruption's noise depends on the whole batch, so a subset
fogged alone gets other fog); the repair set is the first 5 test images (in test order) that the
network classifies correctly when clean and wrongly when fogged.
Each becomes a V-polytope: the convex hull of the fogged image rotated by -30, -20, ..., 30 degrees
(``provrepair.specs.rotation_hull``), required: its true label. ``provrepair.repair(net, spec,
layer=K)`` is run at the last few affine layers (each repair is certified by the certification
engine); reported per layer: outcome, how each region was certified, time per stage (shift LPs,
assert LP, certification), MNIST test drawdown (accuracy on the 10k clean test images before minus
after), generalization (accuracy on the same 5 fogged images rotated in 0.1 degree steps from -30
to 30 degrees, before and after) and a sampled check of each polytope. The best layer is the
certified one with the smallest drawdown.

Every repair keeps the labels of ``--keep`` (default 1,000) correctly classified MNIST *training*
images (``provrepair.repair(..., keep=PointSpec)``: their output rows join the assert LP at their
own activation patterns). The same repair without them runs at the last layer alongside, so the
effect of the kept points on drawdown is measured in the same run.

When the acceptance (every polytope certified, drawdown < 3 pp) fails, the script also runs an
investigation at the last layer (the fastest): other objectives, a smaller delta bound, the
polytopes one at a time, other fog severities, another rotation fill mode.

Writes benchmarks/results/mnist_polytopes.json.

    python benchmarks/mnist_polytopes.py                  # about 10 minutes on 2 busy cores
    python benchmarks/mnist_polytopes.py --layers 8 7     # only those assert layers
    python benchmarks/mnist_polytopes.py --investigate never
    python benchmarks/mnist_polytopes.py --keep 0            # no kept points
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"
RESULTS = HERE / "results" / "mnist_polytopes.json"

SEVERITY = 2  # fog severity 1-5: 2 is the mildest at which the network misclassifies a large share
N_IMAGES = 5
ANGLES = np.linspace(-30.0, 30.0, 7)
GEN_ANGLES = np.round(np.arange(-300, 301) / 10.0, 1)  # -30.0, -29.9, ..., 30.0
DEFAULT_LAYERS = (8, 7, 6, 5)
SAMPLES_PER_POLYTOPE = 500
DRAWDOWN_LIMIT_PP = 3.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_net(bench: Path):
    import provrepair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trailing ReLU on the logits is dropped, as documented
        return provrepair.load_model(bench / "mnist_relu_9_100.tf")


def select_images(net, x, y, severity: int, n: int = N_IMAGES, rule: str = "first") -> dict:
    """``n`` test images right when clean and wrong when fogged, with their fogged copies: the
    first in test order (``rule="first"``), or the ``"mildest"`` failures (the largest margin
    ``y[label] - max other`` of the fogged image, i.e. the least wrong)."""
    from provrepair.data import corrupt
    from provrepair.evaluate.metrics import logits, predictions
    fog = corrupt(x, "fog", severity, seed=0)
    clean_pred, out = predictions(net, x), logits(net, fog)
    fog_pred = out.argmax(1)
    cand = np.flatnonzero((clean_pred == y) & (fog_pred != y))
    if rule == "mildest":
        lab = out[cand, y[cand]]
        other = np.where(np.arange(out.shape[1])[None, :] == y[cand][:, None], -np.inf, out[cand]).max(1)
        cand = cand[np.argsort(other - lab, kind="stable")]
    idx = cand[:n]
    return {"indices": idx, "images": fog[idx], "labels": y[idx], "fog_predictions": fog_pred[idx],
            "fog_error_rate": float(np.mean(fog_pred != y)), "severity": severity, "rule": rule}


def build_spec(sel: dict, mode: str = "constant"):
    from provrepair.specs import RegionSpec, rotation_hull
    hulls = [rotation_hull(img, ANGLES, mode=mode) for img in sel["images"]]
    return RegionSpec.polytopes([h.vertices for h in hulls], labels=sel["labels"], n_outputs=10,
                                names=[f"test{i}" for i in sel["indices"]])


def vertex_margins(net, spec) -> list[list[float]]:
    """Per polytope, per vertex: ``y[label] - max other`` of the original network (negative: wrong)."""
    from provrepair.evaluate.metrics import logits
    out = []
    for region, label in zip(spec.regions, spec.labels):
        o = logits(net, region.vertices.astype(np.float32))
        other = np.delete(o, int(label), axis=1).max(1)
        out.append(np.round((o[:, int(label)] - other).astype(np.float64), 3).tolist())
    return out


def generalization_set(sel: dict, mode: str = "constant") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5 fogged images rotated at every 0.1 degree in [-30, 30]; and a mask of the angles that
    are not polytope vertices (multiples of 10 are)."""
    from provrepair.specs import rotations
    xs = np.concatenate([rotations(img, GEN_ANGLES, mode=mode) for img in sel["images"]])
    ys = np.repeat(sel["labels"], len(GEN_ANGLES))
    between = np.tile(np.abs(GEN_ANGLES / 10 - np.round(GEN_ANGLES / 10)) > 1e-9, len(sel["images"]))
    return xs.astype(np.float32), ys, between


def _sampled_violations(model, spec, n: int) -> list[int]:
    """Per polytope: sampled points (vertices, then random convex combinations) whose float64
    output breaks the property. Independent of the certification engine."""
    import copy
    net64 = copy.deepcopy(model).double().eval()
    out = []
    for i, (region, prop) in enumerate(spec):
        pts = region.sample(n, rng=i)
        with torch.no_grad():
            yv = net64(torch.as_tensor(pts.reshape(n, -1), dtype=torch.float64)).numpy()
        out.append(int((~prop.holds(yv)).sum()))
    return out


def _with_layers_from(repaired, original, layer: int):
    """``repaired`` with its affine layers ``layer, layer+1, ...`` taken from ``original``."""
    import copy

    from provrepair.models import affine_layers
    out = copy.deepcopy(repaired)
    for m in affine_layers(original)[layer:]:
        out[m] = copy.deepcopy(original[m])
    return out


def run_repair(net, spec, layer: int, ctx: dict, label: str, **options) -> dict:
    """One ``provrepair.repair`` call with its outcome, stages, certificate and metrics."""
    import provrepair
    from provrepair.evaluate.metrics import accuracy
    t0 = time.perf_counter()
    result = provrepair.repair(net, spec, layer=layer, **options)
    wall = time.perf_counter() - t0
    stages = []
    for s in result.lp.get("stages", []):
        row = {k: s.get(k) for k in ("stage", "layer", "status", "size", "seconds", "regions_needing_shift",
                                     "binaries", "rounds") if k in s}
        stages.append(row)
    if options.get("keep") is not None:
        options = dict(options, keep=f"{len(options['keep'])} kept points")
    row = {"name": label, "layer": layer, "options": options, "kept": result.lp.get("kept"), "status": result.status, "certified": result.certified,
           "message": result.message, "stages": stages, "timings": result.timings, "wall_seconds": wall,
           "delta": result.delta, "solver": {k: v for k, v in result.solver.items() if k != "options"}}
    row["shift_seconds"] = sum(s.get("seconds") or 0.0 for s in stages if s["stage"] == "shift")
    row["assert_seconds"] = sum(s.get("seconds") or 0.0 for s in stages if s["stage"] == "assert")
    row["certify_seconds"] = result.timings.get("certify", 0.0)
    if result.certificate is not None:
        cert = result.certificate
        row["certificate"] = {"counts": cert.counts, "fraction_certified": cert.counts["certified"] / len(spec),
                              "regions": [{"name": spec.names[v.index] if spec.names else v.index,
                                           "status": v.status, "method": v.method, "margin": v.margin,
                                           "seconds": v.seconds} for v in cert.verdicts],
                              "seconds": cert.seconds}
    if result.model is not None:
        after = accuracy(result.model, ctx["x_test"], ctx["y_test"])
        row["test_accuracy"] = {"before": ctx["acc_before"], "after": after}
        row["drawdown_pp"] = 100.0 * (ctx["acc_before"] - after)
        if "x_gen" in ctx:
            g_all = accuracy(result.model, ctx["x_gen"], ctx["y_gen"])
            g_mid = accuracy(result.model, ctx["x_gen"][ctx["between"]], ctx["y_gen"][ctx["between"]])
            row["generalization"] = {"before": ctx["gen_before"], "after": g_all,
                                     "between_vertices_before": ctx["gen_between_before"],
                                     "between_vertices_after": g_mid}
        row["sampled_violations"] = _sampled_violations(result.model, spec, SAMPLES_PER_POLYTOPE)
        # the shift LPs change only the affine layers before `layer`, the assert that layer and later
        # biases: the repaired model with layers >= `layer` put back is the network after the shifts
        shifted = _with_layers_from(result.model, net, layer)
        row["drawdown_shifts_only_pp"] = 100.0 * (ctx["acc_before"] - accuracy(shifted, ctx["x_test"], ctx["y_test"]))
    cert_how = ""
    if "certificate" in row:
        how = {}
        for r in row["certificate"]["regions"]:
            how[r["method"] or r["status"]] = how.get(r["method"] or r["status"], 0) + 1
        cert_how = ", ".join(f"{k}: {v}" for k, v in how.items())
    print(f"{label:<28} layer {layer}: {result.status:<13} shift {row['shift_seconds']:7.1f} s  assert "
          f"{row['assert_seconds']:7.1f} s  certify {row['certify_seconds']:5.1f} s  "
          f"drawdown {row.get('drawdown_pp', float('nan')):6.2f} pp (shifts alone "
          f"{row.get('drawdown_shifts_only_pp', float('nan')):5.2f})  gen {row.get('generalization', {}).get('after', float('nan')):.3f}"
          f"  ({cert_how or result.message[:90]})", flush=True)
    return row


def keep_points(net, n: int, seed: int = 0):
    """``n`` MNIST training images (train split) the network classifies correctly, with their labels."""
    from provrepair.data import load_dataset
    from provrepair.evaluate.metrics import predictions
    from provrepair.specs import PointSpec
    xt, yt = load_dataset("mnist", "train")
    pool = np.random.default_rng(seed).permutation(len(yt))[:4 * n]
    ok = pool[predictions(net, xt[pool]) == yt[pool]][:n]
    return PointSpec.from_arrays(xt[ok].reshape(len(ok), -1), yt[ok])


def _context(net, x, y, sel=None, mode="constant") -> dict:
    from provrepair.evaluate.metrics import accuracy
    ctx = {"x_test": x, "y_test": y, "acc_before": accuracy(net, x, y)}
    if sel is not None:
        xg, yg, between = generalization_set(sel, mode)
        ctx.update(x_gen=xg, y_gen=yg, between=between, gen_before=accuracy(net, xg, yg),
                   gen_between_before=accuracy(net, xg[between], yg[between]))
    return ctx


def investigate(net, x, y, sel, spec, ctx, time_limit) -> list[dict]:
    """Why does the repair cost accuracy? Variants at the last affine layer (the fastest), without
    kept points."""
    rows = []
    last = 8
    for objective in ("linf", "l1"):
        rows.append(run_repair(net, spec, last, ctx, f"objective={objective}", objective=objective,
                               time_limit=time_limit))
    for i in range(len(spec)):
        sub = spec.subset([i])
        rows.append(run_repair(net, sub, last, {k: ctx[k] for k in ("x_test", "y_test", "acc_before")},
                               f"only polytope {spec.names[i]} (label {int(sel['labels'][i])})",
                               time_limit=time_limit))
    for sev in (1, 3):
        other = select_images(net, x, y, sev)
        rows.append(run_repair(net, build_spec(other), last, _context(net, x, y, other),
                               f"fog severity {sev}", time_limit=time_limit))
        rows[-1]["images"] = other["indices"].tolist()
    rows.append(run_repair(net, build_spec(sel, "nearest"), last, _context(net, x, y, sel, "nearest"),
                           "rotation fill 'nearest'", time_limit=time_limit))
    mild = select_images(net, x, y, sel["severity"], rule="mildest")
    rows.append(run_repair(net, build_spec(mild), last, _context(net, x, y, mild),
                           "the 5 mildest failures", time_limit=time_limit))
    rows[-1]["images"] = mild["indices"].tolist()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with the benchmark assets")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--layers", type=int, nargs="*", default=list(DEFAULT_LAYERS), help="assert layers to try")
    ap.add_argument("--severity", type=int, default=SEVERITY, help=f"fog severity 1-5 (default {SEVERITY})")
    ap.add_argument("--select", choices=["first", "mildest"], default="first",
                    help="which misclassified images: the first in test order (default) or the least wrong")
    ap.add_argument("--time-limit", type=float, default=420.0, help="seconds per LP (default 420)")
    ap.add_argument("--keep", type=int, default=1000,
                    help="correctly classified training images whose labels every repair keeps (default 1000; 0: none)")
    ap.add_argument("--hull", choices=["exact", "interval"], default="exact",
                    help="exact (shift LPs, then the assert at the vertices; default) or interval (the last layer "
                         "over CROWN interval hulls: give --layers 8)")
    ap.add_argument("--investigate", choices=["auto", "always", "never"], default="auto",
                    help="run the investigation variants: when the acceptance fails (auto), always or never")
    args = ap.parse_args(argv)
    if not (args.bench / "mnist_relu_9_100.tf").exists():
        print(f"benchmark assets not found in {args.bench}; pass --bench DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE.parent))
    from provrepair.data import load_dataset
    t_start = time.perf_counter()
    net = _load_net(args.bench)
    x, y = load_dataset("mnist", "test")
    sel = select_images(net, x, y, args.severity, rule=args.select)
    spec = build_spec(sel)
    ctx = _context(net, x, y, sel)
    print(f"fog severity {args.severity}: {100 * sel['fog_error_rate']:.1f}% of the fogged test images "
          f"misclassified; repair set: test images {sel['indices'].tolist()} labels {sel['labels'].tolist()} "
          f"(fogged predicted {sel['fog_predictions'].tolist()}); clean test accuracy {ctx['acc_before']:.4f}; "
          f"rotations at 0.1 deg: {ctx['gen_before']:.3f}", flush=True)
    keep = keep_points(net, args.keep) if args.keep else None
    tries = [run_repair(net, spec, k, ctx, f"layer {k}", time_limit=args.time_limit, keep=keep, hull=args.hull)
             for k in args.layers]
    without_keep = None
    if keep is not None:
        without_keep = run_repair(net, spec, max(args.layers), ctx, f"layer {max(args.layers)}, no kept points",
                                  time_limit=args.time_limit, hull=args.hull)
    certified = [t for t in tries if t["certified"]]
    best = min(certified, key=lambda t: t["drawdown_pp"]) if certified else None
    accepted = bool(best and best["drawdown_pp"] < DRAWDOWN_LIMIT_PP
                    and best["certificate"]["counts"]["certified"] == len(spec))
    investigation = []
    if args.investigate == "always" or (args.investigate == "auto" and not accepted):
        print("investigation (last affine layer):", flush=True)
        investigation = investigate(net, x, y, sel, spec, ctx, args.time_limit)
    summary = {"best_layer": best["layer"] if best else None,
               "certified_fraction": best["certificate"]["fraction_certified"] if best else 0.0,
               "drawdown_pp": best["drawdown_pp"] if best else None,
               "generalization": best.get("generalization") if best else None,
               "acceptance": {"every_polytope_certified": bool(best), "drawdown_under_3pp": accepted,
                              "passed": accepted},
               "layers": {t["layer"]: {"status": t["status"], "drawdown_pp": t.get("drawdown_pp"),
                                       "seconds": t["wall_seconds"]} for t in tries},
               "kept_points": args.keep,
               "without_keep": None if without_keep is None else {
                   "layer": without_keep["layer"], "status": without_keep["status"],
                   "drawdown_pp": without_keep.get("drawdown_pp"), "seconds": without_keep["wall_seconds"],
                   "generalization_after": (without_keep.get("generalization") or {}).get("after")}}
    if best:
        print(f"best: layer {best['layer']}, {best['certificate']['counts']['certified']}/{len(spec)} polytopes "
              f"certified, drawdown {best['drawdown_pp']:.2f} pp, generalization "
              f"{best['generalization']['before']:.3f} -> {best['generalization']['after']:.3f}; acceptance "
              f"{'passed' if accepted else 'FAILED (drawdown >= 3 pp)'}", flush=True)
    else:
        print("no layer certified: acceptance FAILED", flush=True)
    import highspy

    from provrepair.fileio import write_text_atomic
    payload = {
        "benchmark": "mnist_polytopes", "network": "mnist_relu_9_100.tf",
        "repair_set": {"corruption": "fog", "severity": args.severity, "corruption_seed": 0,
                       "selection": f"the {args.select} {N_IMAGES} MNIST test images (test order, or least wrong) "
                                    "that the network classifies right when clean and wrong when fogged (the "
                                    "whole test set fogged in one call, seed 0)",
                       "test_indices": sel["indices"].tolist(), "labels": sel["labels"].tolist(),
                       "fogged_predictions": sel["fog_predictions"].tolist(),
                       "fog_error_rate": sel["fog_error_rate"],
                       "polytopes": "convex hull of the fogged image rotated by -30..30 deg (7 angles), "
                                    "scipy.ndimage.rotate order=1 reshape=False, black fill, clipped to [0, 1]",
                       "property": "true label",
                       "vertex_margins_before": vertex_margins(net, spec)},
        "generalization_set": {"angles": "-30..30 deg in 0.1 deg steps (601 per image)", "images": len(ctx["y_gen"]),
                               "accuracy_before": ctx["gen_before"],
                               "between_vertices_accuracy_before": ctx["gen_between_before"]},
        "test_accuracy_before": ctx["acc_before"],
        "summary": summary, "tries": tries, "without_keep": without_keep, "investigation": investigation,
        "keep": {"points": args.keep, "source": "MNIST train split, correctly classified, seed 0"},
        "hull": args.hull,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": 1},
        "versions": {"highspy": getattr(highspy, "__version__", "?"), "torch": torch.__version__},
        "total_seconds": time.perf_counter() - t_start, "peak_memory_mb": _peak_mb(),
    }
    write_text_atomic(args.out, json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"wrote {args.out} ({payload['total_seconds']:.0f} s)")
    return 0


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
