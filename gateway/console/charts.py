"""Charts as inline SVG drawn on the server: no chart library to pin, nothing for a closed network to block."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

COLOURS = {"allowed": "#2e7d4f", "refused": "#b3261e", "failed": "#8a6d00"}
PALETTE = ("#1f5fa8", "#b3261e", "#2e7d4f", "#8a6d00", "#6a3d9a", "#00838f", "#ad1457", "#4e342e")


@dataclass(frozen=True)
class Bar:
    label: str
    value: int


def bars(title: str, rows: list[Bar], width: int = 560, colour: str = "#1f5fa8") -> str:
    """Horizontal bars, one a row, with the value written beside each."""
    height = 28 + 22 * max(len(rows), 1)
    top = max((row.value for row in rows), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if not rows:
        parts.append('<text x="8" y="40" font-size="13" fill="#555">无数据 (no data)</text>')
    for index, row in enumerate(rows):
        y = 20 + 22 * index
        length = int((width - 260) * row.value / top)
        parts.append(f'<text x="4" y="{y + 14}" font-size="12" fill="#1d2330">{escape(row.label[:28])}</text>')
        parts.append(f'<rect x="200" y="{y}" width="{max(length, 1)}" height="16" fill="{colour}"/>')
        parts.append(f'<text x="{204 + length}" y="{y + 13}" font-size="12" fill="#1d2330">{row.value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_hours(title: str, hours: list[str], series: dict[str, list[int]], width: int = 1180) -> str:
    """Columns per hour, stacked by decision, with a legend."""
    height = 220
    plot_top, plot_bottom, left = 30, 180, 40
    top = max((sum(values[i] for values in series.values()) for i in range(len(hours))), default=0) or 1
    step = (width - left - 10) / max(len(hours), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{plot_bottom}" x2="{width - 10}" y2="{plot_bottom}" stroke="#888"/>',
        f'<text x="2" y="{plot_top + 4}" font-size="11" fill="#555">{top}</text>',
    ]
    for index, hour in enumerate(hours):
        x = left + index * step
        base = plot_bottom
        for name, values in series.items():
            value = values[index]
            if not value:
                continue
            bar = (plot_bottom - plot_top) * value / top
            base -= bar
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{base:.1f}" width="{max(step - 2, 1):.1f}" height="{bar:.1f}"'
                f' fill="{COLOURS.get(name, "#555")}"><title>{escape(hour)} {escape(name)}: {value}</title></rect>'
            )
        if index % 3 == 0:
            parts.append(f'<text x="{x:.1f}" y="{plot_bottom + 14}" font-size="10" fill="#555">{escape(hour)}</text>')
    for index, name in enumerate(series):
        x = left + 150 * index
        parts.append(f'<rect x="{x}" y="{height - 18}" width="12" height="12" fill="{COLOURS.get(name, "#555")}"/>')
        label = {"allowed": "允许 allowed", "refused": "拒绝 refused", "failed": "失败 failed"}.get(name, name)
        parts.append(f'<text x="{x + 16}" y="{height - 8}" font-size="12" fill="#1d2330">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
