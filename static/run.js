// Run page: every curve the run reports, by axis (two axis groups per chart, twin y axes: loss and
// accuracy first), the confusion matrix, and the first test images with the network's outputs before
// and after training. Live while it trains.
import {
  NAME_CHARS, PLOT_CONFIG, TITLE_CHARS, Y_TITLE_CHARS, api, chartText, clearEmpty, clip, el, epochTicks, isFinal, markReady, metric, openStream, orderKeys, plotlyReady, post,
  showEmpty, statusInfo, statusLabel, throttle,
} from "/static/common.js";
import { imageAxes, imageTrace } from "/static/images.js";

const run = JSON.parse(document.getElementById("run-data").textContent);
const SIDES = [{ color: "#1f77b4", axis: "y" }, { color: "#d62728", axis: "y2" }];
const DASHES = ["solid", "dash", "dot", "dashdot", "longdash"];
let series = {};

// The run's curve keys with points, grouped by the axis they share, in catalogue order.
function axisGroups() {
  const groups = new Map();
  for (const key of orderKeys(Object.keys(series))) {
    const m = metric(key);
    if (!m.curve || !series[key].epochs.length) continue;
    if (!groups.has(m.axis)) groups.set(m.axis, []);
    groups.get(m.axis).push(key);
  }
  return [...groups.entries()].map(([axis, keys]) => ({ axis, keys }));
}

// Chart I of the metric charts: #chart-run first, more after the confusion matrix.
function metricChart(i) {
  if (i === 0) return document.getElementById("chart-run");
  const id = `chart-run-${i + 1}`;
  let box = document.getElementById(id);
  if (!box) document.getElementById("run-charts").append(box = el("div", { id, class: "chart" }));
  return box;
}

const waiting = () => {
  const s = statusInfo(run.status);
  return s.final ? `No epochs: the run ${s.label} before its first one.` : `This run is ${s.label}, ${s.waiting}.`;
};

function drawPair(holder, pair) {
  const traces = [], lay = {};
  pair.forEach((group, side) => {
    const { color, axis } = SIDES[side];
    group.keys.forEach((key, i) => traces.push({
      type: "scatter", mode: "lines+markers", name: chartText(clip(metric(key).title, NAME_CHARS)), yaxis: axis,
      x: series[key].epochs, y: series[key].values, line: { color, dash: DASHES[i % DASHES.length], width: 2 },
      marker: { size: 5 },
    }));
    const percent = group.keys.every((k) => metric(k).format === "percent");
    lay[side ? "yaxis2" : "yaxis"] = {
      title: { text: chartText(clip(group.axis, Y_TITLE_CHARS)) }, color, ...(percent ? { range: [0, 1.02] } : {}),
      ...(side ? { overlaying: "y", side: "right", tickmode: "auto", nticks: 6, showgrid: false, zeroline: false } : {}),
    };
  });
  clearEmpty(holder);
  return Plotly.react(holder, traces, {
    title: { text: chartText(clip(`${pair.map((g) => g.axis).join(" and ")} per epoch`, TITLE_CHARS)), font: { size: 15 } },
    xaxis: { title: { text: "epoch" }, ...epochTicks(traces) }, ...lay,
    legend: { title: { text: "series" }, orientation: "h", y: -0.2 }, margin: { t: 44, r: 60, b: 40, l: 64 },
    uirevision: "keep",
  }, PLOT_CONFIG);
}

function drawMetrics() {
  const groups = axisGroups();
  if (!groups.length) {
    showEmpty(metricChart(0), waiting());
    return Promise.resolve();
  }
  const pairs = [];
  for (let i = 0; i < groups.length; i += 2) pairs.push(groups.slice(i, i + 2));
  return Promise.all(pairs.map((pair, i) => drawPair(metricChart(i), pair)));
}

async function drawConfusion() {
  const holder = document.getElementById("chart-confusion");
  if (!holder) return; // a program's run: no confusion matrix
  if (!run.artifacts.includes("confusion_matrix")) {
    holder.classList.add("empty");
    holder.textContent = "The confusion matrix is stored when the run succeeds.";
    return;
  }
  const { matrix } = await api(`/api/runs/${run.id}/artifacts/confusion_matrix`);
  const total = matrix.flat().reduce((a, b) => a + b, 0);
  const right = matrix.reduce((a, row, i) => a + row[i], 0);
  const labels = run.class_names.map(chartText);
  await plotlyReady();
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
  if (!holder) return; // a program's run: its own output instead
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
  const images = await api(`/api/datasets/${encodeURIComponent(run.dataset)}/images?split=test&start=${first}&count=${count}`).catch(() => null);
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
  await plotlyReady();
  await Plotly.newPlot(holder, traces, {
    ...lay, annotations, barmode: "group", bargap: 0.15, height: 560, showlegend: true,
    legend: { title: { text: "outputs" }, orientation: "h", x: 0, y: 1.08 },
    title: { text: images ? "" : "(the test images are not on this server)", font: { size: 12 } },
    margin: { t: 50, r: 10, b: 30, l: 30 },
  }, PLOT_CONFIG);
}

// Provenance: one term per recorded field, in the order the worker wrote them; earlier attempts of a
// resumed run (where it began) after. Every value is text (el() never parses markup).
const provenanceText = (v) => (v === true ? "yes" : v === false ? "no" : v === null ? "–" : String(v));

let provenanceShown = false;

function drawProvenance(provenance) {
  const list = document.getElementById("provenance");
  provenanceShown = Boolean(provenance && Object.keys(provenance).length);
  if (!provenanceShown) {
    list.replaceChildren(el("dt", {}, "not yet"), el("dd", { class: "muted" }, "recorded when the run starts training"));
    return;
  }
  const { earlier = [], ...latest } = provenance;
  const items = Object.entries(latest).flatMap(([k, v]) => [el("dt", {}, k.replaceAll("_", " ")), el("dd", {}, provenanceText(v))]);
  for (const e of Array.isArray(earlier) ? earlier : []) {
    const where = ["host", "trainer", "gpu"].filter((k) => k in e).map((k) => `${k} ${provenanceText(e[k])}`).join(" · ");
    items.push(el("dt", {}, `earlier attempt ${provenanceText(e.attempt ?? "?")}`), el("dd", {}, where || "–"));
  }
  list.replaceChildren(...items);
}

// A program's output, refreshed while it runs (as text: nothing in it is markup); the view stays at the
// bottom if it was there.
function followOutput() {
  const pre = document.getElementById("run-output");
  if (!pre) return;
  const tick = async () => {
    try {
      const r = await api(`/api/runs/${run.id}`);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      if (r.output !== null && r.output !== pre.textContent) pre.textContent = r.output;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      if (isFinal(r.status)) return;
    } catch (err) { console.warn(err); }
    setTimeout(tick, 3000);
  };
  setTimeout(tick, 3000);
}

async function main() {
  const recorded = JSON.parse(document.getElementById("run-provenance").textContent);
  drawProvenance(recorded && Object.fromEntries(recorded));
  // Every fetch starts at once, while Plotly (the largest script) still loads; each chart waits for
  // Plotly only to draw.
  const metrics = api(`/api/runs/${run.id}/metrics`);
  const artifacts = [drawConfusion(), drawOutputs()];
  ({ series } = await metrics);
  await plotlyReady();
  performance.mark("sweeplab-plotly-ready");
  await Promise.all([drawMetrics(), ...artifacts]);
  markReady();
  const cancel = document.getElementById("cancel-run");
  cancel?.addEventListener("click", async () => {
    if (!confirm("Cancel this run?")) return;
    const answer = await post(cancel, `/api/runs/${run.id}/cancel`);
    document.getElementById("run-status").textContent = statusLabel(answer.status)
      + (answer.cancel_requested && !isFinal(answer.status) ? " (cancel requested)" : "");
    if (isFinal(answer.status)) cancel.remove();
  });
  if (isFinal(run.status)) return;
  followOutput();
  const redraw = throttle(drawMetrics, 150);
  openStream((cursor) => `/api/sweeps/${run.sweep_id}/stream?run=${run.id}&cursor=${cursor ?? 0}`, {
    epochs: ({ points }) => {
      // A worker records the provenance before the first epoch it trains: fetch it once epochs arrive.
      if (!provenanceShown && points.length) {
        provenanceShown = true;
        api(`/api/runs/${run.id}`).then((r) => drawProvenance(r.provenance)).catch(() => { provenanceShown = false; });
      }
      const counter = document.getElementById("run-epoch");
      for (const p of points) {
        const s = (series[p.key] ||= { epochs: [], values: [] });
        if (s.epochs.length && s.epochs[s.epochs.length - 1] >= p.epoch) continue;
        s.epochs.push(p.epoch); s.values.push(p.value);
        if (p.epoch > Number(counter.textContent)) counter.textContent = p.epoch;
      }
      redraw();
    },
    status: (statuses) => {
      const status = statuses[String(run.id)];
      if (status && status !== run.status && isFinal(status)) location.reload();
      if (!status) return;
      const shown = document.getElementById("run-status");
      shown.textContent = statusLabel(status);
      shown.className = `status ${status}`;
      run.status = status;
      redraw(); // a chart still waiting says what for
    },
  });
}

main().catch((err) => console.error(err));
