// Replicate bands: per config the mean curve (bold), its spread (std or min-max band) and, when
// loaded, every replicate's own curve (thin), for loss / accuracy, training and validation.
import { PLOT_CONFIG, chartText, fade, layout } from "/static/common.js";

export const CURVES = [
  { key: "loss", title: "training loss", y: "loss" },
  { key: "val_loss", title: "validation loss", y: "loss" },
  { key: "accuracy", title: "training accuracy", y: "accuracy" },
  { key: "val_accuracy", title: "validation accuracy", y: "accuracy" },
];
export const CURVE_KEYS = CURVES.map((c) => c.key);
export const MAX_SHOWN = 10; // configs drawn at first; more cost more to draw

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

export function drawCurves(prefix, configs, agg, reps, mode) {
  return Promise.all(CURVES.map((curve) => Plotly.react(`${prefix}-${curve.key}`,
    curveTraces(curve.key, configs, agg, reps, mode),
    layout(curve.title, "epoch", curve.y, { legend: { itemclick: "toggle", itemdoubleclick: "toggleothers" } }),
    PLOT_CONFIG)));
}

// Appends streamed points to the loaded replicates (an epoch seen before is skipped).
export function addPoints(reps, points) {
  const byRun = new Map();
  for (const runs of reps.values()) for (const run of runs) byRun.set(run.run_id, run);
  let added = 0;
  for (const p of points) {
    const run = byRun.get(p.run_id);
    const s = run?.series[p.key];
    if (!s) continue;
    const last = s.epochs.length ? s.epochs[s.epochs.length - 1] : -1;
    if (p.epoch <= last) continue;
    s.epochs.push(p.epoch); s.values.push(p.value);
    added += 1;
  }
  return added;
}
