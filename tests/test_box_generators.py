"""Boxes encoded by centre and generators: the same LP optimum as their corners, on the whole box."""

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.errors import InputError, SpecError
from provrepair.models import normalize_model
from provrepair.repair.aprnn import PointRepairOptions, repair_points
from provrepair.repair.polytope import MAX_BOX_CORNERS
from provrepair.specs import Box, OutputProperty, RegionSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(n_in, seed=0, hidden=12, n_out=3):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, n_out))
    return normalize_model(net, input_shape=(n_in,))


def _f64(net, x):
    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.as_tensor(np.asarray(x), dtype=torch.float64)).numpy()


def _signs(net, stop, x):
    with torch.no_grad():
        return np.where(copy.deepcopy(net).double()[:stop](torch.as_tensor(x, dtype=torch.float64)).numpy() > 0, 1, -1)


def _label_rows(labels, n_out):
    A, b, p = [], [], []
    for i, lab in enumerate(labels):
        for j in range(n_out):
            if j != lab:
                a = np.zeros(n_out)
                a[j], a[lab] = 1.0, -1.0
                A.append(a), b.append(0.0), p.append(i)
    return np.array(A), np.array(b), np.array(p)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_generator_rows_give_the_corner_lp_optimum(layer):
    net = _mlp(4)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 4))
    half = np.array([0.03, 0.02, 0.01, 0.025]) / 4
    corners = np.array([[c + np.array(s) * half for s in itertools.product([-1, 1], repeat=4)] for c in centres])
    V, owner = corners.reshape(-1, 4), np.repeat([0, 1], 16)
    # small boxes: the layers before the repair layer must be affine on them (no shift LP here)
    for stop in (1, 3):
        if stop < 2 * layer:
            s = _signs(net, stop, V)
            assert (s == _signs(net, stop, centres)[owner]).all()
    labels = (_f64(net, centres).argmax(1) + 1) % 3  # a label the network does not give
    opts = PointRepairOptions(delta_bound=10.0)
    A, b, p = _label_rows(labels, 3)
    boxed = repair_points(net, centres, A, b, p, layer, opts, generators=[np.diag(half)] * 2)
    # corners held to their centre's pattern at every ReLU after the layer: the V-polytope encoding
    patterns = {i: _signs(net, i, centres)[owner] for i in (1, 3) if i > 2 * layer}
    A2, b2, p2 = _label_rows(labels[owner], 3)
    cornered = repair_points(net, V, A2, b2, p2, layer, opts, patterns=patterns)
    assert boxed.status == cornered.status == "optimal"
    assert boxed.objective == pytest.approx(cornered.objective, rel=1e-6)
    assert boxed.lp_size["rows"] < cornered.lp_size["rows"]
    # the repaired network is right on the whole boxes, not only at their centres
    for c, lab in zip(centres, labels):
        x = c + rng.uniform(-1, 1, size=(5000, 4)) * half
        assert (_f64(boxed.model, x).argmax(1) == lab).all()


def test_generators_need_finite_arrays_of_the_input_shape():
    net = _mlp(4)
    x = np.zeros((1, 4))
    with pytest.raises(InputError, match="generators of point 0"):
        repair_points(net, x, *_label_rows([0], 3), 1, generators=[np.ones((2, 3))])
    with pytest.raises(InputError, match="2 entries for 1 points"):
        repair_points(net, x, *_label_rows([0], 3), 1, generators=[None, None])


def _wrong_box(net, n_in, half, shift=0.0):
    """A box around a point the network gets wrong, and a label it must give there instead."""
    c = np.full(n_in, shift)
    lab = int((_f64(net, c[None]).argmax(1)[0] + 1) % 3)
    return Box(c - half, c + half), lab


def test_box_encodings_agree_through_shift_and_assert():
    net = _mlp(5, seed=1)
    box, lab = _wrong_box(net, 5, 0.15)
    spec = RegionSpec((box,), (OutputProperty.label(lab, 3),))
    runs = {enc: provrepair.repair(net, spec, layer=2, box_encoding=enc) for enc in ("generators", "corners")}
    for enc, res in runs.items():
        assert res.certified, (enc, res.message)
        x = box.sample(4000, rng=3)
        assert (_f64(res.model, x).argmax(1) == lab).all()
    shifts = {enc: [s for s in r.lp["stages"] if s["stage"] == "shift" and s["status"] == "optimal"]
              for enc, r in runs.items()}
    assert shifts["generators"], "the box must need a shift LP for this test to mean anything"
    objective = lambda d: d["linf"] + d["l1"] / d["count"]
    first = [objective(shifts[e][0]["delta"]) for e in ("generators", "corners")]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    assert runs["generators"].lp["vertices"] == 1 and runs["corners"].lp["vertices"] == 32


def test_a_box_with_more_corners_than_the_corner_limit_is_repaired():
    n_in = 14  # 16384 corners
    assert 2 ** n_in > MAX_BOX_CORNERS
    net = _mlp(n_in, seed=2)
    box, lab = _wrong_box(net, n_in, 0.05, shift=0.2)
    spec = RegionSpec((box,), (OutputProperty.label(lab, 3),))
    with pytest.raises(SpecError, match="corners"):
        provrepair.repair(net, spec, layer=2, box_encoding="corners")
    res = provrepair.repair(net, spec, layer=2)
    assert res.certified, res.message
    assert (_f64(res.model, box.sample(4000, rng=4)).argmax(1) == lab).all()


def test_disjunctive_boxes_use_corners_and_refuse_generators():
    net = _mlp(4, seed=3)
    box, _ = _wrong_box(net, 4, 0.05)
    top = int(_f64(net, box.sample(1, rng=0)).argmax(1)[0])
    # required: some other class beats `top` (one of two rows: a disjunction)
    prop = OutputProperty.required_any(np.array([np.eye(3)[top] - np.eye(3)[j] for j in range(3) if j != top]),
                                       np.zeros(2))
    spec = RegionSpec((box,), (prop,))
    with pytest.raises(SpecError, match="disjunction"):
        provrepair.repair(net, spec, layer=2, box_encoding="generators", disjunctions="milp")
    res = provrepair.repair(net, spec, layer=2, disjunctions="milp")  # auto encoding: corners and a MILP
    assert res.lp["stages"][-1]["binaries"] > 0 and res.lp["vertices"] == 16
    assert res.certified, res.message
    fixed = provrepair.repair(net, spec, layer=2)  # one row per box: conjunctive, so generators
    assert fixed.lp["disjunctions"] == "fixed" and fixed.lp["vertices"] == 1 and fixed.lp["generators"] == 4
    assert fixed.certified, fixed.message


def test_unknown_box_encoding_is_an_input_error():
    net = _mlp(4)
    box, lab = _wrong_box(net, 4, 0.05)
    with pytest.raises(InputError, match="box encoding"):
        provrepair.repair(net, RegionSpec((box,), (OutputProperty.label(lab, 3),)), layer=2, box_encoding="zono")
