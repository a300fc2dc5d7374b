"""Brute-force layer selection: repair at every candidate layer and compare what it cost.

The repair function is an argument (``heuristics`` never imports the repairer). Candidates run
in separate processes (spawned, one solver thread each) so that several cores work at once.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from provrepair.models.inference import accuracy


@dataclass
class CandidateOutcome:
    layer: int
    status: str  # certified, infeasible, time_limit, not_certified, error
    drawdown_pp: float | None  # validation accuracy before - after, percentage points
    seconds: float
    lp: dict = field(default_factory=dict)
    objective: float | None = None
    message: str = ""

    @property
    def usable(self) -> bool:
        return self.status == "certified"

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_candidate(repair_fn: Callable[..., Any], net, spec, layer: int, validation: tuple | None,
                       options: dict) -> CandidateOutcome:
    """Repair at one layer and measure the validation drawdown (runs in a worker process)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        result = repair_fn(net, spec, layer=layer, **options)
    except Exception as exc:  # an unsupported layer is an answer for this candidate, not a crash
        return CandidateOutcome(layer, "error", None, time.perf_counter() - t0, message=str(exc))
    seconds = time.perf_counter() - t0
    drawdown = None
    if result.model is not None and validation is not None:
        x, y = validation
        drawdown = 100.0 * (accuracy(net, x, y) - accuracy(result.model, x, y))
    return CandidateOutcome(layer, result.status, drawdown, seconds, lp=result.lp.get("final", {}),
                            objective=result.solver.get("objective"), message=result.message)


def make_executor(workers: int) -> ProcessPoolExecutor:
    """A pool of spawned workers (fork is unsafe once torch has started its threads). Reuse one
    pool across many brute-force calls: starting a worker costs seconds (it imports torch)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def brute_force(repair_fn: Callable[..., Any], net, spec, layers: Sequence[int], *,
                validation: tuple | None = None, workers: int = 1, executor: ProcessPoolExecutor | None = None,
                options: dict | None = None) -> list[CandidateOutcome]:
    """Repair at each of ``layers``; outcomes in the order of ``layers``.

    ``repair_fn(net, spec, layer=k, **options)`` must return an object with ``status``, ``model``,
    ``lp``, ``solver`` and ``message`` (``provrepair.api.repair`` does), and be picklable.
    ``workers`` > 1 (or an ``executor``) runs the candidates in parallel processes.
    """
    return brute_force_many(repair_fn, [(net, spec, layers, validation)], workers=workers, executor=executor,
                            options=options)[0]


def brute_force_many(repair_fn: Callable[..., Any], tasks: Sequence[tuple], *, workers: int = 1,
                     executor: ProcessPoolExecutor | None = None, options: dict | None = None
                     ) -> list[list[CandidateOutcome]]:
    """Brute force over several (net, spec, layers, validation) tasks at once, so a pool of
    workers stays busy across task boundaries."""
    options = dict(options or {})
    options.setdefault("threads", 1)
    jobs = [(t, (repair_fn, net, spec, k, validation, options))
            for t, (net, spec, layers, validation) in enumerate(tasks) for k in layers]
    results: list[list[CandidateOutcome]] = [[] for _ in tasks]
    if executor is None and workers <= 1:
        for t, args in jobs:
            results[t].append(evaluate_candidate(*args))
        return results
    pool = executor or make_executor(workers)
    try:
        futures = [(t, pool.submit(evaluate_candidate, *args)) for t, args in jobs]
        for t, f in futures:
            results[t].append(f.result())
    finally:
        if executor is None:
            pool.shutdown()
    return results


def best_layer(outcomes: Sequence[CandidateOutcome]) -> CandidateOutcome | None:
    """The certified outcome with the smallest drawdown (ties: the faster one)."""
    usable = [o for o in outcomes if o.usable]
    if not usable:
        return None
    return min(usable, key=lambda o: (math.inf if o.drawdown_pp is None else o.drawdown_pp, o.seconds))
