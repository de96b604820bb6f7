// Compare page: configs from any sweeps overlaid (replicate bands), their final accuracy per
// replicate, Welch's test of each against the first, in words, the verdicts against the best of
// them and how many seeds a difference would need. Refreshes while runs train.
import { drawCurves, keysQuery, keysWithData } from "/static/bands.js";
import {
  PLOT_CONFIG, PRIMARY, api, canCancel, chartText, clearEmpty, colourFor, el, layout, markReady, metric, orderKeys,
  plotlyReady, showEmpty, waitingText,
} from "/static/common.js";
import { drawVerdictList, powerText, wireDetectInput } from "/static/stats.js";
import { drawConfigTable } from "/static/table.js";

// The server names the configs and lists the curve keys their runs report (app/pages.py); with none
// yet, the aggregates answer the catalogue's curve keys, drawn once they have points.
const { configs: chosen, names, keys: pageKeys } = JSON.parse(document.getElementById("compare-data").textContent);
const keys = keysQuery(pageKeys);
const state = { agg: null, cmp: null, verdicts: null, detect: null, asked: 0, reps: new Map(), band: "std" };
const colourOf = (id) => colourFor(chosen.indexOf(id));
const nameOf = (c) => names[String(c.id)] ?? String(c.id);
const chartName = (c) => chartText(nameOf(c)); // as a trace name and category of the final-value charts
const countsOf = (rows) => {
  const counts = {};
  for (const r of rows) for (const [s, n] of Object.entries(r.status_counts)) counts[s] = (counts[s] || 0) + n;
  return counts;
};

// The picker keeps the text box and the checkboxes in step.
const input = document.getElementById("configs-input");
for (const box of document.querySelectorAll("input.pick")) {
  box.addEventListener("change", () => {
    const ids = input.value.split(",").map((s) => s.trim()).filter(Boolean).filter((id) => id !== box.value);
    if (box.checked) ids.push(box.value);
    input.value = ids.join(",");
  });
}

// The verdicts of the chosen configs on the primary metric; DETECT (metric units) asks how many
// seeds that difference needs. An answer overtaken by a later question is dropped.
async function askVerdicts(detect) {
  const asked = ++state.asked;
  const answer = await api(`/api/configs/verdicts?ids=${chosen.join(",")}&metric=${encodeURIComponent(PRIMARY)}`
    + `${detect ? `&detect=${detect}` : ""}`);
  if (asked === state.asked) state.verdicts = answer;
}

async function load() {
  const ids = chosen.join(",");
  [state.agg, state.cmp] = await Promise.all([
    api(`/api/configs/aggregates?ids=${ids}&${keys}`), api(`/api/compare?configs=${ids}`), askVerdicts(state.detect)]);
}

function drawStats() {
  const answer = state.verdicts;
  const sentence = document.getElementById("power-sentence");
  sentence.textContent = powerText(answer.power, "these configs");
  sentence.dataset.detect = answer.power.detect ?? "";
  sentence.dataset.replicatesNeeded = answer.power.replicates_needed ?? "";
  drawVerdictList(document.getElementById("best-verdicts"), answer);
  document.getElementById("stats-method").textContent = answer.method;
}

function drawVerdicts() {
  const list = document.getElementById("verdict-list");
  const rows = state.cmp.configs;
  if (rows.length < 2) {
    list.replaceChildren(el("p", { class: "muted" }, "Pick a second config to compare with."));
    return;
  }
  list.replaceChildren(...state.cmp.comparisons.map((c) => el("p", {
    class: `verdict${c.p === null || c.p >= 0.05 ? " unclear" : ""}`, "data-a": c.a, "data-b": c.b,
    "data-diff": c.diff ?? "", "data-ci-low": c.ci_low ?? "", "data-ci-high": c.ci_high ?? "", "data-p": c.p ?? "",
    "data-t": c.t ?? "", "data-df": c.df ?? "", "data-n-a": c.n_a, "data-n-b": c.n_b,
  }, c.sentence)));
}

function drawFinal(holder) {
  const key = holder.dataset.key;
  const rows = state.cmp.configs;
  if (!rows.some((r) => r.final[key].values.length)) {
    showEmpty(holder, waitingText(countsOf(rows), { finals: true }));
    return Promise.resolve();
  }
  clearEmpty(holder);
  const title = `final ${metric(key).title} per replicate`;
  const names = rows.map(chartName);
  const traces = rows.map((r, i) => ({
    type: "box", name: names[i], x: r.final[key].values.map(() => names[i]), y: r.final[key].values,
    boxpoints: "all", jitter: 0.4, pointpos: -1.6, marker: { color: colourOf(r.id), size: 6 },
    line: { color: colourOf(r.id) }, legendgroup: String(r.id),
    customdata: r.final[key].runs.map((run, j) => [run, r.final[key].seeds[j]]),
    hovertemplate: "run %{customdata[0]} · seed %{customdata[1]}: %{y:.4f}<extra>%{fullData.name}</extra>",
  }));
  const have = rows.filter((r) => r.final[key].mean !== null);
  traces.push({
    type: "scatter", mode: "markers", name: "mean ± 95% CI", x: have.map(chartName), y: have.map((r) => r.final[key].mean),
    marker: { color: "#111827", size: 9, symbol: "diamond" },
    error_y: { type: "data", visible: true, thickness: 2, width: 8,
      array: have.map((r) => (r.final[key].ci_high ?? r.final[key].mean) - r.final[key].mean),
      arrayminus: have.map((r) => r.final[key].mean - (r.final[key].ci_low ?? r.final[key].mean)) },
    hovertemplate: "mean %{y:.4f}<extra>mean ± 95% CI</extra>",
  });
  return Plotly.react(holder, traces, layout(title, "config", metric(key).title,
    { xaxis: { type: "category", automargin: true }, legendTitle: "config" }), PLOT_CONFIG);
}

function draw() {
  const configs = state.agg.configs.map((c) => ({ id: c.id, name: nameOf(c), colour: colourOf(c.id), index: chosen.indexOf(c.id) }));
  drawVerdicts();
  drawStats();
  drawConfigTable(document.getElementById("config-table"), { axes: [], configs: state.cmp.configs }, {
    colourOf, nameOf, linkOf: (r) => `/sweeps/${r.sweep_id}`, selected: new Set(), showCurves: false, onSelect: () => {},
  });
  const drawnKeys = orderKeys([...pageKeys, ...keysWithData(state.agg.series)]);
  return Promise.all([
    drawCurves("compare", drawnKeys, configs, state.agg.series, state.reps, state.band, waitingText(countsOf(state.cmp.configs))),
    ...[...document.querySelectorAll("#compare-finals .chart[data-key]")].map(drawFinal),
  ]);
}

async function loadReplicates(on) {
  state.reps = new Map();
  if (!on) return;
  const all = await Promise.all(chosen.map((id) => api(`/api/configs/${id}/series?${keys}`)));
  chosen.forEach((id, i) => state.reps.set(id, all[i].runs));
}

async function main() {
  if (!chosen.length) { markReady(); return; }
  await Promise.all([load(), plotlyReady()]);
  const detect = wireDetectInput(document.getElementById("detect-input"), document.getElementById("detect-unit"),
    () => PRIMARY, async (value) => {
      state.detect = value;
      await askVerdicts(value).catch((err) => console.warn(err));
      drawStats();
    });
  detect.unit();
  state.detect = detect.start(state.verdicts.power.detectable_difference);
  if (state.detect !== null) await askVerdicts(state.detect);
  await draw();
  markReady();
  for (const radio of document.querySelectorAll('input[name="band"]')) {
    radio.addEventListener("change", () => { state.band = radio.value; draw(); });
  }
  document.getElementById("show-replicates").addEventListener("change", async (event) => {
    await loadReplicates(event.target.checked);
    await draw();
  });
  // While any of the configs still trains, refresh every few seconds.
  const training = () => canCancel(countsOf(state.cmp.configs));
  const tick = async () => {
    if (!document.hidden && training()) {
      await load();
      if (document.getElementById("show-replicates").checked) await loadReplicates(true);
      await draw();
    }
    setTimeout(tick, 3000);
  };
  setTimeout(tick, 3000);
}

main().catch((err) => { console.error(err); });
