"""MetaRepair: Fréchet distance, task probabilities, MAML steps, meta-test updates, the API and CLI.

Everything runs on a tiny CNN and synthetic 28x28 images, on the CPU.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from provrepair.errors import InputError
from provrepair.models import normalize_model, save_model
from provrepair.repair import frechet
from provrepair.repair import metarepair as mr

SMALL = dict(collect=20, min_fail=5, episodes=2, tasks=2, shots=2, query=10, inner_steps=1, adapt_steps=2,
             adapt_batch=16, train_limit=None, replay=0.5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 13 * 13, 8), nn.ReLU(),
                        nn.Linear(8, 4))
    return normalize_model(net.eval(), input_shape=(1, 28, 28))


def tiny_data(n_train: int = 160, n_test: int = 120, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y_tr, y_te = rng.integers(0, 4, n_train), rng.integers(0, 4, n_test)
    # class-dependent brightness pattern so that the classes are learnable a little
    def imgs(y):
        x = rng.random((y.size, 1, 28, 28)).astype(np.float32) * 0.5
        x[np.arange(y.size), 0, 7 * y, :] += 0.5
        return np.clip(x, 0, 1)
    return {"train": (imgs(y_tr), y_tr), "test": (imgs(y_te), y_te)}


# ------------------------------------------------------------------------------- Fréchet distance

def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    q = frechet.frechet_distance(frechet.GaussianFit(mu1, np.diag(v1)), frechet.GaussianFit(mu2, np.diag(v2)))
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert q == pytest.approx(closed, rel=1e-12)


def test_frechet_general_covariances_symmetry_and_sample_fits():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    g1, g2 = frechet.GaussianFit(m1, s1), frechet.GaussianFit(m2, s2)
    reference = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet.frechet_distance(g1, g2) == pytest.approx(reference, rel=1e-8)
    assert frechet.frechet_distance(g2, g1) == pytest.approx(reference, rel=1e-8)
    assert frechet.frechet_distance(g1, g1) == pytest.approx(0.0, abs=1e-9)
    # fits of large samples approach the distance of the generating Gaussians (1-D: (m1-m2)^2 + (s1-s2)^2)
    x = rng.normal(0.0, 1.0, size=(200000, 1))
    y = rng.normal(3.0, 2.0, size=(200000, 1))
    q = frechet.frechet_distance(frechet.fit_gaussian(x), frechet.fit_gaussian(y))
    assert q == pytest.approx(9.0 + 1.0, rel=0.02)
    with pytest.raises(InputError):
        frechet.fit_gaussian(np.zeros((1, 3)))


def test_penultimate_features_are_the_last_affine_layers_input():
    net = tiny_cnn()
    x = torch.rand(5, 1, 28, 28)
    f = frechet.features(net, x)
    assert f.shape == (5, 8)
    np.testing.assert_allclose(f, net[:-1](x).double().detach().numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------- task probabilities

def test_task_probabilities_sum_to_one_and_order_by_distance():
    q = np.array([3.0, 0.5, 10.0, 1.0])
    p = mr.task_probabilities(q)
    assert p.sum() == pytest.approx(1.0)
    assert list(np.argsort(-p)) == list(np.argsort(q))
    alpha = 0.7
    manual = np.exp(-alpha * q) / np.exp(-alpha * q).sum()
    np.testing.assert_allclose(mr.task_probabilities(q, alpha=alpha, beta=2.0), manual)
    np.testing.assert_allclose(mr.task_probabilities(q, alpha=alpha, beta=-5.0), manual)  # beta cancels
    np.testing.assert_allclose(mr.task_probabilities(q, confidence=False), np.full(4, 0.25))
    assert mr.select_experiences({"fog": 3.0, "snow": 0.5, "frost": 1.0}, 2) == ["snow", "frost"]
    with pytest.raises(InputError):
        mr.task_probabilities([1.0, -1.0])


# ------------------------------------------------------------------------------- MAML

def _softmax_ce_grads(W, b, x, y):
    """Hand-written gradient of the mean cross-entropy of a linear classifier."""
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(y.size), y] -= 1.0
    return p.T @ x / y.size, p.mean(0)


def test_first_order_maml_step_matches_a_hand_computed_update():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    net = nn.Sequential(lin)
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    ytr, yte = np.array([0, 1, 1, 0]), np.array([1, 0, 1, 1, 0])
    W, b = lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()
    a, beta = 0.3, 0.1
    gw, gb = _softmax_ce_grads(W, b, xtr, ytr)
    W1, b1 = W - a * gw, b - a * gb  # the inner step
    hw, hb = _softmax_ce_grads(W1, b1, xte, yte)  # the first-order meta-gradient
    task = tuple(torch.as_tensor(v) for v in (xtr, ytr, xte, yte))
    grads, _ = mr.meta_gradient(net, [task], inner_steps=1, inner_lr=a)
    np.testing.assert_allclose(grads["0.weight"].numpy(), hw, rtol=1e-10)
    np.testing.assert_allclose(grads["0.bias"].numpy(), hb, rtol=1e-10)

    # meta_train with one experience whose sets are exactly one task applies theta - beta * g
    exp = mr.Experience("fog", "train", (task[0], task[1]), (task[2], task[3]), 9, 9)
    opts = mr.MetaRepairOptions(episodes=1, tasks=1, shots=2, query=5, inner_steps=1, inner_lr=a, meta_lr=beta,
                                meta_optimizer="sgd", replay=0)
    meta, info = mr.meta_train(net, [exp], [1.0], opts)
    np.testing.assert_allclose(meta[0].weight.detach().numpy(), W - beta * hw, rtol=1e-10)
    np.testing.assert_allclose(meta[0].bias.detach().numpy(), b - beta * hb, rtol=1e-10)
    assert info["gradient_evaluations"] == 2
    np.testing.assert_array_equal(lin.weight.detach().numpy(), W)  # the input network is not modified


def test_second_order_maml_differentiates_through_the_inner_loop():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 2)).double()
    rng = np.random.default_rng(1)
    task = tuple(torch.as_tensor(v) for v in (rng.normal(size=(4, 3)), np.array([0, 1, 1, 0]),
                                              rng.normal(size=(5, 3)), np.array([1, 0, 1, 1, 0])))
    a = 0.5

    def meta_objective(w, bias):
        gw, gb = torch.autograd.grad(F.cross_entropy(task[0] @ w.T + bias, task[1]), (w, bias), create_graph=True)
        return F.cross_entropy(task[2] @ (w - a * gw).T + (bias - a * gb), task[3])

    w = net[0].weight.detach().clone().requires_grad_(True)
    bias = net[0].bias.detach().clone().requires_grad_(True)
    ref = torch.autograd.grad(meta_objective(w, bias), (w, bias))
    grads, _ = mr.meta_gradient(net, [task], inner_steps=1, inner_lr=a, second_order=True)
    np.testing.assert_allclose(grads["0.weight"].numpy(), ref[0].numpy(), rtol=1e-10)
    np.testing.assert_allclose(grads["0.bias"].numpy(), ref[1].numpy(), rtol=1e-10)
    fo, _ = mr.meta_gradient(net, [task], inner_steps=1, inner_lr=a)
    assert not np.allclose(fo["0.weight"].numpy(), grads["0.weight"].numpy())  # the Hessian term matters


# ------------------------------------------------------------------------------- meta-test

def test_accumulated_and_separate_meta_test_differ_as_specified():
    net = tiny_cnn()
    x, y = (torch.as_tensor(v) for v in tiny_data(40, 4, seed=3)["train"])
    opts = mr.MetaRepairOptions(tasks=2, adapt_steps=3, adapt_lr=0.5, adapt_batch=64, replay=0)
    acc, info = mr.meta_test(net, (x, y), opts, seed=4, update="accumulated")
    sep, _ = mr.meta_test(net, (x, y), opts, seed=4, update="separate")
    assert info["tasks"] == 2 and sum(info["task_sizes"]) == 40
    parts = mr._deal(y.numpy(), 2, np.random.default_rng([4, 12]))
    assert all(set(y[torch.as_tensor(p)].tolist()) == set(y.tolist()) for p in parts)  # every task covers all classes

    def sgd(start, part):
        model = copy.deepcopy(start)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):  # batch 64 >= the task: full-batch steps
            loss = F.cross_entropy(model(x[torch.as_tensor(part)]), y[torch.as_tensor(part)])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    first = sgd(net, parts[0])
    for a_, b_ in zip(acc[0].parameters(), first.parameters()):
        torch.testing.assert_close(a_, b_)
    for a_, b_ in zip(sep[0].parameters(), first.parameters()):
        torch.testing.assert_close(a_, b_)
    for a_, b_ in zip(acc[1].parameters(), sgd(first, parts[1]).parameters()):  # continues from task 1
        torch.testing.assert_close(a_, b_)
    for a_, b_ in zip(sep[1].parameters(), sgd(net, parts[1]).parameters()):  # restarts from the meta weights
        torch.testing.assert_close(a_, b_)
    assert not torch.allclose(acc[1][-1].weight, sep[1][-1].weight)


# ------------------------------------------------------------------------------- API

def test_metarepair_returns_the_same_architecture_and_is_deterministic(tmp_path):
    import provrepair
    from provrepair.specs import PointSpec

    data = tiny_data()
    net = tiny_cnn()
    r1 = provrepair.metarepair(net, dataset=data, target="fog", experiences=["snow", "contrast", "gaussian_noise"],
                               device="cpu", seed=3, **SMALL)
    r2 = provrepair.metarepair(net, dataset=data, target="fog", experiences="snow,contrast,gaussian_noise",
                               device="cpu", seed=3, **SMALL)
    assert isinstance(r1.model, nn.Sequential)
    assert [type(m) for m in r1.model] == [type(m) for m in normalize_model(net)]
    assert [p.shape for p in r1.model.parameters()] == [p.shape for p in net.parameters()]
    for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()):
        assert torch.equal(a, b)
    assert r1.metrics == r2.metrics
    m = r1.metrics
    assert m["collect_samples"] == 20 and 0.0 <= m["fail_accuracy"] <= 1.0 and "clean_drop" in m
    assert abs(sum(r1.details["probabilities"].values()) - 1.0) < 1e-9
    d = r1.to_dict()
    assert d["method"] == "metarepair" and d["options"]["seed"] == 3
    # a plain network: it reloads without the training code and certify() checks its collected points
    save_model(r1.model, tmp_path / "m.pt")
    again = provrepair.load_model(tmp_path / "m.pt")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(again(x), r1.model(x))
    with torch.no_grad():
        labels = r1.model(x).argmax(1).numpy()
    assert provrepair.certify(r1.model, PointSpec.from_arrays(x.numpy(), labels=labels)).certified


def test_auto_selection_keeps_the_k_nearest_and_separate_update_reports_the_task_mean():
    data = tiny_data()
    r = mr.metarepair(tiny_cnn(), dataset=data, target="gaussian_noise", device="cpu",
                      **{**SMALL, "k": 2, "update": "separate"})
    dist = r.details["distances"]
    assert len(dist) == 18 and "gaussian_noise" not in dist
    assert r.details["experiences"] == sorted(dist, key=dist.get)[:2]
    assert "fail_accuracy_task_mean" in r.metrics


def test_prepare_cache_reuses_the_experiences_and_gives_the_same_preparation():
    data = mr.CorruptedData(tiny_data(), 5)
    net = mr._frozen(tiny_cnn())
    opts = mr.MetaRepairOptions(**{**SMALL, "k": 3})
    cache = {}
    for target in ("gaussian_noise", "fog"):
        plain = mr.prepare(net, data, target, "auto", opts, seed=1)
        cached = mr.prepare(net, data, target, "auto", opts, seed=1, cache=cache)
        assert cached.kept == plain.kept and cached.distances == pytest.approx(plain.distances, rel=1e-12)
        assert cached.probabilities == pytest.approx(plain.probabilities, rel=1e-12)
        for n in cached.kept:
            assert torch.equal(cached.candidates[n].collect[0], plain.candidates[n].collect[0])
    assert len(cache["experiences"]) == 19
    wider = plain.keeping(5, opts)  # a K sweep without remaking the experiences
    five = mr.prepare(net, data, "fog", "auto", opts.replace(k=5), seed=1)
    assert wider.kept == five.kept and len(wider.kept) == 5 and plain.kept == wider.kept[:3]
    assert wider.probabilities == pytest.approx(five.probabilities, rel=1e-12)
    assert set(cache["fits"]) == {n for n, e in cache["experiences"].items() if e is not None}
    with pytest.raises(InputError, match="cache"):
        mr.prepare(net, data, "fog", "auto", opts, seed=2, cache=cache)


def test_unknown_corruption_and_too_few_failures_give_clear_errors(tmp_path, capsys):
    from provrepair.cli import main

    data = tiny_data()
    net = tiny_cnn()
    with pytest.raises(InputError, match="unknown corruption 'fgo'.*fog"):
        mr.metarepair(net, dataset=data, target="fgo", device="cpu", **SMALL)
    with pytest.raises(InputError, match="unknown corruption"):
        mr.metarepair(net, dataset=data, target="fog", experiences=["snow", "blizzard"], device="cpu", **SMALL)
    with pytest.raises(InputError, match="own experiences"):
        mr.metarepair(net, dataset=data, target="fog", experiences=["fog"], device="cpu", **SMALL)
    with pytest.raises(InputError, match="unknown MetaRepair option"):
        mr.metarepair(net, dataset=data, target="fog", device="cpu", episode=3)
    # labels = the model's own predictions on the fog-corrupted test split: no failures at all
    from provrepair.data.corruptions import corrupt

    xt = corrupt(data["test"][0], "fog", 5, seed=mr.DATA_SEED)
    with torch.no_grad():
        own = net(torch.as_tensor(xt)).argmax(1).numpy()
    easy = {"train": data["train"], "test": (data["test"][0], own)}
    with pytest.raises(InputError, match="only 0 failures.*higher severity"):
        mr.metarepair(net, dataset=easy, target="fog", experiences=["snow"], device="cpu", **SMALL)
    with pytest.raises(InputError, match="lower collect"):
        mr.metarepair(net, dataset=data, target="fog", experiences=["snow"], device="cpu", **{**SMALL, "collect": 110})

    model = tmp_path / "tiny.pt"
    save_model(net, model)
    assert main(["metarepair", str(model), "--dataset", "mnist", "--target", "fgo", "--out",
                 str(tmp_path / "o.pt"), "--quiet"]) == 2
    assert "unknown corruption" in capsys.readouterr().err


def test_cli_metarepair_writes_a_reloadable_model(tmp_path, capsys, monkeypatch):
    import provrepair
    from provrepair import cli

    data = tiny_data()
    real = mr.MetaRepairTarget.create.__func__
    monkeypatch.setattr(mr.MetaRepairTarget, "create",
                        classmethod(lambda cls, **kw: real(cls, **{**kw, "dataset": data})))
    model = tmp_path / "tiny.pt"
    save_model(tiny_cnn(), model)
    out = tmp_path / "repaired.pt"
    args = ["metarepair", str(model), "--dataset", "mnist", "--target", "fog", "--experiences", "snow,contrast",
            "--device", "cpu", "--collect", "20", "--min-fail", "5", "--episodes", "2", "--tasks", "2",
            "--adapt-steps", "2", "--quiet"]
    assert cli.main(args + ["--out", str(out), "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "D_fail" in text and f"wrote {out}" in text
    assert isinstance(provrepair.load_model(out), nn.Sequential) and (tmp_path / "r.json").is_file()
    assert cli.main(args + ["--out", str(model)]) == 2  # never over its input
    assert "input file" in capsys.readouterr().err
