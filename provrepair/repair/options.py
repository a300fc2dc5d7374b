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

from solvers.names import METHODS, SOLVERS

from ..errors import InputError

__all__ = ["Option", "option", "options_of", "add_flags", "given_flags", "build", "check_choice",
           "PointRepairOptions", "PolytopeRepairOptions", "PolishOptions", "OBJECTIVES", "STRATEGIES", "BOX_ENCODINGS", "HULLS",
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
        else:
            parser.add_argument(o.flag, dest=o.name, type=_TYPES[o.type], choices=o.choices, default=None,
                                metavar=None if o.choices else o.name.upper(), help=text)
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
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def _check_fields(opts: Any) -> None:
    """Every choice-restricted user option of ``opts`` holds one of its choices."""
    for f in dataclasses.fields(opts):
        choices = f.metadata.get("choices")
        if choices is not None:
            check_choice(getattr(opts, f.name), choices, f.name.replace("_", " "))


# --------------------------------------------------------------------------------------------------
# the provable repairers

OBJECTIVES = ("linf+l1", "l1", "linf")
STRATEGIES = ("generate", "full")
BOX_ENCODINGS = ("auto", "corners", "generators")
HULLS = ("exact", "interval")
DISJUNCTION_MODES = ("auto", "fix", "milp")


@dataclass
class PointRepairOptions:
    """The LP point repair (``repair.aprnn``) at one layer."""

    delta_bound: float = option(3.0, "bound on every parameter change")  # B: every delta lies in [-B, B]
    margin: float = option(1e-3, "required output margin in the LP")  # eps: slack of each output row
    objective: str = option("linf+l1", "LP objective over the parameter changes", choices=OBJECTIVES)
    neurons: Sequence[int] | None = None  # rows of W_k (output neurons/channels) allowed to change
    later_biases: bool = True  # also change the biases of every later affine layer
    solver: str = option("highs", "LP/MILP solver", choices=SOLVERS)
    method: str = option("auto", "LP algorithm of the first solve (later rounds re-solve warm)", choices=METHODS)
    time_limit: float | None = option(None, "seconds for the whole LP repair")
    threads: int | None = option(None, "solver threads")
    solver_options: dict = field(default_factory=dict)  # passed to the backend verbatim
    strategy: str = option("generate", "generate activation-pattern rows lazily, or build them all up front",
                           choices=STRATEGIES)
    pattern_tol: float = 1e-7  # a pattern counts as kept while the pre-activation is off by less
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
        _check_fields(self)


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
    keep: Any = None  # a PointSpec whose outputs the repair must keep (locality); see RegionRepairer
    certify_method: str = "auto"  # how the repaired regions are certified (provrepair.certify)
    certify_timeout: float | None = None


@dataclass
class PolishOptions(PointRepairOptions):
    """The certified pipelines' LP polish: the point LP at the last affine layers, last first."""

    max_layers: int = option(2, "how many of the last affine layers the polish may try, last first")


# --------------------------------------------------------------------------------------------------
# the statistical repairers
