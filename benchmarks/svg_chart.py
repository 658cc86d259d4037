"""Two charts side by side as one SVG file, written without a plotting library (none is a dependency here).

Left, horizontal bars: one row per label, the bar at the median of its values and a dot per value, with
vertical marks (a target, 1.0). Right, lines: step-like series of (x, y) points, solid or dashed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT, TOP, BOTTOM = 1200, 560, 40, 60
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class Bars:
    title: str
    rows: list[tuple[str, list[float], str]]  # label, values, colour
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # x, colour, label
    note: str = ""


@dataclass
class Lines:
    title: str
    series: list[tuple[str, list[tuple[float, float]], str, str]]  # label, points, colour, dash ("" solid)
    x_max: float
    y_max: float
    x_label: str = ""
    y_scale: tuple[float, str] = (1.0, "")  # tick labels divided by this, with this suffix


class _Canvas:
    def __init__(self) -> None:
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                      f'font-family="sans-serif" font-size="11"><rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']

    def text(self, x: float, y: float, s: str, anchor: str = "start", size: int = 11, bold: bool = False) -> None:
        weight = "bold" if bold else "normal"
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
                          f'font-weight="{weight}">{escape(s)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = "black", dash: str = "",
             width: float = 1) -> None:
        style = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                          f'stroke-width="{width}"{style}/>')

    def raw(self, element: str) -> None:
        self.parts.append(element)

    def svg(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


def _bars(c: _Canvas, chart: Bars, x0: float, x1: float) -> None:
    base = HEIGHT - BOTTOM
    top_value = max(2.0, max((max(v) for _, v, _ in chart.rows if v), default=1.0) * 1.05)

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * v / top_value

    row = (base - TOP) / max(1, len(chart.rows))
    c.text((x0 + x1) / 2, 20, chart.title, "middle", 13, True)
    for i, (label, values, color) in enumerate(chart.rows):
        y = TOP + i * row
        c.text(x0 - 6, y + row / 2 + 4, label, "end")
        if not values:
            continue
        median = statistics.median(values)
        c.raw(f'<rect x="{x0}" y="{y + row * 0.15:.1f}" width="{sx(median) - x0:.1f}" height="{row * 0.7:.1f}" '
              f'fill="{color}" fill-opacity="0.8"/>')
        for v in values:
            c.raw(f'<circle cx="{sx(v):.1f}" cy="{y + row / 2:.1f}" r="2.5" fill="black"/>')
        c.text(sx(median) + 6, y + row / 2 + 4, f"{median:.2f}x")
    c.line(x0, TOP, x0, base)
    c.line(x0, base, x1, base)
    tick = 0.0
    while tick <= top_value:
        c.line(sx(tick), base, sx(tick), base + 4)
        c.text(sx(tick), base + 16, f"{tick:g}", "middle")
        tick += 0.5
    for x, color, label in chart.marks:
        c.line(sx(x), TOP, sx(x), base, color, "5,3")
        if label:
            c.text(sx(x) + 3, TOP - 4, label, size=10)
    if chart.note:
        c.text((x0 + x1) / 2, base + 34, chart.note, "middle")


def _lines(c: _Canvas, chart: Lines, x0: float, x1: float) -> None:
    base = HEIGHT - BOTTOM

    def px(x: float) -> float:
        return x0 + (x1 - x0) * min(x, chart.x_max) / chart.x_max

    def py(y: float) -> float:
        return base - (base - TOP) * min(y, chart.y_max) / chart.y_max

    c.text((x0 + x1) / 2, 20, chart.title, "middle", 13, True)
    c.line(x0, TOP, x0, base)
    c.line(x0, base, x1, base)
    for t in _ticks(chart.x_max):
        c.line(px(t), base, px(t), base + 4)
        c.text(px(t), base + 16, f"{t:g}", "middle")
    c.text((x0 + x1) / 2, base + 34, chart.x_label, "middle")
    divisor, suffix = chart.y_scale
    for v in _ticks(chart.y_max):
        c.line(x0 - 4, py(v), x0, py(v))
        c.text(x0 - 6, py(v) + 4, f"{v / divisor:g}{suffix}", "end")
    for i, (label, points, color, dash) in enumerate(chart.series):
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        c.raw(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"{style}/>')
        y = base - 20 - 16 * (len(chart.series) - 1 - i)
        c.line(x1 - 190, y - 4, x1 - 165, y - 4, color, dash, 2)
        c.text(x1 - 160, y, label)


def _ticks(top: float) -> list[float]:
    """Round tick values from 0 to ``top``: steps of 1, 2 or 5 times a power of ten, about five of them."""
    power = 10 ** math.floor(math.log10(top / 5)) if top > 0 else 1
    step = next(m * power for m in (1, 2, 5, 10) if top / (m * power) <= 6)
    return [k * step for k in range(int(top / step) + 1)]


def write(path: Path, left: Bars, right: Lines) -> None:
    canvas = _Canvas()
    _bars(canvas, left, 150, 560)
    _lines(canvas, right, 680, 1170)
    path.write_text(canvas.svg())
