// Run page: loss and accuracy (training and validation, twin axes), the confusion matrix, and the
// first test images with the network's outputs before and after training. Live while it trains.
import { PLOT_CONFIG, api, chartText, markReady, openStream, plotlyReady, post, throttle } from "/static/common.js";
import { imageAxes, imageTrace } from "/static/images.js";

const run = JSON.parse(document.getElementById("run-data").textContent);
const FINAL = ["succeeded", "failed", "cancelled"];
const SERIES = [
  { key: "loss", name: "training loss", axis: "y", color: "#1f77b4", dash: "solid" },
  { key: "val_loss", name: "validation loss", axis: "y", color: "#1f77b4", dash: "dash" },
  { key: "accuracy", name: "training accuracy", axis: "y2", color: "#d62728", dash: "solid" },
  { key: "val_accuracy", name: "validation accuracy", axis: "y2", color: "#d62728", dash: "dash" },
];
let series = {};

function drawMetrics() {
  const traces = SERIES.filter((s) => series[s.key]).map((s) => ({
    type: "scatter", mode: "lines+markers", name: s.name, yaxis: s.axis, x: series[s.key].epochs, y: series[s.key].values,
    line: { color: s.color, dash: s.dash, width: 2 }, marker: { size: 5 },
  }));
  return Plotly.react("chart-run", traces, {
    title: { text: "loss and accuracy per epoch", font: { size: 15 } },
    xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: "loss" }, color: "#1f77b4" },
    yaxis2: { title: { text: "accuracy" }, overlaying: "y", side: "right", color: "#d62728", range: [0, 1.02],
      tickmode: "auto", nticks: 6, showgrid: false, zeroline: false },
    legend: { title: { text: "series" }, orientation: "h", y: -0.2 }, margin: { t: 44, r: 60, b: 40, l: 64 },
    uirevision: "keep",
  }, PLOT_CONFIG);
}

async function drawConfusion() {
  const holder = document.getElementById("chart-confusion");
  if (!run.artifacts.includes("confusion_matrix")) {
    holder.classList.add("empty");
    holder.textContent = "The confusion matrix is stored when the run succeeds.";
    return;
  }
  const { matrix } = await api(`/api/runs/${run.id}/artifacts/confusion_matrix`);
  const total = matrix.flat().reduce((a, b) => a + b, 0);
  const right = matrix.reduce((a, row, i) => a + row[i], 0);
  const labels = run.class_names.map(chartText);
  await Plotly.newPlot(holder, [{
    type: "heatmap", z: matrix, x: labels, y: labels, colorscale: "Blues", reversescale: true, texttemplate: "%{z}",
    colorbar: { title: { text: "test images" } }, name: "count",
    hovertemplate: "true %{y}, predicted %{x}: %{z}<extra></extra>",
  }], {
    title: { text: `confusion matrix on the test set (accuracy ${(100 * right / Math.max(1, total)).toFixed(2)}%)`, font: { size: 15 } },
    xaxis: { title: { text: "predicted label" }, type: "category" },
    yaxis: { title: { text: "true label" }, type: "category", autorange: "reversed" },
    margin: { t: 44, r: 16, b: 52, l: 64 },
  }, PLOT_CONFIG);
}

async function drawOutputs() {
  const holder = document.getElementById("chart-outputs");
  const [before, after] = await Promise.all(["outputs_before", "outputs_after"].map((name) =>
    run.artifacts.includes(name) ? api(`/api/runs/${run.id}/artifacts/${name}`) : null));
  const base = before || after;
  if (!base) {
    holder.classList.add("empty");
    holder.textContent = "The outputs are stored once the run has evaluated its untrained network.";
    return;
  }
  const count = base.indices.length;
  const first = Math.min(...base.indices);
  const images = await api(`/api/datasets/${run.dataset}/images?split=test&start=${first}&count=${count}`).catch(() => null);
  const classes = run.class_names.map(chartText);
  const traces = [], annotations = [];
  let lay = {};
  const top = Math.max(1, ...[before, after].filter(Boolean).flatMap((o) => o.outputs.flat()));
  base.indices.forEach((index, i) => {
    const col = i % 5, row = Math.floor(i / 5);
    const y = row === 0 ? [0.58, 0.93] : [0.07, 0.42];
    const [nImg, nBar] = [2 * i + 1, 2 * i + 2];
    const pixels = images?.images[index - first];
    if (pixels) {
      traces.push(imageTrace(pixels, images.shape, nImg, `test image ${index}`));
      lay = { ...lay, ...imageAxes(nImg, [col * 0.2 + 0.004, col * 0.2 + 0.066], y) };
    }
    for (const [outputs, name, color] of [[before, "before training", "#9ca3af"], [after, "after training", "#2563eb"]]) {
      if (!outputs) continue;
      traces.push({ type: "bar", x: classes, y: outputs.outputs[i], name, marker: { color }, legendgroup: name,
        showlegend: i === 0, xaxis: `x${nBar}`, yaxis: `y${nBar}`,
        hovertemplate: `image ${index}, class %{x}: %{y:.3f}<extra>${name}</extra>` });
    }
    lay[`xaxis${nBar}`] = { domain: [col * 0.2 + 0.085, col * 0.2 + 0.192], anchor: `y${nBar}`, type: "category",
      title: { text: "class", font: { size: 10 }, standoff: 2 }, tickfont: { size: 8 }, tickangle: 0 };
    lay[`yaxis${nBar}`] = { domain: y, anchor: `x${nBar}`, range: [0, top * 1.05],
      title: { text: "output", font: { size: 10 }, standoff: 2 }, tickfont: { size: 8 } };
    const label = base.labels[i];
    const pick = (o) => (o ? o.outputs[i].indexOf(Math.max(...o.outputs[i])) : null);
    const predicted = pick(after), earlier = pick(before);
    const verdict = after ? `predicted ${classes[predicted]}` : "not trained yet";
    annotations.push({ text: `label <b>${classes[label]}</b> · ${verdict}${before ? ` (before: ${classes[earlier]})` : ""}`,
      xref: "paper", yref: "paper", x: col * 0.2 + 0.1, y: y[1] + 0.015, yanchor: "bottom", showarrow: false,
      font: { size: 11, color: after ? (predicted === label ? "#15803d" : "#b91c1c") : "#374151" } });
  });
  await Plotly.newPlot(holder, traces, {
    ...lay, annotations, barmode: "group", bargap: 0.15, height: 560, showlegend: true,
    legend: { title: { text: "outputs" }, orientation: "h", x: 0, y: 1.08 },
    title: { text: images ? "" : "(the test images are not on this server)", font: { size: 12 } },
    margin: { t: 50, r: 10, b: 30, l: 30 },
  }, PLOT_CONFIG);
}

async function main() {
  ({ series } = await api(`/api/runs/${run.id}/metrics`));
  await plotlyReady();
  await Promise.all([drawMetrics(), drawConfusion(), drawOutputs()]);
  markReady();
  const cancel = document.getElementById("cancel-run");
  cancel?.addEventListener("click", async () => {
    if (!confirm("Cancel this run?")) return;
    const answer = await post(cancel, `/api/runs/${run.id}/cancel`);
    document.getElementById("run-status").textContent = answer.status + (answer.cancel_requested && answer.status === "running" ? " (cancel requested)" : "");
    if (FINAL.includes(answer.status)) cancel.remove();
  });
  if (FINAL.includes(run.status)) return;
  const redraw = throttle(drawMetrics, 150);
  openStream((cursor) => `/api/sweeps/${run.sweep_id}/stream?run=${run.id}&cursor=${cursor ?? 0}`, {
    epochs: ({ points }) => {
      for (const p of points) {
        const s = (series[p.key] ||= { epochs: [], values: [] });
        if (s.epochs.length && s.epochs[s.epochs.length - 1] >= p.epoch) continue;
        s.epochs.push(p.epoch); s.values.push(p.value);
        if (p.key === "loss") document.getElementById("run-epoch").textContent = p.epoch;
      }
      redraw();
    },
    status: (statuses) => {
      const status = statuses[String(run.id)];
      if (status && status !== run.status && FINAL.includes(status)) location.reload();
      if (status) document.getElementById("run-status").textContent = status;
    },
  });
}

main().catch((err) => console.error(err));
