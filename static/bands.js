// Replicate bands: per config the mean curve (bold), its spread (std or min-max band) and, when
// loaded, every replicate's own curve (thin), one chart per metric key the runs report.
import { PLOT_CONFIG, chartText, clearEmpty, el, epochTicks, fade, layout, metric, orderKeys, showEmpty } from "/static/common.js";

export const MAX_SHOWN = 10; // configs drawn at first; more cost more to draw
export const keysQuery = (keys) => keys.map((k) => `keys=${encodeURIComponent(k)}`).join("&");

// The band as one closed shape: along the upper bound, back along the lower one.
function band(col, mode) {
  const x = [], hi = [], lo = [];
  col.epochs.forEach((e, i) => {
    const m = col.mean[i];
    if (m === null) return;
    const [l, h] = mode === "minmax" ? [col.min[i], col.max[i]] : [m - (col.std[i] ?? 0), m + (col.std[i] ?? 0)];
    x.push(e); hi.push(h ?? m); lo.push(l ?? m);
  });
  return { x: [...x, ...x.slice().reverse()], y: [...hi, ...lo.reverse()] };
}

// configs: [{id, name, colour, index}], agg: {config id: {key: columns}}, reps: Map config id -> runs
export function curveTraces(key, configs, agg, reps, mode) {
  const traces = [];
  for (const c of configs) {
    const group = String(c.id);
    const name = chartText(c.name);
    const col = agg[group]?.[key];
    const common = { type: "scatter", mode: "lines", legendgroup: group, showlegend: false };
    if (col && col.epochs.length) {
      traces.push({ ...common, uid: `${group}-band`, ...band(col, mode), fill: "toself", fillcolor: fade(c.colour, 0.2),
        line: { width: 0, color: c.colour }, hoverinfo: "skip", name: `${name} (${mode === "minmax" ? "min–max" : "±1 std"})` });
    }
    for (const run of reps.get(c.id) || []) {
      const s = run.series[key];
      if (!s) continue;
      traces.push({ ...common, uid: `r${run.run_id}`, x: s.epochs, y: s.values, line: { width: 1, color: fade(c.colour, 0.5) },
        name, hovertemplate: `run ${Number(run.run_id)} · seed ${Number(run.seed)}<br>epoch %{x}: %{y:.4f}<extra>%{fullData.name}</extra>` });
    }
    if (col && col.epochs.length) {
      // markers only on short curves: hundreds of them cost more to draw than the lines
      traces.push({ ...common, uid: `${group}-mean`, x: col.epochs, y: col.mean, name, showlegend: true,
        mode: col.epochs.length <= 25 ? "lines+markers" : "lines", marker: { size: 5 }, line: { width: 3, color: c.colour },
        customdata: col.epochs.map((_, i) => [col.n[i], col.std[i] ?? NaN]),
        hovertemplate: "epoch %{x}: mean %{y:.4f}<br>std %{customdata[1]:.4f}, n=%{customdata[0]}<extra>%{fullData.name}</extra>" });
    } else {
      // a legend entry even before the first epoch, so every config is named from the start
      traces.push({ ...common, uid: `${group}-mean`, x: [], y: [], name, showlegend: true, line: { width: 3, color: c.colour } });
    }
  }
  return traces;
}

// One chart box per key, in catalogue order, inside #PREFIX-charts (boxes of keys no longer drawn go).
function chartBoxes(prefix, keys) {
  const holder = document.getElementById(`${prefix}-charts`);
  holder.querySelector(":scope > .empty")?.remove();
  const boxes = keys.map((key) => {
    const id = `${prefix}-${key}`;
    return document.getElementById(id) ?? el("div", { id, class: "chart", "data-key": key });
  });
  for (const old of holder.querySelectorAll(":scope > .chart[data-key]")) if (!boxes.includes(old)) old.remove();
  boxes.forEach((box, i) => { if (holder.children[i] !== box) holder.insertBefore(box, holder.children[i] ?? null); });
  return boxes;
}

// Draws KEYS' charts, or says what they wait for (EMPTY) while there is nothing to draw.
export function drawCurves(prefix, keys, configs, agg, reps, mode, empty) {
  const holder = document.getElementById(`${prefix}-charts`);
  if (!keys.length) {
    chartBoxes(prefix, []);
    let box = holder.querySelector(":scope > .empty");
    if (!box) holder.append(box = el("div", { class: "chart empty", id: `${prefix}-empty` }));
    showEmpty(box, empty);
    return Promise.resolve();
  }
  const boxes = chartBoxes(prefix, orderKeys(keys));
  return Promise.all(boxes.map((box) => {
    const m = metric(box.dataset.key);
    clearEmpty(box);
    const traces = curveTraces(m.key, configs, agg, reps, mode);
    return Plotly.react(box, traces, layout(m.title, "epoch", m.axis,
      { xaxis: epochTicks(traces), legend: { itemclick: "toggle", itemdoubleclick: "toggleothers" } }), PLOT_CONFIG);
  }));
}

// The curve keys with at least one point in AGG (per config, per key columns).
export function keysWithData(agg) {
  const keys = new Set();
  for (const byKey of Object.values(agg)) {
    for (const [key, col] of Object.entries(byKey)) if (col.epochs.length && metric(key).curve) keys.add(key);
  }
  return orderKeys(keys);
}

// Appends streamed points of the drawn KEYS to the loaded replicates (an epoch seen before is skipped).
export function addPoints(reps, points, keys) {
  const byRun = new Map();
  for (const runs of reps.values()) for (const run of runs) byRun.set(run.run_id, run);
  let added = 0;
  for (const p of points) {
    const run = byRun.get(p.run_id);
    if (!run || !keys.includes(p.key)) continue;
    const s = (run.series[p.key] ||= { epochs: [], values: [] });
    const last = s.epochs.length ? s.epochs[s.epochs.length - 1] : -1;
    if (p.epoch <= last) continue;
    s.epochs.push(p.epoch); s.values.push(p.value);
    added += 1;
  }
  return added;
}
