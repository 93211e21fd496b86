"""Inline SVG drawn on the server: an experiment's per-seed val_bpb with their mean, and the
reference it is tested against with the threshold a record must pass.

Plain SVG, no script, so the plot reads without JavaScript; colours come from app.css.
"""

from markupsafe import Markup, escape

WIDTH, HEIGHT = 480, 172
LEFT, RIGHT, TOP, BOTTOM = 64, 464, 14, 118  # plot area inside the viewBox
LEGEND_Y = 158


def seed_plot(points: list[tuple[int, float]], title: str, *, reference: float | None = None,
              threshold: float | None = None) -> Markup:
    """One dot per (seed, val_bpb), left to right in run order, a line at the mean, and, when
    given, lines at the reference and at the threshold (both val_bpb), with a legend."""
    if not points:
        return Markup("")
    scores = [score for _, score in points]
    lines = [("mean", sum(scores) / len(scores), "mean")]
    lines += [(kind, value, kind) for kind, value in (("reference", reference),
                                                      ("threshold", threshold))
              if value is not None]
    shown = scores + [value for _, value, _ in lines]
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.15 or max(abs(high) * 1e-4, 1e-4)
    low, high = low - pad, high + pad

    def x(index: int) -> float:
        return LEFT + (index + 0.5) * (RIGHT - LEFT) / len(points)

    def y(score: float) -> float:
        return BOTTOM - (score - low) / (high - low) * (BOTTOM - TOP)

    parts = [f'<path class="axis" d="M{LEFT},{TOP}V{BOTTOM}H{RIGHT}"/>']
    for value in (low + pad, high - pad):
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{value:.4f}</text>')
    for css, value, name in lines:
        parts.append(f'<line class="{css}" x1="{LEFT}" x2="{RIGHT}" y1="{y(value):.1f}" '
                     f'y2="{y(value):.1f}" data-{name}="{value:.6f}"><title>{name} '
                     f'{value:.5f}</title></line>')
    for index, (seed, score) in enumerate(points):
        parts.append(f'<circle class="dot seed" cx="{x(index):.1f}" cy="{y(score):.1f}" r="4" '
                     f'data-seed="{seed}" data-score="{score:.6f}"><title>seed {seed}: '
                     f'{score:.5f}</title></circle>')
        parts.append(f'<text class="tick" x="{x(index):.1f}" y="{BOTTOM + 16}" '
                     f'text-anchor="middle">{seed}</text>')
    parts.append(_legend(lines))
    label = escape(title)
    return Markup(f'<svg class="chart seed-plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
                  f'aria-label="{label}">{"".join(parts)}</svg>')


def _legend(lines: list[tuple[str, float, str]]) -> str:
    """Keys in a row under the seeds: the dot, then each line with its value."""
    items = [f'<circle class="dot seed" cx="{LEFT + 4}" cy="{LEGEND_Y - 4}" r="4"/>'
             f'<text class="tick" x="{LEFT + 12}" y="{LEGEND_Y}">seed</text>']
    at = LEFT + 52
    for css, value, name in lines:
        text = f"{name} {value:.4f}"
        items.append(f'<line class="{css}" x1="{at}" x2="{at + 18}" y1="{LEGEND_Y - 4}" '
                     f'y2="{LEGEND_Y - 4}"/><text class="tick" x="{at + 22}" '
                     f'y="{LEGEND_Y}">{text}</text>')
        at += 36 + 6 * len(text)
    return f'<g class="legend">{"".join(items)}</g>'
