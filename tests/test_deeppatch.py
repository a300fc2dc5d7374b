"""DeepPatch: patched network semantics, filter assessment, calibration, save/reload, errors, CLI.

Everything runs on tiny convolutional networks and synthetic or 8x8 data, on the CPU.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.errors import InputError, ModelFormatError, ProvRepairError
from provrepair.models import normalize_model, save_model
from provrepair.repair.augmix import augment_and_mix, augmix, jensen_shannon
from provrepair.repair.deeppatch import (
    PatchedNet,
    assess_filters,
    calibrate_boundary,
    corrective_rate,
    deeppatch,
    kappa_percent,
    load_patched,
    select_filters,
)
from provrepair.repair.finetune import finetune
from provrepair.repair.training import RobustnessTask

BLAMED = {0: [1, 3], 2: [0, 5, 7]}


@pytest.fixture(autouse=True)
def _small_cpu_settings():
    """One thread and no oneDNN: on these tiny tensors a second thread and oneDNN's per-shape kernels
    (the augmentors blur random subsets of varying size) cost far more than the arithmetic."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )
    return normalize_model(net, input_shape=(1, 8, 8))


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def with_original_filters(net: nn.Sequential) -> PatchedNet:
    patched = PatchedNet(copy.deepcopy(net), BLAMED)
    with torch.no_grad():
        for i in patched.patched_layers:
            idx = patched.blamed(i)
            patched.repl_weight[str(i)].copy_(net[i].weight[idx])
            patched.repl_bias[str(i)].copy_(net[i].bias[idx])
    return patched.eval()


def synthetic_data(n_train=160, n_val=40, n_test=60):
    """Images whose label is the brightest quadrant pattern: learnable by a tiny CNN."""
    def make(n, seed):
        x = images(n, seed) * 0.3
        y = torch.arange(n) % 10
        for k in range(n):
            r, c = divmod(int(y[k]), 4)
            x[k, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 0.7
        return x.numpy(), y.numpy()
    return {"train": make(n_train, 2), "val": make(n_val, 3), "test": make(n_test, 4)}


# ------------------------------------------------------------------------------- patched network

def test_equal_replacement_filters_reproduce_the_original_exactly():
    net = tiny_cnn()
    x = images(64)
    expected = net(x)
    patched = with_original_filters(net)
    with torch.no_grad():
        for variant in ("beta", "gamma", "fallback"):
            assert torch.equal(patched.set_variant(variant)(x), expected), variant
        # gamma forced through the replacements (boundary below every rate) takes the other branch
        patched.set_variant("gamma").boundary.fill_(-1.0)
        assert bool(patched.uses_replacement(x).all())
        assert torch.equal(patched(x), expected)


def test_cloned_replacements_start_as_the_blamed_filters():
    net = tiny_cnn()
    x = images(32)
    cloned = PatchedNet(copy.deepcopy(net), BLAMED, init="clone").eval()
    with torch.no_grad():
        assert torch.equal(cloned.set_variant("beta")(x), net(x))
        assert torch.equal(cloned.corrective_rate(x), torch.zeros(x.shape[0]))
        for i in cloned.patched_layers:  # copies, not views: training them leaves the originals alone
            cloned.repl_weight[str(i)].add_(1.0)
        assert torch.equal(cloned.set_variant("fallback")(x), net(x))
        assert not torch.allclose(cloned.set_variant("beta")(x), net(x))
    with pytest.raises(InputError, match="unknown init 'zeros'; use one of: random, clone"):
        PatchedNet(copy.deepcopy(net), BLAMED, init="zeros")


def test_random_replacements_change_the_output_only_when_used():
    net = tiny_cnn()
    x = images(32)
    patched = PatchedNet(copy.deepcopy(net), BLAMED, seed=3).eval()
    with torch.no_grad():
        assert not torch.allclose(patched.set_variant("beta")(x), net(x))
        assert torch.equal(patched.set_variant("fallback")(x), net(x))
        patched.set_variant("gamma").boundary.fill_(2.0)  # no rate exceeds 2: every sample keeps the originals
        assert torch.equal(patched(x), net(x))
    # the base network is frozen, only the replacement filters train
    trainable = {n for n, p in patched.named_parameters() if p.requires_grad}
    assert trainable == {"repl_weight.0", "repl_weight.2", "repl_bias.0", "repl_bias.2"}


def test_per_sample_switching_does_not_depend_on_the_batch():
    net = tiny_cnn()
    x = images(48)
    patched = PatchedNet(copy.deepcopy(net), BLAMED, seed=5).eval()
    with torch.no_grad():
        rates = patched.corrective_rate(x)
        patched.boundary.fill_(float(rates.median()))
        use = patched.uses_replacement(x)
        assert 0 < int(use.sum()) < x.shape[0], "the test needs a batch with both routes"
        batch_out = patched(x)
        beta = copy.deepcopy(patched).set_variant("beta")(x)
        # each sample gets the output of the side it was routed to ...
        assert torch.allclose(batch_out[use], beta[use], atol=1e-6)
        assert torch.allclose(batch_out[~use], net(x)[~use], atol=1e-6)
        # ... whatever else is in its batch: alone, permuted, or among samples of one route only
        alone = torch.cat([patched(x[k:k + 1]) for k in range(x.shape[0])])
        assert torch.allclose(batch_out, alone, atol=1e-5)
        assert torch.equal(batch_out.argmax(1), alone.argmax(1))
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        assert torch.allclose(patched(x[perm]), batch_out[perm], atol=1e-5)
        for k in range(x.shape[0]):
            others = x[use] if bool(use[k]) else x[~use]
            mixed = x[~use] if bool(use[k]) else x[use]
            same_side = patched(torch.cat([x[k:k + 1], others]))[0]
            other_side = patched(torch.cat([x[k:k + 1], mixed]))[0]
            assert torch.allclose(same_side, other_side, atol=1e-5)


def test_gamma_unit_on_a_later_grouped_conv():
    """The gamma unit sits on the first *patched* conv, here a grouped one after an unpatched conv."""
    torch.manual_seed(0)
    net = normalize_model(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ), input_shape=(1, 8, 8))
    patched = PatchedNet(copy.deepcopy(net), {2: [1, 6], 4: [0, 3, 5]}, seed=1).eval()
    assert patched.gamma_layer == 2
    x = images(40)
    with torch.no_grad():
        patched.boundary.fill_(float(patched.corrective_rate(x).median()))
        use = patched.uses_replacement(x)
        assert 0 < int(use.sum()) < len(x)
        out = patched(x)
        beta = copy.deepcopy(patched).set_variant("beta")(x)
        assert torch.allclose(out[use], beta[use], atol=1e-6)
        assert torch.equal(out[~use], net(x)[~use])


# ------------------------------------------------------------------------------- filter assessment

def test_alpha_zeroing_matches_a_hand_zeroed_model():
    net = tiny_cnn()
    x = images(90, seed=7)
    y = net(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # some wrong labels, so zeroing can raise or lower the accuracy
    result = assess_filters(net, x, y)
    assert result.forward_passes == 2 < result.single_passes  # all 8 filters of a layer in one pass
    chunked = assess_filters(net, x, y, max_batch=64)  # several sample chunks and filter groups
    for i in (0, 2):
        assert np.array_equal(chunked.scores[i], result.scores[i])
        for j in range(8):
            zeroed = copy.deepcopy(net)
            with torch.no_grad():
                zeroed[i].weight[j] = 0
                zeroed[i].bias[j] = 0
                correct = int((zeroed(x).argmax(1) == y).sum())
            assert result.scores[i][j] == correct / len(y) - result.base_accuracy, (i, j)
    assert any(np.any(s != 0) for s in result.scores.values())


def test_selection_counts_and_orders():
    net = tiny_cnn()
    x, y = images(40), torch.arange(40) % 10
    assessment = assess_filters(net, x, y)
    top = select_filters(net, 0.25, assessment=assessment)
    assert select_filters(net, 25, assessment=assessment) == top  # fraction and percentage agree
    assert {i: len(v) for i, v in top.items()} == {0: 2, 2: 2}  # floor(0.25 * 8)
    bottom = select_filters(net, 0.25, ranking="bottom", assessment=assessment)
    for i in top:
        order = list(assessment.order(i))
        assert sorted(top[i]) == sorted(order[:2]) and sorted(bottom[i]) == sorted(order[-2:])
    rand = select_filters(net, 50, ranking="random", seed=1)
    assert rand == select_filters(net, 50, ranking="random", seed=1) and all(len(v) == 4 for v in rand.values())
    with pytest.raises(InputError, match="selects no filter"):
        select_filters(net, 10, ranking="random")  # floor(0.1 * 8) = 0 in every layer


# ------------------------------------------------------------------------------- corrective rate

def test_corrective_rate_of_the_paper_example():
    z_minus = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    assert float(corrective_rate(z_minus, torch.ones(1, 1, 2, 2))[0]) == 0.75


def test_boundary_calibration_on_synthetic_feature_maps():
    gen = torch.Generator().manual_seed(0)

    def maps(n, disagree):  # (n, 2, 5, 5) pairs whose activations differ at exactly `disagree` of 50 positions
        z_minus = torch.rand((n, 2, 5, 5), generator=gen) + 0.1
        z_plus = z_minus.clone().flatten(1)
        for k in range(n):
            pos = torch.randperm(50, generator=gen)[:disagree[k]]
            z_plus[k, pos] = -z_plus[k, pos]
        return z_minus, z_plus.view(n, 2, 5, 5)

    clean_counts, aug_counts = [2, 4, 6, 8], [20, 25, 30, 35, 40]
    clean = corrective_rate(*maps(4, clean_counts))
    aug = corrective_rate(*maps(5, aug_counts))
    assert torch.allclose(clean, torch.tensor(clean_counts) / 50.0)
    boundary, side = calibrate_boundary(clean, aug)
    assert side == 1 and calibrate_boundary(aug, clean) == (boundary, -1)
    assert boundary == pytest.approx((np.mean(clean_counts) / 50 + np.mean(aug_counts) / 50) / 2)
    assert bool((clean < boundary).all()) and bool((aug > boundary).all())
    with pytest.raises(InputError):
        calibrate_boundary([], aug)


# ------------------------------------------------------------------------------- save / reload

def test_save_and_reload_without_the_training_code(tmp_path):
    net = tiny_cnn()
    patched = PatchedNet(copy.deepcopy(net), BLAMED, seed=2).eval()
    x = images(20)
    with torch.no_grad():
        patched.boundary.fill_(float(patched.corrective_rate(x).median()))
        expected = patched(x)
    path = tmp_path / "patched.pt"
    save_model(patched, path)
    np.save(tmp_path / "x.npy", x.numpy())
    reloaded = load_patched(path)
    assert reloaded.variant == "gamma" and float(reloaded.boundary) == float(patched.boundary)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)
    # a fresh interpreter that never imports the training code: plain torch.load and a forward pass
    code = (
        "import sys, numpy as np, torch\n"
        "torch.backends.mkldnn.enabled = False\n"  # the same convolution kernels as this process
        f"net = torch.load({str(path)!r}, weights_only=False)\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "with torch.no_grad():\n"
        f"    np.save({str(tmp_path / 'y.npy')!r}, net(x).numpy())\n"
        "assert 'provrepair.repair.finetune' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected.numpy())
    # float64 copies (as certification makes them) keep the per-sample routing
    twin = copy.deepcopy(reloaded).to(torch.float64)
    with torch.no_grad():
        assert torch.equal(twin(x.double()).argmax(1), expected.argmax(1))
    save_model(net, tmp_path / "plain.pt")
    with pytest.raises(ModelFormatError, match="not a DeepPatch model"):
        load_patched(tmp_path / "plain.pt")


# ------------------------------------------------------------------------------- end to end

def test_deeppatch_on_a_tiny_network_is_deterministic():
    data = synthetic_data()
    kwargs = {"dataset": data, "augment": "blur", "epochs": 2, "batch_size": 32, "device": "cpu", "seed": 0}
    first = deeppatch(tiny_cnn(), **kwargs)
    second = deeppatch(tiny_cnn(), **kwargs)
    assert isinstance(first.model, PatchedNet) and first.model.variant == "gamma"
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    m = first.metrics
    assert set(m["levels"]) == {"blur0.5", "blur1", "blur1.5", "blur2", "blur2.5", "blur3"}
    assert m["robustness"] == pytest.approx(np.mean([m["standard_accuracy"], *m["levels"].values()]))
    assert m["joint"] == pytest.approx(m["standard_accuracy"] + m["robustness"])
    d = first.details
    assert d["blamed_count"] == 4 and d["parameters"] > d["parameters_pretrained"]
    assert len(first.training["history"]) == 2 and first.training["best_epoch"] in (1, 2)
    assert min(d["corrective_rate_mean"].values()) <= d["boundary"] <= max(d["corrective_rate_mean"].values())


def test_baselines_share_the_call_shape():
    data = synthetic_data()
    task = RobustnessTask.create(dataset=data, augment="spatial", device="cpu")
    net = tiny_cnn()
    for fn in (finetune, augmix):
        result = fn(net, dataset=data, augment="spatial", epochs=1, batch_size=32, task=task)
        assert isinstance(result.model, nn.Sequential) and result.metrics["metric"] == "sRob"
        assert result.training["best_epoch"] in (0, 1)
    x = images(16)
    ops = [lambda t, rng: t.flip(-1), lambda t, rng: t * 0.5]
    view = augment_and_mix(x, np.random.default_rng(0), ops)
    assert view.shape == x.shape and float(view.min()) >= 0 and float(view.max()) <= 1
    logits = torch.randn(5, 10)
    assert float(jensen_shannon(logits, logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(jensen_shannon(logits, -logits, logits)) > 0


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("ratio", [0, -5, 100.5, 1e3, "25", True])
def test_ratio_outside_range(ratio):
    with pytest.raises(ProvRepairError, match=r"ratio must"):
        deeppatch(tiny_cnn(), dataset=synthetic_data(), augment="blur", ratio=ratio)


def test_bad_inputs_give_clear_errors():
    data = synthetic_data()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(InputError, match="no Conv2d layer"):
        deeppatch(mlp, dataset=data, augment="blur")
    with pytest.raises(InputError, match="unknown augmentor 'fog'; use one of: blur, spatial"):
        deeppatch(tiny_cnn(), dataset=data, augment="fog")
    with pytest.raises(InputError, match="unknown variant 'delta'"):
        deeppatch(tiny_cnn(), dataset=data, augment="blur", variant="delta")
    with pytest.raises(InputError, match="unknown ranking"):
        deeppatch(tiny_cnn(), dataset=data, augment="blur", ranking="worst")
    with pytest.raises(InputError, match="epochs must be a positive integer"):
        deeppatch(tiny_cnn(), dataset=data, augment="blur", epochs=0)
    with pytest.raises(InputError, match="lacks test"):
        deeppatch(tiny_cnn(), dataset={"train": data["train"], "val": data["val"]}, augment="blur")
    wrong = {k: (np.zeros((4, 1, 12, 12), np.float32), np.zeros(4, np.int64)) for k in ("train", "val", "test")}
    with pytest.raises(InputError, match="cannot take the dataset's images"):
        deeppatch(tiny_cnn(), dataset=wrong, augment="blur")
    assert kappa_percent(0.25) == kappa_percent(25) == 25.0


# ------------------------------------------------------------------------------- CLI

def test_cli_patch_writes_a_reloadable_model(tmp_path, capsys):
    from provrepair.cli import main

    model = tmp_path / "tiny.pt"
    save_model(tiny_cnn(), model)
    out = tmp_path / "patched.pt"
    args = ["patch", str(model), "--dataset", "digits", "--augment", "blur", "--epochs", "1", "--train-limit", "200",
            "--val-limit", "40", "--test-limit", "60", "--quiet"]
    assert main(args + ["--out", str(out), "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "nRob" in text and f"wrote {out}" in text
    assert isinstance(load_patched(out), PatchedNet) and (tmp_path / "r.json").is_file()
    assert main(args + ["--out", str(model)]) == 2  # never over its input
    assert "input file" in capsys.readouterr().err
    assert main(args[:2] + ["--dataset", "digits", "--augment", "blur", "--out", str(tmp_path / "p.onnx")]) == 2
    assert main(args + ["--init", "zeros", "--out", str(tmp_path / "z.pt")]) == 2
    assert "unknown init 'zeros'" in capsys.readouterr().err and not (tmp_path / "z.pt").exists()


def test_provrepair_certify_accepts_a_patched_model_on_points():
    import numpy as np

    import provrepair
    from provrepair.errors import InputError
    from provrepair.specs import PointSpec, RegionSpec

    net = tiny_cnn()
    patched = PatchedNet(copy.deepcopy(net), BLAMED, seed=5).eval()
    x = images(6)
    with torch.no_grad():
        y = patched(x).argmax(1).numpy()
    wrong = (y + 1) % patched(x).shape[1]
    ok = provrepair.certify(patched, PointSpec.from_arrays(x.numpy(), labels=y))
    bad = provrepair.certify(patched, PointSpec.from_arrays(x.numpy(), labels=wrong))
    assert ok.certified and ok.n_passed == 6
    assert not bad.certified and bad.n_passed == 0
    box = RegionSpec.boxes(x.numpy()[:1], x.numpy()[:1], labels=y[:1])
    with pytest.raises(InputError, match="points"):
        provrepair.certify(patched, box)
    assert np.all(np.isfinite(ok.margins))
