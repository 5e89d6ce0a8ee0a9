"""The console's server-drawn charts: well-formed, accessible, escaped SVG with honest axes."""

from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from edgefleet.controller.console._charts import Series, bar_chart, data_table, line_chart

NS = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
HOSTILE = "<script>alert(1)</script>"


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    for el in root.iter():
        el.tag = el.tag.removeprefix(NS)
    return root


def with_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter() if cls in el.get("class", "").split()]


def text(el: ET.Element) -> str:
    return "".join(el.itertext())


def ticks(root: ET.Element, axis: str) -> list[tuple[float, str]]:
    """(pixel position of the tick mark, label) for each tick of the x or y axis."""
    out = []
    for g in with_class(root, f"ef-{axis}tick"):
        line = g.find("line")
        assert line is not None
        out.append((float(line.get(f"{axis}1", "nan")), text(g)))
    return out


def to_pixel(axis_ticks: list[tuple[float, str]], value: float) -> float:
    """Where a value should be drawn, interpolated from the first and last labelled ticks."""
    (p0, l0), (p1, l1) = axis_ticks[0], axis_ticks[-1]
    return p0 + (value - float(l0)) / (float(l1) - float(l0)) * (p1 - p0)


PAIR = r"-?\d+\.\d -?\d+\.\d"
PATH = re.compile(rf"(M{PAIR}( L{PAIR})*( |$))*")


def segments(d: str) -> list[list[tuple[float, float]]]:
    assert PATH.fullmatch(d), d
    return [[(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+) (-?[\d.]+)", seg)]
            for seg in d.split("M")[1:]]


def check_nice(labels: list[str]) -> list[float]:
    values = [float(label) for label in labels]
    assert 4 <= len(values) <= 6, labels
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(s > 0 for s in steps), labels
    assert max(steps) - min(steps) <= 1e-6 * max(steps), labels
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5, 10)), labels
    return values


@pytest.mark.parametrize("ys", [
    [3.0, 9.1, 4.2], [5.0], [7.0, 7.0, 7.0], [-12.0, -3.5, -8.0], [1e9, 1.2e9], [1e9],
    [1e-6, 3e-6], [1e-6], [0.0], [-2.0, 3.0], [1000.1, 1000.2]])
def test_y_ticks_are_nice_monotonic_and_cover_the_data(ys):
    chart = parse(line_chart([Series("s", list(enumerate(ys)))], title="t", y_label="v",
                             y_unit="ms", x_is_time=False))
    yt = ticks(chart, "y")
    values = check_nice([label for _, label in yt])
    assert values[0] <= min(ys) and values[-1] >= max(ys)
    assert values[-1] > values[0]
    positions = [p for p, _ in yt]
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == len(positions)
    xs = check_nice([label for _, label in ticks(chart, "x")])
    assert xs[0] <= 0 and xs[-1] >= len(ys) - 1


def test_points_are_drawn_where_the_axes_say():
    ys = [3.0, 9.1, 4.2, 0.5, 6.0]
    pts = [(10.0 * i + 5, y) for i, y in enumerate(ys)]
    chart = parse(line_chart([Series("s", pts)], title="t", y_label="v", y_unit="",
                             x_is_time=False))
    xt, yt = ticks(chart, "x"), ticks(chart, "y")
    [axes] = with_class(chart, "ef-axes")
    x_axis, y_axis = axes.findall("line")
    assert xt[0][0] == float(y_axis.get("x1", "")) and xt[-1][0] == float(x_axis.get("x2", ""))
    assert yt[0][0] == float(x_axis.get("y1", "")) and yt[-1][0] == float(y_axis.get("y1", ""))
    [path] = [g.find("path") for g in with_class(chart, "ef-series")]
    assert path is not None
    [drawn] = segments(path.get("d", ""))
    assert len(drawn) == len(pts)
    for (px, py), (x, y) in zip(drawn, pts, strict=True):
        assert px == pytest.approx(to_pixel(xt, x), abs=0.11)
        assert py == pytest.approx(to_pixel(yt, y), abs=0.11)
        assert xt[0][0] <= px <= xt[-1][0] and yt[-1][0] <= py <= yt[0][0]


def test_gaps_start_a_new_segment():
    nan, inf = float("nan"), float("inf")
    pts = [(0, None), (1, 1.0), (2, 2.0), (3, 3.0), (4, None), (5, 5.0), (6, 4.0), (7, nan),
           (8, 2.0), (9, inf), (10, 1.0), (11, 2.0), (nan, 3.0), (13, 1.0)]
    chart = parse(line_chart([Series("s", pts)], title="t", y_label="v", y_unit="",
                             x_is_time=False))
    [g] = with_class(chart, "ef-series")
    path = g.find("path")
    assert path is not None
    assert [len(s) for s in segments(path.get("d", ""))] == [3, 2, 1, 2, 1]
    assert len(g.findall("circle")) == 2  # the lone points at x=8 and x=13 stay visible


def test_legend_has_one_entry_per_series_told_apart_without_color():
    series = [Series(f"v{i}", [(T0 + 60 * j, float(i + j)) for j in range(5)]) for i in range(9)]
    chart = parse(line_chart(series, title="t", y_label="v", y_unit="ms"))
    legend = with_class(chart, "ef-legend")
    assert [text(g) for g in legend] == [s.name for s in series]
    styles = [(ln.get("stroke"), ln.get("stroke-dasharray")) for g in legend
              if (ln := g.find("line")) is not None]
    assert len(set(styles)) == 9
    assert len({dash for _, dash in styles[:7]}) == 7  # seven series read apart in grey
    lines = [p for g in with_class(chart, "ef-series") if (p := g.find("path")) is not None]
    assert [(p.get("stroke"), p.get("stroke-dasharray")) for p in lines] == styles


def test_threshold_line_sits_at_its_value():
    pts = [(T0 + 60 * i, float(i % 10)) for i in range(30)]
    chart = parse(line_chart([Series("v3", pts)], title="t", y_label="p95", y_unit="ms",
                             threshold=6.0, threshold_label="SLO"))
    [g] = with_class(chart, "ef-threshold")
    line = g.find("line")
    assert line is not None and line.get("stroke-dasharray")
    assert float(line.get("y1", "")) == float(line.get("y2", ""))
    assert float(line.get("y1", "")) == pytest.approx(to_pixel(ticks(chart, "y"), 6.0), abs=0.11)
    assert text(g) == "SLO 6 ms"
    high = parse(line_chart([Series("v3", pts)], title="t", y_label="p95", y_unit="ms",
                            threshold=42.0))
    assert float(ticks(high, "y")[-1][1]) >= 42
    assert not with_class(parse(line_chart([Series("v3", pts)], title="t", y_label="p",
                                           y_unit="", threshold=float("nan"))), "ef-threshold")


def test_hostile_strings_are_only_ever_escaped():
    series = [Series(HOSTILE, [(T0, 1.0), (T0 + 60, 2.0)]), Series('a"b&c\x00\x1b', [(T0, 3.0)])]
    outputs = [
        line_chart(series, title=HOSTILE, y_label=HOSTILE, y_unit="<i>", x_label=HOSTILE,
                   threshold=1.5, threshold_label=HOSTILE),
        bar_chart([(HOSTILE, 0.3)], title=HOSTILE, x_label=HOSTILE, unit="<i>", threshold=0.2,
                  threshold_label=HOSTILE),
        data_table(series, caption=HOSTILE, y_unit="<i>"),
        line_chart([], title=HOSTILE, y_label="v", y_unit=""),
    ]
    for out in outputs:
        assert "<script" not in out and "<i>" not in out
        assert "&lt;script&gt;" in out
        root = parse(out)
        assert not [el for el in root.iter() if el.tag in ("script", "i")]
    legend = [text(g) for g in with_class(parse(outputs[0]), "ef-legend")]
    assert legend == [HOSTILE, 'a"b&c']


def test_svg_is_labelled_and_describes_latest_and_max():
    series = [Series("v3", [(T0, 9.1), (T0 + 60, None), (T0 + 120, 4.2)]),
              Series("v4", [(T0, 5.0), (T0 + 60, 3.9)]), Series("v5", [(T0, None)])]
    fig = parse(line_chart(series, title="p95 latency by version", y_label="p95 latency",
                           y_unit="ms"))
    assert fig.tag == "figure"
    svg = fig.find("svg")
    assert svg is not None and svg.get("role") == "img"
    title, desc = svg.find("title"), svg.find("desc")
    assert title is not None and desc is not None
    assert svg.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    assert title.text == "p95 latency by version"
    assert desc.text == ("p95 latency (ms): v3 latest 4.2, max 9.1; v4 latest 3.9, max 5; "
                         "v5 no data.")
    caption = fig.find("figcaption")
    assert caption is not None and caption.text == "p95 latency by version"
    [ylabel] = with_class(fig, "ef-ylabel")
    [xlabel] = with_class(fig, "ef-xlabel")
    assert text(ylabel) == "p95 latency (ms)" and text(xlabel) == "time (UTC)"


@pytest.mark.parametrize(("value", "shown"), [
    (1234.5678, "1230"), (0.000123456, "0.000123"), (1.05e9, "1.05e9"), (-2.5e-6, "-2.5e-6"),
    (42.0, "42"), (0.1 + 0.2, "0.3")])
def test_values_read_with_three_significant_digits(value, shown):
    fig = parse(line_chart([Series("s", [(T0, value)])], title="t", y_label="v", y_unit="u"))
    desc = fig.find("svg/desc")
    assert desc is not None and desc.text == f"v (u): s latest {shown}, max {shown}."


def test_ids_are_unique_across_charts_on_one_page():
    series = [Series("s", [(T0, 1.0), (T0 + 60, 2.0)])]
    page = "<div>" + "".join(str(line_chart(series, title="same", y_label="v", y_unit=""))
                             for _ in range(3)) + "</div>"
    ids = [el.get("id") for el in ET.fromstring(page).iter() if el.get("id")]
    assert len(ids) == 9 and len(set(ids)) == 9


def time_labels(xs: list[float]) -> list[str]:
    pts = [(x, 1.0) for x in xs]
    return [label for _, label in ticks(parse(line_chart(
        [Series("s", pts)], title="t", y_label="v", y_unit="")), "x")]


def test_time_ticks_are_utc_clock_times():
    labels = time_labels([T0 + 60 * i for i in range(91)])
    assert labels == ["00:00", "00:30", "01:00", "01:30"]
    across = time_labels([T0 - 7200, T0 + 3600])
    assert across[0] == "2024-05-31 22:00" and "2024-06-01 00:00" in across
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in across if " " not in label)
    short = time_labels([T0 + 5, T0 + 95])
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in short), short
    assert short == sorted(short) and 4 <= len(short) <= 6
    week = time_labels([T0, T0 + 6 * 86400])
    assert week == sorted(week) and all(re.fullmatch(r"\d{4}-\d\d-\d\d", w) for w in week)


@pytest.mark.parametrize("series", [
    [], [Series("v3", [])], [Series("v3", [(T0, None), (T0 + 60, float("nan"))])],
    [Series("v3", [(float("inf"), 1.0)])]])
def test_no_data_says_so(series):
    fig = parse(line_chart(series, title="p95 latency", y_label="v", y_unit="ms"))
    assert [el.text for el in fig.iter("text")] == ["no data yet"]
    assert fig.find("svg/title") is not None and text(fig.find("svg/title")) == "p95 latency"
    assert not fig.findall(".//path")
    bars = parse(bar_chart([("age", float("nan"))] if series else [], title="PSI",
                           x_label="PSI", unit=""))
    assert [el.text for el in bars.iter("text")] == ["no data yet"]
    assert not bars.findall(".//rect")
    table = parse(data_table(series, caption="c", y_unit="ms"))
    assert "no data yet" in text(table)


def test_bar_chart_bars_threshold_and_desc():
    bars = [("age", 0.31), ("income", 0.05), ("zip", float("nan")), ("tenure", -0.02)]
    fig = parse(bar_chart(bars, title="PSI by input feature", x_label="PSI", unit="",
                          threshold=0.2, threshold_label="alert"))
    xt = ticks(fig, "x")
    check_nice([label for _, label in xt])
    rects = with_class(fig, "ef-bar")
    assert len(rects) == 3
    zero = to_pixel(xt, 0.0)
    for rect, value in zip(rects, [0.31, 0.05, -0.02], strict=True):
        left, width = float(rect.get("x", "")), float(rect.get("width", ""))
        assert min(left, left + width) == pytest.approx(min(zero, to_pixel(xt, value)), abs=0.11)
        assert width == pytest.approx(abs(to_pixel(xt, value) - zero), abs=0.15)
    assert [r.get("stroke") is not None for r in rects] == [True, False, False]  # not color only
    assert [text(el) for el in with_class(fig, "ef-bar-label")] == ["age", "income", "zip",
                                                                    "tenure"]
    assert "no data" in text(fig)
    [g] = with_class(fig, "ef-threshold")
    line = g.find("line")
    assert line is not None and line.get("stroke-dasharray")
    assert float(line.get("x1", "")) == pytest.approx(to_pixel(xt, 0.2), abs=0.11)
    assert text(g) == "alert 0.2"
    desc = fig.find("svg/desc")
    assert desc is not None
    assert desc.text == "PSI: age 0.31, income 0.05, zip no data, tenure -0.02; 1 of 3 above 0.2."


def test_data_table_has_one_row_per_x_and_a_column_per_series():
    series = [Series("v3", [(T0, 9.1), (T0 + 60, None), (T0 + 120, 4.2)]),
              Series("v4", [(T0 + 60, 3.9), (T0 + 120, float("inf"))])]
    table = parse(data_table(series, caption="p95 latency", y_unit="ms"))
    assert table.tag == "table"
    caption = table.find("caption")
    assert caption is not None and caption.text == "p95 latency"
    head = table.findall("thead/tr/th")
    assert [th.get("scope") for th in head] == ["col"] * 3
    assert [th.text for th in head] == ["time (UTC)", "v3 (ms)", "v4 (ms)"]
    rows = [[text(cell) for cell in tr] for tr in table.findall("tbody/tr")]
    assert rows == [["2024-06-01 00:00:00", "9.1", "–"], ["2024-06-01 00:01:00", "–", "3.9"],
                    ["2024-06-01 00:02:00", "4.2", "–"]]
    plain = parse(data_table([Series("a", [(2.5, 1.0), (0.5, 2.0), (2.5, 3.0)])], caption="c",
                             y_unit="", x_is_time=False))
    assert [[text(c) for c in tr] for tr in plain.findall("tbody/tr")] == [["0.5", "2"],
                                                                           ["2.5", "3"]]


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(min_value=-1e6, max_value=1e6), st.sampled_from([0.0, 1e-6, 1e9]))
POINTS = st.lists(st.tuples(NUMBERS, st.one_of(st.none(), NUMBERS)), max_size=30)


def assert_inside(root: ET.Element) -> None:
    """Every coordinate in the drawing is a finite number inside the viewBox."""
    svg = root.find("svg")
    assert svg is not None
    x0, y0, w, h = (float(v) for v in svg.get("viewBox", "").split())
    assert (x0, y0) == (0, 0)
    for el in svg.iter():
        pairs = [(el.get(a), el.get(b)) for a, b in (("x", "y"), ("x1", "y1"), ("x2", "y2"),
                                                     ("cx", "cy"))]
        if el.tag == "path":
            pairs += [(x, y) for seg in segments(el.get("d", "")) for x, y in seg]
        if (move := re.match(r"translate\(([^ ]+) ([^)]+)\)", el.get("transform", ""))):
            pairs.append((move[1], move[2]))
        if el.get("width") and el.tag == "rect":
            pairs.append((float(el.get("x", "")) + float(el.get("width", "")), el.get("y")))
        for x, y in pairs:
            for v, limit in ((x, w), (y, h)):
                if v is not None:
                    assert math.isfinite(float(v)) and 0 <= float(v) <= limit, (el.tag, v)


def test_extreme_magnitudes_are_gaps_not_broken_axes():
    big = sys.float_info.max
    pts = [(0.0, big), (1.0, 2.0), (2.0, -big), (3.0, 4.0), (big, 5.0)]
    fig = parse(line_chart([Series("s", pts)], title="t", y_label="v", y_unit="",
                           x_is_time=False, threshold=-big))
    assert_inside(fig)
    assert check_nice([label for _, label in ticks(fig, "y")])[-1] < 10
    assert not with_class(fig, "ef-threshold")
    [g] = with_class(fig, "ef-series")
    path = g.find("path")
    assert path is not None and [len(seg) for seg in segments(path.get("d", ""))] == [1, 1]
    bars = parse(bar_chart([("a", big), ("b", 0.5)], title="t", x_label="PSI", unit=""))
    assert_inside(bars)
    assert len(with_class(bars, "ef-bar")) == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), POINTS), max_size=5), st.booleans(),
       st.one_of(st.none(), NUMBERS), st.integers(min_value=100, max_value=1200))
def test_any_input_gives_well_formed_svg_inside_its_box(raw, x_is_time, threshold, width):
    series = [Series(name, pts) for name, pts in raw]
    fig = parse(line_chart(series, title="t", y_label="v", y_unit="u", x_is_time=x_is_time,
                           threshold=threshold, width=width))
    assert_inside(fig)
    if with_class(fig, "ef-empty"):
        return
    assert len(with_class(fig, "ef-legend")) == len(series)
    check_nice([label for _, label in ticks(fig, "y")])
    xt = [p for p, _ in ticks(fig, "x")]
    assert 4 <= len(xt) <= 6 and xt == sorted(xt) and len(set(xt)) == len(xt)
    parse(data_table(series, caption="c", y_unit="u", x_is_time=x_is_time))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=60), NUMBERS), max_size=12),
       st.one_of(st.none(), NUMBERS))
def test_any_bars_give_well_formed_svg_inside_its_box(bars, threshold):
    fig = parse(bar_chart(bars, title="PSI", x_label="PSI", unit="", threshold=threshold))
    assert_inside(fig)
    if not with_class(fig, "ef-empty"):
        check_nice([label for _, label in ticks(fig, "x")])
