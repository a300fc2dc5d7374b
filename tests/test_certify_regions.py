"""Region certification end to end: certify_regions / provrepair.certify verdicts (certified,
violated with a re-validated counterexample, unknown with a reason), batching, reports, the
``provrepair certify`` command line, and ACAS Xu N2,9 properties."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.certify import certify_regions
from provrepair.certify.bounds import BoundPropagator, InputSet
from provrepair.cli import main
from provrepair.models import load_model, save_model
from provrepair.specs import Box, HPolytope, OutputProperty, RegionSpec, VPolytope

ACAS = Path(__file__).resolve().parents[1] / "benchmarks" / "acasxu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- networks


def _relu_net():
    """y = relu(x) on two inputs: y0 > y1 exactly when relu(x0) > relu(x1)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        for i in (0, 2):
            net[i].weight.copy_(torch.eye(2))
            net[i].bias.zero_()
    return net


def _stable_net():
    """All ReLUs active on [0,1]^2, where y = -1.5 x0 + 2 x1 - 5 lies in [-6.5, -3]; IBP says [-8.5, -1]."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([1.0, 5.0, 1.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, -1.0]]))
        net[2].bias.zero_()
    return net


def _mlp(seed, n_in, width, n_out=2, depth=2):
    torch.manual_seed(seed)
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers).eval()


def _forward(net, x):
    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.as_tensor(np.asarray(x, dtype=np.float64))).reshape(len(x), -1).numpy()


def _unsafe(G, h):
    return OutputProperty.unsafe([(np.asarray(G, dtype=np.float64), np.asarray(h, dtype=np.float64))])


def _check_counterexample(net, region, prop, v):
    """The counterexample lies in the region and reaches the disjunct it names, re-evaluated here."""
    assert v.status == "violated"
    x = v.counterexample
    assert x is not None and x.shape == region.input_shape
    if isinstance(region, VPolytope):  # a convex combination of the vertices (least squares)
        V = region.vertices.reshape(region.n_vertices, -1)
        M = np.vstack([V.T, np.ones(len(V))])
        lam = np.linalg.lstsq(M, np.append(x.reshape(-1), 1.0), rcond=None)[0]
        assert np.all(lam >= -1e-9) and np.allclose(M @ lam, np.append(x.reshape(-1), 1.0), atol=1e-9)
    else:
        assert region.contains(x)
    y = _forward(net, x[None])[0]
    np.testing.assert_allclose(v.output, y, rtol=0, atol=1e-9)
    G, h = prop.disjuncts[v.disjunct]
    assert np.all(G @ y <= h)


# 16 inputs (no input splitting): IBP and CROWN are inconclusive, the MILP certifies (seeded).
def _hard_case():
    net = _mlp(3, 16, 16)
    rng = np.random.default_rng(3)
    c = rng.normal(size=(1, 16))
    G = np.array([[1.0, -1.0]])
    prop = BoundPropagator(net, (16,))
    crown = prop.bounds(InputSet.box(c - 0.5, c + 0.5), G, method="crown").lower.item()
    xs = c - 0.5 + rng.uniform(size=(20000, 16))
    sample_min = float((_forward(net, xs) @ G.T).min())
    h = crown + 0.5 * (sample_min - crown)
    return net, RegionSpec.boxes(c - 0.5, c + 0.5, properties=[_unsafe(G, [h])])


# ----------------------------------------------------------------------------- verdicts


def test_auto_reports_ibp_when_ibp_decides():
    net = _relu_net()
    spec = RegionSpec.boxes([[2.0, 0.0]], [[3.0, 1.0]], labels=[0])
    cert = provrepair.certify(net, spec, method="auto")
    (v,) = cert.verdicts
    assert v.status == "certified" and v.method == "ibp"
    assert v.margin == pytest.approx(1.0) and v.counterexample is None
    assert cert.certified and cert.counts == {"certified": 1, "violated": 0, "unknown": 0}


def test_violated_region_gives_a_counterexample_inside_that_violates():
    net = _relu_net()
    spec = RegionSpec((Box([0.0, 0.0], [1.0, 1.0]), VPolytope([[0.0, 0.5], [0.4, 1.0], [0.2, 0.9]]),
                       HPolytope([[1.0, -1.0]], [-0.2], [0.0, 0.0], [1.0, 1.0])), (None, None, None),
                      labels=np.array([0, 0, 0]))
    for attack in (True, False):  # found by falsification, or by splitting / the MILP
        cert = certify_regions(net, spec.validate((2,), 2), attack=attack)
        assert [v.status for v in cert.verdicts] == ["violated"] * 3
        for v, (region, prop) in zip(cert.verdicts, spec.validate((2,), 2)):
            _check_counterexample(net, region, prop, v)
            if not attack:
                assert v.method in ("split", "milp")
    assert not cert.certified


def test_ibp_unknown_crown_and_milp_decide():
    net = _stable_net()
    spec = RegionSpec.boxes([[0.0, 0.0]], [[1.0, 1.0]], properties=[_unsafe([[1.0]], [-6.6])])
    v = provrepair.certify(net, spec, method="ibp").verdicts[0]
    assert v.status == "unknown" and v.method == "" and "inconclusive" in v.reason
    v = provrepair.certify(net, spec, method="crown").verdicts[0]
    assert v.status == "certified" and v.method == "crown" and v.margin == pytest.approx(0.1)
    assert provrepair.certify(net, spec, method="milp").verdicts[0].status == "certified"
    v = provrepair.certify(net, spec, method="auto").verdicts[0]
    assert v.status == "certified" and v.method == "crown"
    # just below the true minimum -6.5 the property is violated
    spec = RegionSpec.boxes([[0.0, 0.0]], [[1.0, 1.0]], properties=[_unsafe([[1.0]], [-6.4])])
    v = provrepair.certify(net, spec, method="milp").verdicts[0]
    _check_counterexample(net, spec.regions[0], spec.properties[0], v)


def test_milp_decides_what_crown_cannot():
    net, spec = _hard_case()
    for method in ("ibp", "crown"):
        v = certify_regions(net, spec, method=method).verdicts[0]
        assert v.status == "unknown" and "inconclusive" in v.reason
    v = certify_regions(net, spec, method="milp").verdicts[0]
    assert v.status == "certified" and v.method == "milp"
    assert v.stats["milp"][0]["binaries"] > 0


def test_tiny_timeout_gives_unknown_with_a_time_limit_reason():
    net, spec = _hard_case()
    v = certify_regions(net, spec, method="milp", timeout=1e-6).verdicts[0]
    assert v.status == "unknown" and v.counterexample is None
    assert "time limit" in v.reason


def test_split_search_matches_dense_grid():
    """2-D regions go to input splitting (MILP at the deepest boxes): the verdicts match a 301x301 grid."""
    a = np.linspace(-1.0, 1.0, 301)
    grid = np.stack(np.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)
    A, b = np.array([[1.0, 0.5]]), np.array([0.25])
    G = np.array([[1.0, -1.0]])
    for seed in (0, 3):
        net = _mlp(seed, 2, 10)
        s = (_forward(net, grid) @ G.T)[:, 0]
        s_h = s[(grid @ A.T <= b)[:, 0]]
        regions, props, expected = [], [], []
        for vals, region in ((s, Box(-np.ones(2), np.ones(2))), (s_h, HPolytope(A, b, -np.ones(2), np.ones(2)))):
            for sign in (-1, 1):
                regions.append(region)
                props.append(_unsafe(G, [vals.min() + sign * 0.05 * (vals.max() - vals.min())]))
                expected.append("violated" if sign > 0 else "certified")
        spec = RegionSpec(tuple(regions), tuple(props))
        for max_depth in (40, 1):
            cert = certify_regions(net, spec, method="milp", attack=False, max_depth=max_depth)
            assert [v.status for v in cert.verdicts] == expected, [v.reason for v in cert.verdicts]
            for v, region, prop in zip(cert.verdicts, regions, props):
                if v.status == "violated":
                    _check_counterexample(net, region, prop, v)
            if max_depth == 1:
                assert sum(v.stats.get("milp_leaves", 0) for v in cert.verdicts) > 0


def test_conv_maxpool_network_on_polytopes_and_boxes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2, stride=1, padding=1), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 2)).eval()
    rng = np.random.default_rng(0)
    x0 = rng.uniform(size=(3, 1, 3, 3))
    pred = _forward(net, x0).argmax(1)
    spec = RegionSpec.linf(x0, 0.01, labels=pred)
    assert provrepair.certify(net, spec).certified
    wrong = RegionSpec.linf(x0, 0.01, labels=1 - pred)
    cert = provrepair.certify(net, wrong)
    assert [v.status for v in cert.verdicts] == ["violated"] * 3
    for v, (region, prop) in zip(cert.verdicts, wrong.validate((1, 3, 3), 2)):
        _check_counterexample(net, region, prop, v)
    # wide V-polytopes: CROWN is inconclusive, the MILP decides (no falsification first)
    rng = np.random.default_rng(1)
    verts = [np.stack([x + 3.0 * rng.normal(size=x.shape) for _ in range(4)]) for x in x0]
    spec = RegionSpec.polytopes(verts, labels=pred).validate((1, 3, 3), 2)
    crown = certify_regions(net, spec, method="crown", attack=False)
    assert [v.status for v in crown.verdicts].count("unknown") >= 2
    cert = certify_regions(net, spec, method="milp", attack=False)
    assert [v.status for v in cert.verdicts] == ["certified", "certified", "violated"]
    assert cert.verdicts[2].method == "milp"
    for v, (region, prop) in zip(cert.verdicts, spec):
        if v.status == "violated":
            _check_counterexample(net, region, prop, v)
        else:  # dense samples of the polytope agree
            w = rng.dirichlet(np.full(4, 0.3), size=20000)
            assert np.all(prop.holds(_forward(net, np.einsum("sk,k...->s...", w, region.vertices))))


def test_batched_verdicts_equal_one_at_a_time():
    net = _mlp(5, 2, 8)
    rng = np.random.default_rng(5)
    c = rng.uniform(-1, 1, size=(6, 2))
    r = rng.uniform(0.05, 0.5, size=(6, 2))
    G = np.array([[1.0, -1.0]])
    prop = BoundPropagator(net, (2,))
    lower = prop.bounds(InputSet.box(c - r, c + r), G, method="ibp").lower[:, 0].numpy()
    mids = (_forward(net, c) @ G.T)[:, 0]
    u = np.linspace(0.0, 1.0, 101)
    grid = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    mins = [(_forward(net, c[i] - r[i] + 2 * r[i] * grid) @ G.T).min() for i in range(6)]
    # certified by IBP, violated (the centre), and certified only just (CROWN or the complete check)
    hs = [lower[0] - 0.1, mids[1] + 0.01, mins[2] - 0.02, lower[3] - 0.1, mids[4] + 0.01, mins[5] - 0.002]
    spec = RegionSpec.boxes(c - r, c + r, properties=[_unsafe(G, [h]) for h in hs])
    for method in ("ibp", "auto"):
        together = [v.status for v in certify_regions(net, spec, method=method).verdicts]
        alone = [certify_regions(net, spec.subset([i]), method=method).verdicts[0].status for i in range(6)]
        assert together == alone, method
        assert together[1] == together[4] == "violated"
        assert together[0] == together[3] == "certified"
        if method == "auto":
            assert together == ["certified", "violated", "certified", "certified", "violated", "certified"]


def test_batched_crown_verdicts_equal_one_at_a_time():
    net = _mlp(43, 3, 8, depth=3)
    rng = np.random.default_rng(43)
    c = rng.normal(size=(6, 3)) * 2
    r = rng.uniform(0.01, 1, size=(6, 3))
    prop = BoundPropagator(net, (3,))
    ibp = prop.bounds(InputSet.box(c - r, c + r), method="ibp").lower[:, 0].numpy()
    G = np.array([[1.0, 0.0]])
    hs = [ibp[b] + 1e-3 for b in range(6)]
    hs[1] = 0.03  # alone, CROWN's lower bound of y0 on region 1 is 0.043; in the batch 0.024
    spec = RegionSpec.boxes(c - r, c + r, properties=[_unsafe(G, [h]) for h in hs])
    together = [v.status for v in certify_regions(net, spec, method="crown").verdicts]
    alone = [certify_regions(net, spec.subset([i]), method="crown").verdicts[0].status for i in range(6)]
    assert together == alone


def test_certificate_to_dict_is_json_serialisable():
    net, hard = _hard_case()
    spec = RegionSpec((hard.regions[0], hard.regions[0], hard.regions[0]),
                      (hard.properties[0], _unsafe([[1.0, -1.0]], [1e6]), _unsafe([[1.0, -1.0]], [-1e6])))
    cert = certify_regions(net, spec, method="auto")
    assert [v.status for v in cert.verdicts] == ["certified", "violated", "certified"]
    doc = json.loads(json.dumps(cert.to_dict()))
    assert doc["counts"] == {"certified": 2, "violated": 1, "unknown": 0} and doc["certified"] is False
    regions = doc["regions"]
    assert [r["index"] for r in regions] == [0, 1, 2]
    assert [r["status"] for r in regions] == ["certified", "violated", "certified"]
    assert len(regions[1]["counterexample"]) == 16 and len(regions[1]["output"]) == 2
    assert regions[0]["method"] == "milp" and regions[0]["stats"]["milp"]
    assert regions[2]["method"] == "ibp" and regions[2]["counterexample"] is None
    doc = json.loads(json.dumps(certify_regions(net, hard, method="crown").to_dict()))
    assert doc["regions"][0]["status"] == "unknown" and doc["regions"][0]["reason"]


# ----------------------------------------------------------------------------- command line


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "net.pt"
    save_model(_relu_net(), path)
    return path


def _write_json(path, doc):
    path.write_text(json.dumps(doc))
    return path


VNNLIB = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 {lo0}))
(assert (<= X_0 {hi0}))
(assert (>= X_1 0.0))
(assert (<= X_1 1.0))
{extra}
(assert (<= Y_0 Y_1))
"""


@pytest.mark.parametrize("kind,good,bad", [
    ("--box", {"boxes": [{"lower": [2, 0], "upper": [3, 1], "label": 0}]},
     {"boxes": [{"lower": [2, 0], "upper": [3, 1], "label": 0}, {"lower": [0, 0], "upper": [1, 1], "label": 0}]}),
    ("--polytope", {"polytopes": [{"vertices": [[2, 0], [3, 0], [2, 1]], "label": 0}]},
     {"polytopes": [{"vertices": [[0, 0], [1, 0], [0, 1]], "label": 0}]}),
    ("--vnnlib", VNNLIB.format(lo0=2.0, hi0=3.0, extra=""), VNNLIB.format(lo0=0.0, hi0=1.0, extra="")),
    ("--vnnlib", VNNLIB.format(lo0=0.0, hi0=1.0, extra="(assert (>= (+ X_0 (* -1 X_1)) 0.5))"),
     VNNLIB.format(lo0=0.0, hi0=1.0, extra="(assert (>= (+ X_0 (* -1 X_1)) -0.5))")),
], ids=["box", "polytope", "vnnlib-box", "vnnlib-hpolytope"])
def test_cli_certify_exit_codes_and_report(model, tmp_path, capsys, kind, good, bad):
    def spec_file(name, doc):
        if isinstance(doc, str):
            path = tmp_path / f"{name}.vnnlib"
            path.write_text(doc)
            return path
        return _write_json(tmp_path / f"{name}.json", doc)

    report = tmp_path / "good.report.json"
    code, stdout, err = _run(capsys, "certify", model, kind, spec_file("good", good), "--report", report)
    assert code == 0, stdout + err
    assert "certified" in stdout
    doc = json.loads(report.read_text())
    assert doc["certified"] is True and all(r["status"] == "certified" for r in doc["regions"])

    report = tmp_path / "bad.report.json"
    code, stdout, err = _run(capsys, "certify", model, kind, spec_file("bad", bad), "--method", "auto",
                             "--timeout", 30, "--report", report, "--quiet")
    assert code == 1, stdout + err
    doc = json.loads(report.read_text())
    assert doc["certified"] is False and doc["regions"][-1]["status"] == "violated"
    x = np.array(doc["regions"][-1]["counterexample"])
    y = _forward(_relu_net(), x[None])[0]
    assert y[0] <= y[1]


def test_cli_ibp_only_is_unknown_and_exits_1(tmp_path, capsys):
    path = tmp_path / "stable.pt"
    save_model(_stable_net(), path)
    spec = _write_json(tmp_path / "s.json", {"boxes": [{"lower": [0, 0], "upper": [1, 1],
                                                        "unsafe": [{"G": [[1.0]], "h": [-6.6]}]}]})
    report = tmp_path / "r.json"
    code, stdout, _ = _run(capsys, "certify", path, "--box", spec, "--method", "ibp", "--report", report)
    assert code == 1 and "unknown" in stdout
    assert json.loads(report.read_text())["regions"][0]["status"] == "unknown"
    code, stdout, _ = _run(capsys, "certify", path, "--box", spec, "--method", "crown", "--report", report)
    assert code == 0 and json.loads(report.read_text())["regions"][0]["method"] == "crown"


@pytest.mark.parametrize("case", ["malformed-vnnlib", "wrong-dimension", "empty-box", "unsupported-layer"])
def test_cli_bad_input_exits_2_without_report(model, tmp_path, capsys, case):
    good_box = {"boxes": [{"lower": [0, 0], "upper": [1, 1], "label": 0}]}
    if case == "malformed-vnnlib":
        spec = tmp_path / "bad.vnnlib"
        spec.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0)\n")
        args = ["--vnnlib", spec]
    elif case == "wrong-dimension":
        args = ["--box", _write_json(tmp_path / "b.json", {"boxes": [{"lower": [0, 0, 0], "upper": [1, 1, 1],
                                                                       "label": 0}]})]
    elif case == "empty-box":
        args = ["--box", _write_json(tmp_path / "b.json", {"boxes": [{"lower": [0, 0.5], "upper": [1, 0.2],
                                                                       "label": 0}]})]
    else:
        model = tmp_path / "tanh.pt"
        torch.manual_seed(0)
        torch.save(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)), model)
        args = ["--box", _write_json(tmp_path / "b.json", good_box)]
    report = tmp_path / "report.json"
    code, stdout, err = _run(capsys, "certify", model, *args, "--report", report)
    assert code == 2
    assert "provrepair: error:" in err and "Traceback" not in err + stdout
    assert not report.exists()


def test_cli_refuses_a_report_over_the_region_file(model, tmp_path, capsys):
    spec = _write_json(tmp_path / "b.json", {"boxes": [{"lower": [2, 0], "upper": [3, 1], "label": 0}]})
    before = spec.read_text()
    code, _, err = _run(capsys, "certify", model, "--box", spec, "--report", spec)
    assert code == 2 and "input file" in err
    assert spec.read_text() == before


# ----------------------------------------------------------------------------- ACAS Xu N2,9


@pytest.fixture(scope="module")
def acas_net(bench_dir):
    return load_model(bench_dir / "ACASXU_run2a_2_9_batch_2000.nnet")


@pytest.mark.shared
@pytest.mark.parametrize("prop", [3, 4])
def test_acas_properties_3_and_4_are_certified(acas_net, prop):
    spec = RegionSpec.load(ACAS / f"prop_{prop}.vnnlib")
    cert = provrepair.certify(acas_net, spec)
    assert cert.certified, [v.reason for v in cert.verdicts]


@pytest.mark.shared
def test_acas_property_2_is_violated_with_a_valid_counterexample(acas_net):
    spec = RegionSpec.load(ACAS / "prop_2.vnnlib")
    cert = provrepair.certify(acas_net, spec)
    (v,) = cert.verdicts
    assert v.status == "violated"
    region = spec.regions[0]
    lo, hi = region.bounds()
    x = v.counterexample.reshape(-1)
    assert np.all(x >= lo.reshape(-1)) and np.all(x <= hi.reshape(-1))
    y = _forward(acas_net, x[None])[0]
    assert np.all(y[0] >= y[1:]), "phi2's unsafe case: COC has the maximal score"
