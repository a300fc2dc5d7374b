"""The repairer registry: every method the harness can run, under one name, with typed options.

A :class:`Method` names a *runner* by import path (``"module:function"``), so registering a method
imports nothing: a repairer that is missing (or fails to import) is reported when it is asked for,
with a message that says what to do, and never breaks the others. A runner has the signature

    runner(net, data: TaskData, *, seed: int, options: dict) -> MethodOutput

(see :mod:`provrepair.evaluate.methods`). New methods plug in with :func:`register_method`; the
harness only ever looks methods up here.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InputError

__all__ = ["Option", "Method", "MethodUnavailableError", "register_method", "get_method", "available_methods",
           "resolve_methods", "parse_option_assignments", "KINDS"]

KINDS = ("provable", "statistical", "pipeline")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class MethodUnavailableError(InputError):
    """A registered method cannot run here (its module is missing or does not import)."""


@dataclass(frozen=True)
class Option:
    """One option of a method: its name, type (``int``, ``float``, ``str``, ``bool``; ``optional``:
    ``None`` is allowed), default and help text; ``choices`` restricts a ``str`` option."""

    name: str
    type: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def coerce(self, value: Any, method: str) -> Any:
        where = f"option {method}.{self.name}"
        if value is None or (isinstance(value, str) and value.lower() == "none" and self.optional):
            if self.optional:
                return None
            raise InputError(f"{where} needs a {self.type} value, got None")
        kind = _TYPES[self.type]
        try:
            if kind is bool:
                if isinstance(value, str):
                    low = value.lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    out = low in ("true", "1", "yes")
                elif isinstance(value, (bool, int)):
                    out = bool(value)
                else:
                    raise ValueError
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise InputError(f"{where} needs a {self.type} value, got {value!r}") from None
        if self.choices is not None and out not in self.choices:
            raise InputError(f"{where} must be one of {', '.join(self.choices)}, got {out!r}")
        return out


@dataclass(frozen=True)
class Method:
    """A registered repair method.

    ``kind``: ``provable`` (LP/MILP, certified by construction), ``statistical`` (training) or
    ``pipeline`` (a statistical ``stage`` method, then the LP polish). ``requires``: what the model
    must have (``"conv"``: at least one Conv2d). ``runner``: ``"module:function"``, imported on use.
    ``imports``: modules the runner needs (the repairer itself), checked when the method is loaded.
    """

    name: str
    kind: str
    summary: str
    runner: str
    options: tuple[Option, ...] = ()
    requires: tuple[str, ...] = ()
    stage: str | None = None
    install_hint: str = ""
    imports: tuple[str, ...] = ()

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        known = ", ".join(o.name for o in self.options) or "(none)"
        raise InputError(f"method {self.name!r} has no option {name!r}; its options: {known}")

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def resolve_options(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``given``, each value checked and converted to its declared type."""
        out = self.defaults()
        for key, value in (given or {}).items():
            out[key] = self.option(key).coerce(value, self.name)
        return out

    def check_model(self, net) -> None:
        """Refuse a model this method cannot repair, before any work."""
        if "conv" in self.requires:
            from torch import nn

            base = getattr(net, "base", net)
            if not any(isinstance(m, nn.Conv2d) for m in base.modules()):
                raise InputError(f"method {self.name!r} needs a convolutional network (it patches conv filters) "
                                 "but the model has no Conv2d layer; leave it out or give a CNN")

    def load(self) -> Callable:
        """The runner function (imported now)."""
        module, _, func = self.runner.partition(":")
        try:
            for name in self.imports:
                importlib.import_module(name)
            mod = importlib.import_module(module)
            fn = getattr(mod, func)
        except (ImportError, AttributeError) as exc:
            hint = self.install_hint or "update provrepair, or leave the method out of --methods"
            raise MethodUnavailableError(f"method {self.name!r} is registered but cannot be loaded "
                                         f"({type(exc).__name__}: {exc}); {hint}") from None
        return fn

    def available(self) -> bool:
        try:
            self.load()
            if self.stage:
                get_method(self.stage).load()
        except MethodUnavailableError:
            return False
        return True


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to redefine a name)."""
    if method.kind not in KINDS:
        raise InputError(f"method kind must be one of {', '.join(KINDS)}, got {method.kind!r}")
    if method.name in _REGISTRY and not replace:
        raise InputError(f"a method named {method.name!r} is already registered; pass replace=True to redefine it")
    if "," in method.name or not method.name.strip():
        raise InputError(f"method names must be non-empty and contain no comma, got {method.name!r}")
    _REGISTRY[method.name] = method
    return method


def _builtins() -> None:
    from . import methods  # noqa: F401  (registers the built-in methods)


def available_methods() -> list[str]:
    """Every registered method name, in registration order."""
    _builtins()
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    _builtins()
    method = _REGISTRY.get(name)
    if method is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown method {name!r}{hint}; available: {', '.join(_REGISTRY)}")
    return method


def resolve_methods(spec: str | list[str] | None, *, all_methods: bool = False, net=None,
                    notes: list[str] | None = None) -> list[Method]:
    """The methods named by ``spec`` (``"a,b"`` or a list), or every registered one with
    ``all_methods``. Named methods must be available and fit ``net`` (else a clear error);
    with ``all_methods`` the ones that cannot run are skipped and the reason is appended to ``notes``."""
    _builtins()
    if all_methods:
        chosen = []
        for m in _REGISTRY.values():
            try:
                if net is not None:
                    m.check_model(net)
                    if m.stage:
                        get_method(m.stage).check_model(net)
                m.load()
                if m.stage:
                    get_method(m.stage).load()
            except InputError as exc:
                if notes is not None:
                    notes.append(f"skipped {m.name}: {exc}")
                continue
            chosen.append(m)
        return chosen
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise InputError("name the methods to compare with --methods a,b,... or use --all; available: "
                         + ", ".join(_REGISTRY))
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if any(not n for n in names):
        raise InputError(f"--methods has an empty name in {spec!r}; separate names by single commas")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--methods names {', '.join(dup)} more than once; name each method once")
    methods = [get_method(n) for n in names]
    for m in methods:
        parts = [m] + ([get_method(m.stage)] if m.stage else [])
        for part in parts:
            if net is not None:
                part.check_model(net)
            part.load()
    return methods


def parse_option_assignments(items: list[str] | None, methods: list[Method]) -> dict[str, dict[str, Any]]:
    """``["finetune.epochs=2", "aprnn.layer=3"]`` -> ``{"finetune": {"epochs": "2"}, ...}``, checked
    against the methods' declared options (values are converted by :meth:`Method.resolve_options`).
    A pipeline's stage options are given under the stage's name and apply inside the pipeline too."""
    out: dict[str, dict[str, Any]] = {}
    names = {m.name: m for m in methods}
    for m in methods:
        if m.stage:
            names.setdefault(m.stage, get_method(m.stage))
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, opt = key.partition(".")
        if not sep or not dot or not method or not opt:
            raise InputError(f"--option takes METHOD.NAME=VALUE (e.g. finetune.epochs=2), got {item!r}")
        if method not in names:
            raise InputError(f"--option {item!r} names method {method!r}, which is not being run "
                             f"(running: {', '.join(names)})")
        names[method].option(opt).coerce(value, method)
        out.setdefault(method, {})[opt] = value
    return out
