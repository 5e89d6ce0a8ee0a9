"""The web console's charts: latency, error rate and drift (PSI) drawn on the server as SVG.

The controller serves ``/ui/`` without a CDN or a JavaScript build, so each chart is a
self-contained ``<figure>``: an ``<svg role="img">`` with a ``<title>``, a one-sentence
``<desc>`` giving each series' latest and highest value, axes with round ticks, a legend and a
``<figcaption>``, returned as :class:`markupsafe.Markup` for the autoescaped templates. Series
differ by dash pattern as well as by Okabe-Ito color; model names, versions and feature names
are escaped; NaN, infinities and ``None`` are gaps, never errors. :func:`data_table` gives the
same numbers as a table for keyboard and screen-reader users (pages put it in a ``<details>``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

__all__ = ["Series", "bar_chart", "data_table", "line_chart"]

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "6 3", "2 3", "9 3 2 3", "1 3", "12 4", "4 2 1 2 1 2")
LIMIT = 1e15  # a larger magnitude leaves no readable axis: such values are drawn as gaps
_TIME_STEPS = (1, 2, 3, 5, 10, 15, 30, 60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 10800,
               21600, 43200, 86400)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="{u}-t {u}-d" '
        'viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="system-ui, sans-serif" '
        'font-size="11" fill="currentColor">')


@dataclass(frozen=True)
class Series:
    """One line of a chart: ``name`` is its legend text; ``points`` are (x, y) in x order,
    x in Unix seconds for time charts, and a ``None`` (or non-finite) y is a gap."""

    name: str
    points: Sequence[tuple[float, float | None]]


def _ok(v: float | None) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and abs(v) <= LIMIT


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series: a missing or non-finite x or y ends one."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if _ok(x) and y is not None and _ok(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _text(s: object) -> str:
    return str(escape(_NOT_XML.sub("", str(s))))


def _short(s: str, n: int) -> str:
    s = _NOT_XML.sub("", s)
    return s if len(s) <= n else s[:n - 1] + "…"


def _fmt(v: float, sig: int = 3) -> str:
    """``v`` to ``sig`` significant digits: 1230, 4.2, 0.00123, 1.05e9, 2.5e-6."""
    v += 0.0
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        places = sig - 1 - math.floor(math.log10(abs(v) or 1))
        fixed = f"{round(v, places):.{max(0, places)}f}"
        return fixed.rstrip("0").rstrip(".") if "." in fixed else fixed
    mant, e, exp = f"{v:.{sig}g}".partition("e")
    return mant + (f"e{int(exp)}" if e else "")


def _utc(t: float, pattern: str) -> str:
    return datetime.fromtimestamp(min(max(t, -6.2e10), 2.5e11), UTC).strftime(pattern)


def _uid(title: str) -> str:
    digest = hashlib.blake2s(_NOT_XML.sub("", title).encode(), digest_size=3).hexdigest()
    return f"ef-chart-{digest}-{secrets.token_hex(4)}"


def _ticks(lo: float, hi: float, time: bool = False) -> list[float]:
    """4 to 6 evenly spaced round values from at most ``lo`` to at least ``hi``: steps of
    1, 2, 2.5 or 5 x 10^k, or for time whole seconds, minutes, hours or days."""
    if time and hi - lo < 4:
        lo, hi = (lo + hi) / 2 - 2, (lo + hi) / 2 + 2
    elif not hi - lo > max(abs(lo), abs(hi), 1e-30) * 1e-9:
        pad = max(abs(lo), abs(hi)) / 10
        lo, hi = (lo - pad, hi + pad) if pad >= 1e-30 else (lo - 1, hi + 1)
    first = 2 * 86400 if time else 10.0 ** math.floor(math.log10((hi - lo) / 10))
    steps = itertools.chain(_TIME_STEPS if time else (), (
        first * m * 10**k for k in itertools.count() for m in (1, 2, 2.5, 5)))
    spans = ((math.floor(lo / s + 1e-9), math.ceil(hi / s - 1e-9), s) for s in steps)
    a, b, step = next(span for span in spans if span[1] - span[0] <= 5)
    return [k * step + 0.0 for k in range(a, b + 1)]


def _labels(ticks: list[float], time: bool) -> list[str]:
    """Tick labels: UTC clock times (with the date where a day starts), or numbers as exact
    as the step between them needs."""
    if time:
        step, days = ticks[1] - ticks[0], [_utc(t, "%Y-%m-%d") for t in ticks]
        if step >= 86400:
            return days
        clock = [_utc(t, "%H:%M:%S" if step < 60 else "%H:%M") for t in ticks]
        new_day = [days[0] != days[-1] and (i == 0 or d != days[i - 1]) for i, d in enumerate(days)]
        return [f"{d} {c}" if new else c for d, c, new in zip(days, clock, new_day, strict=True)]
    step = ticks[1] - ticks[0]
    for sig in range(3, 17):
        labels = [_fmt(t, sig) for t in ticks]
        if all(abs(float(lb) - t) <= step * 1e-6 for lb, t in zip(labels, ticks, strict=True)):
            break
    return labels


def _scale(ticks: list[float], start: float, end: float) -> Callable[[float], float]:
    return lambda v: start + (v - ticks[0]) / (ticks[-1] - ticks[0]) * (end - start)


def _figure(uid: str, title: str, desc: str, width: int, height: int, body: list[str]) -> Markup:
    return Markup(f'<figure class="ef-chart" id="{uid}">{_SVG.format(u=uid, w=width, h=height)}'
                  f'<title id="{uid}-t">{_text(title)}</title><desc id="{uid}-d">{_text(desc)}'
                  f'</desc>{"".join(body)}</svg><figcaption>{_text(title)}</figcaption></figure>')


def _empty(uid: str, title: str, width: int, height: int) -> Markup:
    return _figure(uid, title, f"{title}: no data yet.", width, height, [
        f'<text class="ef-empty" x="{width / 2:.1f}" y="{height / 2:.1f}" '
        'text-anchor="middle">no data yet</text>'])


def _legend(names: list[str], left: float, right: float) -> list[tuple[float, float]]:
    """Where each legend entry goes: left to right, wrapping onto a new row when full."""
    spots, x, y = [], left, 12.0
    for name in names:
        if x > left and x + 48 + 6.5 * len(name) > right:
            x, y = left, y + 16
        spots.append((x, y))
        x += 48 + 6.5 * len(name)
    return spots


def _axes(xt: list[float], xlabels: list[str], sx: Callable[[float], float], left: float,
          right: float, top: float, bottom: float, width: int, x_title: str) -> list[str]:
    out = [f'<g class="ef-axes" stroke="currentColor"><line x1="{left}" y1="{bottom}" '
           f'x2="{right}" y2="{bottom}"/><line x1="{left}" y1="{top}" x2="{left}" '
           f'y2="{bottom}"/></g>']
    for t, label in zip(xt, xlabels, strict=True):
        half = 3.3 * len(label)
        tx = min(max(sx(t), half + 2), width - half - 2)
        out.append(f'<g class="ef-xtick"><line x1="{sx(t):.1f}" y1="{bottom}" x2="{sx(t):.1f}" '
                   f'y2="{bottom + 4}" stroke="currentColor"/><text x="{tx:.1f}" '
                   f'y="{bottom + 16}" text-anchor="middle">{_text(label)}</text></g>')
    out.append(f'<text class="ef-xlabel" x="{(left + right) / 2:.1f}" y="{bottom + 32}" '
               f'text-anchor="middle">{_text(x_title)}</text>')
    return out


def line_chart(series: Sequence[Series], *, title: str, y_label: str, y_unit: str,
               x_label: str = "time (UTC)", x_is_time: bool = True,
               threshold: float | None = None, threshold_label: str = "",
               width: int = 640, height: int = 220) -> Markup:
    """Lines over time (or any x), one per series, with an optional dashed threshold line."""
    uid, unit = _uid(title), f" ({y_unit})" if y_unit else ""
    clean = [_runs(s.points) for s in series]
    valid = [p for runs in clean for r in runs for p in r]
    width, left = max(width, 240), 64
    names = [_short(s.name, int((width - left - 80) / 6.5)) for s in series]
    spots = _legend(names, left, width - 16)
    top = int(spots[-1][1]) + 16 if spots else 28
    height = max(height, top + 120)
    if not valid:
        return _empty(uid, title, width, height)
    thr = [threshold] if threshold is not None and _ok(threshold) else []
    ys = [y for _, y in valid] + thr
    # a measure that cannot go below zero (latency, a rate) is drawn from zero, so a small
    # change does not look like a large one
    low = min(ys) if min(ys) < 0 else 0.0
    xt, yt = _ticks(min(x for x, _ in valid), max(x for x, _ in valid), x_is_time), \
        _ticks(low, max(ys) if max(ys) > low else low + 1.0)
    right, bottom = width - 24, height - 40
    sx, sy = _scale(xt, left, right), _scale(yt, bottom, top)
    body = _axes(xt, _labels(xt, x_is_time), sx, left, right, top, bottom, width, x_label)
    for t, label in zip(yt, _labels(yt, False), strict=True):
        body.append(f'<g class="ef-ytick"><line x1="{left}" y1="{sy(t):.1f}" x2="{right}" '
                    f'y2="{sy(t):.1f}" stroke="currentColor" stroke-opacity="0.15"/><text '
                    f'x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{label}</text></g>')
    body.append(f'<text class="ef-ylabel" transform="translate(14 {(top + bottom) / 2:.1f}) '
                f'rotate(-90)" text-anchor="middle">{_text(y_label + unit)}</text>')
    summary = []
    for i, (s, runs) in enumerate(zip(series, clean, strict=True)):
        color, dash = COLORS[i % len(COLORS)], DASHES[(i + i // len(COLORS)) % len(DASHES)]
        style = f'stroke="{color}" stroke-width="2"' + (dash and f' stroke-dasharray="{dash}"')
        lx, ly = spots[i]
        body.append(f'<g class="ef-legend"><line x1="{lx:.1f}" y1="{ly}" x2="{lx + 28:.1f}" '
                    f'y2="{ly}" {style}/><text x="{lx + 34:.1f}" y="{ly + 4}">{_text(names[i])}'
                    '</text></g>')
        d = " ".join("M" + " L".join(f"{sx(x):.1f} {sy(y):.1f}" for x, y in r) for r in runs)
        dots = "".join(f'<circle cx="{sx(r[0][0]):.1f}" cy="{sy(r[0][1]):.1f}" r="2.5" '
                       f'fill="{color}"/>' for r in runs if len(r) == 1)
        body.append(f'<g class="ef-series"><path d="{d}" fill="none" {style} '
                    f'stroke-linejoin="round"/>{dots}</g>')
        vals = [y for r in runs for _, y in r]
        summary.append(f"{s.name} latest {_fmt(vals[-1])}, max {_fmt(max(vals))}" if vals
                       else f"{s.name} no data")
    for t in thr:
        ty, text = sy(t), f"{threshold_label or 'threshold'} {_fmt(t)} {y_unit}".rstrip()
        body.append(f'<g class="ef-threshold"><line x1="{left}" y1="{ty:.1f}" x2="{right}" '
                    f'y2="{ty:.1f}" stroke="currentColor" stroke-width="1.5" '
                    f'stroke-dasharray="4 4"/><text x="{right - 2}" '
                    f'y="{ty - 4 if ty - 14 > top else ty + 13:.1f}" text-anchor="end">'
                    f'{_text(text)}</text></g>')
    return _figure(uid, title, f"{y_label}{unit}: " + "; ".join(summary) + ".", width, height,
                   body)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, x_label: str, unit: str,
              threshold: float | None = None, threshold_label: str = "",
              width: int = 640) -> Markup:
    """Horizontal bars (e.g. PSI by input feature) with an optional dashed threshold line."""
    uid, suffix = _uid(title), f" ({unit})" if unit else ""
    rows = [(str(label), v if _ok(v) else None) for label, v in bars]
    vals = [v for _, v in rows if v is not None]
    thr = [threshold] if threshold is not None and _ok(threshold) else []
    top, width = 24 if thr else 8, max(width, 240)
    height = top + 22 * max(len(rows), 1) + 40
    if not vals:
        return _empty(uid, title, width, max(height, 120))
    names = [_short(n, 24) for n, _ in rows]
    left, right, bottom = 16 + 6.5 * max(len(n) for n in names), width - 56, height - 40
    xt = _ticks(min([0.0, *vals, *thr]), max([0.0, *vals, *thr]))
    sx = _scale(xt, left, right)
    body = _axes(xt, _labels(xt, False), sx, left, right, top, bottom, width, x_label + suffix)
    over = sum(1 for v in vals if thr and v > thr[0])
    for i, ((_, v), name) in enumerate(zip(rows, names, strict=True)):
        y, x0 = top + 22 * i, sx(0.0)
        body.append(f'<text class="ef-bar-label" x="{left - 6}" y="{y + 15}" text-anchor="end">'
                    f'{_text(name)}</text>')
        if v is None:
            body.append(f'<text x="{x0 + 4:.1f}" y="{y + 15}">no data</text>')
            continue
        x1, x2 = sorted((x0, sx(v)))
        hot = bool(thr) and v > thr[0]
        edge = ' stroke="currentColor" stroke-width="1.5"' if hot else ""
        body.append(f'<rect class="ef-bar" x="{x1:.1f}" y="{y + 4}" width="{x2 - x1:.1f}" '
                    f'height="14" fill="{COLORS[1] if hot else COLORS[0]}"{edge}/>'
                    f'<text x="{x2 + 4:.1f}" y="{y + 15}">{_fmt(v)}</text>')
    for t in thr:
        text = _short(f"{threshold_label or 'threshold'} {_fmt(t)}", 40)
        tx = min(max(sx(t), 3.3 * len(text) + 2), width - 3.3 * len(text) - 2)
        body.append(f'<g class="ef-threshold"><line x1="{sx(t):.1f}" y1="{top - 4}" '
                    f'x2="{sx(t):.1f}" y2="{bottom}" stroke="currentColor" stroke-width="1.5" '
                    f'stroke-dasharray="4 4"/><text x="{tx:.1f}" y="{top - 8}" '
                    f'text-anchor="middle">{_text(text)}</text></g>')
    listed = ", ".join(f"{n} {_fmt(v) if v is not None else 'no data'}" for n, v in rows)
    tail = f"; {over} of {len(vals)} above {_fmt(thr[0])}" if thr else ""
    return _figure(uid, title, f"{x_label}{suffix}: {listed}{tail}.", width, height, body)


def data_table(series: Sequence[Series], *, caption: str, y_unit: str,
               x_is_time: bool = True) -> Markup:
    """The numbers behind a line chart: one row per distinct x, one column per series."""
    unit = f" ({y_unit})" if y_unit else ""
    cols = [{x: y for x, y in s.points if _ok(x) and _ok(y)} for s in series]
    head = "".join(f'<th scope="col">{_text(c)}</th>' for c in
                   ["time (UTC)" if x_is_time else "x", *(s.name + unit for s in series)])
    body = [f'<tr><th scope="row">{_utc(x, "%Y-%m-%d %H:%M:%S") if x_is_time else _fmt(x, 12)}'
            "</th>" + "".join(f"<td>{_fmt(y) if (y := c.get(x)) is not None else '–'}</td>"
                              for c in cols) + "</tr>"
            for x in sorted({x for c in cols for x in c})]
    empty = f'<tr><td colspan="{len(series) + 1}">no data yet</td></tr>'
    return Markup(f'<table class="ef-data"><caption>{_text(caption)}</caption><thead><tr>{head}'
                  f'</tr></thead><tbody>{"".join(body) or empty}</tbody></table>')
