"""One repairer protocol: every registered repairer has typed options and ``run(model, target,
options) -> RepairResult``; the API, the CLI flags and the harness options come from those options."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.cli import build_parser
from provrepair.errors import InputError
from provrepair.evaluate import registry as harness_registry
from provrepair.models import ModelMeta, set_meta
from provrepair.repair.options import PointRepairOptions, PolytopeRepairOptions, build, options_of
from provrepair.repair.protocol import CERTIFIED, KINDS, RepairResult
from provrepair.repair.registry import REPAIRERS, get_repairer
from provrepair.specs import PointSpec


def _net_and_spec(n=5):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    set_meta(net, ModelMeta(input_shape=(4,)))
    x = np.random.default_rng(0).normal(size=(n, 4))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return net, PointSpec.from_arrays(x, labels=(pred + 1) % 3)


@pytest.mark.parametrize("name", list(REPAIRERS))
def test_every_registered_repairer_implements_the_protocol(name):
    r = get_repairer(name)
    assert r.name == name and r.kind in KINDS and callable(r.run)
    assert dataclasses.is_dataclass(r.Options)
    opts = options_of(r.Options)
    assert opts and all(o.help for o in opts)
    r.Options()  # the defaults are valid


def test_the_point_repairer_runs_through_the_protocol_and_its_result_is_json():
    net, spec = _net_and_spec()
    result = get_repairer("aprnn").run(net, spec, PointRepairOptions(layer=-1))
    assert isinstance(result, RepairResult) and result.method == "aprnn"
    assert result.status == CERTIFIED and result.certificate.n_passed == spec.n_points
    doc = json.loads(json.dumps(result.to_dict(), default=str))
    assert doc["certified"] and doc["layer"] == 1 and doc["options"]["layer"] == -1


def test_user_mistakes_in_options_are_input_errors():
    net, spec = _net_and_spec()
    with pytest.raises(InputError, match="unknown method 'x'"):
        provrepair.repair(net, spec, layer=0, method="x")
    with pytest.raises(InputError, match="unknown option.*delta_bund"):
        provrepair.repair(net, spec, layer=0, delta_bund=2.0)
    with pytest.raises(InputError, match="unknown objective"):
        build(PointRepairOptions, objective="l2").validate()


def test_cli_repair_flags_are_the_typed_options():
    parser = build_parser()
    repair = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "repair")[1]
    flags = {a.dest: a for a in repair._actions}
    for o in options_of(PolytopeRepairOptions):
        assert o.name in flags, o.name
        if o.choices:
            assert flags[o.name].metavar == "{" + ",".join(o.choices) + "}"
    args = parser.parse_args(["repair", "m.pt", "--points", "p.npz", "--layer", "1", "--out", "o.pt",
                              "--margin", "0.01"])
    assert args.margin == 0.01 and args.delta_bound is None  # only what the user gave is passed on


def test_harness_options_come_from_the_repairer_options():
    names = [o.name for o in harness_registry.get_method("aprnn").options]
    assert names[0] == "layer" and set(o.name for o in options_of(PointRepairOptions)) <= set(names)
    assert harness_registry.get_method("aprnn").resolve_options({})["threads"] == 1
