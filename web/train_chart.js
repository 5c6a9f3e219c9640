// The live view inside one Train LoRA node: a DOM widget with a status line, the loss/lr chart and the
// latest sample previews. Events only update data; drawing happens at most once per animation frame.

import { COLORS, EXPERT_COLORS, drawChart, formatLoss } from "./chart_draw.js";
import { RunSeries } from "./chart_series.js";

export const PROPERTY = "lora_lab_run"; // node property that carries the chart in a saved workflow
const MAX_SAMPLES = 8;
const ACTIVE = new Set(["starting", "running"]);

export class TrainChart {
  constructor(node, { viewUrl, canvasScale, fetchRun }) {
    this.node = node;
    this.viewUrl = viewUrl; // (imageRef) -> URL of a /view image
    this.canvasScale = canvasScale; // () -> the graph canvas' zoom, to draw sharp when zoomed in
    this.fetchRun = fetchRun; // (chart, promptId) -> Promise: backfill from the server's run log
    this.series = new RunSeries();
    this.status = "idle"; // idle | starting | running | done | cancelled | error | stopped
    this.message = "";
    this.samples = []; // [{step, image}]
    this.received = 0; // points received for this run (events and backfill)
    this.events = 0;
    this.draws = 0;
    this.drawnPoints = 0;
    this._frame = 0;
    this._build();
  }

  get active() {
    return ACTIVE.has(this.status);
  }

  _build() {
    const el = (tag, cls, parent) => {
      const e = document.createElement(tag);
      if (cls) e.className = cls;
      parent?.appendChild(e);
      return e;
    };
    this.el = el("div", "lora-lab-chart");
    this.el.style.cssText = "display:flex;flex-direction:column;gap:2px;width:100%;height:100%;box-sizing:border-box;"
      + "font:11px sans-serif;color:var(--descrip-text,#999);overflow:hidden;";
    this.header = el("div", "lora-lab-chart-header", this.el);
    this.header.style.cssText = "display:flex;flex-wrap:wrap;gap:0 10px;line-height:14px;min-height:28px;";
    this.canvas = el("canvas", "lora-lab-chart-canvas", this.el);
    this.canvas.style.cssText = "flex:1 1 auto;min-height:90px;width:100%;border-radius:4px;";
    this.sampleBox = el("div", "lora-lab-chart-samples", this.el);
    this.sampleBox.style.cssText = "display:none;flex:0 0 150px;gap:4px;align-items:flex-start;overflow:hidden;";
    this.widget = this.node.addDOMWidget("lora_lab_chart", "lora_lab_chart", this.el, {
      serialize: false, // never a prompt input
      getMinHeight: () => 190 + (this.samples.length ? 154 : 0),
      margin: 6,
    });
    this.widget.serialize = false; // and not in widgets_values: the node's widget values keep their order
    new ResizeObserver(() => this.schedule()).observe(this.canvas);
    this.schedule();
  }

  /** A new run of this node begins: clear the chart (re-running clears it). */
  start(promptId = null, total = 0) {
    this.series = new RunSeries(promptId, total);
    this.samples = [];
    this.received = 0;
    this.status = "starting";
    this.message = "encoding the dataset…";
    this._renderSamples();
    this.schedule();
  }

  // Events of another prompt, or step 1 again (the node run twice in one prompt, for a list input), begin a
  // new run; late points of a cancelled run (the server's last throttled batch) still join it.
  _isNewRun(promptId, firstStep) {
    if (this.status === "idle") return true;
    if (promptId && this.series.promptId && promptId !== this.series.promptId) return true;
    return firstStep === 1 && this.series.length > 0;
  }

  onProgress(d) {
    const points = d.points?.length ? d.points
      : [[d.step, d.loss, d.lr, d.val_loss, d.elapsed, ...(d.expert ? [d.expert] : [])]];
    if (this._isNewRun(d.prompt_id, points[0][0])) this.start(d.prompt_id, d.total);
    this.series.promptId ??= d.prompt_id ?? null;
    this.series.total = d.total ?? this.series.total;
    // Steps missing before these (the page was reloaded or joined mid-run): fetch them from the server.
    const gap = points[0][0] > this.series.lastStep + 1;
    this.received += this.series.add(points);
    this.events += 1;
    if (this.status === "starting") [this.status, this.message] = ["running", ""];
    if (gap && d.prompt_id && !this._fetching) {
      this._fetching = true;
      Promise.resolve(this.fetchRun?.(this, d.prompt_id))
        .catch((e) => console.warn("LoRA Lab: could not fetch the missed steps", e))
        .finally(() => (this._fetching = false));
    }
    this.schedule();
  }

  onSample(d) {
    if (this._isNewRun(d.prompt_id, null)) this.start(d.prompt_id, this.series.total);
    this.series.promptId ??= d.prompt_id ?? null;
    this.samples = [...this.samples, { step: d.step, image: d.image }].slice(-MAX_SAMPLES);
    this._renderSamples();
    this.schedule();
  }

  /** Points from the server's run log (a page loaded mid-run): merged with what the chart already has. */
  backfill(run) {
    if (this.status === "idle" || run.prompt_id !== this.series.promptId) this.start(run.prompt_id, run.total);
    this.series.total = run.total;
    this.received += this.series.add(run.points);
    if (this.status === "starting" && this.series.length) [this.status, this.message] = ["running", ""];
    this.schedule();
  }

  finish(status, message = "") {
    if (!this.active) return;
    this.status = status;
    this.message = message;
    this.schedule();
  }

  schedule() {
    if (!this._frame) this._frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this._frame = 0;
    const zoom = this.canvasScale?.() ?? 1;
    const scale = Math.min(3, (window.devicePixelRatio || 1) * Math.max(1, zoom));
    this.drawnPoints = drawChart(this.canvas, this.series, scale);
    this.draws += 1;
    this._renderHeader();
  }

  _renderHeader() {
    const s = this.series;
    const i = s.length - 1;
    const parts = [];
    const label = { starting: "starting", running: "training", done: "done", cancelled: "cancelled",
      error: "failed", stopped: "stopped", idle: "" }[this.status];
    if (label) parts.push([label, this.status === "error" ? "var(--error-text,#f66)" : null]);
    if (s.length) {
      parts.push([`step ${s.lastStep}/${s.total}`]);
      parts.push([`loss ${formatLoss(s.loss[i])}`, COLORS.raw]);
      const byExpert = Object.entries(s.lastSmoothByExpert());
      if (byExpert.length) {
        for (const [e, v] of byExpert) parts.push([`${e.replace("_noise", "")} ${formatLoss(v)}`, EXPERT_COLORS[e]]);
      } else parts.push([`avg ${formatLoss(s.smooth[i])}`, COLORS.smooth]);
      if (s.val.length) parts.push([`val ${formatLoss(s.val[s.val.length - 1][1])}`, COLORS.val]);
      if (Number.isFinite(s.lr[i])) parts.push([`lr ${s.lr[i].toExponential(2)}`, COLORS.lr]);
      const rate = s.rate();
      if (rate) parts.push([rate >= 1 ? `${rate.toFixed(2)} it/s` : `${(1 / rate).toFixed(2)} s/it`]);
      if (this.active && s.eta() !== null) parts.push([`ETA ${formatDuration(s.eta())}`]);
      if (!this.active && Number.isFinite(s.t[i])) parts.push([`took ${formatDuration(s.t[i])}`]);
    } else if (this.message) parts.push([this.message]);
    if (s.length && this.message) parts.push([this.message]);
    this.header.replaceChildren(...parts.map(([text, color]) => {
      const span = document.createElement("span");
      span.textContent = text;
      if (color) span.style.color = color;
      return span;
    }));
  }

  _renderSamples() {
    this.sampleBox.style.display = this.samples.length ? "flex" : "none";
    this.sampleBox.replaceChildren(...this.samples.slice().reverse().map(({ step, image }, k) => {
      const figure = document.createElement("figure");
      figure.style.cssText = `margin:0;flex:${k ? "0 0 64px" : "0 1 150px"};text-align:center;`;
      const img = document.createElement("img");
      img.src = this.viewUrl(image);
      img.alt = `sample at step ${step}`;
      img.style.cssText = "max-width:100%;max-height:130px;border-radius:3px;display:block;margin:auto;";
      img.onerror = () => figure.remove(); // temp files go when ComfyUI restarts
      const caption = document.createElement("figcaption");
      caption.textContent = `step ${step}`;
      figure.append(img, caption);
      return figure;
    }));
    const [w, h] = this.node.size;
    const min = this.node.computeSize?.()[1] ?? h;
    if (min > h) this.node.setSize([w, min]);
    this.node.setDirtyCanvas?.(true, true);
  }

  toJSON() {
    if (this.status === "idle") return null;
    return { v: 1, status: this.status, message: this.message, ...this.series.toJSON(), samples: this.samples };
  }

  restore(data) {
    this.series = RunSeries.fromJSON(data);
    this.status = data.status ?? "done";
    this.message = data.message ?? "";
    this.samples = Array.isArray(data.samples) ? data.samples.slice(-MAX_SAMPLES) : [];
    this.received = this.series.length;
    this._renderSamples();
    this.schedule();
  }
}

export function formatDuration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
