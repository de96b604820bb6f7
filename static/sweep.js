// Sweep page: replicate bands per config, final accuracy against the swept setting, the table of
// configs and the runs, all following the server's event stream (aggregates re-read on new epochs).
import { CURVE_KEYS, MAX_SHOWN, addPoints, drawCurves } from "/static/bands.js";
import {
  PLOT_CONFIG, api, chartText, colourFor, drawProgress, el, layout, markReady, openStream, plotlyReady, post, throttle,
} from "/static/common.js";
import { drawConfigTable } from "/static/table.js";

const meta = JSON.parse(document.getElementById("sweep-data").textContent);
const keysQuery = CURVE_KEYS.map((k) => `keys=${k}`).join("&");
const state = {
  agg: null, table: null, reps: new Map(), band: "std", axis: 0, selected: new Set(), loading: new Set(),
  statuses: null, lastEpoch: new Map(), dirty: new Set(), shown: null,
};

// The configs drawn in the replicate charts: the first few, or those ticked in the table.
const configsForCharts = () => state.agg.configs.filter((c) => state.shown.has(c.id)).map((c, i) => ({
  id: c.id, name: c.label === "base" ? c.sweep_name : c.label, colour: colourFor(c.position), index: i,
}));

function showShownHint() {
  const hint = document.getElementById("shown-hint");
  const n = meta.configs.length;
  hint.hidden = n <= MAX_SHOWN && state.shown.size === n;
  hint.textContent = `Showing ${state.shown.size} of ${n} configs: tick “chart” in the table below to choose which.`;
}
const colourOf = (configId) => colourFor(state.agg.configs.find((c) => c.id === configId)?.position ?? 0);

// The curves of the configs drawn (the first few at first); others load when ticked in the table.
async function loadAggregates() {
  const ids = state.shown ? [...state.shown] : meta.configs.slice(0, MAX_SHOWN);
  state.agg = await api(`/api/sweeps/${meta.id}/aggregates?configs=${ids.join(",")}&${keysQuery}`);
}
async function loadMissingAggregates() {
  const missing = [...state.shown].filter((id) => !state.agg.series[String(id)]);
  if (!missing.length) return;
  const part = await api(`/api/sweeps/${meta.id}/aggregates?configs=${missing.join(",")}&${keysQuery}`);
  Object.assign(state.agg.series, part.series);
  state.agg.configs = [...state.agg.configs, ...part.configs].sort((a, b) => a.position - b.position);
}
// Re-reads only the drawn configs that got new epochs.
async function updateAggregates() {
  const ids = [...state.dirty].filter((id) => state.shown.has(id));
  state.dirty.clear();
  if (!ids.length) return;
  const part = await api(`/api/sweeps/${meta.id}/aggregates?configs=${ids.join(",")}&${keysQuery}`);
  Object.assign(state.agg.series, part.series);
  state.agg.cursor = Math.max(state.agg.cursor, part.cursor);
}
async function loadTable() {
  state.table = await api(`/api/sweeps/${meta.id}/table`);
  showCounts(state.table);
}
async function loadAllReplicates() {
  const data = await api(`/api/sweeps/${meta.id}/series?${keysQuery}`);
  state.reps = new Map();
  for (const run of data.runs) {
    if (!state.reps.has(run.config_id)) state.reps.set(run.config_id, []);
    state.reps.get(run.config_id).push(run);
  }
  return data.cursor;
}
async function loadConfigReplicates(configId) {
  const data = await api(`/api/configs/${configId}/series?${keysQuery}`);
  state.reps.set(configId, data.runs);
}

const drawReplicates = () => drawCurves("curve", configsForCharts(), state.agg.series, state.reps, state.band);

// ---- the sweep chart: final and best accuracy against the swept value ----
const METRICS = [
  { key: "val_accuracy", name: "validation", line: "#111827", dash: "solid", symbol: "circle" },
  { key: "accuracy", name: "training", line: "#9ca3af", dash: "dot", symbol: "diamond" },
];
const GROUP_LINES = ["#111827", "#b45309", "#0f766e", "#7c3aed", "#be123c", "#4b5563"];
const sameValue = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const shortPath = (p) => ({ "model.hidden": "hidden", "optimizer.learning_rate": "lr", "optimizer.name": "optimizer" }[p] || p.split(".").pop());

// Tick labels and titles as Plotly shows them (see chartText); the box traces' x values match.
function xAxisFor(axis) {
  const labels = axis.labels.map(chartText);
  if (axis.kind === "category") {
    return { type: "category", categoryorder: "array", categoryarray: labels, title: { text: chartText(axis.title) } };
  }
  const scale = axis.kind === "log2" ? " — log₂ scale" : axis.kind === "log10" ? " — log scale" : "";
  return { type: axis.kind === "linear" ? "linear" : "log", tickvals: axis.x, ticktext: labels,
    title: { text: chartText(axis.title + scale) } };
}

function sweepTraces(which, axis, others) {
  const rows = state.table.configs;
  const pos = (row) => axis.values.findIndex((v) => sameValue(v, row.params[axis.path]));
  const groupOf = (row) => others.map((a) => `${shortPath(a.path)}=${JSON.stringify(row.params[a.path])}`).join(" · ");
  const groups = [...new Set(rows.map(groupOf))];
  const labels = axis.labels.map(chartText);
  const traces = [];
  for (const m of METRICS) {
    groups.forEach((g, gi) => {
      const mine = rows.filter((r) => groupOf(r) === g).sort((a, b) => pos(a) - pos(b));
      const name = chartText(g ? `${m.name} · ${g}` : m.name);
      if (axis.kind === "category") {
        const x = [], y = [];
        for (const r of mine) for (const v of r[which][m.key].values) { x.push(labels[pos(r)]); y.push(v); }
        traces.push({ type: "box", name, x, y, boxpoints: "all", jitter: 0.35, pointpos: 0, boxmean: true,
          marker: { color: gi ? GROUP_LINES[gi % GROUP_LINES.length] : m.line, size: 5 }, line: { width: 1.5 },
          opacity: m.key === "accuracy" ? 0.55 : 1 });
        return;
      }
      const have = mine.filter((r) => r[which][m.key].mean !== null);
      const s = have.map((r) => r[which][m.key]);
      traces.push({
        type: "scatter", mode: "lines+markers", name, x: have.map((r) => axis.x[pos(r)]), y: s.map((v) => v.mean),
        error_y: { type: "data", visible: true, thickness: 1.5, width: 5,
          array: s.map((v) => (v.ci_high === null ? 0 : v.ci_high - v.mean)),
          arrayminus: s.map((v) => (v.ci_low === null ? 0 : v.mean - v.ci_low)) },
        line: { color: gi ? GROUP_LINES[gi % GROUP_LINES.length] : m.line, dash: m.dash, width: 2 },
        marker: { size: 10, symbol: m.symbol, color: have.map((r) => colourOf(r.id)), line: { width: 1, color: "#111827" } },
        customdata: have.map((r, i) => [labels[pos(r)], s[i].n, s[i].ci_low ?? NaN, s[i].ci_high ?? NaN]),
        hovertemplate: "%{customdata[0]}: %{y:.4f}<br>95% CI [%{customdata[2]:.4f}, %{customdata[3]:.4f}], n=%{customdata[1]}<extra>%{fullData.name}</extra>",
      });
    });
  }
  return traces;
}

function drawSweep() {
  const axes = state.table.axes;
  const section = document.getElementById("sweep-section");
  section.hidden = axes.length === 0;
  if (!axes.length) return Promise.resolve();
  const select = document.getElementById("axis-select");
  if (select.options.length !== axes.length) {
    select.replaceChildren(...axes.map((a, i) => el("option", { value: i }, a.title)));
    select.value = state.axis;
    select.closest("label").hidden = axes.length < 2;
  }
  const axis = axes[state.axis];
  const others = axes.filter((_, i) => i !== state.axis);
  const extra = { xaxis: xAxisFor(axis), legendTitle: "accuracy", boxmode: "group" };
  return Promise.all([
    Plotly.react("sweep-final", sweepTraces("final", axis, others),
      layout(`final accuracy vs ${axis.title}`, axis.title, "accuracy at the last epoch", extra), PLOT_CONFIG),
    Plotly.react("sweep-best", sweepTraces("best", axis, others),
      layout(`best accuracy vs ${axis.title}`, axis.title, "best accuracy over epochs", extra), PLOT_CONFIG),
  ]);
}

// ---- table, runs and status ----
function drawTable() {
  drawConfigTable(document.getElementById("config-table"), state.table, {
    colourOf, selected: state.selected, showCurves: !meta.auto_replicates,
    shown: meta.configs.length > 1 ? state.shown : null,
    onShown: async () => { showShownHint(); await loadMissingAggregates(); await drawReplicates(); },
    curvesLoaded: (id) => state.reps.has(id), curvesLoading: (id) => state.loading.has(id),
    onSelect: () => { document.getElementById("compare-selected").disabled = state.selected.size < 1; },
    onCurves: async (id, on) => {
      if (on) { state.loading.add(id); await loadConfigReplicates(id); state.loading.delete(id); }
      else state.reps.delete(id);
      showShownHint();
      drawTable();
      await loadMissingAggregates();
      await drawReplicates();
    },
  });
}

// A big sweep's runs table is filled when opened.
async function loadRunRows() {
  const body = document.querySelector("#run-table tbody");
  const runs = await api(`/api/sweeps/${meta.id}/runs`);
  body.replaceChildren(...runs.map((r) => el("tr", { "data-run-id": r.id },
    el("td", {}, el("a", { href: `/runs/${r.id}` }, r.id)), el("td", {}, r.config_label), el("td", {}, r.seed),
    el("td", {}, el("span", { class: `status ${r.status}` }, r.status)),
    el("td", { class: "epoch" }, `${Math.max(r.last_epoch, 0)}/${r.epochs}`), el("td", {}, `${r.attempt}/${r.max_attempts}`))));
  if (state.statuses) showStatuses(state.statuses);
}

// The sweep's progress from the table's per-config counts: the stream sends only the runs that changed.
function showCounts(table) {
  const counts = {};
  for (const c of table.configs) for (const [s, n] of Object.entries(c.status_counts)) counts[s] = (counts[s] || 0) + n;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  document.getElementById("sweep-status").textContent = drawProgress(document.getElementById("sweep-progress"), counts, total);
  document.getElementById("cancel-sweep").disabled = !(counts.queued || counts.running);
  document.getElementById("retry-sweep").hidden = !(counts.failed || counts.cancelled);
  const live = document.getElementById("live");
  live.textContent = counts.queued || counts.running ? "live" : "finished";
  live.classList.toggle("idle", !(counts.queued || counts.running));
}

// A run queued again after it ended was retried: its old epochs are gone, new ones start at 0.
function forgetRetried(runId, status) {
  const before = state.statuses[runId] ?? document.querySelector(`#run-table tr[data-run-id="${runId}"] .status`)?.textContent;
  if (status !== "queued" || !["failed", "cancelled"].includes(before)) return;
  state.lastEpoch.delete(Number(runId));
  for (const runs of state.reps.values()) {
    for (const run of runs) if (String(run.run_id) === runId) for (const s of Object.values(run.series)) { s.epochs = []; s.values = []; }
  }
}

function showStatuses(statuses) {
  for (const [runId, status] of Object.entries(statuses)) {
    const cell = document.querySelector(`#run-table tr[data-run-id="${runId}"] .status`);
    if (cell && cell.textContent !== status) { cell.textContent = status; cell.className = `status ${status}`; }
  }
}

function showEpochs(points) {
  for (const p of points) {
    if ((state.lastEpoch.get(p.run_id) ?? -1) >= p.epoch) continue;
    state.lastEpoch.set(p.run_id, p.epoch);
    const cell = document.querySelector(`#run-table tr[data-run-id="${p.run_id}"] .epoch`);
    if (cell) cell.textContent = `${p.epoch}/${cell.textContent.split("/")[1]}`;
  }
}

// Records on the page which commits (the sweep's commit sequence) its charts show, for tests and the benchmark.
const drawn = (cursor) => { document.body.dataset.drawnCursor = Math.max(Number(document.body.dataset.drawnCursor || 0), cursor); };
const refreshAggregates = throttle(async () => {
  await updateAggregates();
  await drawReplicates();
  drawn(state.agg.cursor);
}, 250);
const refreshTable = throttle(async () => { await loadTable(); await Promise.all([drawSweep(), drawTable()]); }, 1500);

function wireControls() {
  for (const radio of document.querySelectorAll('input[name="band"]')) {
    radio.addEventListener("change", () => { state.band = radio.value; drawReplicates(); });
  }
  document.getElementById("show-replicates").addEventListener("change", async (event) => {
    if (event.target.checked) await loadAllReplicates(); else state.reps = new Map();
    await drawReplicates();
    drawTable();
  });
  document.getElementById("axis-select").addEventListener("change", (event) => {
    state.axis = Number(event.target.value); drawSweep();
  });
  document.getElementById("compare-selected").addEventListener("click", () => {
    location.href = `/compare?configs=${[...state.selected].join(",")}`;
  });
  document.getElementById("cancel-sweep").addEventListener("click", async (event) => {
    if (!confirm("Cancel every queued run and stop the running ones?")) return;
    const sweep = await post(event.target, `/api/sweeps/${meta.id}/cancel`);
    const counts = sweep.status_counts;
    document.getElementById("sweep-status").textContent = drawProgress(document.getElementById("sweep-progress"), counts, sweep.runs);
    event.target.disabled = !(counts.queued || counts.running);
    document.getElementById("retry-sweep").hidden = !(counts.failed || counts.cancelled);
    refreshTable();
  });
  const runs = document.getElementById("runs-details");
  if (!meta.runs_rendered) {
    runs.addEventListener("toggle", () => { if (runs.open && !runs.dataset.loaded) { runs.dataset.loaded = "1"; loadRunRows(); } });
  }
  document.getElementById("retry-sweep").addEventListener("click", async (event) => {
    await post(event.target, `/api/sweeps/${meta.id}/retry`);
    location.reload();
  });
}

async function main() {
  const loading = Promise.all([loadAggregates(), loadTable(),
    meta.auto_replicates ? loadAllReplicates() : Promise.resolve(null)]);
  await plotlyReady();
  performance.mark("sweeplab-plotly-ready");
  const [, , repCursor] = await loading;
  performance.mark("sweeplab-data-ready");
  state.shown = new Set(meta.configs.slice(0, MAX_SHOWN));
  showShownHint();
  await drawReplicates();
  performance.mark("sweeplab-replicates-drawn");
  await drawSweep();
  performance.mark("sweeplab-sweep-drawn");
  drawTable();
  wireControls();
  drawn(state.agg.cursor);
  markReady();
  const start = Math.min(state.agg.cursor, repCursor ?? state.agg.cursor);
  openStream((cursor) => `/api/sweeps/${meta.id}/stream?cursor=${cursor ?? start}&${keysQuery}`, {
    epochs: ({ points }) => {
      addPoints(state.reps, points);
      showEpochs(points);
      for (const p of points) state.dirty.add(p.config_id);
      if (points.some((p) => state.shown.has(p.config_id))) refreshAggregates();
    },
    status: (statuses) => { // only the runs that changed since the cursor
      const first = state.statuses === null;
      state.statuses ||= {};
      const changed = Object.entries(statuses).filter(([id, s]) => state.statuses[id] !== s);
      for (const [id, s] of changed) forgetRetried(id, s);
      Object.assign(state.statuses, statuses);
      showStatuses(statuses);
      if (first || changed.length) refreshTable(); // the first event too: runs may have moved since the table was read
    },
  });
}

main().catch((err) => { console.error(err); document.getElementById("live").textContent = `error: ${err.message}`; });
