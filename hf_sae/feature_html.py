"""HTML pieces of a feature's page in the explorer: numbers, contexts shaded by activation, histograms as SVG bars."""

import html
import math


def number_text(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def note_text(value) -> str:
    return number_text(value) if isinstance(value, float) else str(value)


def tokens_html(tokens: list[str], activations: list[float], peak: int, scale: float) -> str:
    """A context as spans shaded by the feature's activation (0 to `scale`), the peak outlined."""
    spans = []
    for k, (token, act) in enumerate(zip(tokens, activations)):
        alpha = min(max(act / scale, 0.0), 1.0) if scale > 0 else 0.0
        outline = "outline:1.5px solid rgb(232,89,12);" if k == peak else ""
        text = html.escape(token.replace("\n", "⏎"))
        spans.append(
            f'<span class="tok" title="{act:.3g}" style="white-space:pre;{outline}'
            f'background:rgba(232,89,12,{alpha:.3f})">{text}</span>'
        )
    return "".join(spans)


def contexts_html(examples: list[dict], scale: float, css_class: str) -> str:
    rows = [
        f'<div class="{css_class}"><code>{e["activation"]:.3g}</code> '
        f"<code>{tokens_html(e['tokens'], e['activations'], e['peak'], scale)}</code></div>"
        for e in examples
    ]
    return "".join(rows) or "<p>No contexts: it never fired.</p>"


def bars_html(counts: list[int], low: float, high: float, title: str, css_class: str) -> str:
    """A histogram as a row of inline SVG bars, from `low` to `high`."""
    if not counts or not any(counts):
        return ""
    width, height, peak = 360, 90, max(counts)
    step = width / len(counts)
    bars = "".join(
        f'<rect class="{css_class}" x="{b * step:.1f}" y="{height - height * c / peak:.1f}" '
        f'width="{max(step - 1, 1):.1f}" height="{height * c / peak:.1f}" fill="rgb(232,89,12)"></rect>'
        for b, c in enumerate(counts)
    )
    return (
        f"<div><b>{html.escape(title)}</b><br><svg width='{width}' height='{height}'>{bars}</svg>"
        f"<br><small>{number_text(low)} … {number_text(high)}</small></div>"
    )
