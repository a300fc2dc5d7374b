"""The ``provrepair`` command line.

Exit codes: 0 certified (or, for ``info`` and ``data``, success); 1 the repair is infeasible or did not
certify; 2 bad input (the message says what to do). Every file is written atomically, after all
input was validated, and never over an input file.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import InputError, ProvRepairError
from .version import version

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parse_where(items: Sequence[str] | None) -> dict | None:
    if not items:
        return None
    where: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--where takes KEY=VALUE (e.g. --where group=0), got {item!r}")
        try:
            where[key] = int(value)
        except ValueError:
            raise InputError(f"--where {key}= needs an integer value, got {value!r}") from None
    return where


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--input-shape takes comma-separated integers like 1,28,28, got {text!r}") from None
    if any(v <= 0 for v in shape):
        raise InputError(f"--input-shape values must be positive, got {text!r}")
    return shape


def _layer_arg(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_spec_args(p: argparse.ArgumentParser, regions: bool = False, repair: bool = False) -> None:
    points_help = "repair set: .npz (inputs/points + labels, or A/b), .npy with --labels, or .json"
    if regions:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--points", metavar="FILE", help=points_help)
        if repair:
            g.add_argument("--vnnlib", metavar="FILE", action="append",
                           help="a VNN-LIB property to repair on its whole input region (repeatable: several "
                                "properties of one network at once); see 'Repairing VNN-LIB properties' in the README")
        else:
            g.add_argument("--vnnlib", metavar="FILE", help="input regions and unsafe outputs as a VNN-LIB property")
        g.add_argument("--box", metavar="FILE", help="boxes with labels or output constraints (.json/.npz)")
        g.add_argument("--polytope", metavar="FILE",
                       help="V-polytopes (vertex lists) with labels or output constraints (.json/.npz)")
    else:
        p.add_argument("--points", required=True, metavar="FILE", help=points_help)
    p.add_argument("--labels", metavar="FILE", help="labels for a .npy points file (.npy or text, one per line)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="keep the points whose integer field KEY equals VALUE (repeatable)")
    p.add_argument("--limit", type=int, metavar="N", help="keep the first N points (after --where)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="network file: .pt/.pth, .onnx, .tf/.eran (ERAN), .nnet (ACAS Xu), or a zoo model name")
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape when the file does not say (conv nets)")
    p.add_argument("--arch", metavar="MODULE:FACTORY",
                   help="architecture for a .pt file that holds only weights (a state_dict): a function that builds "
                        "it, e.g. mypkg.nets:build_net, or a zoo architecture name (vit_small, gelu_mlp)")
    p.add_argument("--cut", metavar="auto|POSITION|NAME",
                   help="split the model into a frozen front (any modules: GELU, LayerNorm, attention; ONNX: run by "
                        "onnxruntime) and a piecewise-linear back that --layer counts: 'auto' (right after the last "
                        "module that is not piecewise linear), a module position, or the name of the module (ONNX: "
                        "tensor) where the back begins. Points can be repaired and certified through any front; "
                        "regions cannot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="provrepair", description="Repair neural networks and prove the repair.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_repair_parser, _repair_batch_parser, _certify_parser, _inspect_parsers, _patch_parser, _metarepair_parser,
                _compare_parser, _evaluate_parser, _data_parser):
        add(sub)
    return parser


def _repair_parser(sub) -> None:
    from .repair.options import PolytopeRepairOptions, add_flags, options_of
    p = sub.add_parser("repair", help="repair a network on points, boxes or polytopes (provable LP/MILP repair)")
    _add_model_args(p)
    _add_spec_args(p, regions=True, repair=True)
    p.add_argument("--layer", type=_layer_arg, required=True,
                   help="affine layer to repair (0 = first Linear/Conv2d, negative counts from the end), "
                        "or 'auto' to rank the layers and fall back on infeasibility")
    p.add_argument("--heuristic", help="layer ranking for --layer auto (default: the benchmark's best)")
    p.set_defaults(option_names=add_flags(p, options_of(PolytopeRepairOptions)))
    p.add_argument("--keep", metavar="FILE",
                   help="a points file (with labels) whose outputs the repair must keep, e.g. correctly "
                        "classified training images; holds the rest of the network in place (less drawdown). "
                        "Points: entered into the LP only when the repair would flip them")
    _add_output_args(p, "repaired model; its suffix picks the format, and a .pt copy is always written too",
                     "write the full result as JSON", "print only the outcome")
    _property_args(p)


def _property_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--vnnlib repair (whole properties: partition, repair, certify the whole region)")
    g.add_argument("--preserve", metavar="FILE", action="append", default=[],
                   help="a VNN-LIB property that must still hold after the repair (repeatable)")
    g.add_argument("--domain", metavar="FILE",
                   help="a VNN-LIB file whose input bounds are the input domain (keep points and the fidelity "
                        "samples are drawn there; default: the properties' bounding box)")
    g.add_argument("--split-depth", type=int, default=10, help="bisections of a property's region at most (default 10)")
    g.add_argument("--keep-samples", type=int,
                   help="points sampled in the domain (not where a repaired part's property fails) whose decision "
                        "the repair keeps, as soft rows: the LP breaks only those the parts leave no room for "
                        "(default: PropertyRepairOptions.keep_samples, 3000)")
    g.add_argument("--decision", choices=("argmin", "argmax"), default="argmin",
                   help="the network's decision, kept at the sampled points (ACAS Xu's advisory: argmin, the default)")
    g.add_argument("--certify-timeout", type=float, default=120.0,
                   help="seconds for the independent complete check of each property after the repair")
    g.add_argument("--write-unchanged", action="store_true",
                   help="when every property already holds, still write the (unchanged) model to --out")


def _repair_batch_parser(sub) -> None:
    p = sub.add_parser("repair-batch", help="repair many network,property instances (VNN-COMP CSV) with --vnnlib "
                                            "repair, one record per instance, resumable")
    p.add_argument("instances", help="CSV of onnx,vnnlib[,timeout] rows (paths relative to the CSV's folder); the "
                                     "properties of one network are repaired together")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for records/, models/ and summary.md/.json")
    p.add_argument("--applicable", metavar="CSV",
                   help="every property that applies to each network (same format); those not repaired are "
                        "preserved: certified again after the repair")
    p.add_argument("--domain", metavar="FILE", help="VNN-LIB file whose input bounds are the input domain")
    p.add_argument("--executor", choices=("local", "serial", "ray"), default="local",
                   help="local worker processes (default), this process, or a Ray cluster")
    p.add_argument("--workers", type=int, default=1, help="parallel jobs (default 1)")
    p.add_argument("--address", help="--executor ray: the cluster's address (default: start one locally)")
    p.add_argument("--split-depth", type=int, default=10)
    p.add_argument("--certify-timeout", type=float, default=120.0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _certify_parser(sub) -> None:
    from provrepair.solvers.names import SOLVERS
    p = sub.add_parser("certify", help="check a network on points (exactly) or on input regions (bounds, MILP)")
    _add_model_args(p)
    _add_spec_args(p, regions=True)
    p.add_argument("--method", default="auto", choices=["ibp", "crown", "milp", "auto"],
                   help="regions: ibp/crown bounds only (sound, may say unknown), milp = complete check, "
                        "auto = the cheapest that decides (default)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="regions: complete-check budget per region")
    p.add_argument("--solver", default="highs", choices=SOLVERS, help="regions: MILP solver")
    p.add_argument("--threads", type=int, help="regions: solver threads")
    p.add_argument("--device", default="cpu", help="regions: torch device for bound propagation (cpu, cuda, auto)")
    p.add_argument("--report", metavar="FILE", help="write the certificate as JSON")
    p.add_argument("--quiet", action="store_true")


def _inspect_parsers(sub) -> None:
    p = sub.add_parser("layers", help="rank the repair layers with every heuristic, side by side")
    _add_model_args(p)
    _add_spec_args(p)
    p.add_argument("--pairs", metavar="FILE", help=".npy of the original inputs paired with the points (for 'change')")

    p = sub.add_parser("analyze", help="repair-set analysis: diversity, concentration, size, predicted LP size")
    _add_spec_args(p)
    p.add_argument("--model", help="also predict the LP size per layer and feature-space spread")
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape when the model file does not say")
    p.add_argument("--report", metavar="FILE", help="write the analysis as JSON")

    p = sub.add_parser("info", help="layers, shapes and parameter counts of a network")
    _add_model_args(p)

    p = sub.add_parser("demo", help="compare APRNN repair, fine-tuning and the certified pipeline on a zoo CNN (fog)")
    p.add_argument("--out-dir", default="provrepair-demo", help="the run folder (results.json, report.md, plots/)")
    p.add_argument("--points", type=int, default=50, help="misclassified fogged training images to repair (default 50)")
    p.add_argument("--quiet", action="store_true")


def _add_output_args(p: argparse.ArgumentParser, out_help: str, report_help: str, quiet_help: str) -> None:
    p.add_argument("--out", required=True, metavar="PATH", help=out_help)
    p.add_argument("--report", metavar="FILE", help=report_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def _add_repairer_flags(p: argparse.ArgumentParser, name: str) -> None:
    """The flags of a registered repairer's typed options (its names kept for ``given_flags``)."""
    from .repair import options
    cls = {"deeppatch": options.DeepPatchOptions, "metarepair": options.MetaRepairOptions}[name]
    p.set_defaults(option_names=options.add_flags(p, options.options_of(cls)))


def _patch_parser(sub) -> None:
    from .repair.options import AUGMENTS
    p = sub.add_parser("patch", help="DeepPatch: add replacement filters for robustness, switched in per sample")
    _add_model_args(p)
    p.add_argument("--dataset", required=True, help="mnist, fashion-mnist or digits (its train/val/test splits)")
    p.add_argument("--augment", required=True, metavar="{" + ",".join(AUGMENTS) + "}",
                   help="blur (Gaussian blur) or spatial (rotation, translation, shear, zoom)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}-limit", type=int, metavar="N", help=f"use a fixed random subset of N {split} images")
    _add_repairer_flags(p, "deeppatch")
    _add_output_args(p, "the patched model (.pt); reload it with provrepair.repair.deeppatch.load_patched",
                     "write the metrics and patch details as JSON", "no progress bars")


def _metarepair_parser(sub) -> None:
    p = sub.add_parser("metarepair", help="MetaRepair: repair a corruption by meta-learning from other corruptions' repairs")
    _add_model_args(p)
    p.add_argument("--dataset", required=True, help="mnist or fashion-mnist (train split: experiences, test split: target)")
    p.add_argument("--target", required=True, help="the corruption to repair, e.g. fog (see `provrepair data list`)")
    p.add_argument("--severity", default="5", help="corruption severity 1-5, or a comma list used together (default 5)")
    p.add_argument("--experiences", default="auto",
                   help="auto (the --k nearest by Fréchet distance, default) or a comma list of corruptions")
    _add_repairer_flags(p, "metarepair")
    _add_output_args(p, "the repaired model (.pt; same architecture)", "write the metrics and details as JSON",
                     "no progress bars")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several repair methods on the same model and compare them (report + plots)")
    p.add_argument("--model", help="zoo model name (mnist_cnn, fashion_cnn, mnist_mlp) or a model file")
    p.add_argument("--dataset", help="mnist, fashion-mnist or digits")
    p.add_argument("--corruption", help="repair set: the model's failures under this corruption (e.g. fog)")
    p.add_argument("--severity", type=int, default=3, help="corruption severity of the repair set (default 3)")
    p.add_argument("--repair-set", metavar="FILE", help="repair set: a labelled points file instead of (or besides) "
                                                        "--corruption's failures")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--methods", help="comma-separated method names (see --list)")
    g.add_argument("--all", action="store_true", help="every registered method that can run on this model")
    p.add_argument("--seeds", default="0", help="comma-separated seeds or a range 0-2 (default 0)")
    p.add_argument("--option", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method option, e.g. finetune.epochs=3 (repeatable; see --list)")
    p.add_argument("--out", metavar="DIR", help="run folder (results.json, report.md, plots/); an existing run is resumed")
    p.add_argument("--fresh", action="store_true", help="recompute every cell even if the run folder has it")
    p.add_argument("--executor", default="local", choices=["local", "serial", "ray"],
                   help="local worker processes (default), serial (this process) or ray")
    p.add_argument("--workers", type=int, default=1, help="parallel cells (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    p.add_argument("--ray-address", help="address of a running Ray cluster (default: start one locally)")
    p.add_argument("--repair-points", type=int, default=50, help="repair-set size (default 50)")
    p.add_argument("--heldout", type=int, default=500, help="held-out failures for generalization (default 500)")
    p.add_argument("--test-limit", type=int, default=2000, help="clean test images (default 2000)")
    p.add_argument("--train-limit", type=int, default=2000, help="training images of the statistical methods (default 2000)")
    p.add_argument("--val-limit", type=int, default=200, help="validation images (default 200)")
    p.add_argument("--severities", default="1-5", help="severities of the robustness table (default 1-5)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--list", action="store_true", help="list the methods and their options, then exit")
    p.add_argument("--quiet", action="store_true")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="test a model without repairing it: accuracy, robustness, constraint/confusion")
    p.add_argument("model", help="zoo model name or a model file")
    p.add_argument("--dataset", required=True, help="mnist, fashion-mnist or digits")
    p.add_argument("--corruption", help="also measure accuracy under this corruption (and its failures)")
    p.add_argument("--severity", type=int, default=3, help="severity whose failures are counted (default 3)")
    p.add_argument("--severities", default="1-5", help="severities of the robustness table (default 1-5)")
    p.add_argument("--test-limit", type=int, default=10000, help="test images (default 10000)")
    p.add_argument("--out", metavar="DIR", help="write results.json and report.md here")


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="datasets and their corrupted versions: build, list, contact sheet")
    data = p.add_subparsers(dest="data_command", required=True, metavar="{build,sheet,list}")
    d = data.add_parser("build", help="build (or reuse) cached corrupted copies of a dataset split")
    d.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist or digits")
    d.add_argument("--split", default="test", help="train, val, test (default) or train-full")
    d.add_argument("--corruptions", default="all", metavar="all|NAME,NAME",
                   help="'all' (default), corruption or group names, comma-separated")
    d.add_argument("--severities", default="1-5", metavar="1-5|1,3,5", help="severity levels (default 1-5)")
    d.add_argument("--seed", type=int, default=0, help="train/val split and corruption randomness (default 0)")
    d.add_argument("--limit", type=int, metavar="N", help="corrupt only the first N images of the split")
    d.add_argument("--cache-dir", metavar="DIR", help="cache folder (default $PROVREPAIR_CACHE or ~/.cache/provrepair)")
    d.add_argument("--force", action="store_true", help="rebuild even the files already cached")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d = data.add_parser("sheet", help="draw one image under every corruption and severity")
    d.add_argument("--out", required=True, metavar="PATH", help="image file to write (e.g. sheet.png)")
    d.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist or digits")
    d.add_argument("--split", default="test", help="split the image comes from (default test)")
    d.add_argument("--index", type=int, default=0, help="position of the image in the split (default 0)")
    d = data.add_parser("list", help="datasets, splits and corruptions by group")


def _parse_cut(text: str | None):
    if text is None or text == "auto":
        return text
    return int(text) if text.lstrip("-").isdigit() else text


def _load(args):
    from .models import load_model
    model = args.model
    if not Path(model).exists():
        from .zoo import available, zoo_path
        if model in available():  # a zoo name stands for its shipped file
            model = zoo_path(model)
    return load_model(model, input_shape=_parse_shape(getattr(args, "input_shape", None)),
                      arch=getattr(args, "arch", None), cut=_parse_cut(getattr(args, "cut", None)))


def _load_spec(args):
    from .specs import PointSpec
    return PointSpec.load(args.points, labels=args.labels, where=_parse_where(args.where), limit=args.limit)


def _write_json(path: str, payload: dict, protect: Sequence[str]) -> None:
    from .fileio import json_default, write_text_atomic
    write_text_atomic(path, json.dumps(payload, indent=2, default=json_default) + "\n", protect=tuple(protect))


def _check_outputs(paths: Sequence[str | None], inputs: Sequence[str | None]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or collide."""
    ins = {Path(p).resolve() for p in inputs if p}
    seen = set()
    for p in paths:
        if not p:
            continue
        r = Path(p).resolve()
        if r in ins:
            raise InputError(f"{p} is an input file; choose another output path")
        if r in seen:
            raise InputError(f"{p} is named twice as an output; give each output its own path")
        if r.is_dir():
            raise InputError(f"{p} is a directory; give a file path")
        seen.add(r)


def _cmd_info(args) -> int:
    from .models import get_meta, summary_text
    net = _load(args)
    meta = get_meta(net)
    print(f"{args.model}: format {meta.format}, input shape {meta.input_shape}")
    print(summary_text(net, meta.input_shape))
    return EXIT_OK


def _cmd_certify(args) -> int:
    from .api import certify
    region_file = args.vnnlib or args.box or args.polytope
    inputs = [args.model, args.points, args.labels, region_file]
    _check_outputs([args.report], inputs)
    net = _load(args)
    if region_file is None:
        cert = certify(net, _load_spec(args))
        print(cert.summary())
    else:
        from .specs import RegionSpec
        kind = "vnnlib" if args.vnnlib else "box" if args.box else "polytope"
        spec = RegionSpec.load(region_file, kind=kind)
        say = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr))
        cert = certify(net, spec, method=args.method, timeout=args.timeout, solver=args.solver,
                       threads=args.threads, device=args.device, progress=say)
        _print_regions(cert, quiet=args.quiet)
    if args.report:
        _write_json(args.report, cert.to_dict(), [p for p in inputs if p])
    return EXIT_OK if cert.certified else EXIT_FAILED


def _print_regions(cert, *, quiet: bool, show: int = 20) -> None:
    if not quiet:
        for v in cert.verdicts[:show]:
            how = f" by {v.method}" if v.method else ""
            print(f"region {v.index}: {v.status}{how} ({v.seconds:.2f} s): {v.reason}")
            if v.counterexample is not None:
                x = v.counterexample.reshape(-1)
                shown = ", ".join(f"{t:.6g}" for t in x[:8]) + (", ..." if x.size > 8 else "")
                print(f"  counterexample x = [{shown}] reaches unsafe disjunct {v.disjunct}")
        if len(cert.verdicts) > show:
            print(f"... {len(cert.verdicts) - show} more regions (see --report)")
    print(cert.summary())


def _torch_copy_path(out: Path) -> Path | None:
    return None if out.suffix in (".pt", ".pth") else out.with_suffix(".pt")


def _cmd_repair(args) -> int:
    from .api import repair
    from .models import save_model
    from .repair.options import given_flags
    if args.vnnlib:
        return _cmd_repair_properties(args)
    out = Path(args.out)
    pt_copy = _torch_copy_path(out)
    region_file = args.vnnlib or args.box or args.polytope
    inputs = [args.model, args.points, args.labels, region_file, args.keep]
    _check_outputs([args.out, str(pt_copy) if pt_copy else None, args.report], inputs)
    from .models import SUFFIXES
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out {out}: unknown model suffix {out.suffix!r}; use one of {', '.join(SUFFIXES)}")
    net = _load(args)
    from .models import front_of
    if front_of(net) is not None and out.suffix.lower() not in (".pt", ".pth"):
        raise InputError(f"--out {out}: the model has a {front_of(net).where()}, which only a .pt file can hold; "
                         "give --out a .pt path")
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    given = given_flags(args, args.option_names)
    if region_file is None:
        spec = _load_spec(args)
        if args.keep:
            from .specs import PointSpec
            given["keep"] = PointSpec.load(args.keep)
    else:
        from .specs import PointSpec, RegionSpec
        kind = "vnnlib" if args.vnnlib else "box" if args.box else "polytope"
        if args.heuristic:
            raise InputError("--heuristic ranks layers for point repair; for regions, --layer auto tries the "
                             "layers from the last one back")
        spec = RegionSpec.load(region_file, kind=kind)
        if args.keep:
            given["keep"] = PointSpec.load(args.keep)
    result = repair(net, spec, layer=args.layer, heuristic=args.heuristic, progress=say, **given)
    written = []
    if result.model is not None and result.certified:
        protect = tuple(p for p in inputs if p)
        save_model(result.model, out, protect=protect)
        written.append(str(out))
        if pt_copy is not None:
            save_model(result.model, pt_copy, protect=protect)
            written.append(str(pt_copy))
    if args.report:
        payload = result.to_dict()
        payload.update(model=args.model, points=args.points, regions=region_file, written=written)
        _write_json(args.report, payload, inputs)
        written.append(args.report)
    _print_result(result, written)
    return EXIT_OK if result.certified else EXIT_FAILED


def _cmd_repair_properties(args) -> int:
    """``repair --vnnlib P [--vnnlib Q ...]``: whole properties (``repair.property_repair``)."""
    from .models import affine_layers, save_model
    from .repair.options import given_flags
    from .repair.property_repair import PropertyRepairOptions, domain_of, load_targets, repair_properties
    out = Path(args.out)
    pt_copy = _torch_copy_path(out)
    inputs = [args.model, *args.vnnlib, *args.preserve, args.domain, args.keep]
    _check_outputs([args.out, str(pt_copy) if pt_copy else None, args.report], inputs)
    from .models import SUFFIXES
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out {out}: unknown model suffix {out.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if args.keep or args.heuristic:
        raise InputError("--vnnlib repair samples its own keep points (--keep-samples) and repairs the last layer; "
                         "drop --keep/--heuristic")
    net = _load(args)
    n_aff = len(affine_layers(net))
    if args.layer != "auto" and args.layer not in (-1, n_aff - 1):
        raise InputError(f"--vnnlib repair changes the last affine layer (over interval hulls of the parts); give "
                         f"--layer auto, -1 or {n_aff - 1}, not {args.layer}")
    targets = load_targets(net, args.vnnlib)  # a wrong input dimension stops here: exit 2, nothing written
    preserve = load_targets(net, args.preserve)
    given = given_flags(args, args.option_names)
    opts = PropertyRepairOptions(
        split_depth=args.split_depth, decision=args.decision, domain=domain_of(net, args.domain),
        certify_timeout=args.certify_timeout,
        **({} if args.keep_samples is None else {"keep_samples": args.keep_samples}),
        **{k: given[k] for k in ("delta_bound", "margin", "time_limit", "solver", "threads", "keep_soft") if k in given})
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = repair_properties(net, targets, preserve, opts, progress=say)
    model = result.model if result.status == "certified" else net if args.write_unchanged and result.ok else None
    written = []
    if model is not None:
        protect = tuple(p for p in inputs if p)
        for path in (out, pt_copy):
            if path is not None:
                save_model(model, path, protect=protect)
                written.append(str(path))
    if args.report:
        payload = dict(result.to_dict(), model=args.model, vnnlib=args.vnnlib, preserve=args.preserve, written=written)
        _write_json(args.report, payload, [p for p in inputs if p])
        written.append(args.report)
    print(f"{result.status}: {result.message}")
    for rec in result.properties:
        after = rec.get("after") or rec.get("before") or {}
        print(f"  {rec['property']} ({rec['role']}): {after.get('status')} by {after.get('decided_by') or '-'} "
              f"({after.get('seconds', 0):.1f} s)")
    if result.delta:
        print(f"parameter change: max {result.delta['linf']:.4g}; {result.parts.get('repair')} parts repaired; "
              f"decision changed on {result.fidelity.get('share', float('nan')):.3%} of "
              f"{result.fidelity.get('samples', 0)} domain samples")
    if result.status == "already holds" and not args.write_unchanged:
        print("no model written (--write-unchanged writes the unchanged model)")
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_repair_batch(args) -> int:
    from .repair.batch import jobs_from_csv, run_batch, summary_table
    jobs = jobs_from_csv(args.instances, applicable=args.applicable, domain=args.domain,
                         options={"split_depth": args.split_depth, "certify_timeout": args.certify_timeout})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), desc="repair-batch", unit="network", disable=args.quiet)
    records = run_batch(jobs, out, executor=args.executor, workers=args.workers, address=args.address,
                        on_done=lambda r: (bar.update(1), bar.set_postfix_str(f"{r['key']}: {r.get('status')}")))
    bar.close()
    from .fileio import write_text_atomic
    table = summary_table(records)
    write_text_atomic(out / "summary.md", table)
    _write_json(str(out / "summary.json"), {"records": records}, [args.instances])
    print(table)
    ok = sum(r.get("status") in ("certified", "already holds") for r in records)
    print(f"{ok} of {len(records)} networks certified (or already holding); wrote {out / 'summary.md'}")
    return EXIT_OK if ok == len(records) else EXIT_FAILED


def _print_result(result, written: Sequence[str]) -> None:
    print(f"{result.status}: {result.message}")
    sel = result.layer_selection
    if sel:
        tried = ", ".join(f"{t['layer']} ({t['status']})" for t in sel["tried"])
        print(f"layer auto with the {sel['heuristic']!r} heuristic: ranking {sel['ranking']}; tried {tried}")
    if result.certificate is not None:
        print(result.certificate.summary())
    t = result.timings
    lp = result.lp.get("final", {})
    for stage in result.lp.get("stages", []):
        size = stage.get("size") or {}
        print(f"  {stage['stage']} LP at layer {stage['layer']}: {stage['status']}"
              + (f", {size.get('variables')} variables, {size.get('rows')} rows" if size else "")
              + f" ({stage.get('seconds', 0):.2f} s)")
    if lp and "stages" not in result.lp:
        print(f"layer {result.layer}; LP {lp.get('variables')} variables, {lp.get('rows')} rows, "
              f"{lp.get('nonzeros')} nonzeros in {len(result.lp.get('rounds', []))} rounds; "
              f"total {t.get('total', 0):.2f} s (solve {t.get('solve', 0):.2f} s)")
    if result.delta:
        print(f"parameter change: max {result.delta['linf']:.4g}, sum {result.delta['l1']:.4g}, "
              f"{result.delta['l0']} of {result.delta['count']} changed")
    for path in written:
        print(f"wrote {path}")


def _cmd_layers(args) -> int:
    import numpy as np

    from provrepair.heuristics.scorers import rank, score_all
    from provrepair.heuristics.select import DEFAULT_HEURISTIC, candidate_layers

    from .models import affine_layers
    from .repair.provable import prepare_points
    net = _load(args)
    spec, _ = prepare_points(net, _load_spec(args))
    pairs = None
    if args.pairs:
        pairs = np.load(args.pairs).astype(np.float64).reshape(spec.inputs.shape)
    labels = spec.labels if spec.labels is not None and np.all(spec.labels >= 0) else None
    scores = score_all(net, spec.inputs, labels=labels, pairs=pairs)
    n = len(affine_layers(net))
    cands = candidate_layers(net, spec)
    print(f"candidate layers (predicted LP small enough): {cands}; default heuristic: {DEFAULT_HEURISTIC}")
    print(f"{'heuristic':<14} {'ranking (best first)':<28} " + " ".join(f"{k:>9}" for k in range(n)))
    for name, sc in scores.items():
        order = rank(sc, cands)
        print(f"{name:<14} {str(order):<28} " + " ".join(f"{v:9.3g}" for v in sc))
    return EXIT_OK


def _cmd_analyze(args) -> int:
    from provrepair.heuristics.analysis import analyze, format_analysis
    _check_outputs([args.report], [args.model, args.points, args.labels])
    spec = _load_spec(args)
    net = None
    if args.model:
        from .repair.provable import prepare_points
        net = _load(args)
        spec, _ = prepare_points(net, spec)
    report = analyze(spec, net)
    print(format_analysis(report))
    if args.report:
        _write_json(args.report, report, [args.points, args.model])
    return EXIT_OK


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(out_dir=args.out_dir, n_points=args.points, quiet=args.quiet)


def _cmd_data_build(args) -> int:
    from .data.build import build_corrupted
    result = build_corrupted(args.dataset, args.split, args.corruptions, args.severities, seed=args.seed,
                             limit=args.limit, cache_dir=args.cache_dir, progress=not args.quiet,
                             force=args.force)
    folders = sorted({str(path.parent) for path in result.values()})
    n_sev = len({s for _, s in result})
    print(f"{len(result)} corrupted sets of {args.dataset}/{args.split} ({len(result) // n_sev} corruptions x "
          f"{n_sev} severities): built {len(result.built)}, reused {len(result.reused)} from the cache "
          f"in {result.seconds:.1f} s")
    for folder in folders:
        print(f"files in {folder}/ (<corruption>-s<severity>-seed{args.seed}"
              f"{f'-n{args.limit}' if args.limit else ''}.npz)")
    return EXIT_OK


def _cmd_data_sheet(args) -> int:
    from .data.datasets import load_dataset
    out = Path(args.out)
    _check_outputs([args.out], [])
    x, _ = load_dataset(args.dataset, args.split)
    if not -x.shape[0] <= args.index < x.shape[0]:
        raise InputError(f"--index {args.index} is out of range: {args.dataset}/{args.split} has "
                         f"{x.shape[0]} images (0..{x.shape[0] - 1})")
    from .data.contact_sheet import contact_sheet
    contact_sheet(x[args.index], out)  # a PNG, written atomically
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_data_list(args) -> int:
    from .data.build import corruption_groups, resolve_corruptions
    from .data.datasets import DATASETS, SPLITS, dataset_info
    print("datasets (splits: " + ", ".join(SPLITS) + "):")
    for name in DATASETS:
        info = dataset_info(name)
        c, h, w = info["shape"]
        sizes = ", ".join(f"{k} {v}" for k, v in info["sizes"].items())
        note = "" if info["available"] else "  [not installed]"
        print(f"  {name:<14} {c}x{h}x{w}, {info['classes']} classes; {sizes}{note}")
        print(f"  {'':<14} {info['description']}")
    from .data.corruptions import MAX_SIZE, MIN_SIZE
    names = resolve_corruptions("all")
    groups = corruption_groups()
    print(f"corruptions ({len(names)}; severities 1-5; images of {MIN_SIZE}..{MAX_SIZE} px a side):")
    grouped = set()
    for group, members in groups.items():
        print(f"  {group:<16} {', '.join(members)}")
        grouped.update(members)
    rest = [n for n in names if n not in grouped]
    if rest:
        print(f"  {'(other)':<16} {', '.join(rest)}")
    return EXIT_OK


def _check_trained_out(args, what: str) -> Path:
    out = Path(args.out)
    _check_outputs([args.out, args.report], [args.model])
    if out.suffix.lower() not in (".pt", ".pth"):
        raise InputError(f"--out {out}: {what} is written as a PyTorch file; give a .pt or .pth path")
    return out


def _run_repairer(name: str, net, target, args):
    """Run the registered repairer ``name`` with the options the user gave as flags."""
    from .repair.options import build, given_flags
    from .repair.registry import get_repairer
    repairer = get_repairer(name)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    return repairer.run(net, target, build(repairer.Options, **given_flags(args, args.option_names)), say)


def _cmd_patch(args) -> int:
    from .repair.training import RobustnessTask
    out = _check_trained_out(args, "a patched model")
    net = _load(args)
    task = RobustnessTask.create(dataset=args.dataset, augment=args.augment, device=args.device or "auto",
                                 train_limit=args.train_limit, val_limit=args.val_limit, test_limit=args.test_limit)
    return _save_trained(_run_repairer("deeppatch", net, task, args), out, args)


def _save_trained(result, out: Path, args) -> int:
    """The statistical repairers' common ending: the model, the optional JSON report, a summary."""
    from .models import save_model
    save_model(result.model, out, protect=(args.model,))
    written = [str(out)]
    if args.report:
        payload = result.to_dict()
        payload.update(model=args.model, written=written + [args.report])
        _write_json(args.report, payload, [args.model])
        written.append(args.report)
    print(result.summary())
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK

def _cmd_metarepair(args) -> int:
    from .data.corruptions import check_corruption_name
    from .repair.metarepair import MetaRepairTarget
    out = _check_trained_out(args, "the repaired model")
    try:
        severity = [int(s) for s in str(args.severity).split(",")]
    except ValueError:
        raise InputError(f"--severity {args.severity!r}: give an integer 1-5 or a comma list of them") from None
    if args.collect is not None and args.collect >= 1 and args.collect != int(args.collect):
        raise InputError(f"--collect {args.collect}: give a whole count or a fraction below 1")
    check_corruption_name(args.target)
    net = _load(args)
    limits = {k: getattr(args, k) for k in ("train_limit", "test_limit") if getattr(args, k) is not None}
    target = MetaRepairTarget.create(dataset=args.dataset, target=args.target,
                                     severity=severity[0] if len(severity) == 1 else severity,
                                     experiences=args.experiences, device=args.device or "auto", **limits)
    return _save_trained(_run_repairer("metarepair", net, target, args), out, args)


def _compare_task(args, corruption_needed: bool = True):
    from .data.build import parse_severities
    from .evaluate.tasks import TaskConfig
    if not args.model or not args.dataset:
        raise InputError("compare needs --model (a zoo name or a file) and --dataset")
    if corruption_needed and not args.corruption and not args.repair_set:
        raise InputError("give the repair set: --corruption NAME (the model's failures under it) or --repair-set FILE")
    return TaskConfig(model=args.model, dataset=args.dataset, corruption=args.corruption, severity=args.severity,
                      repair_set=args.repair_set, repair_points=args.repair_points, heldout=args.heldout,
                      test_limit=args.test_limit, train_limit=args.train_limit, val_limit=args.val_limit,
                      severities=parse_severities(args.severities))


def _parse_seeds(text: str) -> list[int]:
    out = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise InputError(f"--seeds takes integers like 0,1,2 or a range 0-2, got {text!r}") from None
    return out


def _cmd_compare(args) -> int:
    from .evaluate.registry import available_methods, get_method, parse_option_assignments, resolve_methods
    if args.list:
        for name in available_methods():
            m = get_method(name)
            usable = m.available()
            print(f"{name:<18} {m.kind:<12} {m.summary}{'' if usable else '  [not available here]'}")
            for o in m.options if usable else ():
                extra = f" ({'|'.join(o.choices)})" if o.choices else ""
                print(f"    {name}.{o.name}={o.default!r}  {o.type}{extra}: {o.help}")
        return EXIT_OK
    task = _compare_task(args)
    if not args.methods and not args.all:
        raise InputError("name the methods with --methods a,b or use --all (see provrepair compare --list)")
    if not args.out:
        raise InputError("give the run folder with --out DIR")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder")
    seeds = _parse_seeds(args.seeds)
    from .evaluate.tasks import load_network
    net = load_network(args.model)
    notes: list[str] = []
    methods = resolve_methods(args.methods, all_methods=args.all, net=net, notes=notes)
    if not methods:
        raise InputError("none of the methods can run on this model: " + "; ".join(notes))
    options = parse_option_assignments(args.option, methods)
    from .evaluate.harness import compare
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    for note in notes:
        say(f"note: {note}")
    run = compare([task], methods, seeds, run_dir=args.out, options=options, executor=args.executor,
                  workers=args.workers, threads=args.threads, address=args.ray_address, resume=not args.fresh,
                  notes=notes, progress=say, plots=not args.no_plots)
    cells = run.results["cells"]
    bad = [c for c in cells if c.get("metrics") is None or
           (c["kind"] != "statistical" and not c["metrics"].get("certified"))]
    print(f"{len(run.computed)} cells computed, {len(run.reused)} reused; "
          f"{len(cells) - len(bad)} of {len(cells)} cells gave a network (and a certificate where promised)")
    print(f"report: {run.report} (results.json and plots/ beside it)")
    return EXIT_OK if not bad else EXIT_FAILED


def _cmd_evaluate(args) -> int:
    from .data.build import parse_severities
    from .evaluate.harness import evaluate_model, versions
    from .evaluate.report import fmt
    from .evaluate.tasks import TaskConfig, build_task
    cfg = TaskConfig(model=args.model, dataset=args.dataset, corruption=args.corruption, severity=args.severity,
                     test_limit=args.test_limit, severities=parse_severities(args.severities))
    data = build_task(cfg)
    m = {k: v for k, v in evaluate_model(data.net, data).items() if not k.startswith("_")}
    m.pop("efficacy", None)
    lines = [f"# provrepair evaluate: {args.model} on {args.dataset}", "",
             f"{data.info['test_points']} clean test images." +
             (f" {args.corruption} severity {args.severity} misclassifies {fmt(data.info['test_failure_rate'], 'pct')} "
              "of them." if args.corruption else ""), "", "| metric | value |", "|---|---|",
             f"| test accuracy | {fmt(m['test_accuracy'], 'pct')} |",
             f"| constraint accuracy (DL2 class groups) | {fmt(m['constraint_accuracy'], 'pct')} |",
             f"| confusion accuracy mean / min (pair {m['confusion_worst']}) | {fmt(m['confusion_mean'], 'pct')} / "
             f"{fmt(m['confusion_min'], 'pct')} |"]
    for k, v in (m.get("robustness") or {}).items():
        lines.append(f"| accuracy under {k} | {fmt(v, 'pct')} |")
    print("\n".join(lines[2:]))
    if args.out:
        from .fileio import write_text_atomic
        out = Path(args.out)
        payload = {"model": args.model, "task": cfg.to_dict(), "info": data.info, "metrics": m, "versions": versions()}
        _write_json(str(out / "results.json"), payload, [args.model])
        write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
        print(f"report: {out / 'report.md'} (and results.json)")
    return EXIT_OK


DATA_COMMANDS = {"build": _cmd_data_build, "sheet": _cmd_data_sheet, "list": _cmd_data_list}


def _cmd_data(args) -> int:
    return DATA_COMMANDS[args.data_command](args)


COMMANDS = {"repair": _cmd_repair, "repair-batch": _cmd_repair_batch, "certify": _cmd_certify, "info": _cmd_info, "demo": _cmd_demo,
            "layers": _cmd_layers, "analyze": _cmd_analyze, "patch": _cmd_patch,
            "data": _cmd_data, "compare": _cmd_compare, "evaluate": _cmd_evaluate}


COMMANDS["metarepair"] = _cmd_metarepair


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"provrepair: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args)
    except ProvRepairError as exc:
        print(f"provrepair: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("provrepair: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
