"""Point repair sets: construction, the unified constraint view, file loading and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from provrepair.errors import InputError, ProvRepairError, SpecError
from provrepair.specs import PointSpec, validate_point_spec


# --------------------------------------------------------------------------- constraint rows
def test_label_rows_hand_checked():
    spec = PointSpec.from_arrays(np.zeros((2, 4)), labels=[1, 0])
    A, b, p = spec.output_constraints(3)
    expected = np.array(
        [
            [1.0, -1.0, 0.0],  # point 0, label 1: y0 - y1 <= 0
            [0.0, -1.0, 1.0],  #                   y2 - y1 <= 0
            [-1.0, 1.0, 0.0],  # point 1, label 0: y1 - y0 <= 0
            [-1.0, 0.0, 1.0],  #                   y2 - y0 <= 0
        ]
    )
    np.testing.assert_array_equal(A, expected)
    np.testing.assert_array_equal(b, np.zeros(4))
    np.testing.assert_array_equal(p, [0, 0, 1, 1])
    assert A.dtype == np.float64 and b.dtype == np.float64 and p.dtype == np.int64
    # fresh copies: mutating them does not touch the spec
    A[0, 0] = 99.0
    assert spec.output_constraints(3)[0][0, 0] == 1.0


def test_label_rows_many_points_satisfied_by_one_hot_outputs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=50)
    spec = PointSpec.from_arrays(rng.normal(size=(50, 3)), labels=labels)
    A, b, p = spec.output_constraints(10)
    assert A.shape == (450, 10) and np.all(np.bincount(p) == 9)
    y = np.eye(10)[labels]  # the right class wins by 1
    np.testing.assert_allclose(b - np.einsum("rj,rj->r", A, y[p]), 1.0)


def test_explicit_constraints_dense_and_shared():
    A = np.array([[[1.0, -1.0]], [[0.0, 1.0]]])  # (N=2, m=1, n_out=2)
    b = np.array([[0.5], [2.0]])
    spec = PointSpec.from_arrays(np.ones((2, 3)), A=A, b=b)
    rows, bb, p = spec.output_constraints(2)
    np.testing.assert_array_equal(rows, [[1.0, -1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(bb, [0.5, 2.0])
    np.testing.assert_array_equal(p, [0, 1])
    shared = PointSpec.from_arrays(np.ones((3, 3)), A=[[1.0, 0.0], [0.0, 1.0]], b=[1.0, 2.0])
    rows, bb, p = shared.output_constraints(2)
    assert rows.shape == (6, 2)
    np.testing.assert_array_equal(p, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(bb, [1.0, 2.0] * 3)
    with pytest.raises(SpecError, match=r"2 column\(s\) but the model has 3"):
        spec.output_constraints(3)


def test_spec_is_read_only_and_copies_input():
    x = np.zeros((2, 2))
    spec = PointSpec.from_arrays(x, labels=[0, 1])
    x[0, 0] = 5.0
    assert spec.inputs[0, 0] == 0.0
    with pytest.raises(ValueError):
        spec.inputs[0, 0] = 1.0
    assert len(spec) == spec.n_points == 2


def test_subset_and_with_shape():
    A = np.zeros((3, 1, 2))
    A[:, 0, 0] = [1, 2, 3]
    spec = PointSpec.from_arrays(np.arange(12.0).reshape(3, 4), A=A, b=np.zeros((3, 1)))
    sub = spec.subset([2, 0])
    np.testing.assert_array_equal(sub.inputs[:, 0], [8.0, 0.0])
    rows, _, p = sub.output_constraints(2)
    np.testing.assert_array_equal(rows[:, 0], [3.0, 1.0])
    np.testing.assert_array_equal(p, [0, 1])
    masked = spec.subset(np.array([False, True, False]))
    assert masked.n_points == 1 and masked.output_constraints(2)[0][0, 0] == 2.0

    shaped = spec.with_shape((1, 2, 2))
    assert shaped.inputs.shape == (3, 1, 2, 2) and shaped.input_shape == (1, 2, 2)
    assert spec.with_shape((4,)) is spec
    with pytest.raises(SpecError) as err:
        spec.with_shape((1, 28, 28))
    assert "(4,)" in str(err.value) and "(1, 28, 28)" in str(err.value)


def test_from_arrays_needs_labels_or_constraints():
    with pytest.raises(SpecError, match="labels"):
        PointSpec.from_arrays(np.zeros((2, 2)))
    with pytest.raises(SpecError, match="both A and b"):
        PointSpec.from_arrays(np.zeros((2, 2)), A=np.zeros((2, 1, 2)))
    with pytest.raises(SpecError, match="one label per point"):
        PointSpec.from_arrays(np.zeros((2, 2)), labels=[1, 2, 3])
    with pytest.raises(SpecError, match="must be integers"):
        PointSpec.from_arrays(np.zeros((2, 2)), labels=[0.5, 1.0])


# --------------------------------------------------------------------------- validation
def test_validate_wrong_shape():
    spec = PointSpec.from_arrays(np.zeros((2, 10)), labels=[0, 1])
    with pytest.raises(SpecError) as err:
        spec.validate((784,), 10)
    msg = str(err.value)
    assert "(10,)" in msg and "(784,)" in msg
    # flat inputs of the right size are reshaped to the model's shape
    ok = spec.validate((1, 2, 5), 10)
    assert ok.inputs.shape == (2, 1, 2, 5)


def test_validate_nan_and_inf():
    x = np.zeros((5, 3))
    x[2, 0] = np.nan
    x[4, 1] = np.inf
    x[4, 2] = np.nan
    spec = PointSpec.from_arrays(x, labels=[0] * 5)
    with pytest.raises(SpecError) as err:
        spec.validate((3,), 2)
    msg = str(err.value)
    assert "2 NaN" in msg and "1 infinite" in msg and "2 point(s)" in msg and "index 2" in msg


def test_validate_label_out_of_range():
    spec = PointSpec.from_arrays(np.zeros((3, 2)), labels=[0, 12, 1])
    with pytest.raises(SpecError) as err:
        validate_point_spec(spec, (2,), 10)
    msg = str(err.value)
    assert "label 12" in msg and "point 1" in msg and "[0, 9]" in msg
    with pytest.raises(SpecError, match="negative"):
        PointSpec.from_arrays(np.zeros((2, 2)), labels=[0, -3])


def test_validate_constraints_columns_and_finite():
    spec = PointSpec.from_arrays(np.zeros((1, 2)), A=np.zeros((1, 1, 3)), b=np.zeros((1, 1)))
    with pytest.raises(SpecError, match=r"3 column\(s\) but the model has 10"):
        spec.validate((2,), 10)
    bad_b = PointSpec.from_arrays(np.zeros((1, 2)), A=np.zeros((1, 1, 3)), b=[[np.inf]])
    with pytest.raises(SpecError, match="non-finite entry in b"):
        bad_b.validate((2,), 3)


def test_validate_empty():
    spec = PointSpec.from_arrays(np.zeros((3, 2)), labels=[0, 1, 0]).subset([])
    with pytest.raises(SpecError, match="empty"):
        spec.validate((2,), 2)


# --------------------------------------------------------------------------- files
def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_keys_where_limit(tmp_path):
    x = np.arange(30.0).reshape(10, 3)
    group = np.array([0, 1] * 5)
    f = _write_npz(tmp_path / "s.npz", x=x, y=np.arange(10) % 3, group=group)
    spec = PointSpec.load(f, where={"group": 1})
    np.testing.assert_array_equal(spec.inputs[:, 0], [3.0, 9.0, 15.0, 21.0, 27.0])
    np.testing.assert_array_equal(spec.labels, [1, 0, 2, 1, 0])
    lim = PointSpec.load(f, where={"group": 1}, limit=2)
    np.testing.assert_array_equal(lim.labels, [1, 0])
    assert PointSpec.load(f, limit=4).n_points == 4
    both = PointSpec.load(f, where={"group": [0, 1]})
    assert both.n_points == 10
    with pytest.raises(SpecError, match="selects no points"):
        PointSpec.load(f, where={"group": 7})
    with pytest.raises(SpecError, match="fields available: group, y"):
        PointSpec.load(f, where={"split": 0})


def test_npz_missing_inputs_lists_keys(tmp_path):
    f = _write_npz(tmp_path / "s.npz", images=np.zeros((2, 3)), labels=[0, 1])
    with pytest.raises(SpecError) as err:
        PointSpec.load(f)
    msg = str(err.value)
    assert "inputs, points, x" in msg and "images" in msg and "labels" in msg


def test_npz_with_constraints(tmp_path):
    f = _write_npz(tmp_path / "c.npz", inputs=np.zeros((2, 2)), A=np.ones((2, 2, 3)), b=np.zeros((2, 2)))
    spec = PointSpec.load(f)
    A, b, p = spec.output_constraints(3)
    assert A.shape == (4, 3) and spec.labels is None
    np.testing.assert_array_equal(p, [0, 0, 1, 1])


def test_corrupt_npz_names_file(tmp_path):
    f = tmp_path / "broken.npz"
    f.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(SpecError) as err:
        PointSpec.load(f)
    assert "broken.npz" in str(err.value)
    g = tmp_path / "broken.npy"
    g.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SpecError, match="broken.npy"):
        PointSpec.load(g, labels=[0])
    h = _write_npz(tmp_path / "neg.npz", x=np.zeros((2, 2)), labels=np.array([0, -1]))
    with pytest.raises(SpecError, match="label -1 at point 1 is negative"):
        PointSpec.load(h)


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file") as err:
        PointSpec.load(tmp_path / "nope.npz")
    assert not isinstance(err.value, SpecError)
    assert isinstance(err.value, ProvRepairError)


def test_npy_needs_labels(tmp_path):
    f = tmp_path / "x.npy"
    np.save(f, np.zeros((3, 4)))
    with pytest.raises(SpecError, match="pass the labels"):
        PointSpec.load(f)
    spec = PointSpec.load(f, labels=[1, 2, 3])
    np.testing.assert_array_equal(spec.labels, [1, 2, 3])
    txt = tmp_path / "labels.txt"
    txt.write_text("4\n5\n6\n")
    np.testing.assert_array_equal(PointSpec.load(f, labels=txt).labels, [4, 5, 6])
    lnpy = tmp_path / "labels.npy"
    np.save(lnpy, np.array([7, 8, 9]))
    np.testing.assert_array_equal(PointSpec.load(f, labels=str(lnpy)).labels, [7, 8, 9])
    with pytest.raises(InputError, match="no such file"):
        PointSpec.load(f, labels=tmp_path / "missing.txt")
    with pytest.raises(SpecError, match="2 labels for 3"):
        PointSpec.load(f, labels=[1, 2])


def test_json_ragged_constraints_and_labels(tmp_path):
    doc = {
        "points": [
            {"input": [0.0, 1.0], "label": 2, "group": 0},
            {"input": [1.0, 1.0], "constraints": {"A": [[1, -1, 0]], "b": [0.25]}, "group": 1},
            {
                "input": [2.0, 1.0],
                "constraints": {"A": [[1, 0, -1], [0, 1, -1]], "b": [0, -1]},
                "group": 1,
            },
        ]
    }
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(doc))
    spec = PointSpec.load(f)
    A, b, p = spec.output_constraints(3)
    np.testing.assert_array_equal(p, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(
        A,
        [[1, 0, -1], [0, 1, -1], [1, -1, 0], [1, 0, -1], [0, 1, -1]],
    )
    np.testing.assert_array_equal(b, [0, 0, 0.25, 0, -1])
    assert not spec.has_labels  # mixed: points 1 and 2 have no label

    sub = PointSpec.load(f, where={"group": 1}, limit=1)
    A, b, p = sub.output_constraints(3)
    np.testing.assert_array_equal(A, [[1, -1, 0]])
    np.testing.assert_array_equal(sub.inputs, [[1.0, 1.0]])


def test_json_errors(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("{ not json")
    with pytest.raises(SpecError, match=r"bad\.json is not valid JSON"):
        PointSpec.load(f)
    f.write_text(json.dumps({"points": [{"input": [0, 1], "label": 0}, {"input": [0, 1, 2], "label": 1}]}))
    with pytest.raises(SpecError, match="point 1"):
        PointSpec.load(f)
    f.write_text(json.dumps({"points": [{"input": [0, 1]}]}))
    with pytest.raises(SpecError, match="neither"):
        PointSpec.load(f)
    f.write_text(json.dumps({"points": [{"input": [0, 1], "label": 1.5}]}))
    with pytest.raises(SpecError, match="class index"):
        PointSpec.load(f)


def test_unknown_extension(tmp_path):
    f = tmp_path / "spec.csv"
    f.write_text("1,2,3")
    with pytest.raises(SpecError, match=r"\.npz, \.npy or \.json"):
        PointSpec.load(f)


@pytest.mark.shared
def test_fog_benchmark_group0(bench_dir):
    spec = PointSpec.load(bench_dir / "mnist_fog8_points.npz", where={"group": 0})
    assert spec.n_points == 100
    assert np.all(spec.labels == 8)
    assert spec.inputs.shape == (100, 784)
    assert spec.inputs.min() >= 0.0 and spec.inputs.max() <= 1.0
    shaped = spec.validate((1, 28, 28), 10)
    assert shaped.inputs.shape == (100, 1, 28, 28)
