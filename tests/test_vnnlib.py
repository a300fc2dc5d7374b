"""VNN-LIB: reading (DNF, grouping into regions, errors with positions), writing, round trips, ACAS files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from provrepair.errors import SpecError
from provrepair.specs import (
    Box,
    HPolytope,
    OutputProperty,
    RegionSpec,
    format_vnnlib,
    read_vnnlib,
    write_vnnlib,
)

ACAS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "acasxu"
ACAS_PROPS = ("prop_1", "prop_2", "prop_3", "prop_4", "prop_8")

DECLS = "".join(f"(declare-const X_{i} Real)\n" for i in range(5)) + "".join(f"(declare-const Y_{j} Real)\n" for j in range(5))

# VNN-COMP's ACAS Xu prop_2 layout (normalised inputs), with a few syntax variants mixed in
PROP2 = (
    "; ACAS Xu property 2\n"
    + DECLS
    + """
; Unscaled Input 0: (55947.691, 60760)
(assert (<= X_0 0.679857769))
(assert (>= X_0 0.6))
(assert (<= X_1 0.5))
(assert (>= X_1 -0.5))
(assert (<= X_2 0.5))
(assert (>= X_2 (- 0.5)))      ; negative as a term
(assert (<= X_3 5e-1))
(assert (>= X_3 0.45))
(assert (and (<= X_4 -0.45) (>= X_4 -0.5)))

; unsafe if coc is maximal
(assert (>= Y_0 Y_1))
(assert (>= Y_0 Y_2))
(assert (<= Y_3 Y_0))
(assert (>= (+ Y_0 (* -1 Y_4)) 0))
"""
)


def test_vnncomp_prop2_style():
    spec = read_vnnlib(PROP2, n_inputs=5, n_outputs=5)
    assert len(spec) == 1
    region, prop = spec[0]
    assert isinstance(region, Box) and region.input_shape == (5,)
    np.testing.assert_array_equal(region.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(region.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    assert len(prop.disjuncts) == 1  # one conjunction: COC maximal
    G, h = prop.disjuncts[0]
    assert G.shape == (4, 5) and np.all(h == 0)
    assert prop.violated([[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 2.0]]).tolist() == [0, -1]
    assert prop.violated([[0.0, 0.0, 0.0, 0.0, 0.0]]).tolist() == [0]  # ties are unsafe
    with pytest.raises(SpecError, match=r"declares 5 inputs \(X_0..X_4\) but the model has 784"):
        read_vnnlib(PROP2, n_inputs=784)


def test_disjunctive_outputs_and_vnncomp_or_of_cases():
    head = PROP2.split("; unsafe")[0]
    spec = read_vnnlib(head + "(assert (or (and (<= Y_2 Y_0) (<= Y_2 Y_1)) (and (<= Y_3 Y_0) (<= Y_3 Y_1)) (and (<= Y_4 Y_0) (<= Y_4 Y_1))))")
    (_, prop), = list(spec)
    assert len(prop.disjuncts) == 3 and not prop.is_conjunctive
    y = np.array([[0.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 2.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0, 0.5]])
    assert prop.violated(y).tolist() == [-1, 1, 2]

    # VNN-COMP style: one (or (and <input box> <outputs>) ...); equal input parts form one region
    text = """(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
    (assert (or
        (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_0 Y_1))
        (and (>= X_0 1) (<= X_0 2) (>= X_1 0) (<= X_1 1) (<= Y_0 Y_1))
        (and (<= X_1 1) (>= X_1 0) (>= X_0 0) (<= X_0 1) (>= Y_0 3.5))
        (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= (+ X_0 X_1) 1.5) (>= Y_1 0))
        (and (>= X_0 5) (<= X_0 4) (>= X_1 0) (<= X_1 1) (>= Y_1 0))))"""
    spec = read_vnnlib(text)
    assert [r.kind for r in spec.regions] == ["box", "box", "hpolytope"]  # the empty case is dropped
    assert [len(p.disjuncts) for p in spec.properties] == [2, 1, 1]
    np.testing.assert_array_equal(spec.regions[1].lower, [1.0, 0.0])
    h = spec.regions[2]
    np.testing.assert_array_equal(h.A, [[1.0, 1.0]]) and np.testing.assert_array_equal(h.b, [1.5])
    assert spec.properties[0].violated([[4.0, 5.0]]).tolist() == [0]
    assert spec.properties[0].violated([[4.0, 3.0]]).tolist() == [1]


def test_round_trip_exact(tmp_path):
    rng = np.random.default_rng(3)
    lo = rng.normal(size=(3, 4))
    spec = RegionSpec(
        (Box(lo[0], lo[0] + 0.1), Box(lo[1], lo[1] + 1e-7), HPolytope(rng.normal(size=(2, 4)), rng.normal(size=2), lo[2], lo[2] + 3)),
        (
            OutputProperty.label(2, 3, margin=1e-3),
            OutputProperty.unsafe([(rng.normal(size=(2, 3)), rng.normal(size=2)), (np.zeros((0, 3)), np.zeros(0))]),
            OutputProperty.required_any(rng.normal(size=(2, 3)), rng.normal(size=2)),
        ),
    )
    path = tmp_path / "p.vnnlib"
    spec.save(path)
    _assert_same(spec, RegionSpec.load(path))
    one = spec.subset([2])
    _assert_same(one, read_vnnlib(format_vnnlib(one)))
    with pytest.raises(SpecError, match="V-polytope|polytope, which VNN-LIB cannot express"):
        write_vnnlib(RegionSpec.polytopes([np.eye(2)], labels=[0], n_outputs=2), tmp_path / "v.vnnlib")
    with pytest.raises(SpecError, match="validate"):
        write_vnnlib(RegionSpec.boxes([[0.0]], [[1.0]], labels=[0]), tmp_path / "l.vnnlib")
    assert not (tmp_path / "l.vnnlib").exists()
    # flat VNN-LIB regions are reshaped for the model
    img = RegionSpec.linf(np.full((1, 1, 2, 2), 0.5), 0.1, labels=[1]).validate((1, 2, 2), 2)
    back = read_vnnlib(format_vnnlib(img)).validate((1, 2, 2), 2)
    np.testing.assert_array_equal(back.regions[0].lower, img.regions[0].lower)


def _assert_same(a: RegionSpec, b: RegionSpec) -> None:
    assert len(a) == len(b)
    for (ra, pa), (rb, pb) in zip(a, b):
        assert type(ra) is type(rb)
        for x, y in zip(ra.bounds(), rb.bounds()):
            np.testing.assert_array_equal(x, y)
        if isinstance(ra, HPolytope):
            np.testing.assert_array_equal(ra.A, rb.A)
            np.testing.assert_array_equal(ra.b, rb.b)
        assert len(pa.disjuncts) == len(pb.disjuncts)
        for (G1, h1), (G2, h2) in zip(pa.disjuncts, pb.disjuncts):
            np.testing.assert_array_equal(G1, G2)
            np.testing.assert_array_equal(h1, h2)


_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _specs(draw):
    n_in = draw(st.integers(1, 3))
    n_out = draw(st.integers(1, 3))
    regions, props = [], []
    for _ in range(draw(st.integers(1, 3))):
        lo = np.array(draw(st.lists(_floats, min_size=n_in, max_size=n_in)))
        width = np.array(draw(st.lists(st.floats(0, 10), min_size=n_in, max_size=n_in)))
        regions.append(Box(lo, lo + width))
        disjuncts = []
        for _ in range(draw(st.integers(1, 3))):
            rows = draw(st.integers(0, 2))
            G = np.array(draw(st.lists(st.lists(_floats, min_size=n_out, max_size=n_out), min_size=rows, max_size=rows))).reshape(rows, n_out)
            h = np.array(draw(st.lists(_floats, min_size=rows, max_size=rows)))
            assume(rows == 0 or np.all(np.any(G != 0, axis=1)))
            assume(len({tuple(r) for r in np.column_stack([G, h]).tolist()}) == rows)  # the reader merges repeats
            disjuncts.append((G, h))
        assume(len({np.column_stack([G, h]).tobytes() for G, h in disjuncts}) == len(disjuncts))
        props.append(OutputProperty(tuple(disjuncts), n_out))
    assume(len({r.lower.tobytes() + r.upper.tobytes() for r in regions}) == len(regions))
    return RegionSpec(tuple(regions), tuple(props))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_specs())
def test_round_trip_property(spec):
    _assert_same(spec, read_vnnlib(format_vnnlib(spec)))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "text, where, what",
    [
        ("(declare-const X_0 Real)\n(assert (<= X_0 1.0)", "2:1", "expected '\\)' but found the end of the file"),
        ("(declare-const X_0 Real))", "1:25", "unexpected '\\)'"),
        ("(declare-const X_0 Real)\n(assert (< X_0 1.0))", "2:10", "unknown operator '<'"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1.0 X_0))", "2:21", "expected '\\)' but found 'X_0'"),
        ("(declare-const X_0 Real)\n(assert (<= X_1 1.0))", "2:13", "undeclared variable 'X_1'"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))", "3:10", "the constraint mixes inputs and outputs \\('X_0' at 3:13 and 'Y_0' at 3:17\\)"),
        ("(declare-const X_0 Real)\n(assert (<= (* X_0 X_0) 1))", "2:20", "nonlinear"),
        ("(declare-const X_0 Int)", "1:20", "expected 'Real' but found 'Int'"),
        ("(declare-const input Real)", "1:16", "unsupported variable name 'input'"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1..0))", "2:17", "undeclared variable '1..0'|expected a number or a variable"),
        ("(declare-const X_0 Real)\n(check-sat)\n(foo)", "3:2", "unknown command 'foo'"),
        ("X_0", "1:1", "expected '\\(' but found 'X_0'"),
        ("(declare-const X_0 Real)\n(assert (+ X_0 1))", "2:10", "expected a constraint"),
    ],
)
def test_syntax_errors_name_file_line_column(tmp_path, text, where, what):
    path = tmp_path / "prop.vnnlib"
    path.write_text(text)
    with pytest.raises(SpecError, match=rf"prop\.vnnlib:{where}: ({what})"):
        read_vnnlib(path)


def test_semantic_errors():
    decl = "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n"
    with pytest.raises(SpecError, match=r"X_1 has no upper bound.*\(assert \(<= X_1"):
        read_vnnlib(decl + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= Y_0 0))")
    with pytest.raises(SpecError, match=r"region 1: X_0 has no lower bound"):
        read_vnnlib(decl + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)) (and (<= X_0 3) (>= X_1 0) (<= X_1 1) (<= Y_0 1))))")
    with pytest.raises(SpecError, match=r"contradictory \(X_0 >= 2.0 and X_0 <= 1.0\)"):
        read_vnnlib(decl + "(assert (>= X_0 2))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))")
    with pytest.raises(SpecError, match="X_1 is not declared but X_2 is"):
        read_vnnlib("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))")
    with pytest.raises(SpecError, match="declares no outputs"):
        read_vnnlib("(declare-const X_0 Real)(assert (<= X_0 1))")
    with pytest.raises(SpecError, match="declared twice"):
        read_vnnlib("(declare-const X_0 Real)(declare-const X_0 Real)")
    big = "(or " + " ".join(f"(<= Y_0 {k})" for k in range(101)) + ")"
    with pytest.raises(SpecError, match="more than 10000 cases"):
        read_vnnlib(decl + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))" + f"(assert {big})(assert {big})")


# --------------------------------------------------------------------------- ACAS Xu files
@pytest.mark.parametrize("name", ACAS_PROPS)
def test_acas_files_read(name):
    spec = read_vnnlib(ACAS_DIR / f"{name}.vnnlib", n_inputs=5, n_outputs=5)
    assert len(spec) == 1 and spec.input_shape == (5,) and spec.n_outputs == 5
    lo, hi = spec.regions[0].bounds()
    assert np.all(lo >= [0, -math.pi, -math.pi, 100, 0]) and np.all(hi <= [60760, math.pi, math.pi, 1200, 1200])
    assert len(spec.properties[0].disjuncts) == (3 if name == "prop_8" else 1)


@pytest.mark.shared
def test_acas_files_match_network_and_sampling(bench_dir, tmp_path):
    """Regenerating gives the committed files; sampling finds the published counterexamples of phi2, phi8."""
    import importlib.util

    import torch

    from provrepair import load_model

    network = bench_dir / "ACASXU_run2a_2_9_batch_2000.nnet"
    mod_spec = importlib.util.spec_from_file_location("make_acas_properties", ACAS_DIR / "make_properties.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    module.main(["--network", str(network), "--out", str(tmp_path)])
    for name in ACAS_PROPS:
        assert (tmp_path / f"{name}.vnnlib").read_text() == (ACAS_DIR / f"{name}.vnnlib").read_text(), name

    net = load_model(network).double()
    found = {}
    for name in ACAS_PROPS:
        (region, prop), = list(read_vnnlib(ACAS_DIR / f"{name}.vnnlib"))
        x = region.sample(20000, 0)
        with torch.no_grad():
            y = net(torch.from_numpy(x)).numpy()
        found[name] = int(np.sum(prop.violated(y) >= 0))
    assert found["prop_2"] > 0 and found["prop_8"] > 0
    assert found["prop_1"] == found["prop_3"] == found["prop_4"] == 0


def test_simple_bounds_read_like_general_terms():
    """Plain ``(<= X_i c)`` bounds take a fast path; it must give the numbers the general one gives."""
    decl = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Y_0 0))"
    for c in ("0.1", "-2.5e-3", "7", "-0.0", "1e-300"):
        for lo, hi in (
            (f"(>= X_0 {c})", f"(<= X_0 {c})"),
            (f"(<= {c} X_0)", f"(>= {c} X_0)"),
        ):
            fast = read_vnnlib(decl + f"(assert {lo})(assert {hi})").regions[0]
            general = read_vnnlib(decl + f"(assert {lo.replace('X_0', '(* 1 X_0)')})(assert {hi.replace('X_0', '(+ X_0)')})").regions[0]
            assert fast.lower.tobytes() == general.lower.tobytes() and fast.upper.tobytes() == general.upper.tobytes()
            assert fast.lower[0] == float(c) == fast.upper[0]
