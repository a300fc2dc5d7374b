"""Corruption-suite benchmark: throughput of every corruption on MNIST, and the full test-set build.

Measures, on the MNIST test images (28x28, grayscale):

* images per second of each of the 19 corruptions at severity 3 on batches of 1,000 images
  (best of ``--repeats`` runs, so that a busy machine inflates the numbers less);
* the wall time to corrupt all 10,000 test images with all 19 corruptions at all 5 severities
  (950,000 images; the acceptance bound is 10 minutes on 2 cores), with the time per corruption.

It writes ``benchmarks/results/corruptions.json``; ``--sheet`` also redraws the contact sheets
``corruptions_sheet_mnist.png`` (first MNIST test digit) and ``corruptions_sheet_rgb.png`` (a 32x32
colour image) there.

    python benchmarks/corruptions.py            # about a minute on 2 cores
    python benchmarks/corruptions.py --sheet    # and the contact sheets
    python benchmarks/corruptions.py --no-full  # throughput only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def throughput(x: np.ndarray, severity: int, repeats: int) -> dict:
    from provrepair.data.corruptions import CORRUPTIONS, corrupt

    out = {}
    for name in CORRUPTIONS:
        corrupt(x[:8], name, severity)  # warm caches (operators, frost textures)
        best = min(_timed(lambda nm=name: corrupt(x, nm, severity, seed=1)) for _ in range(repeats))
        out[name] = {"seconds": round(best, 4), "images_per_second": round(len(x) / best, 1)}
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def full_build(x: np.ndarray) -> dict:
    from provrepair.data.corruptions import corrupt_all

    per: dict[str, float] = {}
    last = [time.perf_counter()]
    checksum = 0.0

    def progress(done, total, name, severity):
        now = time.perf_counter()
        per[name] = per.get(name, 0.0) + (now - last[0])
        last[0] = now

    start = time.perf_counter()
    for _, _, arr in corrupt_all(x, progress=progress):
        checksum += float(arr[::97].sum())  # touch the result; keep memory flat
    total = time.perf_counter() - start
    return {
        "images": len(x),
        "corruptions": 19,
        "severities": 5,
        "corrupted_images": int(len(x) * 19 * 5),
        "seconds": round(total, 2),
        "limit_seconds": 600,
        "within_limit": total < 600,
        "seconds_per_corruption": {k: round(v, 3) for k, v in per.items()},
        "checksum": checksum,
    }


def sheets() -> list[str]:
    from provrepair.data import load_mnist
    from provrepair.data.contact_sheet import contact_sheet, sample_rgb_image

    x, _ = load_mnist("test", flat=False)
    paths = [RESULTS / "corruptions_sheet_mnist.png", RESULTS / "corruptions_sheet_rgb.png"]
    contact_sheet(x[0], paths[0])
    contact_sheet(sample_rgb_image(32), paths[1])
    return [str(p.relative_to(HERE.parent)) for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000, help="images per throughput batch (default 1000)")
    ap.add_argument("--severity", type=int, default=3, help="severity for the throughput table (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per corruption; the best counts")
    ap.add_argument("--no-full", action="store_true", help="skip the full 10k x 19 x 5 build")
    ap.add_argument("--sheet", action="store_true", help="also redraw the contact sheets")
    ap.add_argument("--out", default=str(RESULTS / "corruptions.json"))
    args = ap.parse_args(argv)

    import PIL
    import scipy
    import skimage

    from provrepair.data import load_mnist
    from provrepair.fileio import write_text_atomic

    x, _ = load_mnist("test", flat=False)
    result: dict = {
        "benchmark": "corruptions",
        "data": "MNIST test, (N, 1, 28, 28) float32",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
                     "Pillow": PIL.__version__},
    }
    print(f"throughput: {args.batch} images, severity {args.severity}", file=sys.stderr)
    tp = throughput(x[: args.batch], args.severity, args.repeats)
    result["throughput"] = {
        "batch": args.batch, "severity": args.severity, "repeats": args.repeats, "per_corruption": tp,
    }
    for name, row in sorted(tp.items(), key=lambda kv: kv[1]["images_per_second"]):
        print(f"  {name:18s} {row['images_per_second']:>10.0f} img/s", file=sys.stderr)
    if not args.no_full:
        print("full build: 10,000 x 19 x 5 ...", file=sys.stderr)
        result["full_mnist_test_build"] = full_build(x)
        print(f"  {result['full_mnist_test_build']['seconds']} s", file=sys.stderr)
    if args.sheet:
        result["contact_sheets"] = sheets()
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
