"""The command line: exit codes, files written (or not), and messages for bad input."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.heuristics.select import DEFAULT_HEURISTIC
from provrepair.cli import main
from provrepair.models import load_model, save_model


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture
def files(tmp_path):
    net = _net()
    model = tmp_path / "net.pt"
    save_model(net, model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    points = tmp_path / "points.npz"
    np.savez(points, points=x, labels=(pred + 1) % 3, group=np.array([0, 0, 0, 1, 1, 1]))
    return tmp_path, model, points, x, pred


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_repair_certified_writes_model_copy_and_report(files, capsys):
    tmp, model, points, x, pred = files
    out, report = tmp / "fixed.onnx", tmp / "report.json"
    code, stdout, _ = _run(capsys, "repair", model, "--points", points, "--layer", 1, "--out", out,
                           "--report", report, "--quiet")
    assert code == 0, stdout
    assert "certified" in stdout
    assert out.exists() and (tmp / "fixed.pt").exists()
    rep = json.loads(report.read_text())
    assert rep["certified"] is True and rep["certificate"]["n_passed"] == 6
    assert rep["solver"]["name"] == "highs" and rep["solver"]["version"]
    fixed = load_model(out)
    with torch.no_grad():
        new_pred = fixed(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    np.testing.assert_array_equal(new_pred, (pred + 1) % 3)
    # certify agrees, and rejects the original model
    assert _run(capsys, "certify", out, "--points", points, "--quiet")[0] == 0
    assert _run(capsys, "certify", model, "--points", points, "--quiet")[0] == 1


def test_where_and_limit_select_points(files, capsys):
    tmp, model, points, *_ = files
    report = tmp / "r.json"
    code, *_ = _run(capsys, "repair", model, "--points", points, "--where", "group=1", "--limit", 2,
                    "--layer", -1, "--out", tmp / "o.pt", "--report", report, "--quiet")
    assert code == 0
    assert json.loads(report.read_text())["certificate"]["n_points"] == 2


def test_infeasible_exits_1_and_writes_no_model(files, capsys):
    tmp, model, points, *_ = files
    out, report = tmp / "o.pt", tmp / "r.json"
    code, stdout, _ = _run(capsys, "repair", model, "--points", points, "--layer", 2, "--delta-bound", 1e-4,
                           "--out", out, "--report", report, "--quiet")
    assert code == 1
    assert "infeasible" in stdout
    assert not out.exists()
    assert json.loads(report.read_text())["status"] == "infeasible"


def _bad_points(tmp, kind):
    p = tmp / "bad.npz"
    x = np.zeros((3, 4))
    labels = np.array([0, 1, 2])
    if kind == "shape":
        x = np.zeros((3, 5))
    elif kind == "nan":
        x[1, 2] = np.nan
    elif kind == "label":
        labels = np.array([0, 1, 7])
    np.savez(p, points=x, labels=labels)
    return p


@pytest.mark.parametrize("kind,needle", [("shape", "shape"), ("nan", "NaN"), ("label", "7"),
                                         ("missing", "no such file"), ("layer", "layer 9"),
                                         ("unknown-layer", "Tanh"), ("missing-model", "no such model")])
def test_bad_input_exits_2_with_message_and_no_files(files, capsys, kind, needle):
    tmp, model, points, *_ = files
    out, report = tmp / "out.pt", tmp / "report.json"
    layer = 1
    if kind in ("shape", "nan", "label"):
        points = _bad_points(tmp, kind)
    elif kind == "missing":
        points = tmp / "nope.npz"
    elif kind == "layer":
        layer = 9
    elif kind == "unknown-layer":
        model = tmp / "tanh.pt"
        torch.save(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), model)
    elif kind == "missing-model":
        model = tmp / "nope.pt"
    code, stdout, stderr = _run(capsys, "repair", model, "--points", points, "--layer", layer, "--out", out,
                                "--report", report)
    assert code == 2
    assert needle in stderr and "Traceback" not in stderr
    assert not out.exists() and not report.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp.iterdir())


def test_output_over_input_is_refused_and_input_kept(files, capsys):
    tmp, model, points, *_ = files
    before = model.read_bytes()
    code, _, stderr = _run(capsys, "repair", model, "--points", points, "--layer", 1, "--out", model)
    assert code == 2 and "input file" in stderr
    assert model.read_bytes() == before


def test_info_lists_layers(files, capsys):
    _, model, *_ = files
    code, stdout, _ = _run(capsys, "info", model)
    assert code == 0
    assert "Linear" in stdout and "3 affine layers" in stdout


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["repair"])
    assert exc.value.code == 2


def test_layers_prints_every_heuristic_ranking(files, capsys):
    _, model, points, *_ = files
    code, stdout, _ = _run(capsys, "layers", model, "--points", points)
    assert code == 0
    for name in ("activation", "variance", "gradient", "similarity", "penultimate", "first_dense"):
        assert name in stdout
    assert "candidate layers" in stdout


def test_analyze_reports_and_writes_json(files, capsys):
    tmp, model, points, *_ = files
    report = tmp / "analysis.json"
    code, stdout, _ = _run(capsys, "analyze", "--points", points, "--model", model, "--report", report)
    assert code == 0
    data = json.loads(report.read_text())
    assert data["size"]["points"] == 6 and data["diversity"]["classes"] >= 1
    assert len(data["layers"]) == 3 and all(row["variables"] > 0 for row in data["layers"])


def test_repair_layer_auto_reports_the_choice(files, capsys):
    tmp, model, points, *_ = files
    report = tmp / "r.json"
    code, stdout, _ = _run(capsys, "repair", model, "--points", points, "--layer", "auto", "--out", tmp / "o.pt",
                           "--report", report, "--quiet")
    sel = json.loads(report.read_text())["layer_selection"]
    assert sel["heuristic"] == DEFAULT_HEURISTIC and sel["ranking"]
    assert "layer auto" in stdout
    assert code == (0 if sel["chosen"] is not None else 1)


def test_bad_layer_word_exits_2(files, capsys):
    _, model, points, *_ = files
    with pytest.raises(SystemExit) as exc:
        main(["repair", str(model), "--points", str(points), "--layer", "best", "--out", "x.pt"])
    assert exc.value.code == 2
