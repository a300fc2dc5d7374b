"""The comparison report: per-method summaries over seeds, ``report.md`` and PNG plots.

Every number in ``report.md`` is formatted from ``results["summary"]`` (itself computed from the
cell records in ``results.json``) by :func:`fmt`, so the report and the JSON always agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import write_text_atomic

__all__ = ["summarize", "write_report", "fmt", "SUMMARY_METRICS", "TABLE"]

#: Scalar metrics summarised over seeds (mean, std, n).
SUMMARY_METRICS = ("efficacy", "certified_efficacy", "test_accuracy", "drawdown_pp", "generalization",
                   "prediction_change", "robustness_mean", "constraint_accuracy", "confusion_mean", "confusion_min",
                   "param_l0", "param_linf", "param_l2", "params_added", "generalization_gain_kept")
#: The main table: (column title, metric, format). Percent formats print fractions as percentages.
TABLE = (("efficacy", "efficacy", "pct"), ("certified", "certified_efficacy", "pct"),
         ("test acc.", "test_accuracy", "pct"), ("drawdown (pp)", "drawdown_pp", "f2"),
         ("generalization", "generalization", "pct"), ("pred. changed", "prediction_change", "pct"),
         ("robustness (mean)", "robustness_mean", "pct"), ("constraint acc.", "constraint_accuracy", "pct"),
         ("confusion (mean/min)", ("confusion_mean", "confusion_min"), "pct2"),
         ("L0 / L∞ of Δθ", ("param_l0", "param_linf"), "l0inf"), ("added params", "params_added", "f0"),
         ("time (s)", "seconds", "f1"),
         ("peak RSS (MiB)", "peak_rss_mb", "f0"))


def _stats(values: list) -> dict | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}


def _seconds(cell: dict) -> float:
    return float(sum(v["seconds"] for k, v in (cell.get("timings") or {}).items() if k != "data"))


def _peak(cell: dict) -> float:
    return float(max((v.get("peak_rss_mb", 0.0) for v in (cell.get("timings") or {}).values()), default=0.0))


def _reused_stage_seconds(results: dict, cell: dict) -> float:
    """A pipeline that reused its stage's network counts that stage cell's time (same task and seed)."""
    stage = cell.get("stage") or {}
    if not stage.get("reused"):
        return 0.0
    for c in results["cells"]:
        if c["task"] == cell["task"] and c["method"] == stage["method"] and c["seed"] == cell["seed"]:
            return float(sum(v["seconds"] for k, v in (c.get("timings") or {}).items()
                             if k not in ("data", "evaluate")))
    return 0.0


def summarize(results: dict) -> dict:
    """``{task: {"original": metrics, "methods": {method: {metric: {mean, std, n}, "robustness": {set:
    stats}, "stage": {...}, "failed": count}}}}``."""
    out = {}
    for task, info in results["tasks"].items():
        orig = info["original"]
        methods = {}
        for name in results["methods"]:
            cells = [c for c in results["cells"] if c["task"] == task and c["method"] == name]
            ok = [c for c in cells if c.get("metrics")]
            s: dict = {"cells": len(cells), "failed": len(cells) - len(ok),
                       "statuses": sorted({c["status"] for c in cells})}
            for metric in SUMMARY_METRICS:
                st = _stats([c["metrics"].get(metric) for c in ok])
                if st is not None:
                    s[metric] = st
            s["seconds"] = _stats([_seconds(c) + _reused_stage_seconds(results, c) for c in cells])
            s["peak_rss_mb"] = _stats([_peak(c) for c in cells])
            rob = {}
            for key in (orig.get("robustness") or {}):
                st = _stats([c["metrics"].get("robustness", {}).get(key) for c in ok])
                if st is not None:
                    rob[key] = st
            s["robustness"] = rob
            staged = [c for c in cells if c.get("stage_metrics")]
            if staged:
                s["stage"] = {m: _stats([c["stage_metrics"].get(m) for c in staged]) for m in SUMMARY_METRICS
                              if _stats([c["stage_metrics"].get(m) for c in staged]) is not None}
                s["polish_layers"] = sorted({str(c.get("polish", {}).get("layer")) for c in staged})
            methods[name] = s
        out[task] = {"original": {m: orig.get(m) for m in SUMMARY_METRICS if orig.get(m) is not None}
                     | {"robustness": orig.get("robustness", {})}, "methods": methods}
    return out


def fmt(value, kind: str) -> str:
    """A summary value as the report prints it (``value``: a number, a stats dict or a pair)."""
    if isinstance(value, tuple):
        a, b = (fmt(v, "pct" if kind == "pct2" else ("int" if i == 0 else "g3")) for i, v in enumerate(value))
        return f"{a} / {b}"
    if isinstance(value, dict):
        mean, std, n = value["mean"], value["std"], value["n"]
        text = fmt(mean, kind)
        if n > 1 and std > 0 and kind in ("pct", "f2"):
            text += " ± " + (f"{100 * std:.1f}" if kind == "pct" else f"{std:.2f}")
        return text
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * float(value):.1f} %"
    spec = _NUMBER_FORMATS.get(kind)
    return str(value) if spec is None else format(float(value), spec)


_NUMBER_FORMATS = {"f2": ".2f", "f1": ".1f", "f0": ".0f", "int": ".0f", "g3": ".3g"}


def _cell(row: dict, metric, kind: str) -> str:
    if isinstance(metric, tuple):
        vals = tuple(row.get(m) for m in metric)
        if all(v is None for v in vals):
            return "—"
        return fmt(tuple(v["mean"] if isinstance(v, dict) else v for v in vals), kind if kind == "pct2" else "l0inf")
    return fmt(row.get(metric), kind)


def _table(rows: dict[str, dict]) -> list[str]:
    head = "| method | " + " | ".join(t for t, _, _ in TABLE) + " |"
    lines = [head, "|" + "---|" * (len(TABLE) + 1)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row, m, k) for _, m, k in TABLE) + " |")
    return lines


def write_report(results: dict, run_dir: str | Path, *, plots: bool = True) -> Path:
    """``report.md`` (and, with ``plots``, ``plots/*.png``) in ``run_dir`` from ``results``."""
    run = Path(run_dir)
    summary = results["summary"]
    v = results.get("versions", {})
    lines = ["# provrepair comparison", "",
             f"Seeds {', '.join(map(str, results['seeds']))}; executor {results['executor']}; git "
             f"{results.get('git_revision') or 'unknown'}; torch {v.get('torch')}, HiGHS (highspy) {v.get('highspy')}.",
             "Every number below is computed from `results.json` (mean ± std over seeds where they differ).",
             "Efficacy: repair set classified right; certified: points the independent exact check certifies "
             "(float64 and float32); generalization: held-out failures of the same kind now right (0 % for the "
             "original by construction); pred. changed: clean test predictions the repair changed; time: every "
             "stage of the cell but data loading (a pipeline that reused its stage's network counts that stage's "
             "time too); L0/L∞ of Δθ: changed parameters of the original network (DeepPatch's replacement filters "
             "are counted as added).", ""]
    for note in results.get("notes", []):
        lines.append(f"> note: {note}")
    for task, s in summary.items():
        info = results["tasks"][task]
        cfg = info["config"]
        lines += ["", f"## {task}", "",
                  f"Model `{cfg['model']}`, dataset {cfg['dataset']}; repair set: {info['info'].get('repair_source')} "
                  f"({info['info'].get('repair_points')} points); held-out failures: {info['info'].get('heldout_points')}; "
                  f"clean test images: {info['info'].get('test_points')}.", ""]
        rows = {"(original)": {k: ({"mean": val, "std": 0.0, "n": 1} if not isinstance(val, dict) else val)
                               for k, val in s["original"].items() if k != "robustness"}}
        for name, row in s["methods"].items():
            rows[name] = row
        lines += _table(rows)
        failed = {n: r for n, r in s["methods"].items() if r["failed"]}
        for n, r in failed.items():
            lines.append(f"\n{n}: {r['failed']} of {r['cells']} cells gave no network ({', '.join(r['statuses'])}).")
        rob_keys = list(s["original"].get("robustness", {}))
        if rob_keys:
            lines += ["", "Accuracy per corruption severity (clean test images, corrupted):", "",
                      "| method | " + " | ".join(rob_keys) + " |", "|" + "---|" * (len(rob_keys) + 1),
                      "| (original) | " + " | ".join(fmt(s["original"]["robustness"][k], "pct") for k in rob_keys) + " |"]
            for name, row in s["methods"].items():
                lines.append(f"| {name} | " + " | ".join(fmt(row["robustness"].get(k), "pct") for k in rob_keys) + " |")
        pipes = {n: r for n, r in s["methods"].items() if "stage" in r}
        if pipes:
            lines += ["", "Certified pipelines, before → after the LP polish:", "",
                      "| pipeline | certified | efficacy | generalization | gain kept | drawdown (pp) | robustness | polished layer |",
                      "|---|---|---|---|---|---|---|---|"]
            for n, r in pipes.items():
                st = r["stage"]
                arrow = lambda m, k: f"{fmt(st.get(m), k)} → {fmt(r.get(m), k)}"
                lines.append(f"| {n} | {arrow('certified_efficacy', 'pct')} | {arrow('efficacy', 'pct')} | "
                             f"{arrow('generalization', 'pct')} | {fmt(r.get('generalization_gain_kept'), 'pct')} | "
                             f"{arrow('drawdown_pp', 'f2')} | {arrow('robustness_mean', 'pct')} | "
                             f"{', '.join(r.get('polish_layers', []))} |")
        if plots:
            files = _plots(results, task, s, run / "plots")
            if files:
                lines += ["", " ".join(f"![{p.stem}](plots/{p.name})" for p in files)]
    path = run / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _plots(results: dict, task: str, s: dict, folder: Path) -> list[Path]:
    from .plots import bar_chart, line_chart, scatter_chart
    files = []
    keys = list(s["original"].get("robustness", {}))
    if keys:
        sev = lambda k: float(k.rsplit("/", 1)[-1]) if k.rsplit("/", 1)[-1].isdigit() else float(keys.index(k))
        series = {"(original)": [(sev(k), s["original"]["robustness"][k]) for k in keys]}
        for name, row in s["methods"].items():
            if row["robustness"]:
                series[name] = [(sev(k), row["robustness"][k]["mean"]) for k in keys if k in row["robustness"]]
        path = folder / f"{task}-accuracy-vs-severity.png"
        line_chart(series, path, title=f"{task}: accuracy vs severity", xlabel="severity", ylabel="accuracy")
        files.append(path)
    pts = {}
    for name in s["methods"]:
        cells = [c for c in results["cells"] if c["task"] == task and c["method"] == name and c.get("metrics")]
        pts[name] = [(c["metrics"].get("efficacy"), c["metrics"].get("drawdown_pp")) for c in cells]
    if any(pts.values()):
        path = folder / f"{task}-drawdown-vs-efficacy.png"
        scatter_chart(pts, path, title=f"{task}: drawdown vs efficacy (one marker per seed)",
                      xlabel="efficacy on the repair set", ylabel="drawdown (pp)")
        files.append(path)
    stacks = {}
    for name in s["methods"]:
        cells = [c for c in results["cells"] if c["task"] == task and c["method"] == name]
        if cells:
            stages = {}
            for c in cells:
                for k, v in (c.get("timings") or {}).items():
                    if k != "data":
                        stages[k] = stages.get(k, 0.0) + v["seconds"] / len(cells)
            stacks[name] = stages
    if stacks:
        path = folder / f"{task}-time.png"
        bar_chart(stacks, path, title=f"{task}: seconds per stage (mean over seeds)", xlabel="seconds")
        files.append(path)
    return files
