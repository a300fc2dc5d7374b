"""MetaRepair against its baselines over training seeds, and over the number of experiences K.

``benchmarks/metarepair.py`` runs one seed. Its gaps between MetaRepair and fine-tuning are a
point or two, and fine-tuning on 500-1000 failures moves by about as much from one seed to the
next, so this script repeats the comparison. It uses the same settings, for seeds 0, 1, 2 (the seed
of the task sampling, meta-test dealing and SGD batches; the data stay fixed). Per seed and target
it measures the accuracy on ``D_fail^t`` and the clean test accuracy after repair of

* MetaRepair with K = 3, 5 (the default) and 8 experiences nearest by Fréchet distance,
* fine-tuning on ``D_collect^t`` (the meta-test's step budget),
* joint fine-tuning on the K = 5 experiences and ``D_collect^t`` (MetaRepair's whole budget),

and writes ``benchmarks/results/metarepair_seeds_<model>.json``: every value, the mean over the targets
per seed, and the mean and standard deviation of that over the seeds.

    python benchmarks/metarepair_seeds.py [--model fashion_cnn|mnist_cnn] [--seeds 0,1,2]   # ~25 min, 1 thread
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metarepair as bench  # noqa: E402  (the benchmark's settings, so the two runs compare)

from provrepair.fileio import write_text_atomic  # noqa: E402
from provrepair.repair import metarepair as mr  # noqa: E402
from provrepair.zoo import load_zoo  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "metarepair_seeds_{model}.json"
KS = (3, 5, 8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion_cnn", choices=list(bench.MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--targets", default=",".join(bench.TARGETS))
    ap.add_argument("--out", help="result file (default results/metarepair_seeds_<model>.json)")
    args = ap.parse_args(argv)
    args.out = args.out or str(OUT).format(model=args.model)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = args.targets.split(",")
    t_start = time.perf_counter()

    net = mr._frozen(load_zoo(args.model))
    opts = mr.MetaRepairOptions.from_kwargs(**bench.BENCH_OPTIONS, **bench.PER_MODEL[args.model])
    data = mr.CorruptedData(bench.MODELS[args.model], bench.SEVERITY, train_limit=opts.train_limit, device="cpu")
    clean_train = data.clean("train")
    clean_test = data.clean("test")
    clean0 = mr._accuracy(net, *clean_test)
    cache: dict = {}
    preps = {t: mr.prepare(net, data, t, "auto", opts, cache=cache) for t in targets}
    prep_seconds = time.perf_counter() - t_start

    steps_test = opts.tasks * opts.adapt_steps
    steps_meta = opts.episodes * opts.tasks * (opts.inner_steps + 1)
    kw = dict(lr=opts.adapt_lr, batch=opts.adapt_batch, clean=clean_train, replay=opts.replay)
    methods = [f"metarepair_k{k}" for k in KS] + ["finetune", "joint_finetune"]
    values = {m: {str(s): {} for s in seeds} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)

    def record(method, seed, target, model, t0):
        seconds[method] += time.perf_counter() - t0
        values[method][str(seed)][target] = {
            "fail_accuracy": round(100 * mr._accuracy(model, *preps[target].target.fail), 2),
            "clean_drop_pp": round(100 * (clean0 - mr._accuracy(model, *clean_test)), 2)}

    for seed in seeds:
        for target in targets:
            prep = preps[target]
            for k in KS:
                p = prep.keeping(k, opts)
                t0 = time.perf_counter()
                meta, _ = mr.meta_train(net, [p.candidates[n] for n in p.kept], [p.probabilities[n] for n in p.kept],
                                        opts, seed=seed, clean=clean_train)
                repaired = mr.meta_test(meta, p.target.collect, opts, seed=seed, clean=clean_train)[0][-1]
                record(f"metarepair_k{k}", seed, target, repaired, t0)
            t0 = time.perf_counter()
            record("finetune", seed, target,
                   mr.finetune_collect(net, prep.target.collect, steps=steps_test, seed=seed, **kw), t0)
            p5 = prep.keeping(5, opts)
            t0 = time.perf_counter()
            record("joint_finetune", seed, target,
                   mr.joint_finetune(net, [p5.candidates[n] for n in p5.kept], prep.target.collect,
                                     steps=steps_meta + steps_test, seed=seed, **kw), t0)
            print(f"seed {seed} {target:18s} " + "  ".join(
                f"{m} {values[m][str(seed)][target]['fail_accuracy']:5.1f}" for m in methods), flush=True)

    def over_targets(m, seed, key):
        return float(np.mean([values[m][str(seed)][t][key] for t in targets]))

    summary = {}
    for m in methods:
        per_seed = [over_targets(m, s, "fail_accuracy") for s in seeds]
        drops = [over_targets(m, s, "clean_drop_pp") for s in seeds]
        summary[m] = {"fail_accuracy_per_seed": [round(v, 2) for v in per_seed],
                      "fail_accuracy_mean": round(float(np.mean(per_seed)), 2),
                      "fail_accuracy_std": round(float(np.std(per_seed, ddof=1)), 2) if len(seeds) > 1 else 0.0,
                      "clean_drop_mean_pp": round(float(np.mean(drops)), 2),
                      "seconds": round(seconds[m], 1)}
    gaps = {base: [round(a - b, 2) for a, b in zip(summary["metarepair_k5"]["fail_accuracy_per_seed"],
                                                   summary[base]["fail_accuracy_per_seed"])]
            for base in ("finetune", "joint_finetune")}
    payload = {"benchmark": "metarepair_seeds", "model": args.model, "severity": bench.SEVERITY, "seeds": seeds,
               "targets": targets, "options": vars(opts).copy(), "clean_accuracy_before": round(100 * clean0, 2),
               "summary": summary, "metarepair_k5_minus": gaps, "values": values,
               "prepare_seconds": round(prep_seconds, 1), "seconds": round(time.perf_counter() - t_start, 1)}
    write_text_atomic(args.out, json.dumps(payload, indent=2) + "\n")
    for m, s in summary.items():
        print(f"{m:16s} D_fail {s['fail_accuracy_mean']:6.2f} ± {s['fail_accuracy_std']:.2f} "
              f"(per seed {s['fail_accuracy_per_seed']}), clean drop {s['clean_drop_mean_pp']:.2f} pp")
    print(f"MetaRepair (K 5) minus: {gaps}; wrote {args.out} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
