"""The replay report: one self-contained HTML file (inline SVG charts, no scripts, no network)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["bar_chart", "nice_ticks", "render_report"]

COLOURS = ("#2b6cb0", "#dd6b20")
#: The adjustments a recall may get, in the order the engine applies them.
ADJUSTMENTS = ("retry_after", "max_attempts", "lead_max_attempts", "not_same_day", "calling_hours")
# Recall delay buckets for the distribution chart: (label, upper bound in minutes).
DELAY_BUCKETS = (
    ("<15m", 15), ("15-30m", 30), ("30-60m", 60), ("1-2h", 120), ("2-4h", 240), ("4-8h", 480),
    ("8-24h", 1440), ("1-2d", 2880), ("2-7d", 10080), (">7d", 10**9),
)  # fmt: skip


# Width of a character of the charts' 10 px sans-serif text, generous: labels are never clipped.
CHAR_WIDTH = 6.5
# Tick labels and axis titles are 10 and 11 px high; room around them.
_TICK_GAP, _TITLE_ROOM = 6, 18
_SIN45 = 0.7072  # a bit over sin 45 degrees, the slant of labels too wide to lie flat


def nice_ticks(peak: float) -> list[int]:
    """Axis ticks for counts: whole numbers from 0 to at least ``peak`` in steps of 1, 2 or 5
    times a power of ten, at most five steps."""
    magnitude = 1
    while True:
        for multiple in (1, 2, 5):
            step = multiple * magnitude
            steps = max(math.ceil(peak / step), 1)
            if steps <= 5:
                return list(range(0, steps * step + 1, step))
        magnitude *= 10


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Sequence[float]],
    x_title: str,
    y_title: str,
) -> str:
    """A grouped vertical bar chart as inline SVG, one colour per series, with whole labels."""
    width, plot_h, top, right = 860, 200, 30, 20
    ticks = nice_ticks(max((value for values in series for value in values), default=0))
    tick_width = max(len(f"{tick:,}") for tick in ticks) * CHAR_WIDTH
    left = _TITLE_ROOM + tick_width + _TICK_GAP + 4
    label_width = max((len(label) for label in labels), default=0) * CHAR_WIDTH
    count = max(len(labels), 1)
    slanted = label_width > (width - left - right) / count * 0.9
    label_room = 18.0
    if slanted:  # a slanted label reaches down and to the left of its slot's centre
        reach = label_width * _SIN45
        label_room = 14 + reach
        # The first slot's centre, left + (width - left - right) / count / 2, is reach + 4 in.
        half = 1 / (2 * count)
        left = max(left, (reach + 4 - (width - right) * half) / (1 - half))
    plot_w = width - left - right
    slot = plot_w / count
    base = top + plot_h
    height = base + label_room + _TITLE_ROOM
    peak = ticks[-1]
    bar = slot * 0.8 / max(len(series), 1)
    parts = [
        f'<svg viewBox="0 0 {width} {height:.0f}" width="{width}" height="{height:.0f}"'
        f' role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left:.1f}" y="18" font-size="14" font-weight="bold">{html.escape(title)}'
        "</text>",
    ]
    for tick in ticks:
        y = base - plot_h * tick / peak
        parts.append(
            f'<text class="tick" x="{left - _TICK_GAP:.1f}" y="{y + 4:.1f}" font-size="10"'
            f' text-anchor="end">{tick:,}</text>'
            f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"'
            ' stroke="#eee"/>'
        )
    parts.append(
        f'<line x1="{left:.1f}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#333"/>'
    )
    for index, label in enumerate(labels):
        x0 = left + slot * index + slot * 0.1
        for number, values in enumerate(series):
            value = values[index]
            h = plot_h * value / peak
            x = x0 + bar * number
            parts.append(
                f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{COLOURS[number % len(COLOURS)]}"><title>{html.escape(label)}:'
                f" {value:,.0f}</title></rect>"
            )
        cx, cy = left + slot * index + slot / 2, base + 14
        turn = (
            f' text-anchor="end" transform="rotate(-45 {cx:.1f} {cy})"'
            if slanted
            else (' text-anchor="middle"')
        )
        parts.append(
            f'<text class="label" x="{cx:.1f}" y="{cy}" font-size="10"{turn}>'
            f"{html.escape(label)}</text>"
        )
    middle = top + plot_h / 2
    parts.append(
        f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{height - 6:.0f}"'
        f' font-size="11" text-anchor="middle">{html.escape(x_title)}</text>'
        f'<text class="axis-title" x="12" y="{middle:.1f}" font-size="11" text-anchor="middle"'
        f' transform="rotate(-90 12 {middle:.1f})">{html.escape(y_title)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _delay_buckets(histogram: dict[str, int]) -> list[float]:
    counts = [0.0] * len(DELAY_BUCKETS)
    for minutes_text, count in histogram.items():
        minutes = int(minutes_text)
        for index, (_, upper) in enumerate(DELAY_BUCKETS):
            if minutes < upper:
                counts[index] += count
                break
    return counts


def _table(rows: list[tuple[str, list[Any]]], heads: list[str]) -> str:
    """The summary figures, one column per rule set; a row whose figures differ is marked."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        ('<tr class="differs">' if len(set(map(str, values))) > 1 else "<tr>")
        + "<td>" + html.escape(label) + "</td>"
        + "".join(f'<td class="n">{html.escape(str(v))}</td>' for v in values) + "</tr>"
        for label, values in rows
    )  # fmt: skip
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _rejections(result: dict[str, Any]) -> str:
    """The first rejected rows with their reasons, and how many there were."""
    shown, total = result["rejections_sample"], result["summary"]["dead_letters"]
    if not total:
        return ""
    items = "".join(
        f"<tr><td>{html.escape(r['file'])}:{r['line']}</td><td>{html.escape(r['reason'])}</td>"
        f"<td>{html.escape(r['detail'])}</td></tr>"
        for r in shown
    )
    which = f"the first {len(shown)} of {total:,}" if len(shown) < total else f"all {total:,}"
    return (
        f"<h2>Rejected rows: {which}</h2>"
        "<table><tr><th>where</th><th>reason</th><th>detail</th></tr>"
        f"{items}</table>"
    )


def _decision_cell(decision: dict[str, Any]) -> str:
    text = f"{decision['action']} {decision['reason']} {decision['due_at'] or ''}"
    return html.escape(text.strip())


def render_report(result: dict[str, Any], files: Sequence[Path]) -> str:
    """The HTML for a replay result (as ``recall replay --json`` prints it)."""
    summaries = [result["summary"]]
    names = ["rules"]
    if "compare" in result:
        summaries.append(result["compare"]["summary"])
        names.append("compare")
    reasons = sorted({key for s in summaries for key in s["reasons"]})
    # The order the engine applies them in (DESIGN.md section 7), any other after.
    moved = sorted(
        {key for s in summaries for key in s["recalls_by_adjustment"]},
        key=lambda name: (ADJUSTMENTS.index(name) if name in ADJUSTMENTS else 99, name),
    )
    hours = [f"{hour:02d}" for hour in range(24)]
    charts = [
        bar_chart(
            "Decisions by reason",
            reasons,
            [[s["reasons"].get(r, 0) for r in reasons] for s in summaries],
            "reason",
            "decisions",
        ),
        bar_chart(
            "Recall delay (due - call)",
            [label for label, _ in DELAY_BUCKETS],
            [_delay_buckets(s["delay_minutes_histogram"]) for s in summaries],
            "delay from the call to the recall's due time",
            "recalls",
        ),
        bar_chart(
            "Recalls due per hour of day (phone's local time)",
            hours,
            [[s["recalls_by_local_hour"][str(hour)] for hour in range(24)] for s in summaries],
            "hour of day the recall is due, in the phone's time zone",
            "recalls",
        ),
    ]
    if moved:  # a history no rule moved gets no empty chart
        charts.insert(
            1,
            bar_chart(
                "Recalls moved, by adjustment",
                moved,
                [[s["recalls_by_adjustment"].get(name, 0) for name in moved] for s in summaries],
                "adjustment",
                "recalls",
            ),
        )
    rows: list[tuple[str, list[Any]]] = [("events", [s["events"] for s in summaries])]
    for section in ("actions", "sources", "recalls_by_sip_class", "recalls_by_adjustment"):
        for key in sorted({k for s in summaries for k in s[section]}):
            label = f"{section.replace('_', ' ')}: {key}"
            rows.append((label, [s[section].get(key, 0) for s in summaries]))
    for key in ("median", "p95"):
        values = [s["recall_delay_s"][key] for s in summaries]
        shown = ["-" if value is None else round(value / 60) for value in values]
        rows.append((f"recall delay {key} (min)", shown))
    for key in ("recalls_fired", "recalls_pending", "dead_letters"):
        rows.append((key.replace("_", " "), [s[key] for s in summaries]))
    legend = "".join(
        f'<span class="key" style="background:{COLOURS[i]}"></span>{html.escape(name)}: '
        f"{html.escape(side['rules'])} (version {html.escape(side['rules_version'])})<br>"
        for i, name in enumerate(names)
        for side in [result if name == "rules" else result["compare"]]
    )
    differences = ""
    if "compare" in result:
        sample = result["compare"]["sample"]
        items = "".join(
            f"<tr><td>{html.escape(d['event_id'])}</td><td>{html.escape(d['phone_id'])}</td>"
            f"<td>{_decision_cell(d['rules'])}</td><td>{_decision_cell(d['compare'])}</td></tr>"
            for d in sample
        )
        differences = (
            f"<h2>Decisions that differ: {result['compare']['differing_decisions']:,}</h2>"
            "<table><tr><th>event</th><th>phone</th><th>rules</th><th>compare</th></tr>"
            f"{items}</table>"
        )
    if "compare" in result:
        legend += '<span class="key differs"></span>figures that differ between the two<br>'
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(html.escape(str(path)) for path in files)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>recall replay report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 920px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; font-size: 13px; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; }}
svg {{ display: block; margin: 1.5em 0; }}
.differs {{ background: #fdf2c4; font-weight: bold; }}
</style></head><body>
<h1>Replay report</h1>
<p>{html.escape(result["mode"])} of {sources}; made {made};
{result["summary"]["events"]:,} events in {result["elapsed_s"]}s.</p>
<p>{legend}</p>
{_table(rows, names)}
{"".join(charts)}
{differences}
{_rejections(result)}
</body></html>
"""
