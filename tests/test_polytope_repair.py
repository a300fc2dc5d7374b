"""Provable repair of boxes and V-polytopes (shift LPs, then the assert LP or MILP).

Every repair here is judged three ways: the status of ``provrepair.repair`` (which certifies with
the certification engine), a second call of ``provrepair.certify`` on the repaired model, and a
dense float64 sampling of every region that shares no code with either."""

import copy
import importlib.util
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.cli import main
from provrepair.errors import InputError, SolverLicenseError, SpecError, UnsupportedLayerError
from provrepair.models import affine_layers, normalize_model, save_model
from provrepair.repair.polytope import fix_disjuncts
from provrepair.specs import Box, HPolytope, OutputProperty, PointSpec, RegionSpec, VPolytope

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CERT_METHODS = {"ibp", "crown", "split", "milp", "milp+split", "split+milp"}


def _mlp(seed=0, sizes=(2, 16, 16, 3)):
    torch.manual_seed(seed)
    mods = []
    for a, b in itertools.pairwise(sizes):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return normalize_model(nn.Sequential(*mods[:-1]), input_shape=(sizes[0],))


def _forward64(net, x):
    """float64 outputs of a copy of ``net`` (the caller's module stays float32)."""
    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.as_tensor(np.asarray(x), dtype=torch.float64)).numpy()


def _dense(region, n=400, grid=15):
    """Samples of a region: vertices, random convex combinations, and a grid for a 2-D box."""
    pts = [region.sample(n, rng=1)]
    if isinstance(region, Box):
        lo, hi = region.bounds()
        axes = [np.linspace(lo[i], hi[i], grid) for i in range(lo.size)]
        pts.append(np.stack(np.meshgrid(*axes), -1).reshape(-1, lo.size))
    else:
        v = region.vertices
        w = np.random.default_rng(2).dirichlet(np.full(len(v), 0.3), size=n)  # near edges and vertices too
        pts.append(w @ v.reshape(len(v), -1))
    return np.concatenate(pts)


def _violations(net, spec):
    """Per region: how many of its dense samples break the property (float64)."""
    return [int((~prop.holds(_forward64(net, _dense(r)))).sum()) for r, prop in spec]


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _check_certified(net, result, spec):
    assert result.status == "certified", result.message
    assert result.certified and result.model is not None
    cert = result.certificate
    assert cert.certified and cert.counts["certified"] == len(spec)
    assert all(v.method in CERT_METHODS for v in cert.verdicts), [v.method for v in cert.verdicts]
    again = provrepair.certify(result.model, spec)
    assert again.certified, again.summary()
    assert _violations(result.model, spec) == [0] * len(spec)


def _wrong_boxes(net, label):
    """Two boxes and a triangle the network gets wrong (at some sampled point) for ``label``."""
    lo = np.array([[-1.0, -1.0], [0.3, 0.1]])
    boxes = RegionSpec.boxes(lo, lo + 0.25, labels=[label, label], n_outputs=3)
    tri = np.array([[[-0.6, 0.5], [-0.2, 0.6], [-0.4, 0.9]]])
    polys = RegionSpec.polytopes(tri, labels=[label], n_outputs=3)
    return boxes, polys


NET = _mlp()
LABEL = 2  # the toy network predicts class 2 almost nowhere in [-1, 1]^2


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("kind", ["boxes", "polytopes"])
def test_label_regions_repaired_at_each_layer(layer, kind):
    boxes, polys = _wrong_boxes(NET, LABEL)
    spec = boxes if kind == "boxes" else polys
    assert all(v > 0 for v in _violations(NET, spec))  # every region needs repair
    before = _params(NET)
    result = provrepair.repair(NET, spec, layer=layer)
    _check_certified(NET, result, spec)
    stages = result.lp["stages"]
    assert [s["stage"] for s in stages] == ["shift"] * layer + ["assert"]
    assert stages[-1]["layer"] == layer and stages[-1]["binaries"] == 0
    assert all(s["status"] in ("optimal", "not needed") for s in stages)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(NET)))  # the input network is untouched
    # affine layers after the assert layer keep their weights (only their biases may move)
    mods = affine_layers(NET)
    for a in mods[layer + 1:]:
        assert torch.equal(result.model[a].weight, NET[a].weight)


def test_mixed_properties_general_rows_and_labels():
    # a box with a label and a triangle with "y0 - y1 <= -0.5" (explicit rows), in one spec
    box = Box(np.array([0.3, 0.1]), np.array([0.55, 0.35]))
    tri = VPolytope(np.array([[-0.6, 0.5], [-0.2, 0.6], [-0.4, 0.9]]))
    props = [OutputProperty.label(LABEL, 3), OutputProperty.required_all([[1.0, -1.0, 0.0]], [-0.5])]
    spec = RegionSpec((box, tri), tuple(props))
    result = provrepair.repair(NET, spec, layer=1)
    _check_certified(NET, result, spec)


def test_boxes_that_partition_a_square_share_vertices():
    # a 3 x 3 partition of a square: neighbouring boxes share corners (held at 0 where their
    # centroid patterns disagree), and the whole square ends up certified
    edges = np.linspace(-0.9, -0.3, 4)
    lo = np.array([[edges[i], edges[j]] for i in range(3) for j in range(3)])
    hi = np.array([[edges[i + 1], edges[j + 1]] for i in range(3) for j in range(3)])
    spec = RegionSpec.boxes(lo, hi, labels=LABEL, n_outputs=3)
    messages = []
    result = provrepair.repair(NET, spec, layer=2, progress=messages.append)
    # 16 distinct corners; the 4 inner ones belong to 4 boxes, the 8 other non-outer ones to 2
    assert any("9 regions, 36 LP points (36 corners, 12 shared" in m for m in messages), messages
    shifts = [st for st in result.lp["stages"] if st["stage"] == "shift" and st["status"] == "optimal"]
    assert shifts and shifts[0]["regions_needing_shift"] > 0  # the shared-corner patterns were really imposed
    _check_certified(NET, result, spec)
    square = RegionSpec.boxes(np.full((1, 2), edges[0]), np.full((1, 2), edges[-1]), labels=LABEL, n_outputs=3)
    assert _violations(result.model, square) == [0]
    assert provrepair.certify(result.model, square).certified


def _not_top(c, n=3):
    """Required: some other output beats class ``c`` (a disjunction: one binary per row)."""
    A = np.array([np.eye(n)[c] - np.eye(n)[j] for j in range(n) if j != c])  # y_c - y_j < 0 for some j
    return OutputProperty.required_any(A, np.zeros(n - 1))


def _disjunctive_spec():
    # "class 1 is not the top class", where the network says class 1
    prop = _not_top(1)
    box = Box(np.array([0.3, 0.1]), np.array([0.5, 0.3]))
    tri = VPolytope(np.array([[-0.6, 0.5], [-0.2, 0.6], [-0.4, 0.9]]))
    return RegionSpec((box, tri), (prop, prop))


def test_disjunctive_property_is_a_milp_and_certifies_with_highs():
    spec = _disjunctive_spec()
    assert all(v > 0 for v in _violations(NET, spec))
    result = provrepair.repair(NET, spec, layer=1, disjunctions="milp")
    assert result.lp["stages"][-1]["binaries"] > 0 and result.lp["disjunctions"] == "milp"
    assert result.solver["name"] == "highs"
    _check_certified(NET, result, spec)


@pytest.mark.skipif(importlib.util.find_spec("gurobipy") is None, reason="gurobipy is not installed")
def test_disjunctive_property_certifies_with_gurobi():
    net = _mlp(seed=3, sizes=(2, 6, 6, 3))  # tiny: pip's Gurobi licence caps the problem size
    prop = _not_top(int(_forward64(net, np.array([[0.4, 0.2]])).argmax(1)[0]))
    spec = RegionSpec((Box(np.array([0.3, 0.1]), np.array([0.5, 0.3])),), (prop,))
    assert _violations(net, spec)[0] > 0
    try:
        result = provrepair.repair(net, spec, layer=2, solver="gurobi", disjunctions="milp")
    except SolverLicenseError as exc:
        pytest.skip(f"Gurobi's licence refused the problem: {exc}")
    assert result.solver["name"] == "gurobi"
    assert result.lp["stages"][-1]["binaries"] > 0
    _check_certified(net, result, spec)


def test_disjunctions_fixed_to_one_row_make_the_assert_an_lp():
    spec = _disjunctive_spec()
    result = provrepair.repair(NET, spec, layer=1)  # auto: fixed rows first
    assert result.lp["disjunctions"] == "fixed"
    assert result.lp["stages"][-1]["stage"] == "assert" and result.lp["stages"][-1]["binaries"] == 0
    _check_certified(NET, result, spec)  # certified against the original disjunctive property


def test_fixed_rows_of_different_regions_never_contradict():
    """Region A (y = (0, 1, .5)) must not have y_0 maximal, region B (y = (1, 0, .5)) not y_1: alone,
    A takes y_1 > y_0 and B y_0 > y_1, which no one affine map can hold on regions whose hulls
    meet. Chosen together, one of them takes its other row (y_2 above), as ACAS Xu N1,7 needs."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        lin.bias.zero_()
    net = normalize_model(nn.Sequential(lin), input_shape=(2,))
    a = Box(np.array([-0.01, 0.99]), np.array([0.01, 1.01]))
    b = Box(np.array([0.99, -0.01]), np.array([1.01, 0.01]))
    e = np.eye(3)
    not_max = lambda j: OutputProperty.unsafe([(np.stack([e[k] - e[j] for k in range(3) if k != j]), np.zeros(2))])
    alone = [fix_disjuncts(net, [r], [not_max(j)])[0][0].disjuncts[0][0][0]
             for r, j in ((a, 0), (b, 1))]
    assert np.allclose(alone[0], -alone[1])  # each alone: the opposite rows
    fixed, chosen = fix_disjuncts(net, [a, b], [not_max(0), not_max(1)])
    rows = [f.disjuncts[0][0][0] for f in fixed]
    assert chosen == 2 and not np.allclose(rows[0], -rows[1])
    for r, (G, h), y in zip(rows, [f.disjuncts[0] for f in fixed], ([0, 1, 0.5], [1, 0, 0.5])):
        assert (G @ np.array(y) - h > 0).all()  # the region's outputs meet the kept row G_r y > h_r


def test_fixed_rows_that_cannot_hold_fall_back_to_the_milp():
    box = Box(np.array([0.3, 0.1]), np.array([0.5, 0.3]))
    top = int(_forward64(NET, np.array([[0.4, 0.2]])).argmax(1)[0])
    prop = _not_top(top)
    fixed, chosen = provrepair.repair.polytope.fix_disjuncts(NET, [box], [prop])
    assert chosen == 1 and fixed[0].disjuncts[0][0].shape[0] == 1
    # also require the opposite of the fixed row: with the row fixed the assert is infeasible, and
    # only the MILP (another row of the disjunction) can satisfy both
    G, h = fixed[0].disjuncts[0]
    both = OutputProperty.unsafe([prop.disjuncts[0], (-G, -h)])
    spec = RegionSpec((box,), (both,))
    result = provrepair.repair(NET, spec, layer=2, delta_bound=50.0)
    assert result.lp["disjunctions"] == "milp"
    assert any(st.get("attempt") == "fixed disjuncts" for st in result.lp["stages"])
    _check_certified(NET, result, spec)


def test_infeasible_assert_names_the_stage_and_layer():
    boxes, _ = _wrong_boxes(NET, LABEL)
    result = provrepair.repair(NET, boxes, layer=0, delta_bound=1e-6)
    assert result.status == "infeasible" and result.model is None and result.certificate is None
    assert "assert" in result.message and "layer 0" in result.message


def test_infeasible_shift_names_the_stage_and_layer():
    big = RegionSpec.boxes(np.array([[-1.0, -1.0]]), np.array([[1.0, 1.0]]), labels=LABEL, n_outputs=3)
    result = provrepair.repair(NET, big, layer=2, shift_delta_bound=1e-6)
    assert result.status == "infeasible" and result.model is None
    assert "shift" in result.message and "layer 0" in result.message
    assert result.lp["stages"][-1]["stage"] == "shift" and result.lp["stages"][-1]["status"] == "infeasible"


def test_contradictory_regions_are_infeasible():
    box = Box(np.array([0.3, 0.1]), np.array([0.5, 0.3]))
    spec = RegionSpec((box, box), (OutputProperty.label(0, 3), OutputProperty.label(1, 3)))
    result = provrepair.repair(NET, spec, layer=1)
    assert result.status == "infeasible" and "assert" in result.message and "layer 1" in result.message


def test_maxpool_network_is_refused():
    torch.manual_seed(0)
    net = normalize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                        nn.Linear(2 * 2 * 2, 3)), input_shape=(1, 6, 6))
    spec = RegionSpec.linf(np.full((1, 1, 6, 6), 0.5), 0.01, labels=[0], n_outputs=3)
    with pytest.raises(UnsupportedLayerError, match="MaxPool2d"):
        provrepair.repair(net, spec, layer=1)


def test_h_polytope_is_refused():
    h = HPolytope(np.array([[1.0, 1.0]]), np.array([0.5]), np.array([0.0, 0.0]), np.array([1.0, 1.0]))
    spec = RegionSpec((h,), (OutputProperty.label(LABEL, 3),))
    with pytest.raises(SpecError, match="H-polytopes"):
        provrepair.repair(NET, spec, layer=1)


# ---------------------------------------------------------------------- CLI
def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "toy.pt"
    save_model(NET, path)
    return path


def test_cli_repairs_boxes_and_writes_the_model(tmp_path, model_file, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"lower": [-1.0, -1.0], "upper": [-0.75, -0.75], "label": LABEL},
                                           {"lower": [0.3, 0.1], "upper": [0.55, 0.35], "label": LABEL}]}))
    out = tmp_path / "fixed.pt"
    code, stdout, _ = _run(capsys, "repair", model_file, "--box", boxes, "--layer", 1, "--out", out, "--quiet")
    assert code == 0, stdout
    assert out.exists() and "certified" in stdout
    fixed = provrepair.load_model(out)
    spec = RegionSpec.load(boxes)
    assert provrepair.certify(fixed, spec).certified


def test_cli_unrepairable_spec_exits_1_without_a_model(tmp_path, model_file, capsys):
    boxes = tmp_path / "contradiction.json"
    box = {"lower": [0.3, 0.1], "upper": [0.5, 0.3]}
    boxes.write_text(json.dumps({"boxes": [dict(box, label=0), dict(box, label=1)]}))
    out = tmp_path / "fixed.pt"
    code, stdout, _ = _run(capsys, "repair", model_file, "--box", boxes, "--layer", 1, "--out", out, "--quiet")
    assert code == 1, stdout
    assert not out.exists()
    assert "infeasible" in stdout


_MALFORMED = {
    "ragged": [[0.1, 0.2], [0.3], [0.2, 0.4]],
    "wrong_dimension": [[0.1, 0.2, 0.3], [0.3, 0.1, 0.1], [0.2, 0.4, 0.0]],
    "nan": [[0.1, 0.2], [0.3, float("nan")], [0.2, 0.4]],
    "single_vertex": [[0.1, 0.2]],
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_cli_rejects_malformed_polytope_files(tmp_path, model_file, capsys, case):
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps({"polytopes": [{"vertices": _MALFORMED[case], "label": LABEL}]}))
    out = tmp_path / "fixed.pt"
    code, _, err = _run(capsys, "repair", model_file, "--polytope", path, "--layer", 1, "--out", out, "--quiet")
    assert code == 2 and "error" in err
    assert not out.exists()


def _keep_set(spec, n=12):
    """Grid points away from the regions, with the labels the network gives them now."""
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21)), -1).reshape(-1, 2)
    near = np.zeros(len(g), dtype=bool)
    for region, _ in spec:
        lo, hi = region.bounds()
        near |= ((g >= lo - 0.05) & (g <= hi + 0.05)).all(1)
    g = g[~near][np.random.default_rng(0).choice(int((~near).sum()), n, replace=False)]
    return g, _forward64(NET, g).argmax(1)


@pytest.mark.parametrize("layer", [0, 2])
def test_kept_points_keep_their_labels(layer):
    boxes, _ = _wrong_boxes(NET, LABEL)
    g, labels = _keep_set(boxes)
    plain = provrepair.repair(NET, boxes, layer=layer)
    flipped = int((_forward64(plain.model, g).argmax(1) != labels).sum())
    assert flipped > 0, "without kept points the repair must move some of them, or this test proves nothing"
    kept = provrepair.repair(NET, boxes, layer=layer, keep=PointSpec.from_arrays(g, labels))
    _check_certified(NET, kept, boxes)
    assert (_forward64(kept.model, g).argmax(1) == labels).all()
    assert kept.lp["kept"] == {"points": len(g), "passed": len(g)}
    assert kept.lp["stages"][-1]["kept_points"] == len(g)


def test_point_repair_refuses_a_keep_file_that_does_not_fit(tmp_path, model_file, capsys):
    pts = PointSpec.from_arrays(np.array([[0.1, 0.2]]), [LABEL])
    with pytest.raises(InputError):
        provrepair.repair(NET, pts, layer=1, keep=PointSpec.from_arrays(np.array([[0.1, 0.2, 0.3]]), [LABEL]))
    p, k = tmp_path / "p.json", tmp_path / "k.json"
    p.write_text(json.dumps({"points": [{"input": [0.1, 0.2], "label": LABEL}]}))
    k.write_text(json.dumps({"points": [{"input": [0.1, 0.2], "label": 99}]}))
    code = main(["repair", str(model_file), "--points", str(p), "--keep", str(k), "--layer", "1",
                 "--out", str(tmp_path / "out.pt")])
    assert code == 2 and "label" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_cli_keep_file_holds_its_points(tmp_path, model_file, capsys):
    boxes, _ = _wrong_boxes(NET, LABEL)
    g, labels = _keep_set(boxes)
    box_file, keep_file, out = tmp_path / "boxes.json", tmp_path / "keep.json", tmp_path / "fixed.pt"
    box_file.write_text(json.dumps({"boxes": [{"lower": r.lower.tolist(), "upper": r.upper.tolist(), "label": LABEL}
                                              for r, _ in boxes]}))
    keep_file.write_text(json.dumps({"points": [{"input": x.tolist(), "label": int(c)} for x, c in zip(g, labels)]}))
    code, stdout, _ = _run(capsys, "repair", model_file, "--box", box_file, "--keep", keep_file, "--layer", 2,
                           "--out", out, "--quiet")
    assert code == 0, stdout
    assert (_forward64(provrepair.load_model(out), g).argmax(1) == labels).all()


# -- hull="interval": the last layer over each region's CROWN interval, no shift LP

def _partition(lo, hi, n):
    edges = [np.linspace(lo[d], hi[d], n + 1) for d in range(2)]
    low = np.array([[edges[0][i], edges[1][j]] for i in range(n) for j in range(n)])
    high = np.array([[edges[0][i + 1], edges[1][j + 1]] for i in range(n) for j in range(n)])
    return low, high


@pytest.mark.parametrize("kind", ["boxes", "polytopes"])
def test_interval_hull_repairs_the_last_layer_only(kind):
    boxes, polys = _wrong_boxes(NET, LABEL)
    spec = boxes if kind == "boxes" else polys
    messages = []
    result = provrepair.repair(NET, spec, layer=-1, hull="interval", progress=messages.append)
    _check_certified(NET, result, spec)
    assert [s["stage"] for s in result.lp["stages"]] == ["hull", "assert"]
    assert any("interval hulls of" in m for m in messages)
    last = affine_layers(NET)[-1]
    for i, (a, b) in enumerate(zip(NET, result.model)):  # every earlier layer is untouched
        if i != last:
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(result.model[last].weight, NET[last].weight)


def test_interval_hull_covers_regions_whose_activation_pattern_varies():
    # a 4 x 4 partition of a corner of the plane the network gets wrong: the hidden patterns vary
    # inside the boxes, which the exact hull must first shift away; the interval hull just holds
    # the label on each box's hull, and a disjunctive property gets its rows fixed first
    low, high = _partition([-1.0, -1.0], [-0.2, -0.2], 4)
    spec = RegionSpec.boxes(low, high, labels=LABEL, n_outputs=3)
    hidden = NET[:2]
    with torch.no_grad():
        pre = hidden(torch.as_tensor(np.concatenate([RegionSpec.boxes(low, high, labels=LABEL, n_outputs=3)
                                                     .regions[i].sample(50, rng=i) for i in range(16)]),
                                     dtype=torch.float32)).reshape(16, 50, -1)
    assert ((pre > 0).any(1) & (pre <= 0).any(1)).any()  # some neuron flips inside some box
    result = provrepair.repair(NET, spec, layer="auto", hull="interval", delta_bound=10.0)
    assert result.layer == len(affine_layers(NET)) - 1 and result.layer_selection["tried"][0]["layer"] == result.layer
    _check_certified(NET, result, spec)
    dis = _disjunctive_spec()
    result = provrepair.repair(NET, dis, layer=-1, hull="interval", delta_bound=10.0)
    assert result.lp["disjunctions"] == "fixed"
    _check_certified(NET, result, dis)


def test_interval_hull_keeps_points():
    boxes, _ = _wrong_boxes(NET, LABEL)
    x = np.random.default_rng(3).uniform(-1, 1, size=(200, 2))
    far = ~np.any([np.all((x >= r.lower - 0.3) & (x <= r.upper + 0.3), axis=1) for r in boxes.regions], axis=0)
    x = x[far][:40]
    labels = _forward64(NET, x).argmax(1)
    keep = PointSpec.from_arrays(x, labels)
    plain = provrepair.repair(NET, boxes, layer=-1, hull="interval", delta_bound=10.0)
    assert (_forward64(plain.model, x).argmax(1) != labels).any()  # without them, some points flip
    result = provrepair.repair(NET, boxes, layer=-1, hull="interval", keep=keep, delta_bound=10.0)
    _check_certified(NET, result, boxes)
    assert result.lp["kept"] == {"points": len(x), "passed": len(x)}
    assert (_forward64(result.model, x).argmax(1) == labels).all()


@pytest.mark.parametrize("hull,layer", [("interval", -1), ("exact", 2)])
def test_soft_kept_points_break_only_where_the_regions_force_it(hull, layer):
    """A kept point inside a box, held to a label the box may not have: as a hard row it makes the
    LP infeasible; as a soft row (``keep_soft``) the repair goes through, breaks that one point
    and keeps every other."""
    boxes, _ = _wrong_boxes(NET, LABEL)
    x = np.random.default_rng(3).uniform(-1, 1, size=(200, 2))
    far = ~np.any([np.all((x >= r.lower - 0.3) & (x <= r.upper + 0.3), axis=1) for r in boxes.regions], axis=0)
    x = np.concatenate([x[far][:40], (boxes.regions[0].lower + boxes.regions[0].upper).reshape(1, 2) / 2])
    labels = _forward64(NET, x).argmax(1)
    labels[-1] = (LABEL + 1) % 3  # the box must be LABEL everywhere: this point cannot keep its label
    keep = PointSpec.from_arrays(x, labels)
    opts = dict(layer=layer, hull=hull, keep=keep, delta_bound=10.0)
    hard = provrepair.repair(NET, boxes, **opts)
    assert hard.model is None and "infeasible" in hard.message
    soft = provrepair.repair(NET, boxes, keep_soft=1000.0, **opts)
    _check_certified(NET, soft, boxes)
    assert soft.lp["stages"][-1]["kept_broken"] == 1
    assert soft.lp["kept"] == {"points": len(x), "passed": len(x) - 1}
    assert (_forward64(soft.model, x[:-1]).argmax(1) == labels[:-1]).all()


def test_keep_soft_is_checked():
    boxes, _ = _wrong_boxes(NET, LABEL)
    with pytest.raises(InputError, match="keep_soft"):
        provrepair.repair(NET, boxes, layer=-1, hull="interval", keep_soft=0.0)


def test_interval_hull_refuses_earlier_layers_and_milp_disjunctions():
    boxes, _ = _wrong_boxes(NET, LABEL)
    with pytest.raises(InputError, match="last affine layer only"):
        provrepair.repair(NET, boxes, layer=0, hull="interval")
    with pytest.raises(InputError, match="MILP"):
        provrepair.repair(NET, _disjunctive_spec(), layer=-1, hull="interval", disjunctions="milp")
    with pytest.raises(InputError, match="unknown hull"):
        provrepair.repair(NET, boxes, layer=-1, hull="convex")


def test_interval_hull_that_is_too_loose_says_what_to_try():
    big = RegionSpec.boxes(np.array([[-1.0, -1.0]]), np.array([[1.0, 1.0]]), labels=LABEL, n_outputs=3)
    result = provrepair.repair(NET, big, layer=-1, hull="interval", delta_bound=1e-3)
    assert result.status == "infeasible" and result.model is None
    assert "interval hulls" in result.message and "smaller regions" in result.message


def test_cli_repairs_boxes_over_interval_hulls(tmp_path, model_file, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"lower": [-1.0, -1.0], "upper": [-0.75, -0.75], "label": LABEL},
                                           {"lower": [0.3, 0.1], "upper": [0.55, 0.35], "label": LABEL}]}))
    out = tmp_path / "fixed.pt"
    code, stdout, _ = _run(capsys, "repair", model_file, "--box", boxes, "--layer", -1, "--hull", "interval",
                           "--out", out, "--quiet")
    assert code == 0, stdout
    assert provrepair.certify(provrepair.load_model(out), RegionSpec.load(boxes)).certified
