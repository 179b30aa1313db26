"""Charts as inline SVG, drawn on the server: they show with scripting off, need nothing from
another host, and read without colour (series differ by pattern and dash, every bar and point
carries its number). Each chart has a <title> and a <desc> (the words come from templates/pages/,
passed in), and the page puts a table of the same numbers beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

from markupsafe import Markup, escape

WIDTH = 340  # the viewBox width: a 375-px screen less the page's margins; the SVG scales to its box
FONT = 12
LABEL_W = 70  # room for a row's label on the left of horizontal bars
_ids = count(1)

# Series styles: a fill pattern (bars) and a dash (lines), told apart without colour.
FILLS = ("solid", "hatch", "dots", "open")
DASHES = ("", "6 3", "2 3", "10 3 2 3")
MARKS = ("circle", "square", "triangle", "diamond")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _defs(prefix: str) -> str:
    return (
        f'<defs><pattern id="{prefix}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="#333" stroke-width="2.5"/></pattern>'
        f'<pattern id="{prefix}-dots" width="5" height="5" patternUnits="userSpaceOnUse">'
        f'<rect width="5" height="5" fill="#fff"/><circle cx="2.5" cy="2.5" r="1.3" fill="#333"/></pattern></defs>'
    )


def _fill(prefix: str, series: int) -> str:
    kind = FILLS[series % len(FILLS)]
    if kind == "solid":
        return 'fill="#444" stroke="#222"'
    if kind == "open":
        return 'fill="#fff" stroke="#222"'
    return f'fill="url(#{prefix}-{kind})" stroke="#222"'


def _svg(prefix: str, height: int, title: str, desc: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-labelledby="{prefix}-t {prefix}-d" font-size="{FONT}" '
        f'font-family="sans-serif"><title id="{prefix}-t">{escape(title)}</title>'
        f'<desc id="{prefix}-d">{escape(desc)}</desc>{_defs(prefix)}{"".join(body)}</svg>')


def _legend(prefix: str, names: Sequence[str], y: int, kind: str = "bar") -> list[str]:
    out, x = [], 4
    for i, name in enumerate(names):
        if kind == "bar":
            out.append(f'<rect x="{x}" y="{y - 9}" width="14" height="10" {_fill(prefix, i)}/>')
        else:
            out.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 16}" y2="{y - 4}" stroke="#222" stroke-width="2" '
                       f'stroke-dasharray="{DASHES[i % len(DASHES)]}"/>{_mark(i, x + 8, y - 4)}')
        out.append(f'<text x="{x + 20}" y="{y}">{escape(name)}</text>')
        x += 28 + FONT * len(name)
    return out


@dataclass(frozen=True)
class BarRow:
    """One row of a horizontal bar chart: its label and one value per series (None: no bar)."""

    label: str
    values: tuple[float | None, ...]


def bars(rows: Sequence[BarRow], series: Sequence[str], title: str, desc: str, *, vmax: float = 100.0,
         unit: str = "") -> Markup:
    """Horizontal bars, a group per row and a bar per series (told apart by fill pattern), each bar
    labelled with its value; a legend on top when there is more than one series."""
    prefix = f"c{next(_ids)}"
    bar_h, gap = 14, 10
    top = 18 if len(series) > 1 else 4
    group_h = bar_h * len(series) + gap
    height = top + group_h * max(1, len(rows)) + 4
    scale = (WIDTH - LABEL_W - 56) / (vmax or 1)
    body = _legend(prefix, series, 12) if len(series) > 1 else []
    body.append(f'<line x1="{LABEL_W}" y1="{top - 2}" x2="{LABEL_W}" y2="{height - 4}" stroke="#222"/>')
    for r, row in enumerate(rows):
        y0 = top + r * group_h
        body.append(f'<text x="{LABEL_W - 4}" y="{y0 + group_h / 2 + 2:.0f}" text-anchor="end">'
                    f'{escape(_short(row.label, 5))}</text>')
        for s, value in enumerate(row.values):
            y = y0 + s * bar_h
            w = 0.0 if value is None else max(0.0, min(value, vmax)) * scale
            if value is not None:
                body.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" {_fill(prefix, s)}/>')
            body.append(f'<text x="{LABEL_W + w + 4:.1f}" y="{y + bar_h - 4}">{escape(_num(value))}{unit}</text>')
    return _svg(prefix, height, title, desc, body)


def _mark(series: int, x: float, y: float) -> str:
    kind = MARKS[series % len(MARKS)]
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#fff" stroke="#222"/>'
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="#222"/>'
    if kind == "triangle":
        return f'<path d="M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y + 3:.1f}L{x - 4:.1f} {y + 3:.1f}Z" fill="#222"/>'
    return (f'<path d="M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y:.1f}L{x:.1f} {y + 4:.1f}L{x - 4:.1f} {y:.1f}Z" '
            'fill="#fff" stroke="#222"/>')


def lines(x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], title: str, desc: str,
          *, vmin: float | None = None, vmax: float | None = None) -> Markup:
    """Lines over shared x positions (weeks), a dash and a marker per series, the last value of each
    line written beside it; gaps where a value is None. The y axis spans the values (or vmin–vmax)."""
    prefix = f"c{next(_ids)}"
    right, top = 40, 20 if len(series) > 1 else 8
    height, bottom = 170, 22
    present = [v for _name, vs in series for v in vs if v is not None]
    lo = vmin if vmin is not None else (min(present) if present else 0.0)
    hi = vmax if vmax is not None else (max(present) if present else 100.0)
    if hi - lo < 10:
        lo, hi = max(0.0, (lo + hi) / 2 - 5), (lo + hi) / 2 + 5
    lo, hi = max(0.0, 5 * (lo // 5)), 5 * -(-hi // 5)
    if present and max(present) <= 100 < hi:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    ticks = [(v, _tick(v)) for v in (lo, (lo + hi) / 2, hi)]
    # The axis' numbers end 4 px left of the plot: room for the longest of them (a digit ≈ 0.6 em).
    left = 8 + round(0.62 * FONT * max(len(label) for _v, label in ticks))
    n = max(1, len(x_labels) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (WIDTH - left - right) * (i / n if len(x_labels) > 1 else 0.5)
        y = top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))
        return x, y

    body = _legend(prefix, [name for name, _vs in series], 12, "line") if len(series) > 1 else []
    for v, label in ticks:
        _x, y = xy(0, v)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - right}" y2="{y:.1f}" stroke="#bbb" '
                    f'stroke-dasharray="1 3"/><text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    if x_labels:
        body.append(f'<text x="{left}" y="{height - 6}">{escape(x_labels[0])}</text>')
        if len(x_labels) > 1:
            body.append(f'<text x="{WIDTH - right}" y="{height - 6}" text-anchor="end">{escape(x_labels[-1])}</text>')
    ends: list[tuple[float, float, float]] = []
    for s, (_name, values) in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(xy(i, v))
        for run in runs:
            if len(run) > 1:
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                body.append(f'<polyline points="{pts}" fill="none" stroke="#222" stroke-width="2" '
                            f'stroke-dasharray="{DASHES[s % len(DASHES)]}"/>')
            body += [_mark(s, x, y) for x, y in run]
        last = next(((i, v) for i, v in reversed(list(enumerate(values))) if v is not None), None)
        if last is not None:
            ends.append((*xy(*last), last[1]))
    body += _end_labels(ends, top, height - bottom)
    return _svg(prefix, height, title, desc, body)


def _tick(value: float) -> str:
    """An axis number: whole numbers without a decimal point."""
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _end_labels(ends: list[tuple[float, float, float]], top: float, bottom: float) -> list[str]:
    """Each line's last value beside its end, moved apart vertically so that no two overlap."""
    placed: list[float] = []
    out = []
    for x, y, v in sorted(ends, key=lambda e: e[1]):
        y = max(y + 4, top + 8, (placed[-1] + FONT) if placed else 0)
        placed.append(y)
        out.append(f'<text x="{x + 6:.1f}" y="{min(y, bottom + 4):.1f}">{_num(v)}</text>')
    return out


def sparkline(values: Sequence[float | None], title: str) -> Markup:
    """A small line of one point's weekly values (its title lists them); the newest value marked."""
    w, h, pad = 72, 20, 3
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    parts = [f'<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" '
             f'height="{h}" role="img"><title>{escape(title)}</title>']
    if present:
        lo, hi = min(v for _i, v in present), max(v for _i, v in present)
        span = (hi - lo) or 1.0
        n = max(1, len(values) - 1)
        pts = [(pad + (w - 2 * pad) * i / n, h - pad - (h - 2 * pad) * ((v - lo) / span if hi > lo else 0.5))
               for i, v in present]
        if len(pts) > 1:
            parts.append('<polyline points="{}" fill="none" stroke="#222" stroke-width="1.5"/>'.format(
                " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
        x, y = pts[-1]
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#222"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def columns(labels: Sequence[str], values: Sequence[int], title: str, desc: str) -> Markup:
    """Vertical bars (a histogram), each with its count on top and its label below."""
    prefix = f"c{next(_ids)}"
    height, bottom, top = 150, 22, 16
    n = max(1, len(values))
    slot = (WIDTH - 8) / n
    peak = max(values, default=0) or 1
    body = [f'<line x1="4" y1="{height - bottom}" x2="{WIDTH - 4}" y2="{height - bottom}" stroke="#222"/>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = 4 + i * slot
        bar = (height - bottom - top) * v / peak
        y = height - bottom - bar
        if v:
            body.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{slot - 4:.1f}" height="{bar:.1f}" '
                        f'{_fill(prefix, 1)}/>')
        body.append(f'<text x="{x + slot / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{v}</text>')
        body.append(f'<text x="{x + slot / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="9">'
                    f'{escape(label)}</text>')
    return _svg(prefix, height, title, desc, body)


def radar(axes: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], title: str, desc: str,
          *, vmax: float = 100.0) -> Markup:
    """A radar: one axis per label (the first straight up), a polygon per series told apart without
    colour (the first solid with round markers, the next dashed with square ones…), every vertex
    labelled with its value (the first series on one side of its axis, the second on the other);
    grid rings at quarters of `vmax`. A missing value sits at the centre, labelled "—"."""
    prefix = f"c{next(_ids)}"
    n = max(3, len(axes))
    legend = 18 if len(series) > 1 else 0
    radius, cx = 100.0, WIDTH / 2
    cy = legend + 22 + radius
    height = round(cy + radius * 0.5 + 34)
    units = [(math.cos(-math.pi / 2 + 2 * math.pi * k / n), math.sin(-math.pi / 2 + 2 * math.pi * k / n))
             for k in range(n)]

    def at(k: int, r: float) -> tuple[float, float]:
        return cx + r * units[k][0], cy + r * units[k][1]

    body = _legend(prefix, [name for name, _vs in series], 12, "line") if len(series) > 1 else []
    for ring in (0.25, 0.5, 0.75, 1.0):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(k, radius * ring) for k in range(n)))
        dash = "" if ring == 1 else "1 3"
        body.append(f'<polygon points="{pts}" fill="none" stroke="#bbb" stroke-dasharray="{dash}"/>')
    for k, label in enumerate(axes):
        x, y = at(k, radius)
        body.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#999"/>')
        ux, uy = units[k]
        lx, ly = at(k, radius + 12)
        anchor = "start" if ux > 0.3 else "end" if ux < -0.3 else "middle"
        body.append(f'<text x="{lx:.1f}" y="{ly + (12 if uy > 0.3 else 4 if uy > -0.3 else -2):.1f}" '
                    f'text-anchor="{anchor}" font-weight="bold">{escape(label)}</text>')
    for s, (_name, values) in enumerate(series):
        pts = [at(k, radius * max(0.0, min(v or 0.0, vmax)) / (vmax or 1)) for k, v in enumerate(values)]
        fill = 'fill="#444" fill-opacity="0.12"' if s == 0 else 'fill="none"'
        body.append(f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" {fill} stroke="#222" '
                    f'stroke-width="2" stroke-dasharray="{DASHES[s % len(DASHES)]}"/>')
        body += [_mark(s, x, y) for x, y in pts]
        side = 1 if s % 2 == 0 else -1  # the first series' labels on one side of each axis, the next's on the other
        for k, ((x, y), v) in enumerate(zip(pts, values, strict=True)):
            px, py = -units[k][1] * side, units[k][0] * side
            anchor = "start" if px > 0.3 else "end" if px < -0.3 else "middle"
            body.append(f'<text x="{x + 9 * px:.1f}" y="{y + 9 * py + 4:.1f}" text-anchor="{anchor}" '
                        f'paint-order="stroke" stroke="#fff" stroke-width="3">{_num(v)}</text>')
    return _svg(prefix, height, title, desc, body)


def _short(text: str, most: int) -> str:
    """A row label cut to `most` characters (the table beside the chart has it whole)."""
    return text if len(text) <= most else text[:most - 1] + "…"
