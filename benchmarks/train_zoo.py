"""Train the networks of the model zoo (``provrepair/zoo``) reproducibly on CPU.

Usage::

    python benchmarks/train_zoo.py [--out-dir provrepair/zoo] [--only NAME ...]

Each zoo model is one entry of ``SPECS``: a builder for the architecture, the dataset loader and
the training settings. For every entry the script trains with a fixed seed, a fixed data order and
(where PyTorch allows it) deterministic kernels on one CPU thread, then writes

* ``<name>.pt``: the whole canonical network via ``provrepair.models.save_model`` (meta: format
  "pt", the input shape of one sample), and
* ``<name>.json``: a card (architecture, parameter count, seed, epochs, optimiser, training time,
  clean test accuracy, torch version).

To add a model (e.g. an MNIST CNN or a Fashion-MNIST CNN), write its builder and data loader and
append a ``ZooSpec`` to ``SPECS``; nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from provrepair.data import load_mnist
from provrepair.evaluate.metrics import accuracy
from provrepair.models import ModelMeta, get_meta, load_model, save_model, set_meta

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "provrepair" / "zoo"


@dataclass(frozen=True)
class ZooSpec:
    """How to build, feed and train one zoo model."""

    name: str
    architecture: str  # human-readable, goes into the card
    build: Callable[[], nn.Sequential]
    data: Callable[[str], tuple[np.ndarray, np.ndarray]]  # split -> (x, y) in the model's input layout
    input_shape: tuple[int, ...]
    dataset: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    cosine: bool = True  # cosine decay of the learning rate to 0 over all steps (per batch)
    seed: int = 0


# --------------------------------------------------------------------------- architectures


def build_mnist_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_flat(split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(split, flat=True)


#: The zoo. Later entries (planned): "mnist_cnn" (MNIST, input (1, 28, 28)) and
#: "fashion_cnn" (Fashion-MNIST) — each a ZooSpec with its own builder and loader.
SPECS: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in [
        ZooSpec(
            name="mnist_mlp",
            architecture="MLP 784-100-100-10, ReLU (Linear, ReLU, Linear, ReLU, Linear)",
            build=build_mnist_mlp,
            data=mnist_flat,
            input_shape=(784,),
            dataset="MNIST",
            epochs=20,
        ),
    ]
}


# --------------------------------------------------------------------------- training


def _make_deterministic(seed: int) -> bool:
    """Seed everything, one thread; returns whether deterministic algorithms could be switched on."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    try:
        torch.use_deterministic_algorithms(True)
        return True
    except (RuntimeError, AttributeError):  # pragma: no cover - depends on the torch build
        return False


def train(spec: ZooSpec, *, log=print) -> tuple[nn.Sequential, dict]:
    """Train ``spec``; returns the network (eval mode, meta set) and its card."""
    deterministic = _make_deterministic(spec.seed)
    x_train, y_train = spec.data("train")
    x_test, y_test = spec.data("test")
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)

    net = spec.build()  # built after seeding: the initial weights depend only on the seed
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    steps = spec.epochs * -(-xt.shape[0] // spec.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if spec.cosine else None
    loss_fn = nn.CrossEntropyLoss()
    order_gen = torch.Generator().manual_seed(spec.seed)  # data order independent of other RNG use

    train_time = 0.0  # optimisation only; the per-epoch evaluation below is not counted
    for epoch in range(spec.epochs):
        start = time.perf_counter()
        net.train()
        perm = torch.randperm(xt.shape[0], generator=order_gen)
        total = 0.0
        for i in range(0, xt.shape[0], spec.batch_size):
            idx = perm[i : i + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * idx.numel()
        train_time += time.perf_counter() - start
        net.eval()
        log(f"{spec.name}: epoch {epoch + 1}/{spec.epochs} loss {total / xt.shape[0]:.4f} "
            f"test acc {accuracy(net, x_test, y_test):.4f} ({train_time:.1f} s)")

    net.eval()
    set_meta(net, ModelMeta(format="pt", source=None, input_shape=spec.input_shape, extra={}))
    test_acc = accuracy(net, x_test, y_test)
    card = {
        "name": spec.name,
        "dataset": spec.dataset,
        "architecture": spec.architecture,
        "input_shape": list(spec.input_shape),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "seed": spec.seed,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "optimiser": f"Adam(lr={spec.lr:g})" + (", cosine decay to 0 per step" if spec.cosine else ""),
        "loss": "cross-entropy",
        "deterministic_algorithms": deterministic,
        "threads": torch.get_num_threads(),
        "train_time_s": round(train_time, 2),
        "test_accuracy": round(float(test_acc), 4),
        "test_samples": len(y_test),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    return net, card


def write(net: nn.Sequential, card: dict, out_dir: Path) -> tuple[Path, Path]:
    """Save the weights and the card; the saved file is re-loaded and checked against the card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = save_model(net, out_dir / f"{card['name']}.pt")
    back = load_model(pt)
    if tuple(get_meta(back).input_shape or ()) != tuple(card["input_shape"]):
        raise RuntimeError(f"{pt}: the reloaded network lost its input shape")
    card_path = out_dir / f"{card['name']}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return pt, card_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where to write <name>.pt and <name>.json")
    ap.add_argument("--only", nargs="+", choices=sorted(SPECS), help="train only these zoo models")
    args = ap.parse_args(argv)
    for name in args.only or list(SPECS):
        net, card = train(SPECS[name])
        pt, card_path = write(net, card, args.out_dir)
        print(f"{name}: test accuracy {card['test_accuracy']:.4f}, trained in {card['train_time_s']:.1f} s; "
              f"wrote {pt} ({pt.stat().st_size / 1024:.0f} KiB) and {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
