"""Charts as SVG made on the server: no charting library in the browser, nothing to vendor,
a page that is complete before any script runs, and values the tests can read (each point
carries its numbers in ``data-*`` attributes and a <title> tooltip)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "bars", "line_chart"]

W, H = 720, 220
PAD_L, PAD_R, PAD_T, PAD_B = 52, 24, 12, 36


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # class of the line (colours are in panel.css)
    #: (x label, value or None for a gap, tooltip)
    points: Sequence[tuple[str, float | None, str]]


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def line_chart(
    series: Sequence[Series],
    *,
    labels: Sequence[str],
    y_min: float | None = None,
    y_max: float | None = None,
    target: float | None = None,
    unit: str = "",
    chart_id: str = "chart",
    width: int = W,
) -> str:
    values = [v for s in series for _, v, _ in s.points if v is not None]
    if target is not None:
        values.append(target)
    lo = y_min if y_min is not None else (min(values) if values else 0.0)
    hi = y_max if y_max is not None else (max(values) if values else 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    n = max(len(labels), 1)
    pw, ph = width - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(i: int) -> float:
        return PAD_L + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - (v - lo) / (hi - lo))

    out = [
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {W} {H}" role="img"'
        f' xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(5):  # grid and y labels
        v = lo + (hi - lo) * k / 4
        right = width - PAD_R
        out.append(
            f'<line class="grid" x1="{PAD_L}" x2="{right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="axis" x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
            f"{_fmt(v)}{escape(unit)}</text>"
        )
    step = max(1, n // 8)
    for i, label in enumerate(labels):
        if i % step == 0 or i == n - 1:
            out.append(
                f'<text class="axis" x="{x(i):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                f"{escape(label[5:] if len(label) == 10 else label)}</text>"
            )
    if target is not None:
        out.append(
            f'<line class="target" x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(target):.1f}"'
            f' y2="{y(target):.1f}"><title>{_fmt(target)}{escape(unit)}</title></line>'
        )
    index = {label: i for i, label in enumerate(labels)}
    for s in series:
        pts = [(index[lbl], v, tip) for lbl, v, tip in s.points if lbl in index]
        segments: list[list[str]] = [[]]
        for i, value, _ in pts:
            if value is None:
                segments.append([])
            else:
                segments[-1].append(f"{x(i):.1f},{y(value):.1f}")
        out.extend(
            f'<polyline class="line {s.css}" points="{" ".join(seg)}"/>' for seg in segments if seg
        )
        for i, point, tip in pts:
            if point is not None:
                out.append(
                    f'<circle class="dot {s.css}" cx="{x(i):.1f}" cy="{y(point):.1f}" r="3"'
                    f' data-series="{escape(s.name)}" data-x="{escape(labels[i])}"'
                    f' data-value="{point!r}"><title>{escape(tip)}</title></circle>'
                )
    out.append("</svg>")
    return "".join(out)


def bars(items: Sequence[tuple[str, int]], *, width: int = 260) -> list[str]:
    """One small horizontal bar per item (relative to the largest), as SVG snippets."""
    top = max((n for _, n in items), default=0) or 1
    return [
        f'<svg class="bar" viewBox="0 0 {width} 12" width="{width}" height="12"'
        f' xmlns="http://www.w3.org/2000/svg"><rect x="0" y="1" height="10"'
        f' width="{max(1.0, width * n / top):.1f}"/></svg>'
        for _, n in items
    ]
