"""The methods the comparison harness can run, each under one name, with typed options.

A :class:`Method` is a repairer of :mod:`provrepair.repair.registry` (by name, so registering a
method imports nothing), the kind of target the harness builds for it (see
:mod:`provrepair.evaluate.methods`), and the harness's defaults. Its options are the repairer's
typed options plus the few the harness itself consumes (``extra``). A repairer that is missing (or
fails to import) is reported when it is asked for, with a message that says what to do, and never
breaks the others. New methods plug in with :func:`register_method`; the harness only ever looks
methods up here.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..repair.options import Option, options_of
from ..repair.protocol import KINDS, Repairer
from ..repair.registry import REPAIRERS, RepairerUnavailableError, load_class

__all__ = ["Option", "Method", "MethodUnavailableError", "register_method", "get_method", "available_methods",
           "resolve_methods", "parse_option_assignments", "KINDS"]

#: A registered method cannot run here (its repairer is missing or does not import).
MethodUnavailableError = RepairerUnavailableError


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``kind``: ``provable`` (LP/MILP, certified by construction), ``statistical`` (training) or
    ``pipeline`` (a statistical ``stage`` method, then the LP polish). ``repairer``: a name in
    :data:`provrepair.repair.registry.REPAIRERS` or ``"module:Class"``. ``target``: a key of
    :data:`provrepair.evaluate.methods.TARGETS`. ``defaults``: the harness's own defaults for some
    of the repairer's options; ``extra``: options the harness consumes itself. ``requires``: what
    the model must have (``"conv"``: at least one Conv2d).
    """

    name: str
    kind: str
    summary: str
    repairer: str
    target: str
    defaults: dict = field(default_factory=dict)
    extra: tuple[Option, ...] = ()
    requires: tuple[str, ...] = ()
    stage: str | None = None
    install_hint: str = ""

    def repairer_class(self) -> type:
        return load_class(REPAIRERS.get(self.repairer, self.repairer), f"method {self.name!r}", self.install_hint)

    def repairer_instance(self) -> Repairer:
        return self.repairer_class()()

    @property
    def options(self) -> tuple[Option, ...]:
        defaults = {k: v for k, v in self.defaults.items()
                    if k in {f.name for f in dataclasses.fields(self.repairer_class().Options)}}
        return (*self.extra, *options_of(self.repairer_class().Options, **defaults))

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        known = ", ".join(o.name for o in self.options) or "(none)"
        raise InputError(f"method {self.name!r} has no option {name!r}; its options: {known}")

    def resolve_options(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``given``, each value checked and converted to its declared type."""
        out = {o.name: o.default for o in self.options}
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

    def load(self) -> type:
        """The repairer class (imported now; raises :class:`MethodUnavailableError`)."""
        return self.repairer_class()

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
