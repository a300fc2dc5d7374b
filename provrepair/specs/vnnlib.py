"""VNN-LIB 1.0 properties: a small reader and writer.

A VNN-LIB file declares the inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{m-1}`` and asserts
the **unsafe** case: an input the file allows whose output satisfies the output constraints is a
counterexample. Supported (what VNN-COMP benchmarks use)::

    ; comments run to the end of the line
    (declare-const X_0 Real)            ... every X_i and Y_j, before use
    (assert (<= X_0 0.5))               top-level asserts form a conjunction
    (assert (>= X_0 (- 0.5)))           terms: variables, numbers (1, -0.5, 1e-3, (- 0.5)),
    (assert (<= (+ X_0 (* 2 X_1)) 1))   (+ ...), (- a), (- a b ...), (* c X_i): linear only
    (assert (or (and (>= Y_0 Y_1) (>= Y_0 Y_2)) (and ...)))    and / or, nested freely

plus ``(= a b)`` as shorthand for both ``<=`` and ``>=``. The formula is brought to disjunctive
normal form (at most :data:`MAX_DNF_TERMS` terms). Every constraint is over inputs only or outputs
only. Terms with the same input part form one region: a :class:`~.regions.Box` when every input
constraint bounds a single variable, else an :class:`~.regions.HPolytope`; its output parts are the
region's unsafe disjuncts. So both the plain style (input bounds and output rows as top-level
asserts) and the VNN-COMP style ``(assert (or (and <input box> <outputs>) ...))`` are understood.
Every input of every region must have a lower and an upper bound.

Why our own parser: the ``vnnlib`` package on PyPI (1.x) implements VNN-LIB 2.0 syntax as a
compiled extension and reduces inputs to boxes; VNN-LIB 1.0 needs only this much code, and we want
errors that name the file, line, column and token.
"""

from __future__ import annotations

import bisect
import gc
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from ..errors import InputError, SpecError
from ..fileio import write_text_atomic
from .regions import Box, HPolytope, OutputProperty, Region, RegionSpec, VPolytope

__all__ = ["MAX_DNF_TERMS", "format_vnnlib", "read_vnnlib", "write_vnnlib"]

#: Largest disjunctive normal form the reader expands (terms after distributing and over or).
MAX_DNF_TERMS = 10_000

_TOKENS = re.compile(r";[^\n]*|[()]|[^\s();]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")
_IGNORED_COMMANDS = ("set-info", "set-logic", "set-option", "check-sat", "get-model", "exit")
#: ``(lower, upper, ids of the multi-variable rows)`` of one term's input region.
_RegionParts: TypeAlias = tuple[np.ndarray, np.ndarray, tuple[int, ...]]


# ---------------------------------------------------------------------- S-expressions
class _Tok:
    """A token and its offset in the text (line and column are worked out only for a message)."""

    __slots__ = ("at", "text")

    def __init__(self, text: str, at: int):
        self.text = text
        self.at = at


class _List:
    """A parenthesised expression: its items, and the offsets of its '(' and ')'."""

    __slots__ = ("at", "end", "items")

    def __init__(self, at: int):
        self.items: list[_Tok | _List] = []
        self.at = at
        self.end = at


class _Source:
    """The text being read, and how to point at a place in it."""

    def __init__(self, text: str, name: str):
        self.text = text
        self.name = name
        self._line_starts: list[int] | None = None

    def pos(self, at: int) -> tuple[int, int]:
        """(line, column), both from 1, of a text offset."""
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_right(self._line_starts, at)
        return line, at - self._line_starts[line - 1] + 1

    def where(self, at: int) -> str:
        line, col = self.pos(at)
        return f"{line}:{col}"

    def error(self, at: _Tok | _List | int, message: str) -> SpecError:
        offset = at if isinstance(at, int) else at.at
        return SpecError(f"{self.name}:{self.where(offset)}: {message}")

    def parse(self) -> list[_Tok | _List]:
        root = _List(0)
        stack = [root]
        top = root.items
        for m in _TOKENS.finditer(self.text):
            s = m.group()
            if s == "(":
                node = _List(m.start())
                stack.append(node)
                top = node.items
            elif s == ")":
                if len(stack) == 1:
                    raise self.error(m.start(), "unexpected ')' without a matching '('; remove it")
                node = stack.pop()
                node.end = m.start()
                top = stack[-1].items
                top.append(node)
            elif s[0] != ";":
                top.append(_Tok(s, m.start()))
        if len(stack) > 1:
            raise self.error(stack[-1], "expected ')' but found the end of the file: this '(' is never closed; add the missing ')'")
        return root.items


def _show(item: Any) -> str:
    if isinstance(item, _Tok):
        return f"'{item.text}'"
    if item.items and isinstance(item.items[0], _Tok):
        return f"'({item.items[0].text} ...)'"
    return "'('"


# ---------------------------------------------------------------------- linear terms and DNF
@dataclass
class _Lin:
    """``sum coefs[v] * v + const`` with ``v = ('X' | 'Y', index)``; ``first`` = a token per kind."""

    coefs: dict[tuple[str, int], float]
    const: float
    first: dict[str, _Tok]

    def scaled(self, c: float) -> _Lin:
        return _Lin({k: c * v for k, v in self.coefs.items()}, c * self.const, self.first)

    def plus(self, other: _Lin, sign: float = 1.0) -> _Lin:
        coefs = dict(self.coefs)
        for k, v in other.coefs.items():
            coefs[k] = coefs.get(k, 0.0) + sign * v if k in coefs else sign * v
        first = {**other.first, **self.first}
        return _Lin(coefs, self.const + sign * other.const, first)


@dataclass(frozen=True)
class _Atom:
    """``sum coefs * var <= rhs`` over the variables of one kind ('X' or 'Y')."""

    kind: str
    coefs: tuple[tuple[int, float], ...]  # ((index, coef), ...) sorted by index, no zeros
    rhs: float


class _Reader:
    def __init__(self, src: _Source):
        self.src = src
        self.declared: dict[str, dict[int, _Tok]] = {"X": {}, "Y": {}}
        self.atoms: list[_Atom] = []
        self.atom_ids: dict[_Atom, int] = {}

    # ------------------------------------------------------------------ commands
    def read(self) -> list[tuple[int, ...]]:
        asserted: list[list[tuple[int, ...]]] = []
        first_assert = None
        for cmd in self.src.parse():
            if isinstance(cmd, _Tok):
                raise self.src.error(cmd, f"expected '(' but found '{cmd.text}'; every command is a parenthesised (declare-const ...) or (assert ...)")
            head = self._head(cmd, "a command")
            if head.text == "declare-const":
                self._declare(cmd)
            elif head.text == "assert":
                if len(cmd.items) < 2:
                    raise self.src.error(cmd.end, "expected a constraint after 'assert' but found ')'")
                if len(cmd.items) > 2:
                    raise self.src.error(cmd.items[2], f"expected ')' but found {_show(cmd.items[2])} (assert takes one constraint; use (and ...) for more)")
                asserted.append(self._formula(cmd.items[1]))
                first_assert = first_assert or head
            elif head.text in _IGNORED_COMMANDS:
                continue
            else:
                raise self.src.error(head, f"unknown command '{head.text}'; expected declare-const or assert")
        return self._and(asserted, first_assert)  # top-level asserts form one conjunction

    def _head(self, node: _List, what: str) -> _Tok:
        if not node.items:
            raise self.src.error(node.end, f"expected {what} but found ')' (empty parentheses)")
        head = node.items[0]
        if not isinstance(head, _Tok):
            raise self.src.error(head, f"expected {what} but found '('")
        return head

    def _declare(self, cmd: _List) -> None:
        items = cmd.items
        if len(items) < 2:
            raise self.src.error(cmd.end, "expected a variable name after declare-const but found ')'")
        name = items[1]
        if not isinstance(name, _Tok):
            raise self.src.error(name, "expected a variable name after declare-const but found '('")
        m = _VARIABLE.fullmatch(name.text)
        if m is None:
            raise self.src.error(name, f"unsupported variable name '{name.text}'; VNN-LIB names inputs X_<i> and outputs Y_<j>")
        if len(items) < 3:
            raise self.src.error(cmd.end, "expected 'Real' but found ')'")
        sort = items[2]
        if not isinstance(sort, _Tok) or sort.text != "Real":
            raise self.src.error(sort, f"expected 'Real' but found {_show(sort)}; VNN-LIB variables are Real")
        if len(items) > 3:
            raise self.src.error(items[3], f"expected ')' but found {_show(items[3])}")
        kind, idx = m.group(1), int(m.group(2))
        if idx in self.declared[kind]:
            first = self.declared[kind][idx]
            raise self.src.error(name, f"'{name.text}' is declared twice (first at {self.src.where(first.at)}); remove one declaration")
        self.declared[kind][idx] = name

    # ------------------------------------------------------------------ formulas (to DNF)
    def _formula(self, node: Any) -> list[tuple[int, ...]]:
        if isinstance(node, _Tok):
            if node.text == "true":
                return [()]
            if node.text == "false":
                return []
            raise self.src.error(node, f"expected a constraint such as (<= ...) but found '{node.text}'")
        head = self._head(node, "an operator")
        op, args = head.text, node.items[1:]
        if op == "and":
            return self._and([self._formula(a) for a in args], head)
        if op == "or":
            out: list[tuple[int, ...]] = []
            for a in args:
                out.extend(self._formula(a))
                self._limit(len(out), head)
            return out
        if op in ("<=", ">=", "="):
            if len(args) < 2:
                raise self.src.error(node.end, f"expected a term but found ')' ('{op}' takes exactly two terms)")
            if len(args) > 2:
                raise self.src.error(args[2], f"expected ')' but found {_show(args[2])} ('{op}' takes exactly two terms)")
            if op != "=" and isinstance(args[0], _Tok) and isinstance(args[1], _Tok):
                fast = self._simple_bound(args[0].text, args[1].text, op == "<=")
                if fast is not None:
                    return [(fast,)]
            left, right = self._term(args[0]), self._term(args[1])
            diff = left.plus(right, -1.0)  # left - right
            if op == "<=":
                atoms = [self._atom(diff, head)]
            elif op == ">=":
                atoms = [self._atom(right.plus(left, -1.0), head)]
            else:
                atoms = [self._atom(diff, head), self._atom(right.plus(left, -1.0), head)]
            if any(a is False for a in atoms):
                return []
            return [tuple(a for a in atoms if a is not True)]
        if op in ("+", "-", "*"):
            raise self.src.error(head, f"expected a constraint (<=, >=, and, or) but found the term operator '{op}'")
        raise self.src.error(head, f"unknown operator '{op}'; VNN-LIB constraints use and, or, <=, >= (and =)")

    def _atom(self, lin: _Lin, head: _Tok) -> int | bool:
        """Atom id of ``lin <= 0``; True/False when it has no variables."""
        coefs = {k: v for k, v in lin.coefs.items() if v != 0.0}
        kinds = {k for k, _ in coefs}
        if not kinds:
            return bool(lin.const <= 0.0)
        if len(kinds) > 1:
            x, y = lin.first["X"], lin.first["Y"]
            raise self.src.error(
                head,
                f"the constraint mixes inputs and outputs ('{x.text}' at {self.src.where(x.at)} and '{y.text}' at "
                f"{self.src.where(y.at)}); VNN-LIB constraints are over inputs only or outputs only",
            )
        return self._intern(_Atom(kinds.pop(), tuple(sorted((i, v) for (_, i), v in coefs.items())), 0.0 - lin.const))

    def _simple_bound(self, a: str, b: str, less: bool) -> int | None:
        """Atom id of ``(<= a b)`` / ``(>= a b)`` for a declared variable and a number (the bulk of
        every file) without building linear terms; the numbers are those of the general path."""
        if _NUMBER.fullmatch(b):
            var, num, coef = a, b, 1.0 if less else -1.0
        elif _NUMBER.fullmatch(a):
            var, num, coef = b, a, -1.0 if less else 1.0
        else:
            return None
        m = _VARIABLE.fullmatch(var)
        c = float(num)
        if m is None or int(m.group(2)) not in self.declared[m.group(1)] or not math.isfinite(c):
            return None  # the general path reports it
        return self._intern(_Atom(m.group(1), ((int(m.group(2)), coef),), 0.0 - (-c) if coef > 0 else 0.0 - c))

    def _intern(self, atom: _Atom) -> int:
        if atom not in self.atom_ids:
            self.atom_ids[atom] = len(self.atoms)
            self.atoms.append(atom)
        return self.atom_ids[atom]

    def _and(self, parts: list[list[tuple[int, ...]]], head: Any) -> list[tuple[int, ...]]:
        # single-term parts are shared by every term: add them once instead of multiplying out
        common: list[int] = []
        seen: set[int] = set()
        rest = []
        for p in parts:
            if not p:
                return []
            if len(p) == 1:
                for a in p[0]:
                    if a not in seen:
                        seen.add(a)
                        common.append(a)
            else:
                rest.append(p)
        terms: list[tuple[int, ...]] = [tuple(common)]
        for p in rest:
            self._limit(len(terms) * len(p), head)
            new: list[tuple[int, ...]] = []
            for t in terms:
                st = set(t)
                new.extend(t + tuple(a for a in u if a not in st) for u in p)
            terms = new
        return terms

    def _limit(self, n: int, head: Any) -> None:
        if n > MAX_DNF_TERMS:
            raise self.src.error(
                head,
                f"the property expands to more than {MAX_DNF_TERMS} cases (disjunctive normal form); "
                "split it into several files",
            )

    # ------------------------------------------------------------------ terms
    def _term(self, node: Any) -> _Lin:
        if isinstance(node, _Tok):
            text = node.text
            if _NUMBER.fullmatch(text):
                v = float(text)
                if not math.isfinite(v):
                    raise self.src.error(node, f"the number '{text}' is too large for a float")
                return _Lin({}, v, {})
            m = _VARIABLE.fullmatch(text)
            if m is not None and int(m.group(2)) in self.declared[m.group(1)]:
                return _Lin({(m.group(1), int(m.group(2))): 1.0}, 0.0, {m.group(1): node})
            if m is not None or re.fullmatch(r"[A-Za-z_][\w.~!@$%^&*+=<>?/-]*", text):
                raise self.src.error(node, f"undeclared variable '{text}'; declare it first with (declare-const {text} Real)")
            raise self.src.error(node, f"expected a number or a variable but found '{text}'")
        head = self._head(node, "a term")
        op, args = head.text, node.items[1:]
        if op in ("and", "or", "<=", ">=", "="):
            raise self.src.error(head, f"expected a term but found the constraint operator '{op}'")
        if op not in ("+", "-", "*"):
            raise self.src.error(head, f"unknown operator '{op}'; VNN-LIB terms use +, - and * (linear)")
        if not args:
            raise self.src.error(node.end, f"expected a term but found ')' ('{op}' needs arguments)")
        terms = [self._term(a) for a in args]
        if op == "+":
            out = terms[0]
            for t in terms[1:]:
                out = out.plus(t)
            return out
        if op == "-":
            if len(terms) == 1:
                return terms[0].scaled(-1.0)
            out = terms[0]
            for t in terms[1:]:
                out = out.plus(t, -1.0)
            return out
        if len(terms) < 2:
            raise self.src.error(node.end, "expected a second factor but found ')' ('*' multiplies two or more terms)")
        var_term: _Lin | None = None
        var_arg = None
        for a, t in zip(args, terms):
            if t.coefs:
                if var_arg is not None:
                    raise self.src.error(a, f"nonlinear term: {_show(var_arg)} times {_show(a)}; VNN-LIB properties are linear")
                var_arg = a
        scale = 1.0
        for t in terms:
            if not t.coefs:
                scale *= t.const
            else:
                var_term = t
        return _Lin({}, scale, {}) if var_term is None else var_term.scaled(scale)

    # ------------------------------------------------------------------ regions
    def count(self, kind: str, ask: int | None, what: str) -> int:
        decl = self.declared[kind]
        n = len(decl)
        if n == 0:
            raise SpecError(f"{self.src.name}: declares no {what} ({kind}_0, ...); declare them with (declare-const {kind}_0 Real)")
        if max(decl) != n - 1:
            missing = next(i for i in range(n) if i not in decl)
            raise SpecError(
                f"{self.src.name}: {kind}_{missing} is not declared but {kind}_{max(decl)} is; "
                f"{what} must be numbered {kind}_0 .. {kind}_{max(decl)} without gaps"
            )
        if ask is not None and n != int(ask):
            raise SpecError(
                f"{self.src.name} declares {n} {what} ({kind}_0..{kind}_{n - 1}) but the model has {int(ask)}; "
                "use a property written for this model"
            )
        return n

    def spec(self, dnf: list[tuple[int, ...]], n_in: int, n_out: int) -> RegionSpec:
        groups: dict[Any, dict[str, Any]] = {}
        region_cache: dict[tuple[int, ...], _RegionParts | str] = {}
        clash = None
        for term in dnf:
            ins = tuple(sorted(a for a in term if self.atoms[a].kind == "X"))
            outs = tuple(a for a in term if self.atoms[a].kind == "Y")
            if ins not in region_cache:
                region_cache[ins] = self._region_parts(ins, n_in)
            parts = region_cache[ins]
            if isinstance(parts, str):
                clash = clash or parts
                continue
            lo, hi, rows = parts
            key = (lo.tobytes(), hi.tobytes(), rows)
            g = groups.setdefault(key, {"lo": lo, "hi": hi, "rows": rows, "outs": []})
            if outs not in g["outs"]:
                g["outs"].append(outs)
        if not groups:
            if clash:
                raise SpecError(f"{self.src.name}: the input constraints are contradictory ({clash}); no input satisfies them")
            raise SpecError(f"{self.src.name}: the assertions can never hold (a constant constraint is false); nothing to check")
        regions: list[Region] = []
        props: list[OutputProperty] = []
        for g_i, g in enumerate(groups.values()):
            where = f"{self.src.name}: " + ("" if len(groups) == 1 else f"region {g_i}: ")
            for bound, arr, op in (("lower", g["lo"], ">="), ("upper", g["hi"], "<=")):
                bad = np.flatnonzero(~np.isfinite(arr))
                if bad.size:
                    i = int(bad[0])
                    raise SpecError(
                        f"{where}X_{i} has no {bound} bound; VNN-LIB regions must bound every input "
                        f"(add (assert ({op} X_{i} <number>)))"
                    )
            if g["rows"]:
                A = np.zeros((len(g["rows"]), n_in))
                b = np.empty(len(g["rows"]))
                for r, a in enumerate(g["rows"]):
                    atom = self.atoms[a]
                    for i, c in atom.coefs:
                        A[r, i] = c
                    b[r] = atom.rhs
                regions.append(HPolytope(A, b, g["lo"], g["hi"]))
            else:
                regions.append(Box(g["lo"], g["hi"]))
            disjuncts = []
            for outs in g["outs"]:
                G = np.zeros((len(outs), n_out))
                h = np.empty(len(outs))
                for r, a in enumerate(outs):
                    atom = self.atoms[a]
                    for j, c in atom.coefs:
                        G[r, j] = c
                    h[r] = atom.rhs
                disjuncts.append((G, h))
            props.append(OutputProperty(tuple(disjuncts), n_out))
        return RegionSpec(tuple(regions), tuple(props), source=self.src.name)

    def _region_parts(self, ins: tuple[int, ...], n_in: int) -> _RegionParts | str:
        """(lower, upper, multi-variable row ids) of one term's input part, or why it is empty."""
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        rows: list[int] = []
        for a in ins:
            atom = self.atoms[a]
            if len(atom.coefs) == 1:
                i, c = atom.coefs[0]
                v = atom.rhs / c + 0.0  # + 0.0 turns -0.0 into 0.0
                if c > 0:
                    hi[i] = min(hi[i], v)
                else:
                    lo[i] = max(lo[i], v)
            else:
                rows.append(a)
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            return f"X_{i} >= {float(lo[i])!r} and X_{i} <= {float(hi[i])!r}"
        return lo, hi, tuple(rows)


# ---------------------------------------------------------------------- public API
def read_vnnlib(
    path_or_text: str | os.PathLike[str],
    *,
    n_inputs: int | None = None,
    n_outputs: int | None = None,
) -> RegionSpec:
    """Read a VNN-LIB property into a :class:`RegionSpec` (regions with their unsafe outputs).

    ``path_or_text`` is a file path, or the text itself (a string containing '('). ``n_inputs`` /
    ``n_outputs``, when given, must match the declared variable counts. Regions are flat
    (``input_shape == (n_inputs,)``); :meth:`RegionSpec.validate` reshapes them for a model.
    """
    if isinstance(path_or_text, str) and "(" in path_or_text:
        src = _Source(path_or_text, "<vnnlib text>")
    else:
        p = Path(path_or_text)
        if not p.exists():
            raise InputError(f"no such file: {p}; check the VNN-LIB path")
        if p.is_dir():
            raise InputError(f"{p} is a directory; give a .vnnlib file")
        try:
            src = _Source(p.read_text(encoding="utf-8"), str(p))
        except (UnicodeDecodeError, OSError) as exc:
            raise SpecError(f"cannot read {p} as VNN-LIB text ({type(exc).__name__}: {exc}); it must be a UTF-8 text file") from None
    reader = _Reader(src)
    # a large file makes millions of small objects, none in a cycle: without this the cyclic GC
    # rescans them again and again and reading takes several times longer
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        dnf = reader.read()
        n_in = reader.count("X", n_inputs, "inputs")
        n_out = reader.count("Y", n_outputs, "outputs")
        return reader.spec(dnf, n_in, n_out)
    except RecursionError:
        raise SpecError(f"{src.name}: the expressions are nested too deeply to read; flatten them") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _num(v: float) -> str:
    return repr(float(v) + 0.0)  # + 0.0: write 0.0, never -0.0


def _row(coefs: np.ndarray, rhs: float, var: str) -> str:
    """``coefs . var <= rhs`` in the most readable form that reads back to the same numbers."""
    nz = np.flatnonzero(coefs)
    if nz.size == 1:
        i = int(nz[0])
        c = float(coefs[i])
        if c == 1.0:
            return f"(<= {var}_{i} {_num(rhs)})"
        if c == -1.0:
            return f"(>= {var}_{i} {_num(-rhs)})"
    if nz.size == 2 and rhs == 0.0 and sorted(coefs[nz].tolist()) == [-1.0, 1.0]:
        pos, neg = (int(nz[0]), int(nz[1])) if coefs[nz[0]] > 0 else (int(nz[1]), int(nz[0]))
        return f"(<= {var}_{pos} {var}_{neg})"
    if nz.size == 0:
        return f"(<= 0.0 {_num(rhs)})"
    terms = [f"{var}_{i}" if coefs[i] == 1.0 else f"(* {_num(coefs[i])} {var}_{i})" for i in nz]
    lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {_num(rhs)})"


def _input_atoms(region: Region) -> list[str]:
    lo, hi = (a.ravel() for a in region.bounds())
    out = []
    for i in range(lo.size):
        out.append(f"(>= X_{i} {_num(lo[i])})")
        out.append(f"(<= X_{i} {_num(hi[i])})")
    if isinstance(region, HPolytope):
        out.extend(_row(region.A[r], region.b[r], "X") for r in range(region.A.shape[0]))
    return out


def _output_atoms(G: np.ndarray, h: np.ndarray) -> list[str]:
    return [_row(G[r], h[r], "Y") for r in range(G.shape[0])]


def format_vnnlib(spec: RegionSpec, *, header: str | None = None) -> str:
    """The VNN-LIB text of a spec of boxes and H-polytopes (see :func:`write_vnnlib`)."""
    spec._require_resolved()
    for i, r in enumerate(spec.regions):
        if isinstance(r, VPolytope) or not isinstance(r, (Box, HPolytope)):
            raise SpecError(
                f"region {i} is a {r.kind}, which VNN-LIB cannot express (it has no vertex lists); "
                "save the spec as .json or .npz instead"
            )
    n_in, n_out = spec.regions[0].dim, spec.n_outputs
    assert n_out is not None  # resolved: every region has a property
    lines = [f"; {ln}".rstrip() for ln in (header or "").splitlines()]
    lines.append(
        f"; {len(spec)} region(s) over inputs X_0..X_{n_in - 1} (flattened), outputs Y_0..Y_{n_out - 1}; "
        "the assertions describe the UNSAFE case"
    )
    lines.append("")
    lines += [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    lines.append("")
    if len(spec) == 1:
        region, prop = spec[0]
        lines.append("; input region")
        lines += [f"(assert {a})" for a in _input_atoms(region)]
        lines.append("")
        lines.append("; unsafe outputs")
        if len(prop.disjuncts) == 1:
            lines += [f"(assert {a})" for a in _output_atoms(*prop.disjuncts[0])]
        else:
            lines.append("(assert (or")
            lines += [f"    (and {' '.join(_output_atoms(G, h))})" for G, h in prop.disjuncts]
            lines.append("))")
    else:
        lines.append("; one case per region: (and <input region> <unsafe outputs>)")
        lines.append("(assert (or")
        for region, prop in spec:
            parts = _input_atoms(region)
            if len(prop.disjuncts) == 1:
                parts += _output_atoms(*prop.disjuncts[0])
            else:
                parts.append("(or " + " ".join(f"(and {' '.join(_output_atoms(G, h))})" for G, h in prop.disjuncts) + ")")
            lines.append(f"    (and {' '.join(parts)})")
        lines.append("))")
    return "\n".join(lines) + "\n"


def write_vnnlib(
    spec: RegionSpec,
    path: str | os.PathLike[str],
    *,
    protect: Sequence[str | os.PathLike[str]] = (),
    header: str | None = None,
) -> None:
    """Write ``spec`` (boxes and H-polytopes) as one VNN-LIB file, atomically.

    Several regions become one ``(assert (or (and <region> <unsafe outputs>) ...))``. Numbers are
    written with ``repr`` so that :func:`read_vnnlib` gives back the same floats. ``header`` is
    written as ``;`` comment lines at the top. Label properties must be expanded first
    (:meth:`RegionSpec.validate`). An H-polytope row with one variable reads back as a box bound.
    """
    write_text_atomic(path, format_vnnlib(spec, header=header), protect=tuple(protect))
