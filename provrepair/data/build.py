"""Corrupted datasets, built once and cached on disk.

``build_corrupted(dataset, split, corruptions, severities)`` applies
``provrepair.data.corruptions.corrupt(images, name, severity, seed=seed)`` to a split of a
dataset (see :func:`provrepair.data.datasets.load_dataset`) for every (corruption, severity) pair
and stores each result in its own ``.npz`` file:

    <cache>/corrupted/<dataset>/<split>/<corruption>-s<severity>-seed<seed>[-n<limit>].npz

``<cache>`` is the ``cache_dir`` argument, else ``$PROVREPAIR_CACHE``, else
``~/.cache/provrepair``. Each file holds

* ``images``: uint8 ``(N, C, H, W)``, the corrupted images quantised as
  ``round(clip(x, 0, 1) * 255)``; they are read back as ``images / 255`` (float32). The
  quantisation error is at most 1/510 per pixel; the clean images of MNIST and Fashion-MNIST are
  multiples of 1/255 already (digits' multiples of 1/16 are not, so even an unchanged digits
  pixel comes back within 1/510).
* ``labels``: int64 ``(N,)``; ``index``: int64 ``(N,)``, the images' positions in the clean split
  (``load_dataset(dataset, split, seed=seed)[0][index]`` is the clean image);
* ``meta``: a JSON string with every parameter that determines the content (format version,
  dataset, split, corruption, severity, seed, limit, N, and the version of the corruption code:
  ``corruptions.__version__`` when the module defines one, else a hash of its source file).

A file is reused only when its ``meta`` matches the request exactly; otherwise (another seed, a
changed corruption implementation, an unreadable file) it is rebuilt. Files are written
atomically, so concurrent builders and interrupted runs never leave a half-written file behind.

``seed`` is used twice, consistently: it picks the train/val split (as in ``load_dataset``) and it
is passed unchanged to ``corrupt``, so a cached result equals
``corrupt(load_dataset(dataset, split, seed=seed)[0][:limit], name, severity, seed=seed)`` up to
the quantisation above.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path
from .checks import check_seed
from .datasets import (
    DATASETS,
    check_dataset_name,
    check_split,
    dataset_info,
    load_dataset,
    split_indices,
)

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "SEVERITIES",
    "BuildResult",
    "default_cache_dir",
    "parse_severities",
    "resolve_corruptions",
    "corruption_groups",
    "cache_path",
    "build_corrupted",
    "load_corrupted",
    "read_corrupted",
]

CACHE_ENV = "PROVREPAIR_CACHE"
FORMAT_VERSION = 1
SEVERITIES = (1, 2, 3, 4, 5)
_CORRUPTIONS_MODULE = "provrepair.data.corruptions"


class BuildResult(dict):
    """``{(corruption, severity): Path}``, plus which entries were ``built`` or ``reused`` and where."""

    def __init__(self, paths: dict, *, built: list, reused: list, cache_dir: Path, seconds: float):
        super().__init__(paths)
        self.built = built
        self.reused = reused
        self.cache_dir = cache_dir
        self.seconds = seconds


# --------------------------------------------------------------------------- the corruption suite

def _suite():
    """The corruption module, imported on first use (tests may substitute it in ``sys.modules``)."""
    try:
        return importlib.import_module(_CORRUPTIONS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _CORRUPTIONS_MODULE:
            raise
        raise InputError(
            f"the corruption suite ({_CORRUPTIONS_MODULE}) is not installed; reinstall provrepair"
        ) from None


def _implementation_version(mod) -> str:
    version = getattr(mod, "__version__", None)
    if version is not None:
        return str(version)
    source = getattr(mod, "__file__", None)
    if source and Path(source).is_file():
        return "sha256:" + hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    return "unversioned"


def _check_image_size(mod, dataset: str) -> None:
    lo, hi = getattr(mod, "MIN_SIZE", None), getattr(mod, "MAX_SIZE", None)
    _, h, w = dataset_info(dataset)["shape"]
    if (lo is not None and min(h, w) < lo) or (hi is not None and max(h, w) > hi):
        usable = [d for d in DATASETS if (lo is None or min(dataset_info(d)["shape"][1:]) >= lo)
                  and (hi is None or max(dataset_info(d)["shape"][1:]) <= hi)]
        raise InputError(f"the corruption suite takes images of {lo}..{hi} pixels a side, and the images "
                         f"of {dataset} are {h}x{w}; use {' or '.join(usable)}")


def corruption_groups() -> dict[str, tuple[str, ...]]:
    """``GROUPS`` of the corruption suite (group name -> corruption names)."""
    mod = _suite()
    return {str(k): tuple(v) for k, v in dict(getattr(mod, "GROUPS", {})).items()}


def resolve_corruptions(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Corruption names from ``"all"``, a group name, ``"name,name"`` or a sequence of those.

    Duplicates are dropped; the order given is kept. Unknown names raise ``InputError`` listing the
    valid ones.
    """
    mod = _suite()
    valid = tuple(mod.CORRUPTIONS)
    groups = {str(k): tuple(v) for k, v in dict(getattr(mod, "GROUPS", {})).items()}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise InputError(f"corruption names must be strings, got {raw!r}")
        item = raw.strip()
        if item == "all":
            expanded = valid
        elif item in valid:
            expanded = (item,)
        elif item in groups:
            expanded = groups[item]
        else:
            group_text = f"; groups: {', '.join(groups)}" if groups else ""
            raise InputError(
                f"unknown corruption {item!r}; use 'all', or names from: {', '.join(valid)}{group_text}"
            )
        names.extend(n for n in expanded if n not in names)
    if not names:
        raise InputError("no corruption given; use 'all' or a comma-separated list of names")
    return tuple(names)


def parse_severities(spec: str | int | Iterable[int], *, allowed: Sequence[int] = SEVERITIES) -> tuple[int, ...]:
    """Severities from ``"1-5"``, ``"1,3,5"``, ``"1-2,5"``, an int or a sequence of ints; sorted, unique."""
    lo, hi = min(allowed), max(allowed)
    hint = f"severities are integers in {lo}..{hi}, written like '{lo}-{hi}' or '1,3,5'"
    values: list[int] = []
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise InputError(f"empty severity in {spec!r}; {hint}")
        for part in parts:
            a, dash, b = part.partition("-")
            try:
                start, stop = (int(a), int(b)) if dash else (int(part), int(part))
            except ValueError:
                raise InputError(f"bad severity {part!r}; {hint}") from None
            if start > stop:
                raise InputError(f"empty severity range {part!r}; {hint}")
            values.extend(range(start, stop + 1))
    else:
        items = [spec] if isinstance(spec, (int, np.integer)) else list(spec)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InputError(f"bad severity {v!r}; {hint}")
            values.append(int(v))
        if not values:
            raise InputError(f"no severity given; {hint}")
    bad = sorted({v for v in values if v not in allowed})
    if bad:
        raise InputError(f"severity {', '.join(map(str, bad))} out of range in {spec!r}; {hint}")
    return tuple(sorted(set(values)))


# --------------------------------------------------------------------------- cache files

def default_cache_dir() -> Path:
    """``$PROVREPAIR_CACHE``, else ``~/.cache/provrepair``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "provrepair"


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise InputError(f"limit must be a positive integer (number of images), got {limit!r}")
    return int(limit)


def cache_path(dataset: str, split: str, corruption: str, severity: int, *, seed: int = 0,
               limit: int | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file for one (corruption, severity) pair lives (it may not exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = f"{corruption}-s{int(severity)}-seed{int(seed)}" + (f"-n{int(limit)}" if limit is not None else "")
    return root / "corrupted" / dataset / split / f"{stem}.npz"


def _meta(dataset, split, corruption, severity, seed, limit, n, version) -> dict:
    return {"format": FORMAT_VERSION, "dataset": dataset, "split": split, "corruption": corruption,
            "severity": int(severity), "seed": int(seed), "limit": limit, "n": int(n),
            "implementation": version, "quantisation": "uint8 round(clip(x,0,1)*255)"}


def _read_meta(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"images", "labels", "meta"} <= set(z.files):
                return None
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def _matches(found: dict | None, wanted: dict) -> bool:
    # ``n`` is only known once the clean data is loaded; every other field must agree.
    return found is not None and {k: v for k, v in found.items() if k != "n"} == {
        k: v for k, v in wanted.items() if k != "n"}


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_corrupted(path: str | os.PathLike, *, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a cached file as ``(x float32 in [0, 1], y int64)``; ``x`` is ``(N, C, H, W)`` or flat."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read the corrupted-data file {path} ({exc}); delete it and build again") from None
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    if flat:
        x = x.reshape(x.shape[0], -1)
    return x, labels.astype(np.int64)


# --------------------------------------------------------------------------- builder

def build_corrupted(dataset: str, split: str, corruptions: str | Iterable[str] = "all",
                    severities: str | int | Iterable[int] = SEVERITIES, *, seed: int = 0,
                    limit: int | None = None, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True, force: bool = False) -> BuildResult:
    """Build (or reuse) one cached file per (corruption, severity); return ``{(name, severity): Path}``.

    ``corruptions``: ``"all"``, a group, ``"a,b"`` or a list of names. ``severities``: ``"1-5"``,
    ``"1,3,5"``, an int or a list. ``limit``: use only the first ``limit`` images of the split
    (a separate cache entry). ``force``: rebuild even when a matching file exists. Everything is
    validated before any work starts. ``progress`` shows a tqdm bar over the pairs on stderr.
    """
    start = time.perf_counter()
    check_dataset_name(dataset)
    check_split(split)
    seed = check_seed(seed)
    limit = _check_limit(limit)
    levels = parse_severities(severities)
    mod = _suite()
    names = resolve_corruptions(corruptions)
    version = _implementation_version(mod)
    _check_image_size(mod, dataset)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    pairs = [(c, s) for c in names for s in levels]
    paths = {p: cache_path(dataset, split, *p, seed=seed, limit=limit, cache_dir=root) for p in pairs}
    wanted = {p: _meta(dataset, split, *p, seed, limit, 0, version) for p in pairs}
    todo = [p for p in pairs if force or not _matches(_read_meta(paths[p]), wanted[p])]
    built, reused = [], [p for p in pairs if p not in todo]

    if todo:
        from tqdm.auto import tqdm

        x, y = load_dataset(dataset, split, seed=seed)
        index = split_indices(dataset, split, seed=seed)
        if limit is not None:
            x, y, index = x[:limit], y[:limit], index[:limit]
        bar = tqdm(todo, desc=f"corrupting {dataset}/{split}", unit="set", disable=not progress)
        try:
            for corruption, severity in bar:
                bar.set_postfix_str(f"{corruption} s{severity}", refresh=False)
                out = mod.corrupt(x.copy(), corruption, severity, seed=seed)
                out = np.asarray(out)
                if out.shape != x.shape or not np.all(np.isfinite(out)):
                    raise RuntimeError(
                        f"corrupt({corruption!r}, severity={severity}) returned shape {out.shape} "
                        f"(expected {x.shape}) or non-finite values; this is a bug in {_CORRUPTIONS_MODULE}"
                    )
                meta = _meta(dataset, split, corruption, severity, seed, limit, x.shape[0], version)
                # a file object, because np.savez would append ".npz" to the temporary name
                with atomic_path(paths[(corruption, severity)]) as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, images=_quantise(out), labels=y, index=index,
                                        meta=np.array(json.dumps(meta, sort_keys=True)))
                built.append((corruption, severity))
        finally:
            bar.close()

    return BuildResult({p: paths[p] for p in pairs}, built=built, reused=reused, cache_dir=root,
                       seconds=time.perf_counter() - start)


def load_corrupted(dataset: str, split: str, corruption: str, severity: int, *, seed: int = 0,
                   limit: int | None = None, cache_dir: str | os.PathLike | None = None,
                   flat: bool = False, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One corrupted split as ``(x float32 in [0, 1], y int64)``, built on demand and cached."""
    if not isinstance(corruption, str) or "," in corruption:
        raise InputError(f"load_corrupted takes one corruption name, got {corruption!r}")
    mod = _suite()
    if corruption not in tuple(mod.CORRUPTIONS):
        raise InputError(f"unknown corruption {corruption!r}; use one of: {', '.join(mod.CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise InputError(f"severity must be one integer, got {severity!r}")
    result = build_corrupted(dataset, split, [corruption], [int(severity)], seed=seed, limit=limit,
                             cache_dir=cache_dir, progress=progress)
    return read_corrupted(result[(corruption, int(severity))], flat=flat)
