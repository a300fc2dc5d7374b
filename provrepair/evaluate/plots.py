"""Small PNG charts drawn with Pillow (a dependency already): lines, a scatter and horizontal bars.

Enough for the comparison report; no plotting library needed.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..fileio import atomic_path

__all__ = ["line_chart", "scatter_chart", "bar_chart"]

W, H = 760, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 60
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def _font():
    return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


class _Canvas:
    def __init__(self, title: str, xlabel: str, ylabel: str, xr: tuple[float, float], yr: tuple[float, float],
                 width: int = W):
        self.img = Image.new("RGB", (width, H), "white")
        self.d = ImageDraw.Draw(self.img)
        self.f = _font()
        self.w = width
        self.xt, self.yt = _ticks(*xr), _ticks(*yr)
        self.x0, self.x1 = self.xt[0], self.xt[-1]
        self.y0, self.y1 = self.yt[0], self.yt[-1]
        self.d.text((LEFT, 12), title, fill="black", font=self.f)
        self.d.rectangle([LEFT, TOP, width - RIGHT, H - BOTTOM], outline="black")
        for t in self.xt:
            px = self.px(t)
            self.d.line([px, H - BOTTOM, px, H - BOTTOM + 4], fill="black")
            self.d.text((px - 12, H - BOTTOM + 8), f"{t:g}", fill="black", font=self.f)
        for t in self.yt:
            py = self.py(t)
            self.d.line([LEFT - 4, py, LEFT, py], fill="black")
            self.d.line([LEFT, py, width - RIGHT, py], fill="#e6e6e6")
            self.d.text((8, py - 6), f"{t:g}", fill="black", font=self.f)
        self.d.text(((LEFT + width - RIGHT) // 2 - 3 * len(xlabel), H - 24), xlabel, fill="black", font=self.f)
        self.d.text((8, TOP - 18), ylabel, fill="black", font=self.f)
        self.legend_y = TOP

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / ((self.x1 - self.x0) or 1) * (self.w - RIGHT - LEFT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / ((self.y1 - self.y0) or 1) * (H - BOTTOM - TOP)

    def legend(self, label: str, colour: str) -> None:
        x = self.w - RIGHT + 12
        self.d.rectangle([x, self.legend_y + 2, x + 10, self.legend_y + 12], fill=colour)
        self.d.text((x + 16, self.legend_y), label[:28], fill="black", font=self.f)
        self.legend_y += 18

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            self.img.save(tmp, format="PNG")


def _range(values: Sequence[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


def line_chart(series: dict[str, list[tuple[float, float]]], path, *, title: str, xlabel: str, ylabel: str) -> None:
    """One line per series name: ``{name: [(x, y), ...]}``."""
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        return
    c = _Canvas(title, xlabel, ylabel, _range([p[0] for p in pts], 0.0), _range([p[1] for p in pts]))
    for i, (name, s) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        xy = [(c.px(x), c.py(y)) for x, y in s if y is not None]
        if len(xy) > 1:
            c.d.line(xy, fill=colour, width=2)
        for x, y in xy:
            c.d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        c.legend(name, colour)
    c.save(path)


def scatter_chart(points: dict[str, list[tuple[float, float]]], path, *, title: str, xlabel: str,
                  ylabel: str) -> None:
    """One marker colour per name: ``{name: [(x, y), ...]}`` (e.g. one point per seed)."""
    pts = [p for s in points.values() for p in s if p[0] is not None and p[1] is not None]
    if not pts:
        return
    c = _Canvas(title, xlabel, ylabel, _range([p[0] for p in pts]), _range([p[1] for p in pts]))
    for i, (name, s) in enumerate(points.items()):
        colour = PALETTE[i % len(PALETTE)]
        for x, y in s:
            if x is None or y is None:
                continue
            X, Y = c.px(x), c.py(y)
            c.d.ellipse([X - 5, Y - 5, X + 5, Y + 5], outline=colour, width=2)
        c.legend(name, colour)
    c.save(path)


def bar_chart(stacks: dict[str, dict[str, float]], path, *, title: str, xlabel: str) -> None:
    """Horizontal stacked bars: ``{bar name: {segment name: value}}`` (e.g. seconds per stage)."""
    if not stacks:
        return
    segments = list(dict.fromkeys(k for s in stacks.values() for k in s))
    total = max(sum(v for v in s.values() if v) for s in stacks.values()) or 1.0
    img = Image.new("RGB", (W, max(H, TOP + BOTTOM + 28 * len(stacks))), "white")
    d = ImageDraw.Draw(img)
    f = _font()
    d.text((LEFT, 12), title, fill="black", font=f)
    label_w = 150
    x0, x1 = label_w, W - RIGHT
    ticks = _ticks(0.0, total)
    scale = (x1 - x0) / (ticks[-1] or 1)
    for t in ticks:
        X = x0 + t * scale
        d.line([X, TOP, X, TOP + 28 * len(stacks)], fill="#e6e6e6")
        d.text((X - 8, TOP + 28 * len(stacks) + 6), f"{t:g}", fill="black", font=f)
    d.text(((x0 + x1) // 2 - 3 * len(xlabel), TOP + 28 * len(stacks) + 24), xlabel, fill="black", font=f)
    for r, (name, stack) in enumerate(stacks.items()):
        y = TOP + 28 * r + 4
        d.text((8, y + 4), name[:22], fill="black", font=f)
        x = x0
        for i, seg in enumerate(segments):
            v = stack.get(seg) or 0.0
            if v > 0:
                d.rectangle([x, y, x + v * scale, y + 20], fill=PALETTE[i % len(PALETTE)])
                x += v * scale
    for i, seg in enumerate(segments):
        y = TOP + 18 * i
        d.rectangle([W - RIGHT + 12, y + 2, W - RIGHT + 22, y + 12], fill=PALETTE[i % len(PALETTE)])
        d.text((W - RIGHT + 28, y), seg[:26], fill="black", font=f)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
