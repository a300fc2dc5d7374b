"""Typed options of the repairers, written once.

Each repairer's options are a dataclass. A field declared with :func:`option` (a help text, and
``choices`` for a string) is a *user option*: the API takes it as a keyword, the registry lists it
(:func:`options_of`), the harness accepts it as ``--option METHOD.NAME=VALUE`` and the CLI builds its
``--name`` flag from it (:func:`add_flags`). A plain field is an internal knob of the API only.

This module imports neither torch nor numpy: ``provrepair --help`` builds every flag from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from provrepair.solvers.names import METHODS, SOLVERS

from ..errors import InputError

__all__ = ["Option", "option", "options_of", "add_flags", "given_flags", "build", "check_choice",
           "PointRepairOptions", "PolytopeRepairOptions", "PolishOptions", "parse_index_set", "OBJECTIVES", "STRATEGIES", "BOX_ENCODINGS", "HULLS",
           "DISJUNCTION_MODES"]

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One user option: its name, type (``int``, ``float``, ``str``, ``bool``; ``optional``: ``None``
    is allowed), default and help text; ``choices`` restricts a ``str`` option."""

    name: str
    type: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    optional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any, method: str) -> Any:
        """``value`` (a string from the command line, or a Python value) checked and converted."""
        where = f"option {method}.{self.name}"
        if value is None or (isinstance(value, str) and value.lower() == "none" and self.optional):
            if self.optional:
                return None
            raise InputError(f"{where} needs a {self.type} value, got None")
        try:
            out = _convert(_TYPES[self.type], value)
        except (TypeError, ValueError):
            raise InputError(f"{where} needs a {self.type} value, got {value!r}") from None
        if self.choices is not None and out not in self.choices:
            raise InputError(f"{where} must be one of {', '.join(self.choices)}, got {out!r}")
        return out


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str):
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(value, (bool, int)):
            return bool(value)
        raise ValueError
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    return str(value)


def option(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field that is a user option (see the module docstring)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _declared(annotation: str) -> tuple[str, bool]:
    """``"float | None"`` -> ``("float", True)``."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    kinds = [p for p in parts if p != "None"]
    if len(kinds) != 1 or kinds[0] not in _TYPES:
        raise TypeError(f"a user option must be int, float, str or bool (optionally | None), got {annotation!r}")
    return kinds[0], optional


def options_of(cls: type, **defaults: Any) -> tuple[Option, ...]:
    """The user options of the options dataclass ``cls``; ``defaults`` overrides some defaults (the
    harness trains for fewer epochs than the API, for instance)."""
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, optional = _declared(f.type)
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        out.append(Option(f.name, kind, default, f.metadata["help"], f.metadata["choices"], optional))
    unknown = set(defaults) - {o.name for o in out}
    if unknown:
        raise TypeError(f"{cls.__name__} has no user option {', '.join(sorted(unknown))}")
    return tuple(out)


def add_flags(parser: argparse.ArgumentParser, options: Sequence[Option], *, skip: Sequence[str] = (),
              help_prefix: dict[str, str] | None = None) -> list[str]:
    """One ``--name`` flag per option (defaults shown in the help, but left ``None`` in the parsed
    arguments so that :func:`given_flags` passes on only what the user gave). Returns the names."""
    names = []
    for o in options:
        if o.name in skip:
            continue
        text = (help_prefix or {}).get(o.name, "") + o.help
        if o.default is not None and o.type != "bool":
            text += f" (default {o.default})"
        if o.type == "bool":
            parser.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text + (" (default: on)" if o.default else " (default: off)"))
        else:  # choices are checked by the options themselves, so the message is the API's
            metavar = "{" + ",".join(o.choices) + "}" if o.choices else o.name.upper()
            parser.add_argument(o.flag, dest=o.name, type=_TYPES[o.type], default=None, metavar=metavar, help=text)
        names.append(o.name)
    return names


def given_flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The options among ``names`` that the user gave on the command line."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def build(cls: type, options: Any = None, **changes: Any) -> Any:
    """``options`` (or the defaults of ``cls``) with keyword ``changes``; an unknown name is the
    user's error, reported with the names that exist."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} has: {', '.join(sorted(known))}")
    if options is None:
        return cls(**changes)
    if not isinstance(options, cls):
        raise InputError(f"options must be a {cls.__name__}, got {type(options).__name__}")
    return dataclasses.replace(options, **changes) if changes else options


def check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices`` (an error naming them otherwise)."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {what} {value!r}; use one of: {', '.join(choices)}")
    return value


def _check_fields(opts: Any) -> None:
    """Every choice-restricted user option of ``opts`` holds one of its choices."""
    for f in dataclasses.fields(opts):
        choices = f.metadata.get("choices")
        if choices is not None:
            check_choice(getattr(opts, f.name), choices, f.name.replace("_", " "))


# --------------------------------------------------------------------------------------------------
# the provable repairers

OBJECTIVES = ("linf+l1", "l1", "linf", "outputs")
STRATEGIES = ("generate", "full")
LINF_MODES = ("auto", "rows", "search")
BOX_ENCODINGS = ("auto", "corners", "generators")
HULLS = ("exact", "interval")
DISJUNCTION_MODES = ("auto", "fix", "milp")


@dataclass
class PointRepairOptions:
    """The LP point repair (``repair.aprnn``) at one layer."""

    delta_bound: float = option(3.0, "bound on every parameter change")  # B: every delta lies in [-B, B]
    margin: float = option(1e-3, "required output margin in the LP")  # eps: slack of each output row
    objective: str = option("linf+l1", "LP objective: the parameter change (linf+l1, l1, linf), or outputs: the "
                                       "mean |output change| at keep points plus linf+l1 (needs a keep-set)",
                            choices=OBJECTIVES)
    objective_points: int = 200  # objective outputs: the first this many keep points enter the LP up front
    neurons: Sequence[int] | None = None  # rows of W_k (output neurons/channels) allowed to change
    rows: str | None = option(None, "rows of the repair layer's weights that may change (its output neurons), "
                                    "e.g. 0:64 or 1,5,9 or 0:8,12; default all")
    channels: str | None = option(None, "output channels of a Conv2d repair layer that may change, as --rows")
    later_biases: bool = True  # also change the biases of every later affine layer
    # keep-sets (repair/keep.py): inputs the network gets right that must stay right, entered lazily
    keep: Any = None  # a PointSpec (the CLI's --keep FILE)
    keep_from: str | None = option(None, "keep N images of a shipped dataset that the model classifies right, "
                                         "DATASET:SPLIT:N, e.g. mnist:train:2000")
    keep_margin: float = option(1.0, "output slack each keep point must keep (at most half of what it had)")
    keep_batch: int = 500  # keep points entering the LP per round at most, the worst flipped first
    solver: str = option("highs", "LP/MILP solver", choices=SOLVERS)
    method: str = option("auto", "LP algorithm of the first solve (later rounds re-solve warm)", choices=METHODS)
    time_limit: float | None = option(None, "seconds for the whole LP repair")
    threads: int | None = option(None, "solver threads")
    solver_options: dict = field(default_factory=dict)  # passed to the backend verbatim
    strategy: str = option("generate", "generate activation-pattern rows lazily, or build them all up front",
                           choices=STRATEGIES)
    linf: str = option("auto", "how the LP holds the L-inf term: rows (one epigraph row per parameter), search (a "
                               "1-D search over the bound, each probe an L1 LP), or auto: search where no activation "
                               "pattern after the layer needs rows and a later layer exists, i.e. at a network's last "
                               "hidden layer (the zoo MLP's layer 1: 2.8x faster than rows; deeper in a network the "
                               "rows were faster; benchmarks/results/point_repair.json)",
                       choices=LINF_MODES)
    pattern_tol: float = 1e-7  # a pattern counts as kept while the pre-activation is off by less
    # weight columns of W_k: "all" up front, or "lazy" (start with the best-ranked share, add those
    # whose reduced cost is negative, as the pattern rows; HiGHS only). Lazy gives the same optimum
    # with half the nonzeros on the 9x100 at layer 5, but HiGHS's re-solves after adding columns are
    # slow: 31 s against 27 s there, 152 s against 74 s on the MLP's layer 1 (57% of its weights move).
    columns: str = "all"
    # "u": an auxiliary u_p per point (rows u_p = (W_k + ΔW_k) h_p + b_k + Δb_k); "substituted": u
    # substituted out, every row over the deltas; "auto": substituted for a conv layer, the last layer and
    # the last hidden one (aprnn.PointLP._substitute)
    formulation: str = "auto"
    # pattern rows added per round at most, the most violated first: a number, None (every violated
    # row) or "auto" (300 or a tenth of the LP's rows or columns, whichever is more: aprnn.POINT_PATTERN_ROWS)
    max_pattern_rows: int | str | None = "auto"
    price_tol: float = 1e-9  # a column prices in below -price_tol * max(its cost, 1)
    max_columns: float = 0.05  # share of the weight columns added per round at most (the most negative first)
    start_columns: float = 0.1  # share of the weight columns in the first lazy round (ranked by output pull)
    max_rounds: int = 100
    # which layer: an affine index (negative counts from the end) or "auto" (ranked by ``heuristic``,
    # default the benchmark's best, tried in order until one certifies); the CLI's --layer/--heuristic
    layer: int | str = -1
    heuristic: str | None = None

    def validate(self) -> None:
        if not self.delta_bound > 0:
            raise InputError(f"delta bound must be positive, got {self.delta_bound}")
        if not self.margin >= 0:
            raise InputError(f"margin must be >= 0, got {self.margin}")
        if not self.keep_margin >= 0:
            raise InputError(f"keep margin must be >= 0, got {self.keep_margin}")
        if isinstance(self.keep_batch, bool) or not isinstance(self.keep_batch, int) or self.keep_batch < 1:
            raise InputError(f"keep_batch must be a positive integer, got {self.keep_batch!r}")
        cap = self.max_pattern_rows
        if cap is not None and cap != "auto" and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise InputError(f"max_pattern_rows must be a positive integer, 'auto' or None (every violated row), "
                             f"got {cap!r}")
        _check_fields(self)
        self.selected_rows()

    def selected_rows(self) -> tuple[int, ...] | None:
        """The rows (output neurons or channels) of the repair layer that may change, from
        ``neurons``, ``rows`` or ``channels`` (at most one of them); None: all. The layer's size
        is checked where the layer is known (``aprnn.PointLP``)."""
        given = [(name, getattr(self, name)) for name in ("neurons", "rows", "channels")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise InputError(f"give the rows that may change once: {' and '.join(n for n, _ in given)} were both given")
        if not given:
            return None
        name, value = given[0]
        return parse_index_set(value, name)


def parse_index_set(value: Any, what: str) -> tuple[int, ...]:
    """Sorted distinct indices from ``"0:64"`` (a half-open range), ``"1,5,9"``, a mix
    (``"0:8,12"``) or a sequence of integers; an empty, reversed or negative item is the user's
    error."""
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",")]
        if not value.strip() or any(not t for t in items):
            raise InputError(f"{what} takes indices like 0:64 or 1,5,9, got {value!r}")
        out: set[int] = set()
        for t in items:
            try:
                if ":" in t:
                    a, b = (int(x) for x in t.split(":"))
                    if not 0 <= a < b:
                        raise InputError(f"{what}: range {t!r} is empty or negative; write START:STOP with "
                                         "0 <= START < STOP (STOP excluded)")
                    out.update(range(a, b))
                else:
                    out.add(int(t))
            except ValueError:
                raise InputError(f"{what} takes indices like 0:64 or 1,5,9, got {value!r}") from None
    else:
        try:
            out = {int(v) for v in value}
        except (TypeError, ValueError):
            raise InputError(f"{what} must be indices like 0:64 or 1,5,9, got {value!r}") from None
    if not out or min(out) < 0:
        raise InputError(f"{what} must be non-negative indices, got {value!r}")
    return tuple(sorted(out))


@dataclass
class PolytopeRepairOptions(PointRepairOptions):
    """Region repair (``repair.polytope``): the point LP's options and the shift/assert stages'."""

    shift_start: int = option(0, "regions: first affine layer the shift LPs may change")
    shift_delta_bound: float | None = None  # delta bound of the shift LPs (default: delta_bound)
    box_encoding: str = option(
        "auto", "boxes: centre + one generator per free input (rows grow linearly with the inputs), or every "
                "corner (2^n); auto uses generators from 3 free inputs on where the property is a conjunction",
        choices=BOX_ENCODINGS)
    disjunctions: str = option("auto", "regions: a disjunctive property as one fixed row per region (fix), "
                                       "binaries (milp), or fix then milp (auto)", choices=DISJUNCTION_MODES)
    hull: str = option(
        "exact", "regions: exact (shift LPs make the network affine on each region, then the assert at its "
                 "vertices) or interval (the last layer only, over each region's CROWN interval at its input: "
                 "no shift LP, one small LP; try it when a shift LP fails)", choices=HULLS)
    keep_soft: float | None = option(
        None, "regions with kept points: let the LP break a kept point's rows at this cost per unit of output "
              "slack (on the scale of the L-inf change) instead of failing when the regions leave it no room; "
              "default: kept points are hard rows")
    certify_method: str = "auto"  # how the repaired regions are certified (provrepair.certify)
    # a region's vertex and generator rows come in together; aprnn caps only conv-layer LPs here
    max_pattern_rows: int | None = None
    certify_timeout: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.keep_soft is not None and not (isinstance(self.keep_soft, (int, float)) and self.keep_soft > 0):
            raise InputError(f"keep_soft must be a positive weight or None (kept points are hard rows), "
                             f"got {self.keep_soft!r}")


@dataclass
class PolishOptions(PointRepairOptions):
    """The certified pipelines' LP polish: the point LP at the last affine layers, last first."""

    max_layers: int = option(2, "how many of the last affine layers the polish may try, last first")


# --------------------------------------------------------------------------------------------------
# the statistical repairers

__all__ += ["TrainingOptions", "FinetuneOptions", "AugmixOptions", "DeepPatchOptions", "MetaRepairOptions",
            "check_positive_float", "AUGMENTS", "VARIANTS", "RANKINGS", "INITS", "UPDATES", "META_OPTIMIZERS",
            "FEATURES", "DEFAULT_EPOCHS", "DEFAULT_LR", "PATCH_LR", "DEFAULT_INIT", "DEFAULT_BATCH", "JSD_WEIGHT"]

AUGMENTS = ("blur", "spatial")
VARIANTS = ("gamma", "beta", "fallback")
RANKINGS = ("alpha", "random", "bottom")
INITS = ("random", "clone")
UPDATES = ("accumulated", "separate")
META_OPTIMIZERS = ("sgd", "adam")
FEATURES = ("penultimate", "inception")

#: Training defaults, chosen so that the benchmark fits a 2-core CPU (see benchmarks/deeppatch.py).
DEFAULT_EPOCHS = 3
#: Learning rate of the baselines, which fine-tune trained weights (the paper's SGD setting).
DEFAULT_LR = 0.01
#: Learning rate of DeepPatch's replacement filters: the only trainable weights, few of them, behind
#: frozen layers. At 0.01 they are still far from converged after the default 3 epochs.
PATCH_LR = 0.2
#: How replacement filters start: "clone" (copies of the blamed filters) or "random" (the paper's).
DEFAULT_INIT = "clone"
DEFAULT_BATCH = 128
#: AugMix's weight of the Jensen-Shannon consistency loss.
JSD_WEIGHT = 12.0


@dataclass
class TrainingOptions:
    """What every training repairer (fine-tuning, AugMix, DeepPatch) takes; the data and the augmentor
    are its target (:class:`~provrepair.repair.training.RobustnessTask`)."""

    epochs: int = option(DEFAULT_EPOCHS, "training epochs")
    lr: float = option(DEFAULT_LR, "SGD learning rate, cosine-decayed to 0")
    batch_size: int = option(DEFAULT_BATCH, "training batch size")
    device: str = option("auto", "auto (the GPU when there is one), cpu or cuda; a given task keeps its own")
    seed: int = option(0, "initialisation, data order and augmentation")


@dataclass
class FinetuneOptions(TrainingOptions):
    """Fine-tuning of the whole network: the training options alone."""


@dataclass
class AugmixOptions(TrainingOptions):
    """AugMix-style training: the training options and the consistency loss's weight."""

    jsd_weight: float = option(JSD_WEIGHT, "weight of the Jensen-Shannon consistency loss")


@dataclass
class DeepPatchOptions(TrainingOptions):
    """DeepPatch: which filters get replacements, how they start, how the patched model routes."""

    lr: float = option(PATCH_LR, "SGD learning rate of the replacement filters, cosine-decayed to 0")
    ratio: float = option(0.25, "blamed ratio kappa per conv layer: a fraction (0.25) or a percentage (25)")
    variant: str = option("gamma", "gamma (per-sample switch), beta (always the replacements), fallback "
                                   "(the originals)", choices=VARIANTS)
    ranking: str = option("alpha", "which filters get replacements: alpha (assessment), bottom or random",
                          choices=RANKINGS)
    init: str = option(DEFAULT_INIT, "how replacement filters start: clone (copies of the blamed filters) or "
                                     "random (the paper's re-initialisation)", choices=INITS)
    assessment: Any = None  # a FilterAssessment to reuse (benchmarks patch one network many times)


def _real(value) -> bool:
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_float(value, what: str) -> float:
    """``value`` as a finite ``float`` > 0."""
    import math

    if not _real(value) or not value > 0 or not math.isfinite(value):
        raise InputError(f"{what} must be a positive number, got {value!r}")
    return float(value)


@dataclass
class MetaRepairOptions:
    """Every tunable of MetaRepair (defaults chosen so that the benchmark fits a 2-core CPU).

    ``replay``: clean training images added to every training batch per failure in it (0: none), so
    that repairing the failures does not cost clean accuracy; every method (the baselines too) gets
    the same. ``meta_lr``: Adam's step on the meta-gradient; 1e-3 (and SGD at 0.05) drove the zoo
    Fashion-MNIST CNN's meta-trained weights to predicting nearly one class (74-82 points of clean
    accuracy lost before the meta-test), 1e-4 loses 2-14 points there over 20 episodes (the meta-test's
    replay then recovers most of it). ``collect``: ``|D_collect|`` per corruption, a count, or a fraction
    in (0, 1) of the failures. ``min_fail``: the fewest target failures that must remain for
    ``D_fail^t``. ``k``: experiences kept by ``experiences="auto"``. ``train_limit`` / ``test_limit``:
    use the first N images of the training / test split (None: all; they size the target's data).
    ``alpha`` / ``beta``: the confidence's temperature and shift, a number or ``"auto"``.
    """

    collect: float = option(1000, "collected failures per corruption: a count or a fraction < 1")
    min_fail: int = option(50, "fewest target failures left for evaluation")
    k: int = option(5, "experiences kept by experiences=auto")
    features: str = option("penultimate", "features of the Frechet distance", choices=FEATURES)
    alpha: float | str = "auto"
    beta: float | str = "auto"
    confidence: bool = option(True, "sample experiences by their Frechet confidence (off: uniformly)")
    episodes: int = option(40, "meta-training episodes")
    tasks: int = option(5, "tasks per episode (and target tasks of the meta-test)")
    shots: int = option(10, "collected failures per class in a meta-training task")
    query: int = option(100, "held-out failures in a meta-training task's test part")
    inner_steps: int = option(2, "inner-loop SGD steps of meta-training")
    inner_lr: float = option(0.05, "inner-loop SGD step")
    second_order: bool = option(False, "second-order MAML (default: first-order)")
    meta_lr: float = option(0.0001, "meta-training step")
    meta_optimizer: str = option("adam", "optimiser of the meta-gradient", choices=META_OPTIMIZERS)
    adapt_steps: int = option(30, "meta-test SGD steps per task")
    adapt_lr: float = option(0.05, "meta-test SGD step")
    adapt_batch: int = option(64, "meta-test mini-batch")
    update: str = option("accumulated", "meta-test updates: accumulated (task s starts where s-1 ended) or "
                                        "separate", choices=UPDATES)
    replay: float = option(1.0, "clean training images per failure in every training batch, 0-16")
    train_limit: int | None = option(10000, "use the first N training images")
    test_limit: int | None = option(None, "use the first N test images")
    device: str = option("auto", "auto (the GPU when there is one), cpu or cuda; a given target keeps its own")
    seed: int = option(0, "task sampling and data order")

    def __post_init__(self):
        from ..data.checks import check_int

        c = self.collect
        if _real(c) and not float(c).is_integer() and 0 < c < 1:
            self.collect = float(c)
        else:  # a count; a whole float (a --collect flag's 1000.0) counts too
            c = int(c) if _real(c) and float(c).is_integer() and c >= 1 else c
            self.collect = check_int(c, "collect (a count, or a fraction in (0, 1) of the failures)")
        for name in ("min_fail", "k", "episodes", "tasks", "shots", "query", "inner_steps", "adapt_steps",
                     "adapt_batch"):
            setattr(self, name, check_int(getattr(self, name), name))
        for name in ("inner_lr", "meta_lr", "adapt_lr"):
            setattr(self, name, check_positive_float(getattr(self, name), name))
        if self.alpha != "auto":
            self.alpha = check_positive_float(self.alpha, "alpha")
        if self.beta != "auto":
            if not _real(self.beta):
                raise InputError(f"beta must be a number or 'auto', got {self.beta!r}")
            self.beta = float(self.beta)
        for name, choices in (("features", FEATURES), ("update", UPDATES), ("meta_optimizer", META_OPTIMIZERS)):
            if getattr(self, name) not in choices:
                raise InputError(f"unknown {name} {getattr(self, name)!r}; use one of: {', '.join(choices)}")
        if not _real(self.replay) or not 0 <= self.replay <= 16:
            raise InputError(f"replay must be a number from 0 to 16 (clean images per failure in a batch), got {self.replay!r}")
        self.replay = float(self.replay)
        self.confidence = bool(self.confidence)
        self.second_order = bool(self.second_order)
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            setattr(self, name, None if v is None else check_int(v, name))
        self.seed = check_int(self.seed, "seed", lo=0)

    @classmethod
    def from_kwargs(cls, **kwargs) -> MetaRepairOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InputError(f"unknown MetaRepair option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)

    def replace(self, **changes) -> MetaRepairOptions:
        return MetaRepairOptions.from_kwargs(**{**dataclasses.asdict(self), **changes})

    def n_collect(self, failures: int) -> int:
        """``|D_collect|`` for a corruption with ``failures`` failures."""
        import math

        if isinstance(self.collect, float):
            return int(math.floor(self.collect * failures))
        return self.collect
