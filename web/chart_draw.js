// Draws a RunSeries on a canvas: raw loss (faint), smoothed loss, validation loss, learning rate on a
// second axis. Cost is bounded by the canvas width, not the step count: long runs are drawn as one
// min/max column per pixel.

export const COLORS = { raw: "#5b8def", smooth: "#8fb4ff", val: "#f5a524", lr: "#4cc38a" };
// Two-expert runs (Wan 2.2 A14B): each expert's smoothed loss in its own colour
export const EXPERT_COLORS = { high_noise: "#e46bd2", low_noise: "#8fb4ff" };

function theme(el) {
  const css = getComputedStyle(el);
  const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return { bg: v("--comfy-input-bg", "#222"), text: v("--descrip-text", "#999"), grid: v("--border-color", "#444") };
}

/** Draw the series; returns the number of series points the drawing covers. */
export function drawChart(canvas, series, scale = window.devicePixelRatio || 1) {
  const width = Math.max(1, canvas.clientWidth);
  const height = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(width * scale) || canvas.height !== Math.round(height * scale)) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const ctx = canvas.getContext("2d");
  const colors = theme(canvas);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.fillStyle = colors.bg;
  ctx.fillRect(0, 0, width, height);
  ctx.font = "10px sans-serif";
  const hasLr = series.lr.some(Number.isFinite);
  const box = { x0: 44, x1: width - (hasLr ? 44 : 10), y0: 8, y1: height - 18 };
  if (series.length === 0 || box.x1 - box.x0 < 20 || box.y1 - box.y0 < 20) {
    ctx.fillStyle = colors.text;
    ctx.textAlign = "center";
    ctx.fillText(series.length ? "" : "waiting for the first step…", width / 2, height / 2);
    return 0;
  }
  const xMax = Math.max(series.total, series.lastStep, 1);
  const x = (step) => box.x0 + ((box.x1 - box.x0) * step) / xMax;
  const [lo, hi] = lossRange(series);
  const y = (v) => box.y1 - ((box.y1 - box.y0) * (v - lo)) / (hi - lo);
  drawGrid(ctx, box, colors, lo, hi, xMax);

  ctx.save();
  ctx.beginPath();
  ctx.rect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
  ctx.clip();
  const columns = toColumns(series, x, box);
  ctx.globalAlpha = 0.45;
  drawEnvelope(ctx, columns, (c) => [y(c.lossMin), y(c.lossMax)], COLORS.raw, 1);
  ctx.globalAlpha = 1;
  const experts = series.experts;
  if (experts.length) {
    for (const e of experts) {
      const own = series.step.flatMap((s, i) => (series.expert[i] === e ? [[x(s), y(series.smooth[i])]] : []));
      drawLine(ctx, thin(own), EXPERT_COLORS[e] ?? COLORS.smooth, 2);
    }
  } else {
    drawLine(ctx, columns.map((c) => [c.x, y(c.smooth)]), COLORS.smooth, 2);
  }
  const lrMax = hasLr ? Math.max(...columns.map((c) => c.lr).filter(Number.isFinite)) * 1.1 || 1 : 1;
  if (hasLr) {
    ctx.setLineDash([4, 3]);
    drawLine(ctx, columns.map((c) => [c.x, box.y1 - ((box.y1 - box.y0) * c.lr) / lrMax]), COLORS.lr, 1.25);
    ctx.setLineDash([]);
  }
  if (series.val.length) {
    const pts = series.val.map(([s, v]) => [x(s), y(v)]);
    drawLine(ctx, pts, COLORS.val, 1.5);
    ctx.fillStyle = COLORS.val;
    for (const [px, py] of pts) ctx.fillRect(px - 2, py - 2, 4, 4);
  }
  ctx.restore();
  if (hasLr) drawLrAxis(ctx, box, lrMax);
  return series.length;
}

// Loss axis: the 1st..99th percentile of raw loss (one spike must not flatten the curve), widened to hold
// the whole smoothed and validation curves.
function lossRange(series) {
  const stride = Math.max(1, Math.floor(series.length / 4000));
  const raw = [];
  for (let i = 0; i < series.length; i += stride) if (Number.isFinite(series.loss[i])) raw.push(series.loss[i]);
  raw.sort((a, b) => a - b);
  let lo = raw[Math.floor(raw.length * 0.01)] ?? Infinity;
  let hi = raw[Math.ceil(raw.length * 0.99) - 1] ?? -Infinity;
  for (const v of series.smooth) if (Number.isFinite(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  for (const [, v] of series.val) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi - lo < 1e-12) [lo, hi] = [lo - (Math.abs(lo) * 0.1 || 0.5), hi + (Math.abs(hi) * 0.1 || 0.5)];
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}

// One entry per pixel column (or per point when there are fewer points than pixels).
function toColumns(series, x, box) {
  const columns = [];
  let current = null;
  for (let i = 0; i < series.length; i++) {
    const px = Math.round(x(series.step[i]));
    if (!current || px !== current.x) {
      current = { x: px, lossMin: Infinity, lossMax: -Infinity, smooth: NaN, lr: NaN };
      columns.push(current);
    }
    const loss = series.loss[i];
    if (Number.isFinite(loss)) {
      current.lossMin = Math.min(current.lossMin, loss);
      current.lossMax = Math.max(current.lossMax, loss);
    }
    current.smooth = series.smooth[i];
    current.lr = series.lr[i];
  }
  return columns.filter((c) => c.x >= box.x0 - 1);
}

// One point per pixel column (the last), so a long run costs the canvas width.
function thin(pts) {
  return pts.filter((p, i) => i === pts.length - 1 || Math.round(pts[i + 1][0]) !== Math.round(p[0]));
}

function drawEnvelope(ctx, columns, ys, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  let started = false;
  for (const c of columns) {
    if (!Number.isFinite(c.lossMin)) continue;
    const [yMin, yMax] = ys(c);
    if (!started) ctx.moveTo(c.x, yMin);
    else ctx.lineTo(c.x, yMin);
    if (yMax !== yMin) ctx.lineTo(c.x, yMax);
    started = true;
  }
  ctx.stroke();
}

function drawLine(ctx, pts, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  let pen = false;
  for (const [px, py] of pts) {
    if (!Number.isFinite(py)) {
      pen = false;
      continue;
    }
    if (pen) ctx.lineTo(px, py);
    else ctx.moveTo(px, py);
    pen = true;
  }
  ctx.stroke();
}

function drawGrid(ctx, box, colors, lo, hi, xMax) {
  ctx.strokeStyle = colors.grid;
  ctx.fillStyle = colors.text;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let k = 0; k <= 4; k++) {
    const py = Math.round(box.y1 - ((box.y1 - box.y0) * k) / 4) + 0.5;
    ctx.globalAlpha = 0.5;
    ctx.beginPath();
    ctx.moveTo(box.x0, py);
    ctx.lineTo(box.x1, py);
    ctx.stroke();
    ctx.globalAlpha = 1;
    ctx.fillText(formatLoss(lo + ((hi - lo) * k) / 4), box.x0 - 4, py);
  }
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText("0", box.x0, box.y1 + 4);
  ctx.textAlign = "right";
  ctx.fillText(`${xMax} steps`, box.x1, box.y1 + 4);
}

function drawLrAxis(ctx, box, lrMax) {
  ctx.fillStyle = COLORS.lr;
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  for (let k = 0; k <= 4; k += 2) {
    const py = box.y1 - ((box.y1 - box.y0) * k) / 4;
    ctx.fillText(((lrMax * k) / 4).toExponential(1), box.x1 + 4, py);
  }
}

export function formatLoss(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}
