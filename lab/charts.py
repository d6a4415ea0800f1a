"""Benchmark charts as inline SVG, drawn on the server (no JavaScript, no build step)."""

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 420, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 36
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def _nice(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def line_chart(
    *, title: str, x_label: str, xs: list[float], series: list[tuple[str, list[float]]]
) -> SafeString:
    """One chart: ``series`` are (label, ys) over the same ``xs``; a limit line is drawn
    dashed when a series is labelled ``SLO …``."""
    if not xs:
        return mark_safe("")
    x_lo, x_hi = min(xs), max(xs)
    y_hi = max([max(ys) for _, ys in series if ys] + [1e-9]) * 1.1
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (pw * (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else pw / 2)

    def py(y: float) -> float:
        return TOP + ph - ph * y / y_hi

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'class="chart" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="16" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="#888"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="#888"/>',
    ]
    for frac in (0, 0.5, 1):
        y = y_hi / 1.1 * frac
        parts.append(
            f'<text x="{LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{_nice(y)}</text>'
        )
    for x in xs:
        parts.append(
            f'<text x="{px(x):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{_nice(x)}</text>'
        )
    parts.append(
        f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>'
    )
    for i, (label, ys) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if label.startswith("SLO") and ys:
            parts.append(
                f'<line x1="{LEFT}" y1="{py(ys[0]):.1f}" x2="{LEFT + pw}" y2="{py(ys[0]):.1f}" '
                f'stroke="{color}" stroke-dasharray="4 3"/>'
            )
        else:
            pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=False))
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
            )
            for x, y in zip(xs, ys, strict=False):
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        parts.append(
            f'<text x="{LEFT + pw - 4}" y="{TOP + 12 + 13 * i}" text-anchor="end" '
            f'fill="{color}">{escape(label)}</text>'
        )
    parts.append("</svg>")
    # Every interpolated text above is escaped; the rest are numbers.
    return mark_safe("".join(parts))  # noqa: S308


def benchmark_charts(points: list[dict], slo: dict) -> list[SafeString]:
    if not points:
        return []
    by_rate = points[0].get("concurrency") is None
    key = "rate" if by_rate else "concurrency"
    pts = sorted(points, key=lambda p: p[key] or 0)
    xs = [p[key] for p in pts]
    x_label = "offered rate (requests/s)" if by_rate else "concurrent requests"

    def lat(metric: str, slo_key: str) -> list[tuple[str, list[float]]]:
        s = [(f"{metric} p50", [p[metric]["p50"] for p in pts])]
        s.append((f"{metric} p95", [p[metric]["p95"] for p in pts]))
        if slo.get(slo_key) is not None:
            s.append((f"SLO {slo[slo_key]:g} ms", [slo[slo_key]]))
        return s

    return [
        line_chart(
            title="Output tokens/s",
            x_label=x_label,
            xs=xs,
            series=[
                ("total", [p["output_tokens_per_s"] for p in pts]),
                ("goodput × tokens/request", [_goodput_tokens(p) for p in pts]),
            ],
        ),
        line_chart(title="TTFT (ms)", x_label=x_label, xs=xs, series=lat("ttft_ms", "ttft_p95_ms")),
        line_chart(title="ITL (ms)", x_label=x_label, xs=xs, series=lat("itl_ms", "itl_p95_ms")),
        line_chart(
            title="E2E latency (ms)", x_label=x_label, xs=xs, series=lat("e2e_ms", "e2e_p95_ms")
        ),
    ]


def _goodput_tokens(p: dict) -> float:
    if not p["requests_per_s"]:
        return 0.0
    return p["goodput"] * p["output_tokens_per_s"] / p["requests_per_s"]
