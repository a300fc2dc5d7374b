"""Train the networks of the model zoo (``provrepair/zoo``) reproducibly on CPU.

Usage::

    python benchmarks/train_zoo.py [--out-dir provrepair/zoo] [--only NAME ...] [--cards-only]

Each zoo model is one entry of ``SPECS``: a builder for the architecture, the dataset loader and
the training settings. For every entry the script trains with a fixed seed, a fixed data order and
(where PyTorch allows it) deterministic kernels on a fixed number of CPU threads (one), then writes

* ``<name>.pt``: the whole trained network via ``provrepair.models.save_model`` (meta: format
  "pt", the input shape of one sample). BatchNorm layers are stored as trained; ``load_model``
  (and so ``provrepair.zoo.load_zoo``) folds them into the preceding convolution. The script
  re-loads the file and checks that the folded network predicts exactly as the trained one on the
  whole test set.
* ``<name>.json``: a card (architecture, parameter count, seed, epochs, optimiser, training time,
  clean test accuracy, accuracy under each corruption of ``provrepair.data.corruptions`` at
  severity 3, torch version).

``--cards-only`` trains nothing: it re-computes the measured fields of the cards (accuracies,
parameter count, file size, corruption table) from the shipped weights and keeps the training
fields of the existing cards.

To add a model, write its builder and data loader and append a ``ZooSpec`` to ``SPECS``; nothing
else changes.
"""

from __future__ import annotations

import argparse
import hashlib
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
from provrepair.zoo.architectures import gelu_mlp, vit_small
from provrepair.evaluate.metrics import accuracy, logits
from provrepair.models import (
    ModelMeta,
    get_meta,
    load_model,
    normalize_model,
    save_model,
    set_meta,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "provrepair" / "zoo"

#: The corruption table of a card: this severity, on the first ``CORRUPTION_SAMPLES`` test images
#: (10,000 = the whole MNIST / Fashion-MNIST test set), with this corruption seed.
CORRUPTION_SEVERITY = 3
CORRUPTION_SAMPLES = 10000
CORRUPTION_SEED = 0


@dataclass(frozen=True)
class ZooSpec:
    """How to build, feed and train one zoo model."""

    name: str
    architecture: str  # human-readable, goes into the card
    build: Callable[[], nn.Sequential]
    data: Callable[[str], tuple[np.ndarray, np.ndarray]]  # "train"/"test" -> (x, y) in the model's input layout
    input_shape: tuple[int, ...]
    dataset: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    cosine: bool = True  # cosine decay of the learning rate to 0 over all steps (per batch)
    seed: int = 0
    train_data: str = ""  # where the training images come from, for the card
    test_data: str = ""
    image_shape: tuple[int, ...] = (1, 28, 28)  # the images' layout, for the corruptions
    cut: str | None = None  # recorded in the saved model's metadata: where its frozen front ends ("auto")


# --------------------------------------------------------------------------- architectures


def build_mnist_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def build_small_cnn() -> nn.Sequential:
    """Two conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) and a two-layer head; 28x28 input."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 x 14 x 14
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 x 7 x 7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


SMALL_CNN_TEXT = (
    "CNN Conv(1->16, 3x3, pad 1)-BN-ReLU-MaxPool(2)-Conv(16->32, 3x3, pad 1)-BN-ReLU-MaxPool(2)-"
    "Flatten-Linear(1568->64)-ReLU-Linear(64->10)"
)


VIT_TEXT = (
    "ViT: PatchEmbed(Conv 1->64, 7x7 stride 7, class token, learned positions; 17 tokens of 64), "
    "3 pre-norm blocks (LayerNorm, 4-head self-attention, LayerNorm, MLP 64-128-64 with GELU; residuals), "
    "LayerNorm, ClsToken, head Linear(64->128)-ReLU-Linear(128->10); factory "
    "provrepair.zoo.architectures:vit_small; frozen front up to ClsToken, the head is the repairable back"
)

GELU_MLP_TEXT = (
    "MLP 784-100-100-10: Linear, GELU, Linear, ReLU, Linear; factory provrepair.zoo.architectures:gelu_mlp; "
    "frozen front up to the GELU, the last two Linear layers are the repairable back"
)


def mnist_flat(split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(split, flat=True)


def mnist_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(split, flat=False)  # "train" is the whole 60,000-image training set


def fashion_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    # local import: only the Fashion-MNIST model needs the dataset module
    from provrepair.data.datasets import load_dataset

    return load_dataset("fashion-mnist", "train-full" if split == "train" else split)


#: The zoo.
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
            train_data='load_mnist("train") (all 60,000 training images)',
            test_data='load_mnist("test")',
        ),
        ZooSpec(
            name="mnist_cnn",
            architecture=SMALL_CNN_TEXT,
            build=build_small_cnn,
            data=mnist_images,
            input_shape=(1, 28, 28),
            dataset="MNIST",
            epochs=6,
            train_data='load_mnist("train", flat=False) (all 60,000 training images; = load_dataset("mnist", "train-full"))',
            test_data='load_mnist("test", flat=False)',
        ),
        ZooSpec(
            name="fashion_cnn",
            architecture=SMALL_CNN_TEXT,
            build=build_small_cnn,
            data=fashion_images,
            input_shape=(1, 28, 28),
            dataset="Fashion-MNIST",
            epochs=10,
            train_data='load_dataset("fashion-mnist", "train-full") (all 60,000 training images)',
            test_data='load_dataset("fashion-mnist", "test")',
        ),
        ZooSpec(
            name="mnist_gelu_mlp",
            architecture=GELU_MLP_TEXT,
            build=gelu_mlp,
            data=mnist_flat,
            input_shape=(784,),
            dataset="MNIST",
            epochs=20,
            train_data='load_mnist("train") (all 60,000 training images)',
            test_data='load_mnist("test")',
            cut="auto",
        ),
        ZooSpec(
            name="mnist_vit",
            architecture=VIT_TEXT,
            build=vit_small,
            data=mnist_images,
            input_shape=(1, 28, 28),
            dataset="MNIST",
            epochs=12,
            train_data='load_mnist("train", flat=False) (all 60,000 training images)',
            test_data='load_mnist("test", flat=False)',
            cut="auto",
        ),
        ZooSpec(
            name="fashion_vit",
            architecture=VIT_TEXT,
            build=vit_small,
            data=fashion_images,
            input_shape=(1, 28, 28),
            dataset="Fashion-MNIST",
            epochs=20,
            train_data='load_dataset("fashion-mnist", "train-full") (all 60,000 training images)',
            test_data='load_dataset("fashion-mnist", "test")',
            cut="auto",
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


def _has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules())


def state_sha256(net: nn.Module) -> str:
    """SHA-256 of the network's state_dict (keys, dtypes, shapes and raw bytes, in order)."""
    h = hashlib.sha256()
    for key, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


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
    set_meta(net, ModelMeta(format="pt", source=None, input_shape=spec.input_shape,
                            extra={"cut": spec.cut} if spec.cut else {}))
    test_acc = accuracy(net, x_test, y_test)
    card = {
        "name": spec.name,
        "dataset": spec.dataset,
        "architecture": spec.architecture,
        "input_shape": list(spec.input_shape),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "train_data": spec.train_data,
        "test_data": spec.test_data,
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
    if _has_batchnorm(net):
        # what load_zoo returns has no BatchNorm: count what a user gets, and say what was trained
        card["parameters_trained"] = card["parameters"]
        card["parameters"] = int(sum(p.numel() for p in normalize_model(net).parameters()))
    return net, card


# --------------------------------------------------------------------------- cards


def corruption_table(net: nn.Module, spec: ZooSpec, x_test: np.ndarray, y_test: np.ndarray, *, log=print) -> dict | None:
    """Accuracy under every corruption at ``CORRUPTION_SEVERITY`` on the first ``CORRUPTION_SAMPLES`` test images.

    The images are corrupted in the layout ``spec.image_shape`` and fed to ``net`` in its own input
    layout (``accuracy`` reshapes them, so the flat MLP sees the same corrupted pixels).

    Returns the card fields, or None when ``provrepair.data.corruptions`` is not there yet.
    """
    try:
        from provrepair.data.corruptions import CORRUPTIONS, GROUPS, corrupt
    except ImportError as exc:
        log(f"{spec.name}: no corruption table ({exc}); re-run with --cards-only once provrepair.data.corruptions exists")
        return None
    n = min(CORRUPTION_SAMPLES, len(y_test))
    images = np.ascontiguousarray(x_test[:n]).reshape((n,) + tuple(spec.image_shape))
    labels = y_test[:n]
    start = time.perf_counter()
    table = {}
    for name in CORRUPTIONS:
        table[name] = round(float(accuracy(net, corrupt(images, name, CORRUPTION_SEVERITY, seed=CORRUPTION_SEED), labels)), 4)
    by_group = {g: round(float(np.mean([table[c] for c in names])), 4) for g, names in GROUPS.items()}
    log(f"{spec.name}: corruption table in {time.perf_counter() - start:.1f} s")
    return {
        "corruption_accuracy_severity3": table,
        "corruption_accuracy_severity3_by_group": by_group,
        "corruption_accuracy_severity3_mean": round(float(np.mean(list(table.values()))), 4),
        "corruption_eval": {
            "images": (f"all {n} images of the test set ({spec.test_data})" if n == len(y_test)
                       else f"the first {n} images of the test set ({spec.test_data})"),
            "severity": CORRUPTION_SEVERITY,
            "corruption_seed": CORRUPTION_SEED,
            "function": "provrepair.data.corruptions.corrupt(images, name, severity, seed=corruption_seed)",
            "clean_accuracy": round(float(accuracy(net, images, labels)), 4),  # on the same images, uncorrupted
        },
    }


def _measured_fields(spec: ZooSpec, pt: Path, x_test, y_test, *, log=print) -> dict:
    """Fields every card gets from the shipped file; the corruption table is measured on the loaded network."""
    loaded = load_model(pt)
    stored = torch.load(pt, map_location="cpu", weights_only=False)  # as saved: BatchNorm not folded
    fields: dict = {
        "weights_file": pt.name,
        "weights_bytes": pt.stat().st_size,
        "weights_state_sha256": state_sha256(stored),
    }
    if _has_batchnorm(stored):
        fields["batchnorm"] = "folded at load (the file stores the trained BatchNorm2d layers; load_zoo folds each into the conv before it)"
    fields["loaded_layers"] = [type(m).__name__ for m in loaded]
    from provrepair.models import front_info

    if front_info(loaded) is not None:
        fields["frozen_front"] = dict(front_info(loaded), note=(
            "the modules before the cut are a frozen front: point repair works at the affine layers of the back "
            "(layer 0 = the first Linear after the cut); regions cannot be certified through this front"))
    table = corruption_table(loaded, spec, x_test, y_test, log=log)
    if table is not None:
        fields.update(table)
    return fields


def write(net: nn.Sequential, card: dict, out_dir: Path, spec: ZooSpec, *, log=print) -> tuple[Path, Path, int]:
    """Save the weights and the card; the saved file is re-loaded and checked against the trained network.

    Returns the two paths and the number of test predictions on which the loaded (folded) network
    differs from the trained one (0 when all is well).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = save_model(net, out_dir / f"{card['name']}.pt")
    back = load_model(pt)
    if tuple(get_meta(back).input_shape or ()) != tuple(card["input_shape"]):
        raise RuntimeError(f"{pt}: the reloaded network lost its input shape")
    x_test, y_test = spec.data("test")
    trained_out = logits(net, x_test)
    loaded_out = logits(back, x_test)
    mismatches = int((trained_out.argmax(1) != loaded_out.argmax(1)).sum())
    card["reload_check"] = {
        "test_prediction_mismatches": mismatches,
        "max_abs_logit_difference": float(f"{float(np.abs(trained_out - loaded_out).max()):.3g}"),
    }
    card.update(_measured_fields(spec, pt, x_test, y_test, log=log))
    card_path = out_dir / f"{card['name']}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return pt, card_path, mismatches


def recompute_card(spec: ZooSpec, out_dir: Path, *, log=print) -> Path:
    """Re-measure the card of a shipped model (no training); training fields of the old card are kept."""
    pt = out_dir / f"{spec.name}.pt"
    card_path = out_dir / f"{spec.name}.json"
    if not pt.is_file():
        raise SystemExit(f"{pt} does not exist; train it first: python benchmarks/train_zoo.py --only {spec.name}")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"name": spec.name}
    torch.set_num_threads(1)
    net = load_model(pt)
    x_test, y_test = spec.data("test")
    card.update({
        "dataset": card.get("dataset", spec.dataset),
        "architecture": card.get("architecture", spec.architecture),
        "input_shape": list(get_meta(net).input_shape or spec.input_shape),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "train_data": card.get("train_data", spec.train_data),
        "test_data": spec.test_data,
        "test_accuracy": round(float(accuracy(net, x_test, y_test)), 4),
        "test_samples": len(y_test),
    })
    card.update(_measured_fields(spec, pt, x_test, y_test, log=log))
    card["card_measured_with"] = {"torch_version": torch.__version__, "python_version": platform.python_version()}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where to write <name>.pt and <name>.json")
    ap.add_argument("--only", nargs="+", choices=sorted(SPECS), help="train (or re-card) only these zoo models")
    ap.add_argument("--cards-only", action="store_true",
                    help="train nothing; recompute the cards (accuracies, corruption table) from the shipped weights")
    args = ap.parse_args(argv)
    status = 0
    for name in args.only or list(SPECS):
        spec = SPECS[name]
        if args.cards_only:
            card_path = recompute_card(spec, args.out_dir)
            card = json.loads(card_path.read_text())
            print(f"{name}: test accuracy {card['test_accuracy']:.4f}; rewrote {card_path}")
            continue
        net, card = train(spec)
        pt, card_path, mismatches = write(net, card, args.out_dir, spec)
        print(f"{name}: test accuracy {card['test_accuracy']:.4f}, trained in {card['train_time_s']:.1f} s; "
              f"wrote {pt} ({pt.stat().st_size / 1024:.0f} KiB) and {card_path}")
        if mismatches:
            print(f"{name}: ERROR: the reloaded (folded) network differs from the trained one on {mismatches} "
                  "test predictions", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
