"""Loss curve as a PIL image (raw + smoothed + validation points), drawn with ImageDraw only: no matplotlib."""
from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (232, 232, 232)
RAW = (160, 190, 225)
SMOOTH = (20, 90, 170)
VALIDATION = (220, 110, 20)
TEXT = (30, 30, 30)


def smooth_losses(losses: Sequence[float], beta: float = 0.9) -> list[float]:
    """Debiased exponential moving average, same length as `losses`.

    ema_t = beta * ema_{t-1} + (1 - beta) * x_t, reported as ema_t / (1 - beta^t) so early values are not
    pulled toward 0. Non-finite losses are skipped (the previous estimate is repeated; NaN before any).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    smoothed, ema, seen = [], 0.0, 0
    for loss in losses:
        loss = float(loss)
        if math.isfinite(loss):
            seen += 1
            ema = beta * ema + (1.0 - beta) * loss
        smoothed.append(ema / (1.0 - beta ** seen) if seen else math.nan)
    return smoothed


def plot_losses(losses: Sequence[float], width: int = 768, height: int = 384, title: str = "",
                validation: Sequence[tuple[int, float]] = ()) -> Image.Image:
    """RGB chart of loss per step: raw as a light line, smoothed as a bold line, validation loss (step, value)
    as an orange line with dots, ticks, legend, title."""
    if width < 160 or height < 120:
        raise ValueError(f"plot size {width}x{height} is too small (at least 160x120)")
    values = [float(v) for v in losses]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    checks = [(int(step), float(v)) for step, v in validation]
    finite = [v for v in values if math.isfinite(v)] + [v for _, v in checks if math.isfinite(v)]

    if title:
        _text(draw, (width // 2, 6), title, font, anchor="ma")
    top = 30 if title else 20
    frame = _Frame(left=64, top=top, right=width - 14, bottom=height - 34)

    n = max([len(values)] + [step for step, _ in checks])
    x_lo, x_hi = (1.0, float(max(n, 2))) if n > 1 else (0.0, 2.0)
    y_lo, y_hi = _padded_range(finite)
    x_ticks, y_ticks = nice_ticks(x_lo, x_hi, 8, integer=True), nice_ticks(y_lo, y_hi, 6)
    frame.set_ranges(x_lo, x_hi, y_lo, y_hi)
    _draw_axes(draw, frame, x_ticks, y_ticks, font)

    if not finite:
        _text(draw, frame.center(), "no loss values yet" if not values else "no finite loss values", font,
              anchor="mm")
        return image

    steps = range(1, len(values) + 1) if len(values) > 1 else [1]
    for points in _decimated_segments(frame, steps, values):
        _polyline(draw, points, RAW, 1)
    # the EMA holds its value across NaN steps; leave those steps blank in the plot as for the raw line
    smoothed = [s if math.isfinite(v) else math.nan for s, v in zip(smooth_losses(values), values)]
    for points in _decimated_segments(frame, steps, smoothed):
        _polyline(draw, points, SMOOTH, 3)
    _draw_validation(draw, frame, checks)
    _draw_legend(draw, frame, font, with_validation=bool(checks))
    _text(draw, ((frame.left + frame.right) // 2, height - 4), "step", font, anchor="md")
    return image


class _Frame:
    """The plot rectangle and the data -> pixel mapping inside it."""

    def __init__(self, left: int, top: int, right: int, bottom: int):
        self.left, self.top, self.right, self.bottom = left, top, right, bottom

    def set_ranges(self, x_lo: float, x_hi: float, y_lo: float, y_hi: float) -> None:
        self.x_lo, self.x_hi, self.y_lo, self.y_hi = x_lo, x_hi, y_lo, y_hi

    def px(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top)

    def center(self) -> tuple[int, int]:
        return (self.left + self.right) // 2, (self.top + self.bottom) // 2


def _padded_range(finite: list[float]) -> tuple[float, float]:
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.05 if hi > lo else (abs(lo) * 0.1 or 1.0)
    return lo - pad, hi + pad


def nice_ticks(lo: float, hi: float, max_ticks: int, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) inside [lo, hi]."""
    raw_step = (hi - lo) / max(max_ticks - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    if integer:
        step = max(step, 1.0)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]
    return [round(t, 12) for t in ticks]


def _tick_label(value: float, ticks: list[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{value:.{decimals}f}"


def _draw_axes(draw: ImageDraw.ImageDraw, frame: _Frame, x_ticks: list[float], y_ticks: list[float],
               font: ImageFont.ImageFont) -> None:
    for y in y_ticks:
        py = round(frame.py(y))
        draw.line([(frame.left, py), (frame.right, py)], fill=GRID)
        draw.line([(frame.left - 4, py), (frame.left, py)], fill=AXIS)
        _text(draw, (frame.left - 7, py), _tick_label(y, y_ticks), font, anchor="rm")
    for x in x_ticks:
        px = round(frame.px(x))
        draw.line([(px, frame.bottom), (px, frame.bottom + 4)], fill=AXIS)
        _text(draw, (px, frame.bottom + 7), _tick_label(x, x_ticks), font, anchor="ma")
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline=AXIS)
    _text(draw, (frame.left - 7, frame.top - 3), "loss", font, anchor="rd")


def _decimated_segments(frame: _Frame, steps: Sequence[int], values: Sequence[float]
                        ) -> list[list[tuple[float, float]]]:
    """Pixel polylines, split at non-finite values; at most the min and max per pixel column are kept,
    so 10k points draw as fast as 700 and spikes stay visible."""
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    column: list[float] = []
    column_x: int | None = None

    def flush_column() -> None:
        if column:
            lo, hi = min(column), max(column)
            first_is_lower = column[0] <= column[-1]
            ordered = (lo, hi) if first_is_lower else (hi, lo)
            current.extend((column_x, frame.py(v)) for v in (ordered if lo != hi else (lo,)))
            column.clear()

    for step, value in zip(steps, values):
        if not math.isfinite(value):
            flush_column()
            if current:
                segments.append(current)
            current = []
            continue
        x = round(frame.px(step))
        if x != column_x:
            flush_column()
            column_x = x
        column.append(value)
    flush_column()
    if current:
        segments.append(current)
    return segments


def _polyline(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], color: tuple, width: int) -> None:
    if len(points) == 1:
        (x, y), r = points[0], max(width, 2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    else:
        draw.line(points, fill=color, width=width, joint="curve" if width > 1 else None)


def _draw_validation(draw: ImageDraw.ImageDraw, frame: _Frame, checks: list[tuple[int, float]]) -> None:
    points = [(frame.px(step), frame.py(v)) for step, v in sorted(checks) if math.isfinite(v)]
    if len(points) > 1:
        draw.line(points, fill=VALIDATION, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VALIDATION)


def _draw_legend(draw: ImageDraw.ImageDraw, frame: _Frame, font: ImageFont.ImageFont, with_validation: bool = False) -> None:
    entries = [("loss", RAW, 1), ("smoothed", SMOOTH, 3)] + ([("validation", VALIDATION, 2)] if with_validation else [])
    label_w = max(draw.textlength(label, font=font) for label, _, _ in entries)
    box_w, row_h = int(label_w) + 40, 14
    x0, y0 = frame.right - box_w - 8, frame.top + 8
    draw.rectangle([x0, y0, x0 + box_w, y0 + row_h * len(entries) + 6], fill=BACKGROUND, outline=GRID)
    for i, (label, color, width) in enumerate(entries):
        y = y0 + 4 + row_h * i + row_h // 2
        draw.line([(x0 + 6, y), (x0 + 26, y)], fill=color, width=width)
        _text(draw, (x0 + 32, y), label, font, anchor="lm")


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.ImageFont,
          anchor: str) -> None:
    try:
        draw.text(xy, text, fill=TEXT, font=font, anchor=anchor)
    except ValueError:  # bitmap fallback font (no FreeType) does not support anchors
        draw.text(xy, text, fill=TEXT, font=font)
