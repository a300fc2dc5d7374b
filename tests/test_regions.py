"""Region specs: regions, output properties (unsafe-set semantics), validation, JSON/NPZ files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from provrepair.errors import InputError, SpecError
from provrepair.specs import Box, HPolytope, OutputProperty, RegionSpec, VPolytope


# --------------------------------------------------------------------------- output properties
def test_label_property_semantics_boundary_is_unsafe():
    prop = OutputProperty.label(1, 3)
    assert len(prop.disjuncts) == 2 and prop.is_conjunctive
    y = np.array([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    np.testing.assert_array_equal(prop.violated(y), [-1, 0, 1, 1])
    np.testing.assert_array_equal(prop.holds(y), [True, False, False, False])
    # margin: y1 - yj must exceed 0.5
    prop_m = OutputProperty.label(1, 3, margin=0.5)
    np.testing.assert_array_equal(prop_m.holds(y[:1]), [False])
    np.testing.assert_array_equal(prop_m.holds([[0.0, 1.0, 0.4]]), [True])
    A, b = prop.required_conjunction()
    np.testing.assert_array_equal(A, [[1.0, -1.0, 0.0], [0.0, -1.0, 1.0]])  # y_j - y_1 < 0, as PointSpec
    np.testing.assert_array_equal(b, [0.0, 0.0])


def test_required_all_and_any():
    A = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([1.0, 2.0])
    every = OutputProperty.required_all(A, b)
    some = OutputProperty.required_any(A, b)
    y = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0], [1.0, 0.0]])
    np.testing.assert_array_equal(every.violated(y), [-1, 0, 1, 0, 0])  # (1, 0): on the boundary
    np.testing.assert_array_equal(some.holds(y), [True, True, True, False, True])
    assert every.is_conjunctive and not some.is_conjunctive and some.required_conjunction() is None
    rA, rb = every.required_conjunction()
    np.testing.assert_array_equal(rA, A)
    np.testing.assert_array_equal(rb, b)


def test_unsafe_property_dict_round_trip_and_errors():
    prop = OutputProperty.unsafe([([[1.0, -1.0, 0.0]], [0.25]), (np.zeros((0, 3)), np.zeros(0))])
    assert prop.violated(np.array([9.0, 0.0, 0.0])).tolist() == [1]  # a zero-row disjunct is always reached
    again = OutputProperty.from_dict(json.loads(json.dumps(prop.to_dict())))
    for (G1, h1), (G2, h2) in zip(prop.disjuncts, again.disjuncts):
        np.testing.assert_array_equal(G1, G2)
        np.testing.assert_array_equal(h1, h2)
    with pytest.raises(ValueError):
        prop.disjuncts[0][0][0, 0] = 5.0
    with pytest.raises(SpecError, match="constrains 3 outputs but the model has 10"):
        prop.validate(10)
    with pytest.raises(SpecError, match="out of range for a model with 3 outputs"):
        OutputProperty.label(3, 3)
    with pytest.raises(SpecError, match=r"shape \(r, 3\)"):
        OutputProperty(((np.ones((1, 2)), np.ones(1)),), 3)
    with pytest.raises(SpecError, match="at least one unsafe disjunct"):
        OutputProperty((), 3)
    with pytest.raises(SpecError, match="non-finite"):
        OutputProperty.required_all([[np.nan, 1.0]], [0.0])


# --------------------------------------------------------------------------- regions
def test_box_checks_and_views():
    with pytest.raises(SpecError, match=r"empty: lower\[1\] = 2.0 > upper\[1\] = 1.0"):
        Box([0.0, 2.0], [1.0, 1.0])
    with pytest.raises(SpecError, match=r"lower\[\(0, 1\)\]"):
        Box([[0.0, 2.0]], [[1.0, 1.0]])
    with pytest.raises(SpecError, match="shape"):
        Box([0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(SpecError, match="non-finite"):
        Box([0.0, -np.inf], [1.0, 1.0])
    box = Box([0.0, 1.0, -1.0], [1.0, 1.0, 1.0])
    assert box.dim == 3 and box.input_shape == (3,)
    np.testing.assert_array_equal(box.center(), [0.5, 1.0, 0.0])
    corners = box.corners()
    assert corners.shape == (4, 3) and np.all(corners[:, 1] == 1.0)
    assert {tuple(c) for c in corners} == {(0, 1, -1), (1, 1, -1), (0, 1, 1), (1, 1, 1)}
    pts = box.sample(50, 0)
    assert pts.shape == (50, 3) and box.contains(pts).all()
    np.testing.assert_array_equal(pts, box.sample(50, 0))  # deterministic under a seed
    assert not box.contains([2.0, 1.0, 0.0])
    with pytest.raises(SpecError, match="2\\^13 corners"):
        Box(np.zeros(13), np.ones(13)).corners()
    with pytest.raises(ValueError):
        box.lower[0] = 3.0


def test_vpolytope_and_hpolytope():
    v = VPolytope([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(v.center(), [1 / 3, 1 / 3])
    lo, hi = v.bounds()
    np.testing.assert_array_equal(lo, [0, 0]) and np.testing.assert_array_equal(hi, [1, 1])
    s = v.sample(10, 1)
    np.testing.assert_array_equal(s[:3], v.vertices)
    assert np.all(s >= 0) and np.all(s.sum(axis=1) <= 1 + 1e-12)
    assert v.sample(2, 1).shape == (2, 2)
    with pytest.raises(SpecError, match="at least one vertex"):
        VPolytope(np.zeros((0, 2)))

    h = HPolytope([[1.0, 1.0]], [1.0], [0.0, 0.0], [1.0, 1.0])
    assert h.contains([0.2, 0.3]) and not h.contains([0.9, 0.9])
    pts = h.sample(40, 0)
    assert pts.shape == (40, 2) and h.contains(pts).all()
    assert h.contains(h.center())
    thin = HPolytope([[1.0, 1.0]], [-1.0], [0.0, 0.0], [1.0, 1.0])  # empty
    assert thin.sample(5, 0, max_draws=500).shape == (0, 2)  # fewer than asked, documented
    with pytest.raises(SpecError, match="empty"):
        thin.center()
    with pytest.raises(SpecError, match="bounding box"):
        HPolytope([[1.0, 1.0]], [1.0], None, None)
    with pytest.raises(SpecError, match=r"shape \(m, 2\)"):
        HPolytope([[1.0, 1.0, 1.0]], [1.0], [0.0, 0.0], [1.0, 1.0])


# --------------------------------------------------------------------------- the spec
def test_constructors_labels_validate_and_subset():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4))
    spec = RegionSpec.linf(x, 0.5, labels=[0, 1, 2], clip=(0.0, 1.0))
    assert len(spec) == 3 and not spec.resolved and spec.n_outputs is None
    assert np.all(spec.regions[0].lower >= 0) and np.all(spec.regions[0].upper <= 1)
    with pytest.raises(SpecError, match="validate"):
        list(spec)
    v = spec.validate((1, 2, 2), 3)
    assert v.resolved and v.input_shape == (1, 2, 2) and v.n_outputs == 3
    region, prop = v[2]
    assert region.lower.shape == (1, 2, 2) and prop.holds([[0.0, 0.0, 1.0]]).all()
    with pytest.raises(SpecError, match=r"region 0 has 4 inputs \(shape \(4,\)\) but the model takes \(1, 28, 28\) = 784"):
        spec.validate((1, 28, 28), 3)
    with pytest.raises(SpecError, match="region 2: label 2 is out of range"):
        spec.validate((4,), 2)
    sub = v.subset([2, 0])
    assert sub.labels.tolist() == [2, 0] and "2 boxes" in repr(sub)
    assert len(v.subset(np.array([True, False, True]))) == 2

    with pytest.raises(SpecError, match=r"region 1: box is empty: lower\[0\]"):
        RegionSpec.boxes([[0.0], [2.0]], [[1.0], [1.0]], labels=[0, 0])
    with pytest.raises(SpecError, match="either labels= or properties="):
        RegionSpec.boxes([[0.0]], [[1.0]])
    prop = OutputProperty.required_all([[1.0, 0.0]], [0.0])
    p = RegionSpec.polytopes([np.eye(2), np.ones((1, 2))], properties=prop)
    assert p.resolved and p.n_outputs == 2 and p.regions[1].n_vertices == 1
    with pytest.raises(SpecError, match="input shape"):
        RegionSpec((Box([0.0], [1.0]), Box([0.0, 0.0], [1.0, 1.0])), (prop, prop))
    with pytest.raises(SpecError, match="disagree on the number of outputs"):
        RegionSpec.boxes([[0.0], [0.0]], [[1.0], [1.0]], properties=[prop, OutputProperty.label(0, 3)])
    with pytest.raises(SpecError, match="no regions"):
        RegionSpec((), ())


def _assert_same(a: RegionSpec, b: RegionSpec) -> None:
    assert len(a) == len(b) and a.names == b.names
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        np.testing.assert_array_equal(a.labels, b.labels)
    for ra, rb in zip(a.regions, b.regions):
        assert type(ra) is type(rb) and ra.input_shape == rb.input_shape
        for x, y in zip(ra.bounds(), rb.bounds()):
            np.testing.assert_array_equal(x, y)
        if isinstance(ra, VPolytope):
            np.testing.assert_array_equal(ra.vertices, rb.vertices)
    for pa, pb in zip(a.properties, b.properties):
        assert (pa is None) == (pb is None)
        if pa is not None:
            assert len(pa.disjuncts) == len(pb.disjuncts)
            for (G1, h1), (G2, h2) in zip(pa.disjuncts, pb.disjuncts):
                np.testing.assert_array_equal(G1, G2)
                np.testing.assert_array_equal(h1, h2)


def test_json_and_npz_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((3, 1, 2, 2))
    boxes = RegionSpec.linf(x, 0.1, labels=[1, 0, 2], names=["a", "b", "c"])
    polys = RegionSpec.polytopes(rng.random((2, 3, 4)), properties=OutputProperty.required_all(rng.random((2, 3)), rng.random(2)))
    mixed = RegionSpec(
        (Box([0.0, 0.0], [1.0, 1.0]), VPolytope([[0.0, 0.0], [0.5, 0.5]]), HPolytope([[1.0, 2.0]], [1.0], [0.0, 0.0], [1.0, 1.0])),
        (
            OutputProperty.required_any([[1.0, 0.0], [0.0, 1.0]], [0.1, 0.2]),
            OutputProperty.label(1, 2),
            OutputProperty.unsafe([([[1.0, -1.0]], [0.3]), ([[0.0, 1.0]], [-0.3])]),
        ),
    )
    for spec, suffixes in ((boxes, (".json", ".npz")), (polys, (".json", ".npz")), (mixed, (".json",))):
        for suffix in suffixes:
            path = tmp_path / f"spec{suffix}"
            spec.save(path)
            back = RegionSpec.load(path)
            _assert_same(spec, back)
            assert back.source == str(path)
    assert RegionSpec.load(tmp_path / "spec.json").regions[2].kind == "hpolytope"
    with pytest.raises(SpecError, match="NPZ stores only boxes"):
        mixed.save(tmp_path / "mixed.npz")
    boxes.save(tmp_path / "b.json")
    with pytest.raises(SpecError, match="region 0 is a box but a polytope spec was asked for"):
        RegionSpec.load(tmp_path / "b.json", kind="polytope")
    assert len(RegionSpec.load(tmp_path / "b.json", kind="box")) == 3
    with pytest.raises(InputError, match="refusing to overwrite"):
        boxes.save(tmp_path / "b.json", protect=(tmp_path / "b.json",))


def test_bad_files(tmp_path):
    def write(name, doc):
        p = tmp_path / name
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return p

    with pytest.raises(InputError, match="no such file"):
        RegionSpec.load(tmp_path / "missing.json")
    with pytest.raises(SpecError, match="not valid JSON"):
        RegionSpec.load(write("a.json", "{"))
    with pytest.raises(SpecError, match=r'a.json: boxes\[0\] has no field "upper"'):
        RegionSpec.load(write("a.json", {"boxes": [{"lower": [0.0], "label": 0}]}))
    with pytest.raises(SpecError, match=r"boxes\[1\]: box is empty: lower\[0\] = 2.0 > upper\[0\] = 1.0"):
        RegionSpec.load(write("a.json", {"boxes": [{"lower": [0], "upper": [1], "label": 0}, {"lower": [2], "upper": [1], "label": 0}]}))
    with pytest.raises(SpecError, match=r'needs exactly one of "label"'):
        RegionSpec.load(write("a.json", {"boxes": [{"lower": [0], "upper": [1]}]}))
    with pytest.raises(SpecError, match="a label is a class index"):
        RegionSpec.load(write("a.json", {"boxes": [{"lower": [0], "upper": [1], "label": 1.5}]}))
    with pytest.raises(SpecError, match='exactly one of the fields "boxes"'):
        RegionSpec.load(write("a.json", {"points": []}))
    with pytest.raises(SpecError, match=r"polytopes\[0\].*at least one vertex"):
        RegionSpec.load(write("a.json", {"polytopes": [{"vertices": [], "label": 0}]}))
    np.savez(tmp_path / "a.npz", lower=np.zeros((2, 3)))
    with pytest.raises(SpecError, match="a.npz holds no regions.*keys found: lower"):
        RegionSpec.load(tmp_path / "a.npz")
    np.savez(tmp_path / "a.npz", lower=np.zeros((2, 3)), upper=np.ones((2, 3)), labels=np.zeros(3, dtype=int))
    with pytest.raises(SpecError, match="field 'labels' has shape"):
        RegionSpec.load(tmp_path / "a.npz")
    np.savez(tmp_path / "a.npz", lower=np.zeros((2, 3)), upper=np.ones((2, 3)))
    with pytest.raises(SpecError, match="no output property"):
        RegionSpec.load(tmp_path / "a.npz")
    with pytest.raises(SpecError, match="cannot read the region spec"):
        RegionSpec.load(write("b.npz", "not a zip"))
    with pytest.raises(SpecError, match="unknown region kind"):
        RegionSpec.load(tmp_path / "a.npz", kind="sphere")
