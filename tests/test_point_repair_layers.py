"""Point repair at every layer of a CNN (issue 18): max-pools held to their argmax, average pools
as linear maps, row/channel subsets as user options, and ``--layer auto`` candidates by time."""

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.certify import certify_points
from provrepair.errors import InputError
from provrepair.repair.aprnn import PointLP
from provrepair.repair.options import PointRepairOptions
from provrepair.specs import PointSpec


def _cnn(avg: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    pool2 = nn.AvgPool2d(2) if avg else nn.MaxPool2d(2, stride=1, padding=1)
    tail = [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4, 16)] if avg else \
        [nn.Flatten(), nn.Linear(4 * 5 * 5, 16)]
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), pool2, *tail, nn.ReLU(), nn.Linear(16, 3)).eval()


def _spec(net, n=8, seed=0):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).numpy()
    with torch.no_grad():
        y = net(torch.tensor(x)).argmax(1).numpy()
    return PointSpec.from_arrays(x, labels=(y + 1) % 3)


def _pool_inputs(net, x, i):
    with torch.no_grad():
        return net[:i](torch.tensor(np.array(x), dtype=torch.float64))


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_every_layer_of_a_maxpool_cnn_certifies_and_lazy_equals_full(layer):
    net = _cnn()
    spec = _spec(net)
    lazy = provrepair.repair(net, spec, layer=layer)
    full = provrepair.repair(net, spec, layer=layer, strategy="full")
    assert lazy.certified and full.certified
    assert certify_points(lazy.model, spec).certified  # the independent check, again
    assert lazy.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_maxpool_argmax_is_kept_at_every_repair_point(layer):
    net = _cnn()
    spec = _spec(net)
    res = provrepair.repair(net, spec, layer=layer)
    assert res.certified
    n64, r64 = net.double(), res.model.double()
    for i in (2, 5):
        pool = n64[i]
        before, after = _pool_inputs(n64, spec.inputs, i), _pool_inputs(r64, spec.inputs, i)
        _, arg = nn.functional.max_pool2d(before, pool.kernel_size, pool.stride, pool.padding, return_indices=True)
        out = nn.functional.max_pool2d(after, pool.kernel_size, pool.stride, pool.padding)
        chosen = torch.gather(after.flatten(2), 2, arg.flatten(2)).reshape(out.shape)
        # the original choice is still a maximum of its window (up to the pattern tolerance)
        assert torch.all(chosen >= out - 1e-6)


def test_maxpool_pattern_rows_are_generated_when_violated():
    net = _cnn()
    spec = _spec(net, n=12, seed=3)
    opts = PointRepairOptions()
    lp = PointLP(net, spec.inputs, 0, opts)
    pools = [i for i in lp.suffix.pattern_modules if isinstance(net[i], nn.MaxPool2d)]
    assert pools == [2, 5]
    # every window of a 2x2 pool has three other members; padding is no member
    assert lp.exists[2].sum(1).tolist() == [4 * 4 * 4 * 3] * 12
    A, b, p = spec.output_constraints(3)
    lp.build(A, b, p)
    res = lp.solve_round()
    _, violated = lp.check(res.x)
    # the relaxation without pattern rows breaks some max-pool choice, which the check finds
    assert sum(int(violated[i].sum()) for i in pools) > 0


def test_pattern_rows_per_round_cap_changes_the_rounds_not_the_optimum():
    net = _cnn()
    spec = _spec(net, n=12, seed=3)
    capped = provrepair.repair(net, spec, layer=0, max_pattern_rows=5)
    every = provrepair.repair(net, spec, layer=0, max_pattern_rows=None)
    assert capped.certified and every.certified
    assert capped.solver["objective"] == pytest.approx(every.solver["objective"], rel=1e-6)
    added = [r["pattern_rows"] for r in capped.lp["rounds"]]
    assert all(b - a <= 5 for a, b in zip(added, added[1:]))  # never more than the cap in one round
    assert len(capped.lp["rounds"]) > len(every.lp["rounds"])
    assert PointRepairOptions().max_pattern_rows == "auto"  # point repair caps by default
    with pytest.raises(InputError, match="max_pattern_rows"):
        provrepair.repair(net, spec, layer=0, max_pattern_rows=0)


def test_avgpool_and_adaptive_avgpool_suffix():
    net = _cnn(avg=True)
    spec = _spec(net)
    for layer in (0, 1):
        res = provrepair.repair(net, spec, layer=layer)
        full = provrepair.repair(net, spec, layer=layer, strategy="full")
        assert res.certified and full.certified
        assert res.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)


# --------------------------------------------------------------------------------------------------
# rows / channels


def test_rows_and_channels_parse_and_reject_bad_values():
    from provrepair.repair.options import parse_index_set

    assert parse_index_set("0:4,9", "rows") == (0, 1, 2, 3, 9)
    assert parse_index_set([3, 1, 3], "rows") == (1, 3)
    for bad in ("5:2", "3:3", "", "a", "1,,2", "-1", "0:-4"):
        with pytest.raises(InputError):
            PointRepairOptions(rows=bad).validate()
    with pytest.raises(InputError, match="once"):
        PointRepairOptions(rows="0:2", channels="1").validate()


def test_channel_subset_changes_only_those_channels_and_certifies():
    net = _cnn()
    spec = _spec(net)
    res = provrepair.repair(net, spec, layer=1, channels="1:3")
    assert res.status in ("certified", "infeasible")
    if res.certified:
        changed = (res.model[3].weight.detach() != net[3].weight.detach()).flatten(1).any(1)
        assert not changed[0] and not changed[3]
        assert certify_points(res.model, spec).certified


def test_channel_out_of_range_is_a_clear_error():
    net = _cnn()
    with pytest.raises(InputError, match="4 channels"):
        provrepair.repair(net, _spec(net), layer=1, channels="2,7")


def test_cli_rejects_bad_rows_with_exit_2(tmp_path, capsys):
    from provrepair.cli import main
    from provrepair.models import save_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model = tmp_path / "net.pt"
    save_model(net, model)
    x = np.random.default_rng(0).normal(size=(4, 4))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    points = tmp_path / "points.npz"
    np.savez(points, points=x, labels=(pred + 1) % 3)
    base = ["repair", str(model), "--points", str(points), "--layer", "0", "--out", str(tmp_path / "o.pt"), "--quiet"]
    assert main(base + ["--rows", "5:2"]) == 2
    assert "5:2" in capsys.readouterr().err
    assert main(base + ["--rows", "3,8"]) == 2
    assert "8 output neurons" in capsys.readouterr().err
    assert main(base + ["--rows", "0:8"]) in (0, 1)


# --------------------------------------------------------------------------------------------------
# --layer auto by predicted time


def test_layer_auto_on_the_zoo_cnn_lists_more_than_one_candidate():
    from provrepair.heuristics.select import candidate_layers, candidate_plan
    from provrepair.zoo import load_zoo

    net = load_zoo("mnist_cnn")
    x = np.random.default_rng(0).uniform(size=(10, 1, 28, 28)).astype(np.float32)
    spec = PointSpec.from_arrays(x, labels=np.zeros(10, dtype=np.int64))
    assert len(candidate_layers(net, spec)) > 1
    # a tight time limit leaves fewer layers (or row subsets), never more
    tight = candidate_plan(net, spec, time_limit=1.0)
    assert {c["layer"] for c in tight} <= set(candidate_layers(net, spec))
    with pytest.raises(InputError, match="time-limit"):
        candidate_layers(net, spec, time_limit=1e-9)


def test_layer_auto_falls_back_to_a_row_subset(monkeypatch):
    import provrepair.heuristics.select as select

    net = _cnn()
    spec = _spec(net)
    # pretend layer 1 is too slow whole: the plan gives it half its channels
    monkeypatch.setattr(select, "estimate_seconds", lambda size: 1e9 if size["variables"] > 150 else 1.0)
    plan = {c["layer"]: c for c in select.candidate_plan(net, spec, time_limit=10.0)}
    assert all(c["rows"] is None or c["rows"] < net[[0, 3, 7, 9][k]].weight.shape[0] for k, c in plan.items())
    rows = select.pick_rows(net, spec, 1, 2)
    assert len(rows) == 2 and all(0 <= r < 4 for r in rows)


def test_a_cnns_last_hidden_layer_starts_from_one_row_per_point_and_searches_the_bound():
    # fc1 after the pools: u substituted out (no row per point and unit) and the L-inf bound searched
    net = _cnn()
    spec = _spec(net)
    res = provrepair.repair(net, spec, layer=2)
    first = res.lp["rounds"][0]
    assert res.certified and first["rows"] == spec.n_points and first["linf_probes"] > 1
    u_form = provrepair.repair(net, spec, layer=2, formulation="u", linf="rows")
    assert u_form.lp["rounds"][0]["rows"] > 10 * spec.n_points
    assert res.solver["objective"] == pytest.approx(u_form.solver["objective"], rel=1e-6)
