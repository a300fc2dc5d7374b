"""The method-comparison harness: a (task x method x seed) grid, run, recorded and resumable.

:func:`compare` runs every cell of the grid through an executor and writes a run folder::

    RUN/cells/<task>/<method>__seed<s>.json   one record per finished cell (written atomically)
    RUN/models/<task>/<stage>__seed<s>-<key>.pt  statistical stages' networks, reused by pipelines
    RUN/results.json                          every metric, option, seed, versions, git revision
    RUN/report.md, RUN/plots/*.png            see :mod:`provrepair.evaluate.report`

A cell's record carries a key (a hash of the task, the method, its resolved options and the seed);
a later run over the same folder reuses every record whose key matches and computes only the rest,
so a killed run resumes where it stopped. Executors: ``serial`` (in this process), ``local``
(worker processes, the default) and ``ray`` (a Ray cluster; one is started locally when no address
is given). A cell is a pure function of its payload, so every executor gives the same metrics.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..api import certify
from ..errors import InputError
from ..fileio import atomic_path, json_default, write_text_atomic
from ..repair.deeppatch import PatchedNet
from ..repair.options import build
from ..version import version as provrepair_version
from .measure import measure
from .methods import run_method
from .metrics import (
    certified_efficacy,
    confusion_accuracy,
    constraint_accuracy,
    drawdown,
    efficacy,
    generalization,
    logits,
    parameter_change,
    prediction_change,
    predictions,
    robustness_accuracy,
    softmax,
)
from .registry import Method, get_method
from .tasks import TaskConfig, build_task

__all__ = ["compare", "evaluate_model", "run_cell", "CompareRun", "EXECUTORS", "cell_key", "versions"]

EXECUTORS = ("local", "serial", "ray")
#: Metrics that describe the machine rather than the method; left out when runs are compared.
VOLATILE = ("timings",)


# --------------------------------------------------------------------------------------------------
# metrics of one network on one task


def _param_change(original, model) -> dict:
    if isinstance(model, PatchedNet):  # the original layers, changed or not, and the replacements added
        return {**parameter_change(original, model.base), "added": model.added_parameters}
    return parameter_change(original, model)


def evaluate_model(model, data, *, original: dict | None = None, original_net=None) -> dict:
    """Every metric of ``model`` on the task ``data``; ``original``: the same for the unrepaired
    network (adds drawdown, locality and the parameter change)."""
    out: dict[str, Any] = {}
    if data.repair[1].size:
        spec = data.spec()
        cert = certify(model, spec)
        out["efficacy"] = efficacy(predictions(model, data.repair[0]), data.repair[1])
        out["certified_efficacy"] = certified_efficacy(cert)
        out["certified"] = bool(cert.certified)
        out["min_margin"] = None if not np.isfinite(cert.min_margin) else float(cert.min_margin)
    z = logits(model, data.test[0])
    pred = np.argmax(z, axis=1)
    out["test_accuracy"] = float(np.mean(pred == data.test[1]))
    if data.heldout is not None and data.heldout[1].size:
        out["generalization"] = generalization(predictions(model, data.heldout[0]), data.heldout[1])
    if data.robustness:
        rob = robustness_accuracy(model, data.robustness, data.test[1])
        out["robustness"] = rob
        out["robustness_mean"] = float(np.mean(list(rob.values())))
    out["constraint_accuracy"] = constraint_accuracy(softmax(z), data.groups)
    conf = confusion_accuracy(pred, data.test[1], classes=data.classes)
    out["confusion_mean"], out["confusion_min"], out["confusion_worst"] = conf["mean"], conf["min"], conf["worst"]
    out["_pred"] = pred
    if original is not None:
        out["drawdown_pp"] = drawdown(original["test_accuracy"], out["test_accuracy"])
        out["prediction_change"] = prediction_change(original["_pred"], pred)
    if original_net is not None:
        pc = _param_change(original_net, model)
        out.update(param_l0=pc["l0"], param_linf=pc["linf"], param_l2=pc["l2"], param_count=pc["count"],
                   layers_touched=pc["touched"], params_added=pc["added"])
    return out


def _public(metrics: dict | None) -> dict | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------
# one cell

_TASKS: dict[str, Any] = {}  # per process: digest -> (TaskData, original metrics)


def _task(config: TaskConfig):
    key = config.digest()
    if key not in _TASKS:
        data = build_task(config)
        _TASKS[key] = (data, evaluate_model(data.net, data))
    return _TASKS[key]


def cell_key(task: TaskConfig, method: str, seed: int, options: dict, stage_options: dict | None) -> str:
    import hashlib
    blob = json.dumps({"task": task.to_dict(), "method": method, "seed": seed, "options": options,
                       "stage_options": stage_options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_path(run_dir: str | None, task: TaskConfig, stage: str, seed: int, key: str) -> Path | None:
    if not run_dir:
        return None
    return Path(run_dir) / "models" / task.name / f"{stage}__seed{seed}-{key}.pt"


def _save_stage(path: Path | None, model) -> None:
    if path is None:
        return
    import torch
    try:
        with atomic_path(path) as tmp:
            torch.save(model, tmp)
    except OSError:  # a worker on another machine may not see the run folder: the cache is optional
        pass


def _load_stage(path: Path | None):
    if path is None or not path.is_file():
        return None
    import torch
    try:
        return torch.load(path, weights_only=False)
    except Exception:
        return None


def run_cell(payload: dict) -> dict:
    """Run one (task, method, seed) cell and return its record (JSON-able). ``payload``: ``task``
    (a TaskConfig dict), ``method``, ``seed``, ``options`` (resolved), ``stage_options`` (pipelines),
    ``threads``, ``run_dir`` (for the stage cache; may be None)."""
    import torch

    torch.set_num_threads(int(payload.get("threads") or 1))
    cfg = dict(payload["task"])
    cfg["severities"] = tuple(cfg["severities"])
    task = TaskConfig(**cfg)
    method = get_method(payload["method"])
    seed, options = int(payload["seed"]), payload["options"]
    timings: dict = {}
    record: dict[str, Any] = {"task": task.name, "method": method.name, "kind": method.kind, "seed": seed,
                              "key": payload["key"], "options": options}
    with measure(timings, "data"):
        data, original = _task(task)
    try:
        _run_method(record, method, data, original, seed, options, payload, timings)
    except Exception as exc:  # one failing cell must not stop the grid: it is recorded as an error
        record.update(status="error", message=f"{type(exc).__name__}: {exc}", metrics=None)
    record["timings"] = timings
    return record


def _run_method(record, method, data, original, seed, options, payload, timings) -> None:
    import torch

    task, net = data.config, data.net
    stage_model, stage_out = None, None
    if method.kind == "pipeline":
        stage = get_method(method.stage)
        stage_key = cell_key(task, stage.name, seed, payload["stage_options"], None)
        path = _stage_path(payload.get("run_dir"), task, stage.name, seed, stage_key)
        with measure(timings, "stage"):
            stage_model = _load_stage(path)
            if stage_model is None:
                torch.manual_seed(seed)
                stage_out = run_method(stage, net, data, seed=seed, options=payload["stage_options"])
                stage_model = stage_out.model
                _save_stage(path, stage_model)
        record["stage"] = {"method": stage.name, "options": payload["stage_options"],
                           "reused": stage_out is None,
                           "details": None if stage_out is None else stage_out.details}
        polisher = method.repairer_instance()
        popts = build(polisher.Options, **{k: v for k, v in options.items() if v is not None})
        with measure(timings, "polish"):
            result = polisher.run(stage_model, data.spec(), popts)
        record["polish"] = {k: v for k, v in result.to_dict().items()
                            if k not in ("before", "certificate", "method", "message")}
        model, status = result.model, ("ok" if result.certified else result.status)
        message = "" if result.certified else f"the polish did not certify ({result.status})"
        with measure(timings, "evaluate_stage"):
            stage_metrics = evaluate_model(stage_model, data, original=original, original_net=net)
        record["stage_metrics"] = _public(stage_metrics)
    else:
        with measure(timings, "repair"):
            torch.manual_seed(seed)
            out = run_method(method, net, data, seed=seed, options=options)
        model, status, message = out.model, out.status, out.message
        record["details"] = out.details
        record["method_timings"] = out.timings
        if method.kind == "statistical" and model is not None:
            key = cell_key(task, method.name, seed, options, None)
            _save_stage(_stage_path(payload.get("run_dir"), task, method.name, seed, key), model)
    record["status"], record["message"] = status, message
    if model is not None:
        with measure(timings, "evaluate"):
            record["metrics"] = _public(evaluate_model(model, data, original=original, original_net=net))
        if method.kind == "pipeline":
            m, s = record["metrics"], record["stage_metrics"]
            base_gen = original.get("generalization")
            if base_gen is not None and "generalization" in m:
                gain = s["generalization"] - base_gen
                m["generalization_gain_kept"] = (m["generalization"] - base_gen) / gain if gain > 0 else None
    else:
        record["metrics"] = None


# --------------------------------------------------------------------------------------------------
# executors


def _run_serial(payloads, on_done):
    for p in payloads:
        on_done(p, run_cell(p))


def _init_worker(threads: int):  # pragma: no cover - runs in worker processes
    import torch
    torch.set_num_threads(threads)


def _run_local(payloads, on_done, workers: int, threads: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("spawn")  # no fork of a process holding torch/HiGHS threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell, p): p for p in payloads}
        for fut in as_completed(futures):
            on_done(futures[fut], fut.result())


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _run_ray(payloads, on_done, workers: int, threads: int, address: str | None):
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray, an optional extra: pip install 'ray>=2' (or use "
                         "--executor local)") from None
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": str(threads)}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        pending = {remote.remote(p): p for p in payloads}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_done(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------------
# the grid


@dataclass
class CompareRun:
    """What :func:`compare` did: the results (also in ``results.json``), the cells it computed and
    the ones it reused from an earlier run, and where it wrote."""

    results: dict
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def report(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "report.md"


def versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform()}
    try:
        from importlib.metadata import version
        out["highspy"] = version("highspy")
    except Exception:
        out["highspy"] = None
    try:
        from provrepair import solvers
        out["highs"] = solvers.create("highs").version  # the backend silences HiGHS's banner
    except Exception:
        out["highs"] = None
    try:
        from provrepair import solvers
        out["solvers"] = [getattr(solvers, "DEFAULT", None)] if hasattr(solvers, "DEFAULT") else None
    except Exception:
        pass
    out["provrepair"] = provrepair_version()
    return out


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _order(method: Method) -> int:
    return {"statistical": 0, "provable": 1, "pipeline": 2}[method.kind]


def _cell_path(run_dir: Path, task: str, method: str, seed: int) -> Path:
    return run_dir / "cells" / task / f"{method.replace('+', '_plus_')}__seed{seed}.json"


def compare(tasks: Sequence[TaskConfig], methods: Sequence[Method], seeds: Sequence[int], *,
            run_dir: str | os.PathLike | None, options: dict[str, dict] | None = None, executor: str = "local",
            workers: int = 1, threads: int = 1, address: str | None = None, resume: bool = True,
            notes: Sequence[str] = (), progress: Callable[[str], None] | None = None,
            on_cell: Callable[[dict], None] | None = None, plots: bool = True) -> CompareRun:
    """Run every (task, method, seed) cell not already in ``run_dir`` and write the run folder.

    ``options``: ``{method name: {option: value}}`` (a stage's options apply inside its pipelines
    too). ``on_cell(record)`` is called after each cell's record is written."""
    _check_grid(tasks, methods, seeds, executor, workers, threads)
    say = progress or (lambda msg: None)
    options = options or {}
    run = Path(run_dir) if run_dir is not None else None
    resolved = {m.name: m.resolve_options(options.get(m.name)) for m in methods}
    stage_opts = {m.name: get_method(m.stage).resolve_options(options.get(m.stage)) for m in methods if m.stage}
    payloads, reused, records = _plan(tasks, methods, seeds, resolved, stage_opts, threads, run, resume)
    say(f"{len(payloads)} cells to run, {len(reused)} reused from {run}" if reused else
        f"{len(payloads)} cells to run")
    computed = []
    t_start = time.perf_counter()

    def on_done(payload, record):
        ident = (record["task"], record["method"], record["seed"])
        records[ident] = record
        computed.append(ident)
        if run is not None:
            text = json.dumps(_finite(json.loads(json.dumps(record, default=json_default))), indent=1)
            write_text_atomic(_cell_path(run, *ident), text + "\n")
        m = record.get("metrics") or {}
        say(f"[{len(computed)}/{len(payloads)}] {ident[0]} {ident[1]} seed {ident[2]}: {record['status']}"
            + (f", efficacy {m['efficacy']:.2f}, certified {m.get('certified_efficacy', 0):.2f}, "
               f"test {m['test_accuracy']:.4f}" if "efficacy" in m else ""))
        if on_cell is not None:
            on_cell(record)

    if payloads:
        if executor == "serial":
            _run_serial(payloads, on_done)
        elif executor == "local":
            _run_local(payloads, on_done, workers, threads)
        else:
            _run_ray(payloads, on_done, workers, threads, address)
    results = _write_results(tasks, methods, seeds, resolved, stage_opts, records, notes, executor, workers,
                             threads, t_start, run, plots)
    return CompareRun(results, computed, reused, run)


def _check_grid(tasks, methods, seeds, executor: str, workers: int, threads: int) -> None:
    """Refuse a grid the user got wrong before any cell runs."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if not tasks or not methods or not seeds:
        raise InputError("compare needs at least one task, one method and one seed")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise InputError(f"seeds must be non-negative integers, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds {list(seeds)} name a seed twice; give each seed once")
    for n in (workers, threads):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"workers and threads must be positive integers, got {n!r}")


def _plan(tasks, methods, seeds, resolved: dict, stage_opts: dict, threads: int, run: Path | None,
          resume: bool) -> tuple[list[dict], list[tuple], dict]:
    """The payloads of the cells to compute, and the cells a resumed run already has (same key)."""
    payloads, reused, records = [], [], {}
    for task in tasks:
        for m in sorted(methods, key=_order):
            for seed in seeds:
                key = cell_key(task, m.name, int(seed), resolved[m.name], stage_opts.get(m.name))
                payload = {"task": task.to_dict(), "method": m.name, "seed": int(seed), "key": key,
                           "options": resolved[m.name], "stage_options": stage_opts.get(m.name),
                           "threads": threads, "run_dir": str(run) if run else None}
                ident = (task.name, m.name, int(seed))
                if run is not None and resume:
                    path = _cell_path(run, *ident)
                    try:
                        old = json.loads(path.read_text()) if path.is_file() else None
                    except (OSError, json.JSONDecodeError):
                        old = None
                    if old is not None and old.get("key") == key:
                        records[ident] = old
                        reused.append(ident)
                        continue
                payloads.append(payload)
    return payloads, reused, records


def _write_results(tasks, methods, seeds, resolved: dict, stage_opts: dict, records: dict, notes, executor: str,
                   workers: int, threads: int, t_start: float, run: Path | None, plots: bool) -> dict:
    """``results.json`` (and the report) from every cell's record and each task's original network."""
    # the originals, measured once per task in this process
    originals = {}
    for task in tasks:
        data, original = _task(task)
        originals[task.name] = {"config": task.to_dict(), "info": data.info, "original": _public(original)}
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_revision": git_revision(), "versions": versions(), "argv": sys.argv,
        "executor": executor, "workers": workers, "threads": threads, "seeds": [int(s) for s in seeds],
        "tasks": originals,
        "methods": {m.name: {"kind": m.kind, "summary": m.summary, "options": resolved[m.name],
                             **({"stage": m.stage, "stage_options": stage_opts[m.name]} if m.stage else {})}
                    for m in methods},
        "cells": [records[k] for k in sorted(records, key=lambda k: (k[0], _method_rank(methods, k[1]), k[2]))],
        "notes": list(notes),
        "seconds_this_run": time.perf_counter() - t_start,
    }
    from .report import summarize
    results["summary"] = summarize(results)
    results = _finite(json.loads(json.dumps(results, default=json_default)))
    if run is not None:
        from .report import write_report
        write_text_atomic(run / "results.json", json.dumps(results, indent=1) + "\n")
        write_report(results, run, plots=plots)
    return results


def _method_rank(methods, name):
    for i, m in enumerate(methods):
        if m.name == name:
            return i
    return len(methods)


def _finite(obj):
    """NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
