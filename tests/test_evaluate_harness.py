"""The comparison harness: registry errors, resume after a kill, determinism, executors, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from provrepair.cli import main
from provrepair.errors import InputError
from provrepair.evaluate import registry
from provrepair.evaluate.harness import compare
from provrepair.evaluate.report import fmt
from provrepair.evaluate.tasks import TaskConfig
from provrepair.repair.options import option
from provrepair.repair.protocol import TRAINED, RepairResult

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="mnist_cnn", dataset="mnist", corruption="fog", severity=3, repair_points=5, heldout=40,
            test_limit=150, train_limit=256, val_limit=40, severities=(3,))
TINY_ARGS = ["--model", "mnist_cnn", "--dataset", "mnist", "--corruption", "fog", "--repair-points", "5",
             "--heldout", "40", "--test-limit", "150", "--train-limit", "256", "--val-limit", "40",
             "--severities", "3"]
FAST = {"finetune": {"epochs": 1}, "deeppatch": {"epochs": 1}}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _metrics(results):
    """Every cell's metrics, without what depends on the machine (timings)."""
    return {(c["task"], c["method"], c["seed"]): (c["status"], c["metrics"], c.get("stage_metrics"))
            for c in results["cells"]}


# ---------------------------------------------------------------------------------------------- registry


def test_unknown_method_names_the_close_match_and_the_list():
    with pytest.raises(InputError, match=r"unknown method 'finetun' \(did you mean 'finetune'\?\); available: aprnn"):
        registry.resolve_methods("aprnn,finetun")
    with pytest.raises(InputError, match="more than once"):
        registry.resolve_methods("aprnn,aprnn")


def test_deeppatch_on_an_mlp_is_refused_before_any_work():
    from provrepair.zoo import load_zoo
    mlp = load_zoo("mnist_mlp")
    with pytest.raises(InputError, match="needs a convolutional network"):
        registry.resolve_methods("aprnn,deeppatch", net=mlp)
    with pytest.raises(InputError, match="needs a convolutional network"):
        registry.resolve_methods("deeppatch+aprnn", net=mlp)
    notes = []
    names = [m.name for m in registry.resolve_methods(None, all_methods=True, net=mlp, notes=notes)]
    assert "deeppatch" not in names and "deeppatch+aprnn" not in names and "finetune" in names
    assert any("skipped deeppatch" in n for n in notes)


def test_options_are_typed_and_checked():
    m = registry.get_method("finetune")
    assert m.resolve_options({"epochs": "3", "lr": "0.5"})["epochs"] == 3
    with pytest.raises(InputError, match="finetune.epochs needs a int value"):
        m.resolve_options({"epochs": "many"})
    with pytest.raises(InputError, match="has no option 'epoch'; its options: epochs"):
        m.resolve_options({"epoch": 1})
    with pytest.raises(InputError, match="must be one of gamma, beta, fallback"):
        registry.get_method("deeppatch").resolve_options({"variant": "delta"})
    methods = registry.resolve_methods("finetune+aprnn")
    assert registry.parse_option_assignments(["finetune.epochs=2"], methods) == {"finetune": {"epochs": "2"}}
    with pytest.raises(InputError, match="not being run"):
        registry.parse_option_assignments(["augmix.epochs=2"], methods)
    with pytest.raises(InputError, match="METHOD.NAME=VALUE"):
        registry.parse_option_assignments(["epochs=2"], methods)


def test_a_missing_repairer_gives_a_clear_error_and_all_skips_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "provrepair.repair.metarepair", None)  # import now fails
    with pytest.raises(registry.MethodUnavailableError, match="method 'metarepair' is registered but cannot be loaded"):
        registry.resolve_methods("metarepair")
    with pytest.raises(registry.MethodUnavailableError, match="'metarepair'"):
        registry.resolve_methods("metarepair+aprnn")
    notes = []
    names = [m.name for m in registry.resolve_methods(None, all_methods=True, notes=notes)]
    assert "metarepair" not in names and "metarepair+aprnn" not in names and "aprnn" in names
    assert any(n.startswith("skipped metarepair") for n in notes)


def test_new_methods_plug_in_without_touching_the_harness(tmp_path):
    registry.register_method(registry.Method(
        "identity-test", "statistical", "returns the network unchanged", f"{__name__}:IdentityRepairer", "points"),
        replace=True)
    try:
        run = compare([TaskConfig(**TINY)], registry.resolve_methods("identity-test"), [0], run_dir=None,
                      executor="serial")
        cell = run.results["cells"][0]
        assert cell["status"] == "ok" and cell["metrics"]["efficacy"] == 0.0 and cell["metrics"]["drawdown_pp"] == 0.0
        assert cell["metrics"]["prediction_change"] == 0.0 and cell["metrics"]["param_l0"] == 0
    finally:
        registry._REGISTRY.pop("identity-test", None)


@dataclass
class IdentityOptions:
    note: str = option("x", "a note the repairer reports")


class IdentityRepairer:
    """A repairer that returns its input: plugging it in is its class and one registry line."""

    name, kind, Options = "identity-test", "statistical", IdentityOptions

    def run(self, model, target, options, progress=None):
        return RepairResult(TRAINED, model, method=self.name, details={"note": options.note})


# ---------------------------------------------------------------------------------------------- runs


def test_killed_run_resumes_without_recomputing_finished_cells(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "provrepair", "compare", *TINY_ARGS, "--methods", "finetune,aprnn",
           "--option", "finetune.epochs=2", "--seeds", "0,1", "--executor", "serial", "--out", str(run_dir),
           "--quiet", "--no-plots"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = run_dir / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and not list(cells.rglob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in cells.rglob("*.json")}
    assert done, "the first cell never finished"
    assert not (run_dir / "results.json").exists() or len(done) == 4
    run = compare([TaskConfig(**TINY)], registry.resolve_methods("finetune,aprnn"), [0, 1], run_dir=run_dir,
                  options={"finetune": {"epochs": 2}}, executor="serial")
    assert len(run.reused) == len(done) and len(run.reused) + len(run.computed) == 4
    assert not set(run.reused) & set(run.computed)
    for p, mtime in done.items():  # finished cells were not rewritten
        assert p.stat().st_mtime_ns == mtime
    # a third run has nothing left to do, and changing an option recomputes that method only
    again = compare([TaskConfig(**TINY)], registry.resolve_methods("finetune,aprnn"), [0, 1], run_dir=run_dir,
                    options={"finetune": {"epochs": 2}}, executor="serial")
    assert again.computed == [] and len(again.reused) == 4
    assert _metrics(again.results) == _metrics(run.results)


def test_same_seeds_give_identical_metrics_and_the_report_matches(tmp_path):
    methods = registry.resolve_methods("aprnn,finetune,finetune+aprnn,deeppatch+aprnn")
    runs = [compare([TaskConfig(**TINY)], methods, [0], run_dir=tmp_path / f"r{i}", options=FAST, executor="serial")
            for i in range(2)]
    assert _metrics(runs[0].results) == _metrics(runs[1].results)
    results = json.loads((tmp_path / "r0" / "results.json").read_text())
    assert _metrics(results) == _metrics(runs[0].results)
    # the certified pipelines certify every repair point; the stage's numbers are reported too
    for c in results["cells"]:
        if c["kind"] != "statistical":
            assert c["metrics"]["certified_efficacy"] == 1.0, c["method"]
        if c["kind"] == "pipeline":
            assert c["stage_metrics"]["certified_efficacy"] is not None and "polish" in c
    # every number of the main table is the formatted summary value from results.json
    report = (tmp_path / "r0" / "report.md").read_text()
    task = next(iter(results["summary"]))
    for name, row in results["summary"][task]["methods"].items():
        line = next(l for l in report.splitlines() if l.startswith(f"| {name} |"))
        for metric, kind in (("efficacy", "pct"), ("certified_efficacy", "pct"), ("test_accuracy", "pct"),
                             ("drawdown_pp", "f2"), ("generalization", "pct")):
            assert f"| {fmt(row[metric], kind)} |" in line, (name, metric)
        cells = [c for c in results["cells"] if c["method"] == name]
        assert row["efficacy"]["mean"] == pytest.approx(sum(c["metrics"]["efficacy"] for c in cells) / len(cells))
    assert sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "r0" / "plots").glob("*.png")) == [
        "efficacy.png", "severity.png", "time.png"]
    assert results["git_revision"] and results["versions"]["highspy"] and results["seeds"] == [0]
    assert results["methods"]["finetune+aprnn"]["stage_options"]["epochs"] == 1


def test_local_processes_and_ray_give_the_serial_results(tmp_path):
    methods = registry.resolve_methods("aprnn,finetune")
    serial = compare([TaskConfig(**TINY)], methods, [0], run_dir=None, options=FAST, executor="serial")
    local = compare([TaskConfig(**TINY)], methods, [0], run_dir=tmp_path / "local", options=FAST, executor="local",
                    workers=2)
    assert _metrics(local.results) == _metrics(serial.results)
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("Ray is not installed (optional extra: pip install 'provrepair[ray]'); the Ray executor is untested")
    distributed = compare([TaskConfig(**TINY)], methods, [0], run_dir=tmp_path / "ray", options=FAST, executor="ray",
                          workers=2)
    assert _metrics(distributed.results) == _metrics(local.results)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_compare_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["compare", *TINY_ARGS, "--methods", "aprnn", "--seeds", "0", "--executor", "serial",
               "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in text
    assert (out / "results.json").is_file() and (out / "report.md").is_file() and list((out / "plots").glob("*.png"))
    rc = main(["compare", *TINY_ARGS, "--methods", "aprnn", "--out", str(out), "--quiet"])
    assert rc == 0 and "0 cells computed, 1 reused" in capsys.readouterr().out
    assert main(["compare", "--model", "mnist_mlp", "--dataset", "mnist", "--corruption", "fog", "--methods",
                 "deeppatch", "--out", str(tmp_path / "x")]) == 2
    assert "needs a convolutional network" in capsys.readouterr().err
    assert main(["compare", "--model", "mnist_cnn", "--dataset", "mnist", "--methods", "aprnn",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--corruption NAME" in capsys.readouterr().err
    assert main(["evaluate", "mnist_cnn", "--dataset", "mnist", "--corruption", "fog", "--severities", "3",
                 "--test-limit", "100", "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    assert "| test accuracy |" in text and "accuracy under fog/3" in text
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]["test_accuracy"] > 0.9
