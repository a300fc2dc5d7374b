"""Issue 21: whole-property repair (tiny networks, CPU, seconds); the independent complete check
itself is tested in test_complete_check.py."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from provrepair.certify import certify_regions
from provrepair.certify.complete import certify_box_complete
from provrepair.models import normalize_model
from provrepair.specs import RegionSpec
from provrepair.specs.regions import Box, OutputProperty

# ---------------------------------------------------------------- whole-property repair (tiny network)

VNNLIB_2D = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (>= X_0 {lo0}))
(assert (<= X_0 {hi0}))
(assert (>= X_1 {lo1}))
(assert (<= X_1 {hi1}))
(assert (>= Y_0 {rhs}))
"""


def _tiny(violated_share: float = 0.1) -> nn.Sequential:
    """A 2-8-8-3 ReLU net whose y0 - y1 is >= 0 on about ``violated_share`` of [-1, 1]^2."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(20000, 2) * 2 - 1
    with torch.no_grad():
        y = net(x)
        net[-1].bias[0] -= float(torch.quantile(y[:, 0] - y[:, 1], 1 - violated_share))
        y = net(x)
        net[-1].bias[2] -= float((y[:, 2] - y[:, 0]).max()) + 1.0  # y2 never in the way
    return net


def _write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def _prop_y0_below_y1(tmp_path, name="p.vnnlib", box=(-1, 1, -1, 1)):
    """'Y_0 >= Y_1' unsafe (VNN-LIB compares a variable with a constant or another variable)."""
    text = VNNLIB_2D.format(lo0=box[0], hi0=box[1], lo1=box[2], hi1=box[3], rhs="Y_1")
    return _write(tmp_path, name, text)


def test_property_repair_certifies_the_whole_region(tmp_path, one_torch_thread):
    from provrepair.repair.property_repair import (
        PropertyRepairOptions,
        load_targets,
        repair_properties,
    )

    net = normalize_model(_tiny(), input_shape=(2,))
    targets = load_targets(net, [str(_prop_y0_below_y1(tmp_path))])
    held = load_targets(net, [str(_write(tmp_path, "held.vnnlib", VNNLIB_2D.format(
        lo0=-1, hi0=1, lo1=-1, hi1=1, rhs="1000.0")))])  # y0 >= 1000 is unreachable: holds before
    opts = PropertyRepairOptions(split_depth=6, keep_samples=200, fidelity_samples=5000, decision="argmax")
    res = repair_properties(net, targets, held, opts)
    assert res.status == "certified", res.message
    rec = {p["property"]: p for p in res.properties}
    assert rec["p"]["before"]["status"] == "violated"
    assert rec["p"]["after"]["status"] == "certified" and "independent" in rec["p"]["after"]["decided_by"]
    assert rec["held"]["after"]["status"] == "certified"
    # the repaired model, checked again by the engine on the whole region
    cert = certify_regions(res.model, targets[0].spec, method="auto", timeout=30)
    assert cert.certified
    assert 0 < res.fidelity["share"] < 0.2 and res.parts["repair"] >= 1  # y0 no longer the argmax where it was
    assert res.delta["linf"] > 0 and res.lp[-1]["size"]["rows"] > 0
    # each part entered the LP as four pieces (hull_split=2), the kept points as soft rows
    assert res.lp[0]["pieces"] == 4 * res.lp[0]["parts"] and res.lp[0]["kept_broken"] is not None


def _cli(*argv) -> int:
    from provrepair.cli import main
    return main([str(a) for a in argv])


def test_cli_vnnlib_repair_outcomes(tmp_path, one_torch_thread, capsys):
    net = _tiny()
    model = tmp_path / "net.pt"
    torch.save(net, model)
    prop = _prop_y0_below_y1(tmp_path)
    out = tmp_path / "fixed.onnx"
    # wrong input dimension: exit 2, nothing written
    bad = _write(tmp_path, "bad.vnnlib", "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                 "(declare-const Y_2 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 Y_1))\n")
    assert _cli("repair", model, "--vnnlib", bad, "--layer", "auto", "--out", out, "--quiet") == 2
    assert not out.exists() and not out.with_suffix(".pt").exists()
    # a property that holds: exit 0, nothing written unless asked
    holds = _write(tmp_path, "holds.vnnlib", VNNLIB_2D.format(lo0=-1, hi0=1, lo1=-1, hi1=1, rhs="1000.0"))
    assert _cli("repair", model, "--vnnlib", holds, "--layer", "auto", "--out", out, "--quiet") == 0
    assert "already holds" in capsys.readouterr().out and not out.exists()
    assert _cli("repair", model, "--vnnlib", holds, "--layer", "auto", "--out", out, "--quiet",
                "--write-unchanged") == 0
    assert out.exists()
    out.unlink()
    out.with_suffix(".pt").unlink()
    # a part the LP cannot repair (y0 >= -1000 unsafe: no change within the delta bound): exit 1, named
    report = tmp_path / "r.json"
    never = _write(tmp_path, "never.vnnlib", VNNLIB_2D.format(lo0=-1, hi0=1, lo1=-1, hi1=1, rhs="-1000.0"))
    assert _cli("repair", model, "--vnnlib", never, "--layer", "auto", "--out", out, "--quiet", "--split-depth", "1",
                "--keep-samples", "0", "--delta-bound", "1", "--report", report) == 1
    text = capsys.readouterr().out
    assert "alone cannot be repaired" in text and "never" in text and not out.exists()
    import json
    assert json.loads(report.read_text())["failed_part"]["property"] == "never"
    # the violated property: repaired, certified on its whole region, written
    assert _cli("repair", model, "--vnnlib", prop, "--layer", "-1", "--out", out, "--quiet", "--split-depth", "6",
                "--keep-samples", "200") == 0
    assert out.exists()
    # another layer than the last: refused before any work
    assert _cli("repair", model, "--vnnlib", prop, "--layer", "0", "--out", tmp_path / "x.onnx", "--quiet") == 2


def test_cli_vnnlib_passes_keep_soft(tmp_path, one_torch_thread, monkeypatch):
    import provrepair.repair.property_repair as pr

    seen = []

    def fake(net, targets, preserve, opts, progress=None):
        seen.append(opts)
        return pr.PropertyRepairResult(pr.HOLDS, None, "already holds")

    monkeypatch.setattr(pr, "repair_properties", fake)
    model = tmp_path / "net.pt"
    torch.save(_tiny(), model)
    args = ("repair", model, "--vnnlib", _prop_y0_below_y1(tmp_path), "--layer", "auto", "--out", tmp_path / "f.onnx",
            "--quiet")
    assert _cli(*args, "--keep-soft", "3") == 0 and _cli(*args) == 0
    assert [o.keep_soft for o in seen] == [3.0, pr.PropertyRepairOptions().keep_soft]
    assert seen[1].keep_samples == pr.PropertyRepairOptions().keep_samples  # the CLI's default is the options'


def test_repair_batch_is_resumable(tmp_path, one_torch_thread):
    net = _tiny()
    torch.save(net, tmp_path / "net.pt")
    _prop_y0_below_y1(tmp_path)
    _write(tmp_path, "holds.vnnlib", VNNLIB_2D.format(lo0=-1, hi0=1, lo1=-1, hi1=1, rhs="1000.0"))
    _write(tmp_path, "list.csv", "net.pt,p.vnnlib,60\nnet.pt,holds.vnnlib,60\n")
    out = tmp_path / "run"
    argv = ["repair-batch", tmp_path / "list.csv", "--out", out, "--executor", "serial", "--split-depth", "6", "--quiet"]
    assert _cli(*argv) == 0
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1 and (out / "summary.md").exists()
    stamp = records[0].stat().st_mtime_ns
    assert _cli(*argv) == 0  # resumed: nothing rerun
    assert records[0].stat().st_mtime_ns == stamp
    assert "certified" in (out / "summary.md").read_text()


def test_region_repairer_certify_none_skips_the_engine(tmp_path, one_torch_thread, monkeypatch):
    """certify_method='none': the LP's model comes back uncertified (the caller certifies it) and
    the engine is never called; the same repair with 'crown' is certified by the engine."""
    import provrepair.repair.provable as provable
    from provrepair.repair.options import PolytopeRepairOptions
    from provrepair.repair.provable import RegionRepairer

    net = normalize_model(_tiny(), input_shape=(2,))
    box = Box(np.array([0.2, 0.2]), np.array([0.3, 0.3]))
    spec = RegionSpec((box,), (OutputProperty.label(2, 3),))
    calls = []
    real = provable.certify_regions
    monkeypatch.setattr(provable, "certify_regions", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = dict(layer=-1, hull="interval", delta_bound=10.0)
    none = RegionRepairer().run(net, spec, PolytopeRepairOptions(certify_method="none", **opts))
    assert none.model is not None and none.certificate is None and none.status == "not_certified"
    assert "certify_method='none'" in none.message and not calls
    v = certify_box_complete(none.model, box, OutputProperty.label(2, 3), timeout=30)
    assert v.status == "certified"  # the caller's own check
    crown = RegionRepairer().run(net, spec, PolytopeRepairOptions(certify_method="crown", **opts))
    assert crown.status == "certified" and calls


def test_decisions_of_an_empty_pool_are_empty():
    """N1,9's phi7 covers the whole domain, so the refinement pool outside the parts is empty: the
    repair crashed reshaping the empty output (RuntimeError) instead of skipping the refinement."""
    from provrepair.repair.property_repair import _decide

    out = _decide(_tiny(), np.zeros((0, 2)), "argmin")
    assert out.shape == (0,) and out.dtype == np.int64


def test_before_asks_the_engine_where_the_independent_check_is_unknown(tmp_path, one_torch_thread, monkeypatch):
    """ACAS Xu N3,3 phi2 holds, but the independent check ended unknown at its 10 s before budget,
    so it was 'repaired' (and phi9 broken): where that check is unknown the engine decides, and
    a property it certifies is a no-op; its verdict is recorded as the engine's."""
    import provrepair.repair.property_repair as pr

    net = normalize_model(_tiny(), input_shape=(2,))
    holds = pr.load_targets(net, [str(_write(tmp_path, "holds.vnnlib", VNNLIB_2D.format(
        lo0=-1, hi0=1, lo1=-1, hi1=1, rhs="1000.0")))])
    broken = pr.load_targets(net, [str(_prop_y0_below_y1(tmp_path))])
    monkeypatch.setattr(pr, "_complete", lambda *a, **k: {"status": "unknown", "decided_by": "", "seconds": 0.0,
                                                          "stats": {}, "reason": "time limit", "counterexample": None})
    rec = pr._before(net, holds[0], pr.PropertyRepairOptions())
    assert rec["status"] == "certified" and rec["decided_by"].startswith("engine")
    assert rec["independent"]["status"] == "unknown"
    res = pr.repair_properties(net, holds, (), pr.PropertyRepairOptions())
    assert res.status == "already holds" and "holds: engine" in res.message
    assert pr._before(net, holds[0], pr.PropertyRepairOptions(before_engine_timeout=0))["status"] == "unknown"
    bad = pr._before(net, broken[0], pr.PropertyRepairOptions())
    assert bad["status"] == "violated"
    with torch.no_grad():
        y = net(torch.as_tensor([bad["counterexample"]], dtype=torch.float32))[0]
    assert y[0] >= y[1]  # a real counterexample


def test_a_target_that_held_is_guarded_and_its_broken_parts_repaired(tmp_path, one_torch_thread):
    """N1,7: phi2 held, phi3/phi4 were repaired, and the repair broke phi2; the held target was
    neither guarded nor partitioned (it had no parts), so the run ended 'not certified' with no
    second round. Here q (unsafe y1 >= y0 on a box where y0 > y1) holds and contradicts p's repair
    there: it is now re-partitioned on the repaired model and joins the next round, whose LP
    (p and q on the same points) is infeasible: reported as such, not as a silently broken q."""
    from provrepair.repair.property_repair import INFEASIBLE, PropertyRepairOptions, load_targets, repair_properties

    net = normalize_model(_tiny(), input_shape=(2,))
    x = torch.rand(20000, 2) * 2 - 1
    with torch.no_grad():
        c = x[(net(x)[:, 0] - net(x)[:, 1]).argmax()].numpy()
    box = (c[0] - 0.01, c[0] + 0.01, c[1] - 0.01, c[1] + 0.01)
    q = _write(tmp_path, "q.vnnlib", VNNLIB_2D.replace("(>= Y_0 {rhs})", "(>= Y_1 Y_0)").format(
        lo0=box[0], hi0=box[1], lo1=box[2], hi1=box[3]))
    targets = load_targets(net, [str(_prop_y0_below_y1(tmp_path)), str(q)])
    opts = PropertyRepairOptions(split_depth=4, keep_samples=100, fidelity_samples=1000, decision="argmax",
                                 rounds=2, before_engine_timeout=0)
    res = repair_properties(net, targets, (), opts)
    rec = {p["property"]: p for p in res.properties}
    assert rec["q"]["before"]["status"] == "certified" and rec["p"]["before"]["status"] == "violated"
    assert rec["q"]["after"]["status"] == "violated"  # round 1 (its guard points dropped as infeasible)
    assert res.status == INFEASIBLE and len(res.lp) >= 2 and res.lp[-1]["parts"] > res.lp[0]["parts"]


def test_refinement_runs_only_above_its_threshold_and_only_pays(tmp_path, one_torch_thread):
    """keep_refine re-solves the LP keeping the decisions it changed on a pool, only while more
    than refine_above of the pool changed, and keeps the new LP only if it changes fewer: with a
    single kept point, the refinement's 100-odd kept points free most of the others."""
    from provrepair.repair.property_repair import PropertyRepairOptions, load_targets, repair_properties

    net = normalize_model(_tiny(), input_shape=(2,))
    x = torch.rand(20000, 2) * 2 - 1
    with torch.no_grad():
        c = x[(net(x)[:, 0] - net(x)[:, 1]).argmax()].numpy()
    targets = load_targets(net, [str(_prop_y0_below_y1(tmp_path, box=(c[0] - .2, c[0] + .2, c[1] - .2, c[1] + .2)))])
    base = dict(split_depth=4, keep_samples=1, guard_samples=0, fidelity_samples=2000, decision="argmax",
                keep_refine=1, keep_pool=2000, domain=Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0])))
    never = repair_properties(net, targets, (), PropertyRepairOptions(refine_above=1.0, **base))
    tried = repair_properties(net, targets, (), PropertyRepairOptions(refine_above=0.0, **base))
    assert never.status == tried.status == "certified"
    assert [r.get("refine") for r in never.lp] == [None] and never.keep["refined"]["pool_changed"] > 0
    assert tried.lp[-1]["refine"] == never.keep["refined"]["pool_changed"]  # every changed point, kept
    assert tried.lp[-1]["pool_changed"] > tried.lp[-1]["refine"]  # ... which freed more of the others
    assert tried.keep["refined"] == never.keep["refined"] and tried.fidelity == never.fidelity  # not taken
