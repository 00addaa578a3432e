#!/usr/bin/env python3
"""Draw grafana/dashboard.json's panels from a real Prometheus into one PNG, without Grafana.

    python grafana/render_panels.py --prometheus http://127.0.0.1:9090 --since 300 --out docs/img/dashboard.png

Every panel target is queried as Grafana would (``/api/v1/query_range`` over the
last ``--since`` seconds, ``/api/v1/query`` for instant targets), with
``$__rate_interval`` replaced by ``--rate-interval`` (1m) and ``$instance`` by
``--instance`` (``.+``, every instance). Panels sit where their ``gridPos``
puts them on Grafana's 24-column grid; titles, units, stacking, the dashed
"cap" overrides, fixed colours, stat thresholds and the legend's last / max
columns follow the JSON. Series that stay at 0 are drawn but left out of the
legend, which says how many it left out. Times are UTC.

Needs matplotlib (the ``bench`` extra); talks to Prometheus with the standard library.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

DEFAULT_DASHBOARD = Path(__file__).resolve().parent / "dashboard.json"

# Grafana's dark theme and its classic palette.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e9e"
GRID = "#2c3235"
ZERO = "#464c54"  # series that stay at 0
NAMED = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "text": TEXT,
}
PALETTE = [
    "#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0",
    "#508642", "#cca300", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62", "#584477",
]  # fmt: skip

# Size of one grid unit, in inches: 24 columns across, rows of Grafana's 30 px + margin.
COLUMN = 0.95
ROW = 0.40
HEADER = 0.55  # above the grid: dashboard title and time range


# Prometheus


class Prometheus:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        if answer.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {answer.get('error', answer)}")
        return answer["data"]

    def range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        return [
            Series(item["metric"], [float(t) for t, _ in item["values"]], [_number(v) for _, v in item["values"]])
            for item in data["result"]
        ]

    def instant(self, expr: str, at: float) -> list[Series]:
        data = self._get("query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] == "scalar":
            return [Series({}, [float(data["result"][0])], [_number(data["result"][1])])]
        return [Series(item["metric"], [float(item["value"][0])], [_number(item["value"][1])]) for item in data["result"]]


def _number(text: str) -> float:
    value = float(text)  # "NaN", "+Inf" and "-Inf" parse too
    return value if math.isfinite(value) else math.nan  # Grafana draws no point for them either


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]
    name: str = ""
    color: str = ""
    dashed: bool = False
    width: float = 1.0
    fill: float = 0.1
    stack: bool = False

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if not math.isnan(v)]

    @property
    def last(self) -> float:
        finite = self.finite
        return finite[-1] if finite else math.nan

    @property
    def max(self) -> float:
        finite = self.finite
        return max(finite) if finite else math.nan


# The dashboard


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level panels in order; the panels of an expanded row follow it (collapsed rows keep theirs)."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        if panel.get("type") == "row" and not panel.get("collapsed"):
            found.extend(panel.get("panels", []))
    return found


def substitute(expr: str, rate_interval: str, instance: str) -> str:
    for name, value in (("__rate_interval", rate_interval), ("instance", instance)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def display_name(legend: str, labels: dict[str, str]) -> str:
    if legend and legend != "__auto":
        return re.sub(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend).strip()
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest else name or "value"


def color_of(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("fixedColor", "")
    return NAMED.get(value, value) if value else ""


def threshold_color(panel: dict[str, Any], value: float) -> str:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    color = "green"
    for step in steps:
        if step.get("value") is None or (not math.isnan(value) and value >= step["value"]):
            color = step["color"]
    return color_of(color) or NAMED["green"]


def apply_overrides(panel: dict[str, Any], series: Series) -> None:
    custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
    series.stack = custom.get("stacking", {}).get("mode", "none") != "none"
    series.fill = custom.get("fillOpacity", 0) / 100
    series.width = custom.get("lineWidth", 1)
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") != "byName" or matcher.get("options") != series.name:
            continue
        for prop in override.get("properties", []):
            key, value = prop.get("id"), prop.get("value")
            if key == "custom.stacking":
                series.stack = value.get("mode", "none") != "none"
            elif key == "custom.fillOpacity":
                series.fill = value / 100
            elif key == "custom.lineWidth":
                series.width = value
            elif key == "custom.lineStyle":
                series.dashed = value.get("fill") == "dash"
            elif key == "color":
                series.color = color_of(value)


# Units, the way Grafana writes them


def fmt(value: float, unit: str | None, decimals: int | None = None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        magnitude = abs(value)
        if magnitude == 0:
            return "0 s"
        for limit, scale, suffix in ((1e-3, 1e6, "µs"), (1, 1e3, "ms"), (60, 1, "s"), (3600, 1 / 60, "min")):
            if magnitude < limit:
                return _trim(value * scale, decimals) + " " + suffix
        if magnitude < 86400:
            return _trim(value / 3600, decimals) + " hour"
        return _trim(value / 86400, decimals) + " day"
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or suffix == "TiB":
                return _trim(value, decimals) + " " + suffix
            value /= 1024
    text = _short(value, decimals)
    return text + " ops/s" if unit == "ops" else text


def _short(value: float, decimals: int | None) -> str:
    for limit, suffix in ((1e12, " T"), (1e9, " B"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= limit:
            return _trim(value / limit, decimals) + suffix
    return _trim(value, decimals)


def _trim(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 or value == int(value) else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3
    return f"{value:.{digits}f}"


# Drawing


class Renderer:
    def __init__(self, prometheus: Prometheus, *, start: float, end: float, step: float, rate_interval: str, instance: str):
        self.prometheus = prometheus
        self.start, self.end, self.step = start, end, step
        self.rate_interval, self.instance = rate_interval, instance
        self.fig: Any = None
        self.width = self.height = 0.0

    def render(self, dashboard: dict[str, Any], out: Path, title_note: str = "") -> None:
        panels = panels_of(dashboard)
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        self.width, self.height = 24 * COLUMN, rows * ROW + HEADER
        self.fig = plt.figure(figsize=(self.width, self.height), facecolor=BACKGROUND)
        span = f"{_utc(self.start)} to {_utc(self.end)} UTC"
        self.fig.text(0.2 / self.width, 1 - 0.22 / self.height, dashboard.get("title", "dashboard"),
                      color=TEXT, fontsize=16, weight="bold", va="center")  # fmt: skip
        detail = f"{span}  ·  step {self.step:g}s  ·  $__rate_interval = {self.rate_interval}  ·  instance =~ {self.instance}"
        if title_note:
            detail += "  ·  " + title_note
        self.fig.text(1 - 0.2 / self.width, 1 - 0.22 / self.height, detail, color=DIM, fontsize=9, ha="right", va="center")
        for panel in panels:
            box = self._box(panel["gridPos"])
            kind = panel.get("type")
            try:
                if kind == "row":
                    self._row(panel, box)
                elif kind == "stat":
                    self._stat(panel, box)
                elif kind == "timeseries":
                    self._timeseries(panel, box)
                else:
                    self._frame(panel, box, f"panel type {kind!r} not drawn")
            except (RuntimeError, OSError) as exc:
                self._frame(panel, box, f"query failed: {exc}")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(out, dpi=100, facecolor=BACKGROUND)
        plt.close(self.fig)

    # Geometry: figure fractions of a gridPos, with a small gutter.

    def _box(self, grid: dict[str, int]) -> tuple[float, float, float, float]:
        gutter = 0.05
        x = (grid["x"] * COLUMN + gutter) / self.width
        w = (grid["w"] * COLUMN - 2 * gutter) / self.width
        top = HEADER + grid["y"] * ROW + gutter
        h = grid["h"] * ROW - 2 * gutter
        return x, 1 - (top + h) / self.height, w, h / self.height

    def _inches(self, dy: float) -> float:
        return dy / self.height

    def _frame(self, panel: dict[str, Any], box: tuple[float, float, float, float], message: str = "",
               face: str = PANEL, title_color: str = TEXT) -> None:  # fmt: skip
        x, y, w, h = box
        self.fig.patches.append(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.002",
                                               transform=self.fig.transFigure, facecolor=face, edgecolor=BORDER,
                                               linewidth=0.8, zorder=-5))  # fmt: skip
        self.fig.text(x + 0.08 / self.width, y + h - self._inches(0.17), panel.get("title", ""), color=title_color,
                      fontsize=10, weight="bold", va="center")  # fmt: skip
        if message:
            self.fig.text(x + w / 2, y + h / 2, message, color=DIM, fontsize=9, ha="center", va="center", wrap=True)

    def _row(self, panel: dict[str, Any], box: tuple[float, float, float, float]) -> None:
        x, y, w, h = box
        marker = "▸ " if panel.get("collapsed") else "▾ "
        self.fig.text(x, y + h / 2, marker + panel.get("title", ""), color=TEXT, fontsize=12, weight="bold", va="center")
        self.fig.add_artist(Rectangle((x, y), w, self._inches(0.01), transform=self.fig.transFigure, color=BORDER))

    def _query(self, panel: dict[str, Any]) -> list[Series]:
        found: list[Series] = []
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            expr = substitute(target["expr"], self.rate_interval, self.instance)
            if target.get("instant") and not target.get("range"):
                result = self.prometheus.instant(expr, self.end)
            else:
                result = self.prometheus.range(expr, self.start, self.end, self.step)
            for series in sorted(result, key=lambda s: sorted(s.labels.items())):
                series.name = display_name(target.get("legendFormat", ""), series.labels)
                apply_overrides(panel, series)
                found.append(series)
        return found

    def _stat(self, panel: dict[str, Any], box: tuple[float, float, float, float]) -> None:
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        options = panel.get("options", {})
        series = self._query(panel)
        if not series:
            self._frame(panel, box, "No data")
            return
        first = series[0]
        value = first.last
        color = threshold_color(panel, value)
        mode = options.get("colorMode", "value")
        face = color if mode == "background" else PANEL
        self._frame(panel, box, face=face, title_color="#000000" if mode == "background" else TEXT)
        x, y, w, h = box
        if options.get("graphMode") == "area" and len(first.times) > 1:
            spark = self.fig.add_axes((x, y, w, h * 0.45))
            spark.set_axis_off()
            times = [_date(t) for t in first.times]
            tone = "#000000" if mode == "background" else color
            spark.fill_between(times, first.values, color=tone, alpha=0.18, linewidth=0)
            spark.plot(times, first.values, color=tone, alpha=0.45, linewidth=1)
            spark.set_xlim(_date(self.start), _date(self.end))
            spark.set_ylim(bottom=min(0, *first.finite) if first.finite else 0)
        if options.get("textMode") == "name":
            text = ", ".join(s.name for s in series)
        else:
            text = fmt(value, defaults.get("unit"), defaults.get("decimals"))
        text_color = "#000000" if mode == "background" else (color if mode == "value" else TEXT)
        size = min(26, max(11, 150 / max(6, len(text))))
        self.fig.text(x + w / 2, y + h * 0.45, text, color=text_color, fontsize=size, weight="bold", ha="center", va="center")

    def _timeseries(self, panel: dict[str, Any], box: tuple[float, float, float, float]) -> None:
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit, decimals = defaults.get("unit"), defaults.get("decimals")
        series = self._query(panel)
        legend_calcs = panel.get("options", {}).get("legend", {}).get("calcs", ["lastNotNull", "max"])
        shown = [s for s in series if s.finite and (s.max != 0 or min(s.finite) != 0)]
        hidden = len(series) - len(shown)
        columns = 2 if len(shown) > 5 else 1
        legend_rows = math.ceil(len(shown) / columns) + (1 if hidden or not shown else 0)
        line = 0.15
        legend_height = min(legend_rows, 6) * line + 0.12
        x, y, w, h = box
        self._frame(panel, box)
        if not series:
            self.fig.text(x + w / 2, y + h / 2, "No data", color=DIM, fontsize=11, ha="center", va="center")
            return
        left, right, top = 0.62, 0.12, 0.36
        ax = self.fig.add_axes((
            x + left / self.width,
            y + self._inches(legend_height + 0.28),
            w - (left + right) / self.width,
            h - self._inches(legend_height + 0.28 + top),
        ))  # fmt: skip
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.grid(True, color=GRID, linewidth=0.6)
        ax.tick_params(colors=DIM, labelsize=8, length=0)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=timezone.utc))
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=7))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit, None)))
        ax.set_xlim(_date(self.start), _date(self.end))

        # Palette colours go to the series the legend lists, skipping hues a fixed colour already uses.
        fixed = [s.color for s in series if s.color]
        palette = iter([c for c in PALETTE if not any(_same_hue(c, f) for f in fixed)] * 4)
        for s in shown:
            s.color = s.color or next(palette)
        stacked_base: dict[float, float] = {}
        for s in series:
            s.color = s.color or ZERO
            times = [_date(t) for t in s.times]
            values = list(s.values)
            if s.stack:
                base = [stacked_base.get(t, 0.0) for t in s.times]
                values = [b + v if not math.isnan(v) else math.nan for b, v in zip(base, s.values)]
                for t, v in zip(s.times, values):
                    if not math.isnan(v):
                        stacked_base[t] = v
                if s.fill:
                    ax.fill_between(times, base, values, color=s.color, alpha=s.fill, linewidth=0)
            elif s.fill:
                ax.fill_between(times, values, color=s.color, alpha=s.fill, linewidth=0)
            ax.plot(times, values, color=s.color, linewidth=s.width, linestyle=(0, (4, 3)) if s.dashed else "-")
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"])
        low, high = ax.get_ylim()
        if high <= low or (high - low) < 1e-12:
            ax.set_ylim(low, low + 1)
        if not any(s.finite for s in series):
            ax.text(0.5, 0.5, "No finite values", transform=ax.transAxes, color=DIM, ha="center", va="center")

        # The legend as Grafana's table: name, then the panel's calcs (last, max).
        heads = {"lastNotNull": "Last *", "last": "Last", "max": "Max", "min": "Min", "mean": "Mean"}
        calcs = [c for c in legend_calcs if c in heads]
        top_y = y + self._inches(legend_height + 0.02)
        col_w = (w - 0.2 / self.width) / columns
        name_w = col_w - (0.75 * len(calcs)) / self.width
        for c in range(columns if shown else 0):
            cx = x + 0.12 / self.width + c * col_w
            for k, head in enumerate(calcs):
                self.fig.text(cx + name_w + (0.75 * (k + 1) - 0.05) / self.width, top_y, heads[head], color=DIM,
                              fontsize=7, ha="right", va="top")  # fmt: skip
        limit = 5 * columns if len(shown) > 6 * columns else 6 * columns
        for i, s in enumerate(shown[:limit]):
            col, row = divmod(i, math.ceil(min(len(shown), limit) / columns))
            cx = x + 0.12 / self.width + col * col_w
            cy = top_y - self._inches(line * (row + 1))
            self.fig.add_artist(Rectangle((cx, cy - self._inches(0.03)), 0.14 / self.width, self._inches(0.04),
                                          transform=self.fig.transFigure, color=s.color))  # fmt: skip
            self.fig.text(cx + 0.2 / self.width, cy, s.name, color=TEXT, fontsize=8, va="center")
            values = {"lastNotNull": s.last, "last": s.values[-1] if s.values else math.nan, "max": s.max,
                      "min": min(s.finite) if s.finite else math.nan,
                      "mean": sum(s.finite) / len(s.finite) if s.finite else math.nan}  # fmt: skip
            for k, calc in enumerate(calcs):
                self.fig.text(cx + name_w + (0.75 * (k + 1) - 0.05) / self.width, cy, fmt(values[calc], unit, decimals),
                              color=TEXT, fontsize=8, ha="right", va="center")  # fmt: skip
        notes = []
        if len(shown) > limit:
            notes.append(f"+{len(shown) - limit} more series")
        if hidden:
            notes.append(f"{hidden} series at 0 or without values not listed")
        if notes:
            rows_used = math.ceil(min(len(shown), limit) / columns)
            self.fig.text(x + 0.12 / self.width, top_y - self._inches(line * (rows_used + 1)), "; ".join(notes),
                          color=DIM, fontsize=7, va="center", style="italic")  # fmt: skip


def _same_hue(a: str, b: str) -> bool:
    (ha, _, sa), (hb, _, sb) = (colorsys.rgb_to_hls(*to_rgb(c)) for c in (a, b))
    return min(abs(ha - hb), 1 - abs(ha - hb)) < 0.06 and sa > 0.2 and sb > 0.2


def _date(t: float) -> float:
    return mdates.date2num(datetime.fromtimestamp(t, tz=timezone.utc))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--since", type=float, default=300, help="seconds back from --end (default 300)")
    parser.add_argument("--end", type=float, default=None, help="end of the range, Unix time (default: now)")
    parser.add_argument("--step", type=float, default=None, help="query_range step in seconds (default: since/300, at least 1)")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes (default 1m)")
    parser.add_argument("--instance", default=".+", help="what $instance becomes, a regex (default .+)")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD, help="the dashboard JSON")
    parser.add_argument("--note", default="", help="text added to the header (the machine, the scenario)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    end = time.time() if args.end is None else args.end
    step = args.step or max(1.0, round(args.since / 300))
    dashboard = json.loads(args.dashboard.read_text())
    prometheus = Prometheus(args.prometheus)
    try:
        prometheus.instant("vector(1)", end)
    except (OSError, RuntimeError) as exc:
        print(f"render_panels: cannot query {args.prometheus}: {exc}", file=sys.stderr)
        return 1
    renderer = Renderer(prometheus, start=end - args.since, end=end, step=step,
                        rate_interval=args.rate_interval, instance=args.instance)  # fmt: skip
    renderer.render(dashboard, args.out, args.note)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
