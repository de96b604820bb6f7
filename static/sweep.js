// Sweep page (first version): every run's val_accuracy and loss per epoch, one colour per config,
// growing live from the server's event stream.
import { api, colourFor } from "/static/common.js";

const sweep = JSON.parse(document.getElementById("sweep-data").textContent);
const KEYS = ["val_accuracy", "loss"];
const TITLES = { val_accuracy: "validation accuracy", loss: "training loss" };

const data = await api(`/api/sweeps/${sweep.id}/series?keys=val_accuracy&keys=loss`);
const configIndex = new Map(data.configs.map((c, i) => [c.id, i]));
const configLabel = new Map(data.configs.map((c) => [c.id, c.label]));
const traceIndex = new Map(); // run id -> trace number (same on every chart)

function traces(key) {
  const seen = new Set();
  return data.runs.map((run, i) => {
    traceIndex.set(run.run_id, i);
    const first = !seen.has(run.config_id);
    seen.add(run.config_id);
    return {
      x: run.series[key].epochs, y: run.series[key].values, mode: "lines+markers", type: "scatter",
      name: configLabel.get(run.config_id), legendgroup: String(run.config_id), showlegend: first,
      line: { color: colourFor(configIndex.get(run.config_id)), width: 1.5 }, marker: { size: 4 },
      hovertemplate: `run ${run.run_id} seed ${run.seed}<br>epoch %{x}: %{y:.4f}<extra></extra>`,
    };
  });
}

for (const key of KEYS) {
  Plotly.newPlot(`chart-${key}`, traces(key), {
    title: { text: TITLES[key] }, xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: TITLES[key] } },
    legend: { title: { text: "config" } }, margin: { t: 40, r: 10 },
  }, { responsive: true, displaylogo: false });
}

const source = new EventSource(`/api/sweeps/${sweep.id}/stream?cursor=${data.cursor}&keys=val_accuracy&keys=loss`);
source.addEventListener("epochs", (event) => {
  const { points } = JSON.parse(event.data);
  for (const key of KEYS) {
    const mine = points.filter((p) => p.key === key && traceIndex.has(p.run_id));
    if (!mine.length) continue;
    const byTrace = new Map();
    for (const p of mine) {
      const t = traceIndex.get(p.run_id);
      if (!byTrace.has(t)) byTrace.set(t, { x: [], y: [] });
      byTrace.get(t).x.push(p.epoch); byTrace.get(t).y.push(p.value);
    }
    const ids = [...byTrace.keys()];
    Plotly.extendTraces(`chart-${key}`, { x: ids.map((t) => byTrace.get(t).x), y: ids.map((t) => byTrace.get(t).y) }, ids);
  }
});
source.addEventListener("status", (event) => {
  const statuses = Object.values(JSON.parse(event.data));
  const done = statuses.filter((s) => s === "succeeded").length;
  const running = statuses.filter((s) => s === "running").length;
  document.getElementById("sweep-status").textContent = `${done}/${statuses.length} runs succeeded, ${running} running`;
});
