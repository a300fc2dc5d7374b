"""``provrepair repair-batch``: whole-property repair of many ``network,property`` instances.

The instance list is a CSV in the VNN-COMP format (``onnx,vnnlib[,timeout]``, paths relative to
the CSV's folder). Instances of one network are repaired together (one job: every listed property
of that network at once); with ``applicable`` (a CSV of every property that applies to each
network, e.g. the competition's full list), a network's other applicable properties are
*preserved*: certified again after the repair. Each job runs ``repair_properties`` in a worker
(``local`` processes by default, ``serial``, or ``ray``), writes the repaired model and one JSON
record per instance under ``out/``, and is skipped when its records exist (resumable). A summary
table (Markdown and JSON) is written at the end.
"""

from __future__ import annotations

import csv
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, ProvRepairError
from ..fileio import write_text_atomic

__all__ = ["EXECUTORS", "jobs_from_csv", "run_batch", "run_job", "summary_table"]

EXECUTORS = ("local", "serial", "ray")


def _rows(path: Path) -> list[tuple[Path, Path]]:
    if not path.exists():
        raise InputError(f"{path}: no such instance list; give a CSV with rows onnx,vnnlib[,timeout]")
    out = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise InputError(f"{path}:{i + 1}: expected onnx,vnnlib[,timeout], got {','.join(row)!r}")
            net, prop = (Path(c) if Path(c).is_absolute() else path.parent / c for c in row[:2])
            for p in (net, prop):
                if not p.exists():
                    raise InputError(f"{path}:{i + 1}: {p} does not exist")
            out.append((net, prop))
    if not out:
        raise InputError(f"{path}: no instances listed")
    return out


def _key(net: Path, props: list[Path]) -> str:
    return net.stem + "__" + "+".join(p.stem for p in props)


def jobs_from_csv(instances: str | os.PathLike[str], *, applicable: str | os.PathLike[str] | None = None,
                  domain: str | None = None, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One job per network: its listed properties as targets, its other applicable ones preserved."""
    rows = _rows(Path(instances))
    by_net: dict[Path, list[Path]] = {}
    for net, prop in rows:
        by_net.setdefault(net, []).append(prop)
    also: dict[Path, list[Path]] = {}
    if applicable is not None:
        for net, prop in _rows(Path(applicable)):
            also.setdefault(net, []).append(prop)
    jobs = []
    for net, props in by_net.items():
        keep = [p for p in also.get(net, []) if p not in props]
        jobs.append({"key": _key(net, props), "net": str(net), "targets": [str(p) for p in props],
                     "preserve": [str(p) for p in keep], "domain": domain, "options": dict(options or {})})
    return jobs


def run_job(job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Repair one network's properties; write the model and the job's record; return the record."""
    import warnings

    import torch

    from ..models import load_model, save_model
    from .property_repair import (
        PropertyRepairOptions,
        domain_of,
        load_targets,
        repair_properties,
    )

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = Path(out_dir)
    record: dict[str, Any] = {"key": job["key"], "net": job["net"], "targets": job["targets"],
                              "preserve": job["preserve"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = load_model(job["net"])
        targets = load_targets(net, job["targets"])
        preserve = load_targets(net, job["preserve"])
        opts = PropertyRepairOptions(domain=domain_of(net, job.get("domain")), **job.get("options", {}))
        res = repair_properties(net, targets, preserve, opts)
        record.update(res.to_dict())
        if res.model is not None and res.status == "certified":
            path = out / "models" / f"{job['key']}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(res.model, path, protect=(job["net"],))
            record["written"] = str(path)
    except Exception as exc:  # noqa: BLE001 - a job's failure is its record, never the batch's end
        record.update(status="error", message=f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, ProvRepairError):  # a bug, not bad input: keep where it happened
            record["traceback"] = traceback.format_exc(limit=12)
    record["seconds"] = time.perf_counter() - t0
    write_text_atomic(out / "records" / f"{job['key']}.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


def _init_worker() -> None:  # pragma: no cover - runs in worker processes
    import torch
    torch.set_num_threads(1)


def run_batch(jobs: list[dict[str, Any]], out_dir: str | os.PathLike[str], *, executor: str = "local",
              workers: int = 1, address: str | None = None,
              on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the jobs whose records are missing under ``out_dir``; every job's record, in job order."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    out = Path(out_dir)
    (out / "records").mkdir(parents=True, exist_ok=True)
    done = {}
    for j in jobs:
        rec = out / "records" / f"{j['key']}.json"
        if rec.exists():
            done[j["key"]] = json.loads(rec.read_text())
    todo = [j for j in jobs if j["key"] not in done]
    tell = on_done or (lambda r: None)

    def finish(rec: dict[str, Any]) -> None:
        done[rec["key"]] = rec
        tell(rec)

    if executor == "serial" or not todo:
        for j in todo:
            finish(run_job(j, str(out)))
    elif executor == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(run_job, j, str(out)) for j in todo]
            for fut in as_completed(futures):
                finish(fut.result())
    else:
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray, an optional extra: pip install 'ray>=2' (or use "
                             "--executor local)") from None
        ray.init(address=address) if address else ray.init(num_cpus=workers, include_dashboard=False)
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
            pending = [remote.remote(j, str(out)) for j in todo]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                finish(ray.get(ready[0]))
        finally:
            ray.shutdown()
    return [done[j["key"]] for j in jobs]


def _prop_cell(rec: dict[str, Any], role: str) -> str:
    cells = []
    for p in rec.get("properties", []):
        if p.get("role") != role:
            continue
        after = p.get("after") or p.get("before") or {}
        engine = after.get("engine")
        cells.append(f"{p['property']}: {after.get('status', '?')}"
                     + (f" ({after['decided_by']})" if after.get("decided_by") else "")
                     + (f"; engine: {engine['status']}" + (f" ({engine['decided_by']})" if engine.get("decided_by")
                                                          else "") if engine else ""))
    return "; ".join(cells) or "-"


def summary_table(records: list[dict[str, Any]]) -> str:
    """One Markdown row per job: status, certification per target, preserved properties, fidelity,
    L-inf of the change, LP size, seconds."""
    head = ("| network | properties | status | whole region (method) | preserved | decision changed | "
            "L∞ Δθ | layer | parts | LP vars/rows | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in records:
        lp = (r.get("lp") or [{}])[-1]
        size = lp.get("size") or {}
        share = (r.get("fidelity") or {}).get("share")
        linf = (r.get("delta") or {}).get("linf")
        rows.append("| " + " | ".join([
            Path(r["net"]).stem, ", ".join(Path(t).stem for t in r["targets"]), str(r.get("status")),
            _prop_cell(r, "repair"), _prop_cell(r, "preserve"),
            "-" if share is None else f"{share:.3%}", "-" if linf is None else f"{linf:.4g}",
            str(r.get("layer") if r.get("status") == "certified" else "-"),
            str((r.get("parts") or {}).get("repair", "-")),
            f"{size.get('variables', '-')}/{size.get('rows', '-')}", f"{r.get('seconds', 0):.1f}"]) + " |")
    return head + "\n".join(rows) + "\n"
