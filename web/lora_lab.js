// LoRA Lab front-end extension: the live training chart inside every Train LoRA node.
// It uses only the frontend's extension API (app.registerExtension, api events, node.addDOMWidget, node
// onConfigure/onSerialize), which the January 2026 (1.35) and August 2026 (1.49) frontends both expose.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { PROPERTY, TrainChart } from "./train_chart.js";

const NODE_TYPE = "LoraLabTrain";
let runningPrompt = null; // from execution_start: the prompt whose nodes are executing now

// app.rootGraph (1.35 and 1.49); 1.49 logs an error when it is read before the graph exists.
const rootGraph = () => ("isGraphReady" in app && !app.isGraphReady ? null : app.rootGraph);

// A node from the execution id ComfyUI sends ("11", or "5:11" inside a subgraph).
function trainNode(executionId) {
  if (executionId === null || executionId === undefined) return null;
  let graph = rootGraph();
  let node = null;
  for (const part of String(executionId).split(":")) {
    node = graph?.getNodeById?.(part) ?? null;
    graph = node?.subgraph;
  }
  return node?.type === NODE_TYPE ? node : null;
}

const chartOf = (executionId) => trainNode(executionId)?.loraLabChart ?? null;

function allCharts(graph = rootGraph(), out = []) {
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    if (node.loraLabChart) out.push(node.loraLabChart);
    if (node.subgraph) allCharts(node.subgraph, out);
  }
  return out;
}

const viewUrl = (image) => api.apiURL(`/view?${new URLSearchParams({ filename: image.filename,
  subfolder: image.subfolder ?? "", type: image.type ?? "temp" })}`);

async function getJson(route) {
  const response = await api.fetchApi(route);
  if (!response.ok) throw new Error(`${route}: HTTP ${response.status}`);
  return response.json();
}

// The final state of a prompt, from /history (null while it is still queued or running).
async function finalStatus(promptId) {
  const entry = (await getJson(`/history/${encodeURIComponent(promptId)}`))[promptId];
  if (!entry?.status?.completed && entry?.status?.status_str !== "error") return null;
  const names = (entry.status.messages ?? []).map(([name]) => name);
  if (names.includes("execution_interrupted")) return "cancelled";
  return entry.status.status_str === "error" ? "error" : "done";
}

// The points of a run that this page missed, from the server's run log.
async function fetchRun(chart, promptId) {
  const query = new URLSearchParams({ prompt_id: promptId, node_id: String(chart.node.id) });
  const { runs } = await getJson(`/lora_lab/progress?${query}`);
  if (runs.length) chart.backfill(runs[runs.length - 1]);
}

// A page (re)loaded during a run: take the points it missed, then settle the status.
async function resume(chart, promptId = chart.series.promptId) {
  if (!promptId) return;
  await fetchRun(chart, promptId);
  const status = await finalStatus(promptId);
  if (status) chart.finish(status);
  else if (!(await runningPromptIds()).includes(promptId)) {
    chart.finish("stopped", "the server has no record of the end of this run");
  }
}

async function runningPromptIds() {
  const queue = await getJson("/queue");
  return [...(queue.queue_running ?? []), ...(queue.queue_pending ?? [])].map((item) => item[1]);
}

// After a load or reconnect: bring every chart of the shown workflow up to date with the server.
async function resumeAll() {
  try {
    const queue = await getJson("/queue");
    for (const item of queue.queue_running ?? []) {
      const promptId = item[1];
      const workflowId = item[3]?.extra_pnginfo?.workflow?.id;
      const { runs } = await getJson(`/lora_lab/progress?${new URLSearchParams({ prompt_id: promptId })}`);
      for (const run of runs) {
        const chart = chartOf(run.node_id);
        // Only this workflow's run: same prompt as stored, or queued from a graph with this id.
        if (chart && (chart.series.promptId === promptId || (workflowId && workflowId === rootGraph()?.id))) {
          chart.backfill(run);
        }
      }
    }
    for (const chart of allCharts()) if (chart.active) await resume(chart);
  } catch (error) {
    console.warn("LoRA Lab: could not restore the training charts", error);
  }
}

function endRuns(promptId, status, detail) {
  for (const chart of allCharts()) {
    if (!chart.active || (chart.series.promptId && chart.series.promptId !== promptId)) continue;
    const here = detail?.node_id !== undefined && String(detail.node_id) === String(chart.node.id);
    const message = status === "error" ? (here ? detail.exception_message ?? "" : "the prompt failed elsewhere") : "";
    chart.finish(status, message);
  }
}

api.addEventListener("lora_lab.progress", ({ detail }) => chartOf(detail?.node_id)?.onProgress(detail));
api.addEventListener("lora_lab.sample", ({ detail }) => chartOf(detail?.node_id)?.onSample(detail));
api.addEventListener("execution_start", ({ detail }) => (runningPrompt = detail?.prompt_id ?? null));
api.addEventListener("executing", ({ detail }) => {
  const id = detail !== null && typeof detail === "object" ? detail.display_node ?? detail.node : detail;
  chartOf(id)?.start(runningPrompt);
});
api.addEventListener("execution_success", ({ detail }) => endRuns(detail?.prompt_id, "done"));
api.addEventListener("execution_interrupted", ({ detail }) => endRuns(detail?.prompt_id, "cancelled"));
api.addEventListener("execution_error", ({ detail }) => endRuns(detail?.prompt_id, "error", detail));
api.addEventListener("reconnected", () => resumeAll());

app.registerExtension({
  name: "LoRALab.TrainChart",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const proto = nodeType.prototype;
    const { onNodeCreated, onConfigure, onSerialize } = proto;
    proto.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.loraLabChart = new TrainChart(this, { viewUrl, fetchRun, canvasScale: () => app.canvas?.ds?.scale ?? 1 });
      const [w, h] = this.computeSize();
      this.setSize([Math.max(this.size[0], w, 420), Math.max(this.size[1], h)]);
      return result;
    };
    proto.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      const saved = info?.properties?.[PROPERTY];
      if (this.properties) delete this.properties[PROPERTY]; // kept by the chart, written back on save
      if (saved && this.loraLabChart) {
        this.loraLabChart.restore(saved);
        if (this.loraLabChart.active) resume(this.loraLabChart).catch((e) => console.warn("LoRA Lab:", e));
      }
      return result;
    };
    proto.onSerialize = function (data) {
      const result = onSerialize?.apply(this, arguments);
      const saved = this.loraLabChart?.toJSON();
      if (saved) data.properties = { ...(data.properties ?? {}), [PROPERTY]: saved };
      return result;
    };
  },
  async setup() {
    await resumeAll();
  },
  // A workflow was opened (also the one restored after a page reload): catch up with a run in progress.
  async afterConfigureGraph() {
    await resumeAll();
  },
});
