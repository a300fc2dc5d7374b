"""Time and peak memory of a stage of work.

``with measure(timings, "train"):`` records ``timings["train"] = {"seconds": ..., "peak_rss_mb": ...,
"rss_increase_mb": ...}``: wall-clock seconds, the largest resident set size of the process seen
while the stage ran (sampled every ``interval`` seconds from ``/proc/self/statm``; where that file does
not exist, the process's lifetime peak from ``getrusage``) and how far it rose above the value at the
start. With a CUDA device, ``cuda_peak_mb`` is torch's peak allocation during the stage.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["measure", "rss_mb", "SAMPLE_INTERVAL"]

#: Seconds between two memory samples.
SAMPLE_INTERVAL = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10


@contextmanager
def measure(timings: dict, stage: str, *, interval: float = SAMPLE_INTERVAL) -> Iterator[dict]:
    start_rss = rss_mb()
    peak = [start_rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(interval):
            peak[0] = max(peak[0], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cuda = False
    try:
        import torch
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # pragma: no cover - torch always imports here
        pass
    record: dict = {}
    t0 = time.perf_counter()
    try:
        yield record
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], rss_mb())
        record.update(seconds=seconds, peak_rss_mb=round(peak[0], 1), rss_increase_mb=round(peak[0] - start_rss, 1))
        if cuda:
            import torch
            record["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        timings[stage] = record
