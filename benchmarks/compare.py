"""Compare every repairer and certified pipeline on the zoo CNNs -> benchmarks/results/compare.json.

Tasks: the zoo MNIST CNN and Fashion-MNIST CNN, each with a fog repair set (severity 3) and a
Gaussian-noise repair set (severity 5: at severity 3 the MNIST CNN still gets 98 % right, too few
failures to learn from). Methods: everything registered (APRNN point repair, fine-tuning, AugMix,
DeepPatch, MetaRepair and the three certified pipelines), seeds 0, 1, 2.

Sizes are chosen so that the whole grid runs in about 40 minutes on a contended 2-core CPU with one
torch thread: repair sets of 50 failing training images, 500 held-out failures, 2,000 clean test
images (and the same images at severities 1-5), 4,000 training images and 200 validation images for
the statistical methods, 2 epochs. The run folder (``--run-dir``) holds a record per cell, so a killed
run resumes where it stopped; the final ``results.json``, ``report.md`` and plots are copied into
``benchmarks/results/`` (``compare.json``, ``compare.md``, ``compare_plots/``).

    PYTHONPATH=. python benchmarks/compare.py [--seeds 0,1,2] [--run-dir /tmp/provrepair-compare]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provrepair.evaluate.harness import compare  # noqa: E402
from provrepair.evaluate.registry import resolve_methods  # noqa: E402
from provrepair.evaluate.tasks import TaskConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZES = dict(repair_points=50, heldout=500, test_limit=2000, train_limit=4000, val_limit=200,
             severities=(1, 2, 3, 4, 5))
TASKS = [("mnist_cnn", "mnist", "fog", 3), ("mnist_cnn", "mnist", "gaussian_noise", 5),
         ("fashion_cnn", "fashion-mnist", "fog", 3), ("fashion_cnn", "fashion-mnist", "gaussian_noise", 5)]
OPTIONS = {
    "finetune": {"epochs": 2}, "augmix": {"epochs": 2}, "deeppatch": {"epochs": 2},
    "metarepair": {"train_limit": 4000, "test_limit": 2000, "episodes": 20, "collect": 0.25},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--run-dir", default="/tmp/provrepair-compare")
    ap.add_argument("--methods", help="comma-separated subset (default: all)")
    ap.add_argument("--executor", default="serial", choices=["serial", "local", "ray"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = [TaskConfig(model=m, dataset=d, corruption=c, severity=s, **SIZES) for m, d, c, s in TASKS]
    notes: list[str] = []
    methods = resolve_methods(args.methods, all_methods=not args.methods, notes=notes)
    t0 = time.perf_counter()
    run = compare(tasks, methods, seeds, run_dir=args.run_dir, options=OPTIONS, executor=args.executor,
                  threads=1, notes=notes, progress=lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}",
                                                                  flush=True))
    run_dir = Path(args.run_dir)
    shutil.copyfile(run_dir / "results.json", RESULTS / "compare.json")
    report = (run_dir / "report.md").read_text().replace("](plots/", "](compare_plots/")
    (RESULTS / "compare.md").write_text(report)
    if (RESULTS / "compare_plots").exists():
        shutil.rmtree(RESULTS / "compare_plots")
    shutil.copytree(run_dir / "plots", RESULTS / "compare_plots")
    print(f"{len(run.computed)} cells computed, {len(run.reused)} reused in {time.perf_counter() - t0:.0f} s; "
          f"wrote {RESULTS / 'compare.json'} and {RESULTS / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
