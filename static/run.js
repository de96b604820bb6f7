// Run page (first version): loss and accuracy, training and validation.
import { api } from "/static/common.js";

const run = JSON.parse(document.getElementById("run-data").textContent);
const { series } = await api(`/api/runs/${run.id}/metrics`);
const traces = [];
for (const [key, axis] of [["loss", "y"], ["val_loss", "y"], ["accuracy", "y2"], ["val_accuracy", "y2"]]) {
  if (series[key]) traces.push({ x: series[key].epochs, y: series[key].values, name: key, yaxis: axis, mode: "lines+markers" });
}
Plotly.newPlot("chart-run", traces, {
  title: { text: "loss and accuracy" }, xaxis: { title: { text: "epoch" } },
  yaxis: { title: { text: "loss" } }, yaxis2: { title: { text: "accuracy" }, overlaying: "y", side: "right" },
  legend: { title: { text: "series" } },
}, { responsive: true, displaylogo: false });
