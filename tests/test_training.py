"""The statistical repairers behind the repairer protocol: typed options, the registry, one result
type, progress callbacks, and the same numbers through the API functions and the repairers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_deeppatch import synthetic_data, tiny_cnn

from provrepair.errors import InputError
from provrepair.repair.options import (
    AugmixOptions,
    DeepPatchOptions,
    FinetuneOptions,
    MetaRepairOptions,
    build,
    options_of,
)
from provrepair.repair.protocol import TRAINED, RepairResult
from provrepair.repair.registry import get_repairer
from provrepair.repair.training import RobustnessTask, check_limit, resolve_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task():
    return RobustnessTask.create(dataset=synthetic_data(), augment="blur", device="cpu")


def test_options_keep_the_api_defaults_and_declare_user_options():
    names = lambda cls: {o.name: o.default for o in options_of(cls)}  # noqa: E731
    assert names(DeepPatchOptions) == {"epochs": 3, "lr": 0.2, "batch_size": 128, "device": "auto", "seed": 0,
                                       "ratio": 0.25, "variant": "gamma", "ranking": "alpha", "init": "clone"}
    assert names(FinetuneOptions)["lr"] == names(AugmixOptions)["lr"] == 0.01
    assert names(AugmixOptions)["jsd_weight"] == 12.0
    meta = names(MetaRepairOptions)
    assert meta["collect"] == 1000 and meta["train_limit"] == 10000 and "alpha" not in meta
    assert {o.name: o.choices for o in options_of(DeepPatchOptions)}["init"] == ("random", "clone")


def test_metarepair_options_validate_without_numpy():
    code = ("import sys; from provrepair.repair.options import MetaRepairOptions as M; "
            "o = M(collect=20.0, replay=0); assert o.collect == 20 and isinstance(o.collect, int); "
            "assert M(collect=0.25).collect == 0.25; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for bad in ({"collect": 1.5}, {"episodes": 0}, {"meta_lr": -1.0}, {"update": "joint"}, {"replay": 17},
                {"seed": -1}, {"k": True}):
        with pytest.raises(InputError):
            MetaRepairOptions(**bad)
    assert MetaRepairOptions(collect=np.float64(0.5), k=np.int64(3)).k == 3


@pytest.mark.parametrize("name", ["deeppatch", "finetune", "augmix"])
def test_repairers_match_the_api_functions_bit_for_bit(name, task):
    import provrepair.repair.augmix as am
    import provrepair.repair.deeppatch as dp
    import provrepair.repair.finetune as ft

    fn = {"deeppatch": dp.deeppatch, "finetune": ft.finetune, "augmix": am.augmix}[name]
    repairer = get_repairer(name)
    assert repairer.kind == "statistical" and repairer.name == name
    opts = build(repairer.Options, epochs=1, batch_size=32, seed=3)
    messages = []
    direct = repairer.run(tiny_cnn(), task, opts, progress=messages.append)
    api = fn(tiny_cnn(), dataset=None, augment="blur", epochs=1, batch_size=32, seed=3, task=task, progress=False)
    assert isinstance(direct, RepairResult) and direct.status == TRAINED and direct.method == name
    for a, b in zip(direct.model.state_dict().values(), api.model.state_dict().values()):
        assert torch.equal(a, b)
    assert direct.metrics == api.metrics and direct.pretrained == api.pretrained
    assert any("epoch 1/1" in m for m in messages)
    assert direct.summary() == direct.message and direct.message.startswith(f"{name}: standard accuracy")
    d = json.loads(json.dumps(direct.to_dict()))
    assert d["options"]["seed"] == 3 and d["options"]["augment"] == "blur" and d["status"] == TRAINED


def test_metarepair_repairer_takes_a_target_made_from_arrays():
    from test_metarepair import SMALL, tiny_data
    from test_metarepair import tiny_cnn as small_cnn

    from provrepair.repair.metarepair import MetaRepairTarget, metarepair

    target = MetaRepairTarget.create(dataset=tiny_data(), target="fog", experiences="snow,contrast", device="cpu",
                                     train_limit=None)
    opts = build(MetaRepairOptions, **SMALL, seed=1)
    messages = []
    r = get_repairer("metarepair").run(small_cnn(), target, opts, progress=messages.append)
    again = metarepair(small_cnn(), dataset=None, target="fog", experiences="snow,contrast", seed=1,
                       data=target.data, **SMALL)
    assert r.status == TRAINED and r.metrics == again.metrics and r.details["experiences"] == ["snow", "contrast"]
    assert r.summary().startswith("metarepair: target fog") and r.options["seed"] == 1
    with pytest.raises(InputError, match="unknown corruption"):
        MetaRepairTarget.create(dataset=tiny_data(), target="fgo")


def test_shared_checks():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu:x")
    assert check_limit(None, "x") is None and check_limit(np.int64(4), "x") == 4
    with pytest.raises(InputError, match="train_limit must be a positive integer"):
        check_limit(0, "train_limit")
    assert dataclasses.replace(DeepPatchOptions(), ratio=25).ratio == 25
