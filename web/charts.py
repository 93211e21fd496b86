"""Inline SVG drawn on the server: an experiment's per-seed val_bpb with their mean.

Plain SVG, no script, so the plot reads without JavaScript; colours come from app.css.
"""

from markupsafe import Markup, escape

WIDTH, HEIGHT = 480, 150
LEFT, RIGHT, TOP, BOTTOM = 64, 464, 14, 118  # plot area inside the viewBox


def seed_plot(points: list[tuple[int, float]], title: str) -> Markup:
    """One dot per (seed, val_bpb), left to right in run order, and a line at the mean."""
    if not points:
        return Markup("")
    scores = [score for _, score in points]
    low, high = min(scores), max(scores)
    pad = (high - low) * 0.15 or max(abs(high) * 1e-4, 1e-4)
    low, high = low - pad, high + pad
    mean = sum(scores) / len(scores)

    def x(index: int) -> float:
        return LEFT + (index + 0.5) * (RIGHT - LEFT) / len(points)

    def y(score: float) -> float:
        return BOTTOM - (score - low) / (high - low) * (BOTTOM - TOP)

    parts = [f'<path class="axis" d="M{LEFT},{TOP}V{BOTTOM}H{RIGHT}"/>']
    for value in (low + pad, high - pad):
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{value:.4f}</text>')
    parts.append(f'<line class="mean" x1="{LEFT}" x2="{RIGHT}" y1="{y(mean):.1f}" '
                 f'y2="{y(mean):.1f}" data-mean="{mean:.6f}"><title>mean {mean:.5f}</title></line>')
    for index, (seed, score) in enumerate(points):
        parts.append(f'<circle class="dot seed" cx="{x(index):.1f}" cy="{y(score):.1f}" r="4" '
                     f'data-seed="{seed}" data-score="{score:.6f}"><title>seed {seed}: '
                     f'{score:.5f}</title></circle>')
        parts.append(f'<text class="tick" x="{x(index):.1f}" y="{BOTTOM + 16}" '
                     f'text-anchor="middle">{seed}</text>')
    label = escape(title)
    return Markup(f'<svg class="chart seed-plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
                  f'aria-label="{label}">{"".join(parts)}</svg>')
