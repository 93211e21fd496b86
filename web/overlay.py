"""Curves of several runs on one chart, as W&B shows them: an experiment's seeds, an ablation's
arms, the experiments picked on /compare; and the config diff of the experiments compared.

The points come from each run's metrics.jsonl or stored train.log (web/curves.py: never a large
log whole), so they are there for runs on any provider, for participants' scripts and after the pod is gone. Charts are inline SVG drawn
here (no script, no CDN).
"""

from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape
from sqlmodel import Session

from server import presets, scripts
from server.policies import CONTROL
from web.curves import Points, run_curves

WIDTH, HEIGHT = 960, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 944, 14, 300  # plot area inside the viewBox
LEGEND_TOP, LEGEND_ROW, LEGEND_COLUMNS = 330, 16, 4
# Colour-blind-safe (Okabe–Ito) colours; past eight series the same colours repeat dashed.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#7f7f00")
MAX_SERIES = 48


@dataclass(frozen=True)
class Series:
    label: str
    run_id: int
    points: dict[str, Points]  # run_curves() of the run


def run_series(session: Session, runs: list[Any], *, prefix: str = "", ablation: bool = False) -> list[Series]:
    """One series per run that logged anything (superseded runs left out), labelled by seed,
    and by arm in an ablation."""
    series = []
    for run in runs:
        if getattr(run, "superseded", False):
            continue
        points = run_curves(session, run.id, run.log_offset)
        if not any(points.values()):
            continue
        arm = f"{run.variant or 'control'} · " if ablation else ""
        series.append(Series(f"{prefix}{arm}seed {run.seed}", run.id, points))
    return series[:MAX_SERIES]


def overlay_charts(series: list[Series], what: str) -> dict[str, Markup]:
    """{"loss": train_loss and val_loss, "bpb": val_bpb}, each "" when no run has such points."""
    return {
        "loss": overlay_plot(series, ("train", "val", "final"), f"train and val loss (nats/token) of {what}"),
        "bpb": overlay_plot(series, ("val_bpb", "final_bpb"), f"val_bpb (bits/byte) of {what}"),
    }


def overlay_plot(series: list[Series], keys: tuple[str, ...], title: str) -> Markup:
    """A line per series and key (the first key solid, validation dashed), the final point as a
    dot, a colour per series with its label in the legend."""
    drawn = [s for s in series if any(s.points.get(key) for key in keys)]
    if not drawn:
        return Markup("")
    values = [p for s in drawn for key in keys for p in s.points.get(key, [])]
    x0, x1 = min(p[0] for p in values), max(p[0] for p in values)
    y0, y1 = min(p[1] for p in values), max(p[1] for p in values)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def x(step: float) -> float:
        return LEFT + (step - x0) / (x1 - x0) * (RIGHT - LEFT)

    def y(value: float) -> float:
        return BOTTOM - (value - y0) / (y1 - y0) * (BOTTOM - TOP)

    parts = [f'<path class="axis" d="M{LEFT},{TOP}V{BOTTOM}H{RIGHT}"/>']
    for value in (y0 + pad, (y0 + y1) / 2, y1 - pad):
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.4f}</text>')
    for step in (x0, (x0 + x1) // 2, x1):
        parts.append(f'<text class="tick" x="{x(step):.1f}" y="{BOTTOM + 16}" text-anchor="middle">{step:,}</text>')
    parts.append(f'<text class="tick" x="{RIGHT}" y="{BOTTOM + 28}" text-anchor="end">step</text>')
    for index, one in enumerate(drawn):
        parts.append(_series_svg(one, index, keys, x, y))
    parts.append(_legend(drawn))
    rows = (len(drawn) + LEGEND_COLUMNS - 1) // LEGEND_COLUMNS
    height = LEGEND_TOP + rows * LEGEND_ROW
    return Markup(f'<svg class="chart wide overlay" viewBox="0 0 {WIDTH} {height}" role="img" '
                  f'aria-label="{escape(title)}" data-series="{len(drawn)}">{"".join(parts)}</svg>')


def _series_svg(one: Series, index: int, keys: tuple[str, ...], x: Any, y: Any) -> str:
    colour = PALETTE[index % len(PALETTE)]
    label = escape(one.label)
    out = [f'<g class="run" data-run="{one.run_id}" data-label="{label}"><title>{label}</title>']
    for position, key in enumerate(keys):
        points = one.points.get(key, [])
        if not points:
            continue
        if key.startswith("final"):
            step, value = points[-1]
            out.append(f'<circle class="dot overlay" cx="{x(step):.1f}" cy="{y(value):.1f}" r="5" '
                       f'fill="{colour}" data-final="{value:.6f}"><title>{label}: final {value:.4f}'
                       '</title></circle>')
            continue
        dashed = " dashed" if position > 0 or index >= len(PALETTE) else ""
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        out.append(f'<polyline class="series overlay{dashed}" data-key="{key}" data-count="{len(points)}" '
                   f'stroke="{colour}" points="{coords}"/>')
    return "".join(out) + "</g>"


def _legend(drawn: list[Series]) -> str:
    items = []
    column_width = (RIGHT - LEFT) / LEGEND_COLUMNS
    for index, one in enumerate(drawn):
        at_x = LEFT + (index % LEGEND_COLUMNS) * column_width
        at_y = LEGEND_TOP + (index // LEGEND_COLUMNS) * LEGEND_ROW
        colour = PALETTE[index % len(PALETTE)]
        items.append(f'<line x1="{at_x:.1f}" x2="{at_x + 18:.1f}" y1="{at_y - 4}" y2="{at_y - 4}" '
                     f'stroke="{colour}" stroke-width="3"/><text class="tick" x="{at_x + 24:.1f}" '
                     f'y="{at_y}">{escape(one.label)}</text>')
    return f'<g class="legend">{"".join(items)}</g>'


def settings_of(experiment: Any) -> dict[str, Any]:
    """What an experiment runs with, field by field: kind, preset, then every trainer field
    as resolved (defaults < preset < config), or a script's env (secrets hidden)."""
    if experiment.kind == "script":
        return {"kind": "script", **{f"env.{k}": v for k, v in scripts.shown_env(experiment.env).items()}}
    schema = presets.load_schema()
    fields = {name: spec.get("default") for name, spec in schema["fields"].items()
              if name not in presets.RESERVED_FIELDS}
    resolved = {**fields, **schema["presets"].get(experiment.preset, {}), **experiment.config}
    return {"kind": experiment.kind, "preset": experiment.preset, **resolved}


def config_diff(experiments: list[Any]) -> list[tuple[str, list[str]]]:
    """(setting, the value in each experiment) for the settings that differ, W&B style; a
    setting one experiment lacks shows as —."""
    settings = [settings_of(e) for e in experiments]
    names = sorted({name for one in settings for name in one},
                   key=lambda n: (n not in ("kind", "preset"), n))
    rows = []
    for name in names:
        values = [_text(one[name]) if name in one else "—" for one in settings]
        if len(set(values)) > 1:
            rows.append((name, values))
    return rows


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_ablation(runs: list[Any]) -> bool:
    return any(run.variant != CONTROL for run in runs)
