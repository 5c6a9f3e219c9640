// One training run's curve: every step received, a smoothed loss, validation points, steps/s and ETA.
// Pure data (no DOM), so the drawing and the node glue stay small.

const STORED_POINTS = 1000; // what a saved workflow keeps (the chart looks the same; files stay small)

export class RunSeries {
  constructor(promptId = null, total = 0) {
    this.promptId = promptId;
    this.total = total;
    this.step = []; // strictly increasing
    this.loss = [];
    this.smooth = [];
    this.lr = [];
    this.t = []; // seconds since the run started, server clock
    this.val = []; // [step, val_loss]
    this.expert = []; // two-expert runs: the expert each step trained ("high_noise" / "low_noise"), else null
    this._emas = new Map(); // expert ("" for one model) -> [ema, weight]: each expert's loss smoothed on its own
  }

  /** The experts this run trained, in order of appearance ([] for a one-model run). */
  get experts() {
    return [...new Set(this.expert.filter((e) => e !== null))];
  }

  get length() {
    return this.step.length;
  }

  get lastStep() {
    return this.step.length ? this.step[this.step.length - 1] : 0;
  }

  // EMA span from the run length, fixed for the whole run so the curve keeps its shape as it grows.
  get alpha() {
    const span = Math.min(200, Math.max(5, (this.total || this.length) / 25));
    return 2 / (span + 1);
  }

  /** Add [step, loss, lr, val_loss, elapsed] points; returns how many were new. */
  add(points) {
    if (!points?.length) return 0;
    if (points[0][0] > this.lastStep && isIncreasing(points)) {
      for (const p of points) this._push(p);
      return points.length;
    }
    return this._merge(points); // out of order or overlapping (a backfill after reload): rebuild
  }

  _push([step, loss, lr, valLoss, t, expert = null]) {
    const a = this.alpha;
    let [ema, weight] = this._emas.get(expert ?? "") ?? [0, 0];
    if (Number.isFinite(loss)) {
      // Debiased EMA (as TensorBoard smooths): early points are not pulled towards zero.
      ema = ema * (1 - a) + loss * a;
      weight = weight * (1 - a) + a;
      this._emas.set(expert ?? "", [ema, weight]);
    }
    this.step.push(step);
    this.loss.push(Number.isFinite(loss) ? loss : NaN);
    this.smooth.push(weight ? ema / weight : NaN);
    this.expert.push(expert ?? null);
    this.lr.push(Number.isFinite(lr) ? lr : NaN);
    this.t.push(Number.isFinite(t) ? t : NaN);
    if (Number.isFinite(valLoss)) this.val.push([step, valLoss]);
  }

  _merge(points) {
    const byStep = new Map(this.points().map((p) => [p[0], p]));
    const before = byStep.size;
    for (const p of points) byStep.set(p[0], p);
    const merged = [...byStep.values()].sort((x, y) => x[0] - y[0]);
    this.clearPoints();
    for (const p of merged) this._push(p);
    return byStep.size - before;
  }

  clearPoints() {
    for (const key of ["step", "loss", "smooth", "lr", "t", "val", "expert"]) this[key] = [];
    this._emas = new Map();
  }

  points() {
    const val = new Map(this.val);
    return this.step.map((s, i) => [s, nan2null(this.loss[i]), nan2null(this.lr[i]), val.get(s) ?? null,
      nan2null(this.t[i]), ...(this.expert[i] === null ? [] : [this.expert[i]])]);
  }

  /** The latest smoothed loss of each expert: {expert: value}. */
  lastSmoothByExpert() {
    const out = {};
    this.expert.forEach((e, i) => {
      if (e !== null) out[e] = this.smooth[i];
    });
    return out;
  }

  /** Steps per second over the last ~30 s (or 200 steps) of server time; null until two points. */
  rate() {
    const n = this.length;
    if (n < 2) return null;
    const last = n - 1;
    let i = last;
    while (i > 0 && last - i < 200 && this.t[last] - this.t[i - 1] <= 30) i -= 1;
    if (i === last) i = last - 1;
    const dt = this.t[last] - this.t[i];
    return dt > 0 ? (this.step[last] - this.step[i]) / dt : null;
  }

  /** Seconds left at the current rate; null when unknown. */
  eta() {
    const rate = this.rate();
    return rate ? Math.max(0, (this.total - this.lastStep) / rate) : null;
  }

  /** What the workflow stores in the node's properties: at most STORED_POINTS points, the last one exact. */
  toJSON() {
    const all = this.points();
    const stride = Math.ceil(all.length / STORED_POINTS) || 1;
    const kept = all.filter((p, i) => i % stride === 0 || i === all.length - 1 || p[3] !== null);
    return { prompt_id: this.promptId, total: this.total, points: kept.map(compactPoint) };
  }

  static fromJSON(data) {
    const series = new RunSeries(data?.prompt_id ?? null, data?.total ?? 0);
    if (Array.isArray(data?.points)) series.add(data.points);
    return series;
  }
}

function isIncreasing(points) {
  for (let i = 1; i < points.length; i++) if (points[i][0] <= points[i - 1][0]) return false;
  return true;
}

const nan2null = (x) => (Number.isFinite(x) ? x : null);
const round = (x) => (x === null ? null : Number(x.toPrecision(6)));
const compactPoint = ([s, loss, lr, val, t, ...expert]) =>
  [s, round(loss), round(lr), round(val), t === null ? null : Math.round(t * 1000) / 1000, ...expert];
