"""Keep-sets for point repair: the points the network gets right stay right, only the ones the
repair would flip enter the LP, and contradictions with the repair set are named."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.cli import main
from provrepair.errors import InputError
from provrepair.models.inference import predictions
from provrepair.specs import PointSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _task(seed: int = 0, n_keep: int = 300):
    """A small MLP, 6 points near its decision boundaries relabelled to their runner-up class, and
    keep points it classifies right away from them."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(400, 4)).astype(np.float32)
    out = net(torch.as_tensor(pool)).detach().numpy()
    top2 = np.argsort(out, axis=1)[:, -2:]
    gap = out[np.arange(400), top2[:, 1]] - out[np.arange(400), top2[:, 0]]
    near = np.argsort(gap)[:6]  # the points nearest a decision boundary, relabelled to their runner-up
    x, y = pool[near], top2[near, 0]
    keep_x = rng.normal(size=(4 * n_keep, 4)).astype(np.float32)
    far = np.linalg.norm(keep_x[:, None] - x[None], axis=2).min(1) > 0.4
    keep_x = keep_x[far][:n_keep]
    keep = PointSpec.from_arrays(keep_x, labels=predictions(net, keep_x), source="near the repair points")
    return net, PointSpec.from_arrays(x, labels=y), keep


@pytest.mark.parametrize("layer", [-1, 1])
def test_keep_points_stay_right_and_only_flipped_ones_enter(layer):
    net, spec, keep = _task()
    alone = provrepair.repair(net, spec, layer=layer)
    assert alone.certified
    flipped = int((predictions(alone.model, keep.inputs) != keep.labels).sum())
    assert flipped > 0  # the scenario needs a repair that breaks keep points

    kept = provrepair.repair(net, spec, layer=layer, keep=keep)
    assert kept.certified, kept.message
    report = kept.lp["keep"]
    assert (predictions(kept.model, keep.inputs) == keep.labels).all()
    assert report["kept"] == report["points"] == keep.n_points
    assert report["flipped_without"] == flipped
    assert 0 < report["entered"] < keep.n_points  # lazily: not every keep point is in the LP
    assert report["binding"] <= report["entered"]
    assert "keep-set" in kept.message


def test_keep_margin_is_held_at_the_entered_points():
    net, spec, keep = _task(seed=1)
    x = torch.as_tensor(np.asarray(keep.inputs, dtype=np.float64))

    def margins(model):
        out = model.double()(x).detach().numpy()
        top2 = np.sort(out, axis=1)[:, -2:]
        return np.where(out.argmax(1) == keep.labels, top2[:, 1] - top2[:, 0], -1.0)

    before = margins(copy.deepcopy(net))
    res = provrepair.repair(net, spec, layer=-1, keep=keep, keep_margin=0.05)
    assert res.certified
    entered = np.asarray(res.lp["keep"]["entered_index"], dtype=np.int64)
    after = margins(copy.deepcopy(res.model))
    assert entered.size and (after > 0).all()
    need = np.minimum(0.05, before[entered] / 2)
    assert (after[entered] >= need - 1e-6).all()


def test_keep_point_that_contradicts_a_repair_point_is_named():
    net, spec, keep = _task()
    clash = PointSpec.from_arrays(np.concatenate([keep.inputs[:3], spec.inputs[2:3]]),
                                  labels=np.concatenate([keep.labels[:3], [(spec.labels[2] + 1) % 3]]))
    with pytest.raises(InputError, match=r"keep point 3 is repair point 2"):
        provrepair.repair(net, spec, layer=-1, keep=clash)


def test_keep_points_the_model_gets_wrong_are_left_out_and_counted():
    net, spec, keep = _task()
    wrong = PointSpec.from_arrays(keep.inputs[:20], labels=(keep.labels[:20] + 1) % 3)
    res = provrepair.repair(net, spec, layer=-1, keep=wrong)
    assert res.lp["keep"]["dropped"] == 20 and res.lp["keep"]["points"] == 0


@pytest.mark.parametrize("text", ["mnist", "mnist:train", "mnist:train:0", "mnist:train:x", "nope:train:5",
                                  "digits:nosplit:5"])
def test_keep_from_rejects_bad_text(text):
    net, spec, _ = _task()
    with pytest.raises(InputError):
        provrepair.repair(net, spec, layer=-1, keep_from=text)


def test_keep_from_a_shipped_dataset():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    from provrepair.data import load_dataset

    x, _ = load_dataset("digits", "test")
    pred = predictions(net, x)
    spec = PointSpec.from_arrays(x[:3], labels=(pred[:3] + 1) % 10)
    res = provrepair.repair(net, spec, layer=-1, keep_from="digits:train:40")
    assert res.certified and res.lp["keep"]["points"] == 40
    assert res.lp["keep"]["kept"] == 40
    with pytest.raises(InputError, match="classifies only"):
        provrepair.repair(net, spec, layer=-1, keep_from="digits:train:100000")


def test_cli_repair_points_with_keep_file(tmp_path):
    net, spec, keep = _task()
    model, points, keep_file = tmp_path / "net.pt", tmp_path / "points.npz", tmp_path / "keep.npz"
    torch.save(net, model)
    np.savez(points, points=spec.inputs, labels=spec.labels)
    np.savez(keep_file, points=keep.inputs, labels=keep.labels)
    report = tmp_path / "report.json"
    code = main(["repair", str(model), "--points", str(points), "--keep", str(keep_file), "--layer", "-1",
                 "--keep-margin", "0.01", "--out", str(tmp_path / "fixed.pt"), "--report", str(report), "--quiet"])
    assert code == 0
    data = json.loads(report.read_text())
    assert data["lp"]["keep"]["kept"] == keep.n_points and data["options"]["keep"] == f"{keep.n_points} points"


@pytest.mark.parametrize("layer", [1, -1])
def test_keep_points_enter_the_same_optimum_with_and_without_u(layer):
    """Entering keep points add rows (u substituted out) or u columns and rows (u kept): one LP."""
    net, spec, keep = _task()
    with_u = provrepair.repair(net, spec, layer=layer, keep=keep, formulation="u")
    substituted = provrepair.repair(net, spec, layer=layer, keep=keep, formulation="substituted")
    for res in (with_u, substituted):
        assert res.certified and res.lp["keep"]["kept"] == keep.n_points
        assert (predictions(res.model, keep.inputs) == keep.labels).all()
    assert with_u.lp["keep"]["flipped_without"] == substituted.lp["keep"]["flipped_without"] > 0
    assert with_u.solver["objective"] == pytest.approx(substituted.solver["objective"], rel=1e-4)


@pytest.mark.parametrize("layer", [1, -1])  # u kept / substituted out
def test_objective_outputs_changes_the_keep_outputs_less(layer):
    net, spec, keep = _task()
    x = torch.as_tensor(np.asarray(keep.inputs[:200], dtype=np.float32))

    def change(res):
        with torch.no_grad():
            return float((res.model(x) - net(x)).abs().mean())

    params = provrepair.repair(net, spec, layer=layer, keep=keep)
    outputs = provrepair.repair(net, spec, layer=layer, keep=keep, objective="outputs")
    assert params.certified and outputs.certified
    assert outputs.lp["keep"]["kept"] == keep.n_points
    assert change(outputs) < change(params)


def test_objective_outputs_needs_a_keep_set():
    net, spec, _ = _task()
    with pytest.raises(InputError, match="keep-set"):
        provrepair.repair(net, spec, layer=-1, objective="outputs")


@pytest.mark.parametrize("layer", [1, -1])
def test_a_large_repair_set_enters_lazily_with_the_same_optimum(layer, monkeypatch):
    """Beyond LAZY_REPAIR_POINTS, repair points enter the LP only when the candidate misses them."""
    from provrepair.repair import keep as keep_module

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = np.random.default_rng(3).normal(size=(400, 4)).astype(np.float32)
    out = net(torch.as_tensor(x)).detach().numpy()
    gap = np.sort(out, 1)[:, -1] - np.sort(out, 1)[:, -2]
    near = np.argsort(gap)[:40]
    spec = PointSpec.from_arrays(x[near], labels=np.argsort(out[near], 1)[:, -2])
    whole = provrepair.repair(net, spec, layer=layer)
    monkeypatch.setattr(keep_module, "LAZY_REPAIR_POINTS", 10)
    lazy = provrepair.repair(net, spec, layer=layer)
    assert whole.certified and lazy.certified
    assert 10 <= lazy.lp["repair_points_in_lp"] < 40 and "keep" not in lazy.lp
    # a point outside the LP is not held to its activation pattern, only checked: the lazy LP is a
    # relaxation whose answer is still exact-checked, and the same LP where no ReLU follows the layer
    if layer == -1:
        assert lazy.solver["objective"] == pytest.approx(whole.solver["objective"], rel=1e-5)
    assert lazy.solver["objective"] <= whole.solver["objective"] * (1 + 1e-6)


@pytest.mark.parametrize("near", [False, True])
def test_keep_points_near_flipping_enter_with_the_flipped_ones(near, monkeypatch):
    # a keep point that the candidate leaves right but short of the slack it would keep in the LP
    # enters with the flipped ones (keep.KEEP_NEAR); every keep point stays right either way
    from provrepair.repair import keep as keep_module

    monkeypatch.setattr(keep_module, "KEEP_NEAR", near)
    net, spec, keep = _task()
    res = provrepair.repair(net, spec, layer=-1, keep=keep)
    assert res.certified
    assert (predictions(res.model, keep.inputs) == keep.labels).all()
    rounds = res.lp["keep"]["rounds"]
    assert (sum(r.get("near", 0) for r in rounds) > 0) == near
    assert rounds[-1]["flipped"] == 0
