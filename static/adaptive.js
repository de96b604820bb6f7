// The adaptive part of the sweep page (issue 13): the cost against the fixed design ("used 38% of the
// model-epochs of the fixed design") and, for a search, its progress: each config's mean final metric
// in the order the planner made them, with the best so far. Both re-read every few seconds while the
// sweep has work queued or running (a search and a race add work as it frees up).
import { PLOT_CONFIG, api, chartText, clearEmpty, layout, metric, plotlyReady, showEmpty } from "/static/common.js";

const section = document.getElementById("adaptive-section");
const sweepId = section.dataset.sweepId;
const searching = section.dataset.searching === "true";
const ACTIVE_MS = 3000;
const IDLE_MS = 15000;

export function budgetText(budget) {
  if (!budget || !budget.model_epochs_fixed_design) return "No model-epochs planned yet.";
  const { model_epochs_used: used, model_epochs_fixed_design: fixed } = budget;
  const share = Math.round((100 * used) / fixed);
  return `used ${share}% of the model-epochs of the fixed design (${used.toLocaleString()} of ${fixed.toLocaleString()}: ` +
    "every config at its most seeds for all its epochs)";
}

function drawProgress(progress) {
  const holder = document.getElementById("search-progress-chart");
  const tried = progress.positions.map((p) => p + 1);
  if (!progress.values.some((v) => v !== null)) {
    showEmpty(holder, tried.length ? `${tried.length} configs tried; none has a succeeded run yet.` : "No config yet.");
    return;
  }
  clearEmpty(holder);
  const info = metric(progress.metric);
  const names = progress.labels.map((label) => chartText(label));
  const traces = [
    { x: tried, y: progress.values, type: "scatter", mode: "markers", name: "config (mean final)",
      customdata: names, marker: { color: "#9ca3af", size: 8 },
      hovertemplate: "config %{x}: %{customdata}<br>%{y:.4f}<extra></extra>" },
    { x: tried, y: progress.best_so_far, type: "scatter", mode: "lines", name: "best so far",
      line: { color: "#111827", shape: "hv", width: 2 }, hovertemplate: "after %{x} configs: %{y:.4f}<extra></extra>" },
  ];
  Plotly.react(holder, traces, layout(`Search: best ${info.title} so far`, "configs tried", info.title,
    { legendTitle: " ", xaxis: { dtick: tried.length <= 20 ? 1 : undefined } }), PLOT_CONFIG);
}

async function refresh() {
  const [sweep, progress] = await Promise.all([
    api(`/api/sweeps/${sweepId}`),
    searching ? api(`/api/sweeps/${sweepId}/search-progress`) : Promise.resolve(null),
  ]);
  document.getElementById("budget-line").textContent = budgetText(sweep.budget);
  if (progress) {
    await plotlyReady();
    drawProgress(progress);
  }
  section.dataset.drawn = String(Number(section.dataset.drawn || 0) + 1); // for tests: a refresh completed
  const counts = sweep.status_counts;
  return counts.queued + counts.running > 0;
}

async function loop() {
  let active = true;
  try {
    if (document.visibilityState !== "hidden") active = await refresh();
  } catch (err) {
    console.warn(err);
  }
  setTimeout(loop, active ? ACTIVE_MS : IDLE_MS);
}

loop();
