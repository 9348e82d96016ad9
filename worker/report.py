"""The replay report: one self-contained HTML file (inline SVG charts, no scripts, no network)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["render_report"]

COLOURS = ("#2b6cb0", "#dd6b20")
# Recall delay buckets for the distribution chart: (label, upper bound in minutes).
DELAY_BUCKETS = (
    ("<15m", 15), ("15-30m", 30), ("30-60m", 60), ("1-2h", 120), ("2-4h", 240), ("4-8h", 480),
    ("8-24h", 1440), ("1-2d", 2880), ("2-7d", 10080), (">7d", 10**9),
)  # fmt: skip


def _bars(title: str, labels: Sequence[str], series: Sequence[Sequence[float]]) -> str:
    """A grouped vertical bar chart as inline SVG, one colour per series."""
    width, height, top, bottom, left = 860, 300, 30, 70, 60
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max((value for values in series for value in values), default=0) or 1
    slot = plot_w / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 20}" y2="{top + plot_h}"'
        ' stroke="#333"/>',
    ]
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:,.0f}</text>"
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#eee"/>'
        )
    for index, label in enumerate(labels):
        x0 = left + slot * index + slot * 0.1
        for number, values in enumerate(series):
            value = values[index]
            h = plot_h * value / peak
            x = x0 + bar * number
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{COLOURS[number % len(COLOURS)]}"><title>{html.escape(label)}:'
                f" {value:,.0f}</title></rect>"
            )
        cx = left + slot * index + slot / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="end"'
            f' transform="rotate(-35 {cx:.1f} {top + plot_h + 14})">{html.escape(label)}</text>'
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
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        "<tr><td>" + html.escape(label) + "</td>"
        + "".join(f'<td class="n">{html.escape(str(v))}</td>' for v in values) + "</tr>"
        for label, values in rows
    )  # fmt: skip
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


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
    hours = [f"{hour:02d}" for hour in range(24)]
    charts = [
        _bars(
            "Decisions by reason",
            reasons,
            [[s["reasons"].get(r, 0) for r in reasons] for s in summaries],
        ),
        _bars(
            "Recall delay (due - call)",
            [label for label, _ in DELAY_BUCKETS],
            [_delay_buckets(s["delay_minutes_histogram"]) for s in summaries],
        ),
        _bars(
            "Recalls due per hour of day (phone's local time)",
            hours,
            [[s["recalls_by_local_hour"][str(hour)] for hour in range(24)] for s in summaries],
        ),
    ]
    rows: list[tuple[str, list[Any]]] = [("events", [s["events"] for s in summaries])]
    for section in ("actions", "sources", "recalls_by_sip_class"):
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
        f"{html.escape(result['rules'] if name == 'rules' else result['compare']['rules'])}<br>"
        for i, name in enumerate(names)
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
</style></head><body>
<h1>Replay report</h1>
<p>{html.escape(result["mode"])} of {sources}; made {made};
{result["summary"]["events"]:,} events in {result["elapsed_s"]}s.</p>
<p>{legend}</p>
{_table(rows, names)}
{"".join(charts)}
{differences}
</body></html>
"""
