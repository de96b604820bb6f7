// Sweep page: replicate bands per config, final accuracy against the swept setting, the table of
// configs with each one's verdict against the best, the statistics (power, importance, parallel
// coordinates) and the runs, all following the server's event stream (aggregates re-read on new
// epochs; the table and the statistics when run statuses change).
import { MAX_SHOWN, addPoints, drawCurves, keysQuery } from "/static/bands.js";
import {
  FINALS, PLOT_CONFIG, PRIMARY, X_TITLE_CHARS, api, canCancel, canRetry, chartText, clearEmpty, clip, colourFor, doneCount, drawProgress, el,
  isFinal, layout, markReady, metric, openStream, orderKeys, plotlyReady, post, showEmpty, showError, statusInfo, statusLabel,
  throttle, waitingText,
} from "/static/common.js";
import { drawImportance, drawParcoords, powerText, verdictsByConfig, wireDetectInput } from "/static/stats.js";
import { drawConfigTable } from "/static/table.js";

// The server names the configs and lists the curve keys the sweep's runs report (app/pages.py).
const meta = JSON.parse(document.getElementById("sweep-data").textContent);
const configIds = meta.configs.map((c) => c.id);
const configMeta = new Map(meta.configs.map((c) => [c.id, c]));
const nameOf = (configId) => configMeta.get(configId)?.name ?? String(configId);
const state = {
  agg: null, table: null, reps: new Map(), band: "std", axis: 0, selected: new Set(), loading: new Set(),
  statuses: null, lastEpoch: new Map(), dirty: new Set(), shown: null, keys: meta.keys, counts: {},
  streamed: 0, loadingAgg: 0, touchedWhileLoading: new Set(), // the stream's cells (mergeCells)
  stats: { key: null, verdicts: null, importance: null, parcoords: null, detect: null, asked: 0, first: null },
};
const keys = () => keysQuery(state.keys);

// The configs drawn in the replicate charts: the first few, or those ticked in the table.
const configsForCharts = () => state.agg.configs.filter((c) => state.shown.has(c.id)).map((c, i) => ({
  id: c.id, name: nameOf(c.id), colour: colourFor(c.position), index: i,
}));

function showShownHint() {
  const hint = document.getElementById("shown-hint");
  const n = configIds.length;
  hint.hidden = n <= MAX_SHOWN && state.shown.size === n;
  hint.textContent = `Showing ${state.shown.size} of ${n} configs: tick “chart” in the table below to choose which.`;
}
const colourOf = (configId) => colourFor(state.agg.configs.find((c) => c.id === configId)?.position ?? 0);

// The curves of the configs drawn (the first few at first); others load when ticked in the table.
async function loadAggregates() {
  const ids = state.shown ? [...state.shown] : configIds.slice(0, MAX_SHOWN);
  state.agg = await api(`/api/sweeps/${meta.id}/aggregates?configs=${ids.join(",")}&${keys()}`);
}
async function loadMissingAggregates() {
  const missing = [...state.shown].filter((id) => !state.agg.series[String(id)]);
  if (!missing.length) return;
  state.loadingAgg += 1;
  try {
    const part = await api(`/api/sweeps/${meta.id}/aggregates?configs=${missing.join(",")}&${keys()}`);
    Object.assign(state.agg.series, part.series);
    state.agg.configs = [...state.agg.configs, ...part.configs].sort((a, b) => a.position - b.position);
  } finally { state.loadingAgg -= 1; }
  // Cells streamed while these were read may be missing from the answer: read those configs once more.
  const late = missing.filter((id) => state.touchedWhileLoading.has(id));
  if (!state.loadingAgg) state.touchedWhileLoading.clear();
  if (late.length) { for (const id of late) state.dirty.add(id); refreshAggregates(); }
}
// Re-reads only the drawn configs that got new epochs.
async function updateAggregates() {
  const ids = [...state.dirty].filter((id) => state.shown.has(id));
  state.dirty.clear();
  if (!ids.length) return;
  const part = await api(`/api/sweeps/${meta.id}/aggregates?configs=${ids.join(",")}&${keys()}`);
  Object.assign(state.agg.series, part.series);
  state.agg.cursor = Math.max(state.agg.cursor, part.cursor);
}
async function loadTable() {
  state.table = await api(`/api/sweeps/${meta.id}/table`);
  showCounts(state.table);
}
// Single replicates come on demand, and the server answers at most so many runs at once
// (`truncated`, `runs_total`): the page says how many it shows.
const truncated = new Map(); // "all" or a config id -> [shown, total]
function showTruncated() {
  const hint = document.getElementById("replicates-truncated");
  const parts = [...truncated.entries()].map(([what, [shown, total]]) =>
    `${what === "all" ? "all configs" : nameOf(what)}: ${shown} of ${total} replicates drawn (the first ${shown}: the server sends no more at once)`);
  hint.hidden = !parts.length;
  hint.textContent = parts.length ? `Single replicates, ${parts.join("; ")}.` : "";
}
function noteTruncated(what, data) {
  if (data.truncated) truncated.set(what, [data.runs.length, data.runs_total]); else truncated.delete(what);
  showTruncated();
}
async function loadAllReplicates() {
  const data = await api(`/api/sweeps/${meta.id}/series?${keys()}`);
  state.reps = new Map();
  for (const run of data.runs) {
    if (!state.reps.has(run.config_id)) state.reps.set(run.config_id, []);
    state.reps.get(run.config_id).push(run);
  }
  truncated.clear();
  noteTruncated("all", data);
  return data.cursor;
}
async function loadConfigReplicates(configId) {
  const data = await api(`/api/configs/${configId}/series?${keys()}`);
  state.reps.set(configId, data.runs);
  noteTruncated(configId, data);
}
function forgetReplicates(configId) {
  if (configId === undefined) { state.reps = new Map(); truncated.clear(); } else { state.reps.delete(configId); truncated.delete(configId); }
  showTruncated();
}

const drawReplicates = () => drawCurves("curve", state.keys, configsForCharts(), state.agg.series, state.reps, state.band,
  waitingText(state.counts));

// A key the stream brings that the page has no chart for yet (the sweep's first epochs, or a key an
// external run starts to log): it gets its chart, and the drawn configs' curves are read again with it.
async function addKeys(points) {
  const fresh = points.map((p) => p.key).filter((k) => !state.keys.includes(k) && metric(k).curve);
  state.keys = orderKeys([...state.keys, ...fresh]);
  await loadAggregates();
  if (document.getElementById("show-replicates").checked) await loadAllReplicates();
  else await Promise.all([...state.reps.keys()].map(loadConfigReplicates));
  await drawReplicates();
}

// ---- the sweep chart: final and best values of the final metrics against the swept value ----
const LINES = [{ line: "#111827", dash: "solid", symbol: "circle" }, { line: "#9ca3af", dash: "dot", symbol: "diamond" }];
const FINAL_LINES = FINALS.map((key, i) => ({ key, name: metric(key).title, ...LINES[i % LINES.length] }));
const GROUP_LINES = ["#111827", "#b45309", "#0f766e", "#7c3aed", "#be123c", "#4b5563"];
const sameValue = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Tick labels and titles as Plotly shows them (see chartText); the box traces' x values match.
function xAxisFor(axis) {
  const labels = axis.labels.map(chartText);
  if (axis.kind === "category") {
    return { type: "category", categoryorder: "array", categoryarray: labels, title: { text: chartText(clip(axis.title, X_TITLE_CHARS)) } };
  }
  const scale = axis.kind === "log2" ? " — log₂ scale" : axis.kind === "log10" ? " — log scale" : "";
  return { type: axis.kind === "linear" ? "linear" : "log", tickvals: axis.x, ticktext: labels,
    title: { text: chartText(clip(axis.title, X_TITLE_CHARS - scale.length) + scale) } };
}

function sweepTraces(which, axis, others) {
  const rows = state.table.configs;
  const pos = (row) => axis.values.findIndex((v) => sameValue(v, row.params[axis.path]));
  const groupOf = (row) => (others.length ? configMeta.get(row.id)?.groups[axis.path] ?? "" : "");
  const groups = [...new Set(rows.map(groupOf))];
  const labels = axis.labels.map(chartText);
  const traces = [];
  for (const [mi, m] of FINAL_LINES.entries()) {
    groups.forEach((g, gi) => {
      const mine = rows.filter((r) => groupOf(r) === g).sort((a, b) => pos(a) - pos(b));
      const name = chartText(g ? `${m.name} · ${g}` : m.name);
      if (axis.kind === "category") {
        const x = [], y = [];
        for (const r of mine) for (const v of r[which][m.key].values) { x.push(labels[pos(r)]); y.push(v); }
        traces.push({ type: "box", name, x, y, boxpoints: "all", jitter: 0.35, pointpos: 0, boxmean: true,
          marker: { color: gi ? GROUP_LINES[gi % GROUP_LINES.length] : m.line, size: 5 }, line: { width: 1.5 },
          opacity: mi ? 0.55 : 1 });
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
  const holders = ["sweep-final", "sweep-best"].map((id) => document.getElementById(id));
  if (!state.table.configs.some((r) => FINALS.some((k) => r.final[k]?.values.length))) {
    const text = waitingText(state.counts, { finals: true });
    for (const holder of holders) showEmpty(holder, text);
    return Promise.resolve();
  }
  holders.forEach(clearEmpty);
  const y = metric(FINALS[0]).axis;
  const extra = { xaxis: xAxisFor(axis), legendTitle: y, boxmode: "group" };
  return Promise.all([
    Plotly.react(holders[0], sweepTraces("final", axis, others),
      layout(`final ${y} vs ${axis.title}`, axis.title, `${y} at the last epoch`, extra), PLOT_CONFIG),
    Plotly.react(holders[1], sweepTraces("best", axis, others),
      layout(`best ${y} vs ${axis.title}`, axis.title, `best ${y} over epochs`, extra), PLOT_CONFIG),
  ]);
}

// ---- statistics: verdicts, power, importance and parallel coordinates of one metric ----
// The metrics with a direction (higher or lower is better) the sweep's runs report, the primary
// first; the primary alone while they report none.
const statsKeys = () => {
  const keys = orderKeys(state.keys).filter((k) => metric(k).higher_is_better !== null);
  return keys.length ? orderKeys(keys).sort((a, b) => (b === PRIMARY) - (a === PRIMARY)) : [PRIMARY];
};
// The metric selector, filled again when the runs report a new key (its choice kept).
function fillMetricSelect() {
  const select = document.getElementById("stats-metric");
  const keys = statsKeys();
  if ([...select.options].map((o) => o.value).join() === keys.join()) return;
  select.replaceChildren(...keys.map((k) => el("option", { value: k }, metric(k).title)));
  if (!keys.includes(state.stats.key)) select.append(el("option", { value: state.stats.key }, metric(state.stats.key).title));
  select.value = state.stats.key;
  select.closest("label").hidden = select.options.length < 2;
}
const statsQuery = (detect) => `metric=${encodeURIComponent(state.stats.key)}${detect ? `&detect=${detect}` : ""}`;

async function askVerdicts(detect) {
  const asked = ++state.stats.asked;
  const answer = await api(`/api/sweeps/${meta.id}/verdicts?${statsQuery(detect)}`);
  return asked === state.stats.asked ? answer : null; // a later question overtook this one
}

// Everything the statistics section and the verdict column show, read again (status changes only:
// the answers depend on succeeded runs alone and the server caches them while statuses hold).
async function loadStats() {
  const key = state.stats.key;
  const [verdicts, importance, parcoords] = await Promise.all([
    askVerdicts(state.stats.detect),
    api(`/api/sweeps/${meta.id}/importance?${statsQuery(null)}`),
    api(`/api/sweeps/${meta.id}/parcoords?${statsQuery(null)}`),
  ]);
  if (key !== state.stats.key) return;
  if (verdicts) state.stats.verdicts = verdicts;
  Object.assign(state.stats, { importance, parcoords });
}

function drawPower() {
  const answer = state.stats.verdicts;
  const sentence = document.getElementById("power-sentence");
  sentence.textContent = powerText(answer.power);
  sentence.dataset.detect = answer.power.detect ?? "";
  sentence.dataset.replicatesNeeded = answer.power.replicates_needed ?? "";
  sentence.dataset.detectable = answer.power.detectable_difference ?? "";
  document.getElementById("stats-method").textContent = answer.method;
}

// The parallel coordinates are WebGL: where the browser draws WebGL in software (headless Chromium's
// SwiftShader) one draw costs 1.5-2 s of shader compiling whatever the data. They are drawn once their
// box comes near the view (a quarter of a screen away), and from then on as the other charts; until
// then the box says so. Body's data-parcoords-ready is set once they are drawn.
const parcoords = { near: false, seen: null, pending: null };
// Watched from the first statistics on, when the charts and the table above have their size.
function watchParcoords() {
  parcoords.seen ??= new Promise((resolve) => {
    const observer = new IntersectionObserver((entries) => {
      parcoords.near = entries.some((e) => e.isIntersecting);
      resolve();
      if (!parcoords.near) return;
      observer.disconnect();
      if (parcoords.pending) {
        const [answer, waiting] = parcoords.pending;
        parcoords.pending = null;
        drawParcoordsNow(answer, waiting).catch(showStatsError);
      }
    }, { rootMargin: "25% 0px" });
    observer.observe(document.getElementById("parcoords-chart"));
  });
  return parcoords.seen;
}
async function drawParcoordsNow(answer, waiting) {
  await drawParcoords(document.getElementById("parcoords-chart"), answer, waiting);
  document.body.dataset.parcoordsReady = "true";
}
async function drawParcoordsWhenNear(answer, waiting) {
  await watchParcoords(); // the observer's first answer: near the view or not
  const plotted = answer.config_ids.length && answer.dimensions.length >= 2; // else drawParcoords says why not
  if (parcoords.near || !plotted) { parcoords.pending = null; return drawParcoordsNow(answer, waiting); }
  parcoords.pending = [answer, waiting];
  const n = answer.config_ids.length;
  showEmpty(document.getElementById("parcoords-chart"),
    `Parallel coordinates of ${n} config${n === 1 ? "" : "s"}: drawn when scrolled into view.`);
  delete document.body.dataset.parcoordsReady;
  return undefined;
}

function drawStats() {
  const waiting = doneCount(state.counts) ? null : waitingText(state.counts, { finals: true });
  drawPower();
  document.getElementById("importance-method").textContent = state.stats.importance.method ?? "";
  return Promise.all([
    drawImportance(document.getElementById("importance-chart"), document.getElementById("importance-text"),
      state.stats.importance, waiting),
    drawParcoordsWhenNear(state.stats.parcoords, waiting),
  ]);
}

function showStatsError(err) {
  console.warn(err);
  document.getElementById("power-sentence").textContent = `Statistics could not be computed: ${err.message}`;
}

// Redrawn only when an answer changed: the parallel coordinates are WebGL, costly to draw again.
const statsOf = () => JSON.stringify([state.stats.key, state.stats.verdicts, state.stats.importance, state.stats.parcoords]);
const refreshStats = throttle(async () => {
  fillMetricSelect();
  try {
    const before = statsOf();
    await loadStats();
    if (statsOf() !== before) { await drawStats(); drawTable(); }
  } catch (err) { showStatsError(err); }
}, 3000);

function wireStats() {
  const select = document.getElementById("stats-metric");
  fillMetricSelect();
  const detect = wireDetectInput(document.getElementById("detect-input"), document.getElementById("detect-unit"),
    () => state.stats.key, async (value) => {
      state.stats.detect = value;
      const answer = await askVerdicts(value).catch(showStatsError);
      if (!answer) return;
      state.stats.verdicts = answer;
      drawPower();
    });
  detect.unit();
  select.addEventListener("change", async () => {
    state.stats.key = select.value;
    document.getElementById("detect-input").value = "";
    state.stats.detect = null;
    detect.unit();
    try {
      await Promise.all([loadStats(), plotlyReady()]); // wired before Plotly is there
      state.stats.detect = detect.start(state.stats.verdicts.power.detectable_difference);
      if (state.stats.detect !== null) state.stats.verdicts = (await askVerdicts(state.stats.detect)) ?? state.stats.verdicts;
      await drawStats();
      drawTable();
    } catch (err) { showStatsError(err); }
  });
  return detect;
}

// The first statistics: read, then asked again with a starting difference (half the detectable one) as
// soon as the first verdicts come, while Plotly loads and the curves are drawn. The charts and the
// verdicts are drawn from the first answers; the answer with the difference only changes the power sentence.
function firstAnswers(loading, detect) {
  const withDetect = loading.then(async () => {
    state.stats.detect = detect.start(state.stats.verdicts.power.detectable_difference);
    return state.stats.detect === null ? null : askVerdicts(state.stats.detect);
  });
  withDetect.catch(() => {}); // reported by firstStats
  return withDetect;
}
async function firstStats(loading, withDetect) {
  try {
    await loading;
    await drawStats();
    performance.mark("sweeplab-stats-drawn");
    if (state.tableVerdicts !== state.stats.verdicts) drawTable(); // the verdicts came after the table was drawn
    const answer = await withDetect;
    if (answer) { state.stats.verdicts = answer; drawPower(); }
  } catch (err) { showStatsError(err); }
  document.body.dataset.statsReady = "true";
}

// ---- table, runs and status ----
function drawTable() {
  state.tableVerdicts = state.stats.verdicts;
  drawConfigTable(document.getElementById("config-table"), state.table, {
    verdicts: state.stats.verdicts ? { key: state.stats.verdicts.metric, byConfig: verdictsByConfig(state.stats.verdicts) } : null,
    colourOf, nameOf: (r) => nameOf(r.id), selected: state.selected, showCurves: !meta.auto_replicates,
    shown: configIds.length > 1 ? state.shown : null,
    onShown: async () => { showShownHint(); await loadMissingAggregates(); await drawReplicates(); },
    curvesLoaded: (id) => state.reps.has(id), curvesLoading: (id) => state.loading.has(id),
    onSelect: () => { document.getElementById("compare-selected").disabled = state.selected.size < 1; },
    onCurves: async (id, on) => {
      if (on) { state.loading.add(id); await loadConfigReplicates(id); state.loading.delete(id); }
      else forgetReplicates(id);
      showShownHint();
      drawTable();
      await loadMissingAggregates();
      await drawReplicates();
    },
  });
}

// A big sweep's runs table is filled when opened, RUN_PAGE rows at a time ("more" adds the next ones).
const RUN_PAGE = 200;
async function loadRunRows() {
  const body = document.querySelector("#run-table tbody");
  const more = document.getElementById("more-runs");
  more.disabled = true;
  const offset = body.rows.length;
  const runs = await api(`/api/sweeps/${meta.id}/runs?limit=${RUN_PAGE}&offset=${offset}`);
  body.append(...runs.map((r) => el("tr", { "data-run-id": r.id },
    el("td", {}, el("a", { href: `/runs/${r.id}` }, r.id)), el("td", {}, r.config_label), el("td", {}, r.seed),
    el("td", {}, el("span", { class: `status ${r.status}`, "data-status": r.status }, statusLabel(r.status))),
    el("td", { class: "epoch" }, `${Math.max(r.last_epoch, 0)}/${r.epochs}`), el("td", {}, `${r.attempt}/${r.max_attempts}`))));
  const shown = body.rows.length;
  more.hidden = runs.length < RUN_PAGE || shown >= meta.runs;
  more.disabled = false;
  more.textContent = `Show ${Math.min(RUN_PAGE, Math.max(0, meta.runs - shown))} more runs (${shown} of ${meta.runs} shown)`;
  if (state.statuses) showStatuses(state.statuses);
}

// The sweep's progress from the table's per-config counts: the stream sends only the runs that changed.
function showCounts(table) {
  const counts = {};
  for (const c of table.configs) for (const [s, n] of Object.entries(c.status_counts)) counts[s] = (counts[s] || 0) + n;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  state.counts = counts;
  document.getElementById("sweep-status").textContent = drawProgress(document.getElementById("sweep-progress"), counts, total);
  document.getElementById("cancel-sweep").disabled = !canCancel(counts);
  document.getElementById("retry-sweep").hidden = !canRetry(counts);
  const live = document.getElementById("live");
  live.textContent = canCancel(counts) ? "live" : "finished";
  live.classList.toggle("idle", !canCancel(counts));
  const empty = document.getElementById("curve-empty");
  if (empty) showEmpty(empty, waitingText(counts));
}

// A run queued again after it ended was retried: its old epochs are gone, new ones start at 0.
function forgetRetried(runId, status) {
  const before = state.statuses[runId] ?? document.querySelector(`#run-table tr[data-run-id="${runId}"] .status`)?.dataset.status;
  if (!isFinal(before) || isFinal(status)) return;
  reloadDrawn();
  state.lastEpoch.delete(Number(runId));
  for (const runs of state.reps.values()) {
    for (const run of runs) if (String(run.run_id) === runId) for (const s of Object.values(run.series)) { s.epochs = []; s.values = []; }
  }
}

function showStatuses(statuses) {
  for (const [runId, status] of Object.entries(statuses)) {
    const cell = document.querySelector(`#run-table tr[data-run-id="${runId}"] .status`);
    if (cell && cell.dataset.status !== status) {
      cell.dataset.status = status; cell.textContent = statusLabel(status); cell.className = `status ${status}`;
    }
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

// The aggregated cells an epochs event carries (`cells`: per config and key, the cells the commits
// touched, read in the stream's snapshot, later than any answer the page holds): each replaces the
// page's cell of that epoch, or goes in at its place. True when a drawn config changed.
function mergeCells(cells) {
  let drawnChanged = false;
  for (const [configId, byKey] of Object.entries(cells)) {
    const series = state.agg.series[configId];
    if (!series) {
      if (state.loadingAgg) state.touchedWhileLoading.add(Number(configId));
      continue;
    }
    for (const [key, cell] of Object.entries(byKey)) {
      if (!state.keys.includes(key)) continue;
      const col = (series[key] ||= { epochs: [], mean: [], std: [], min: [], max: [], n: [] });
      cell.epochs.forEach((epoch, j) => {
        let i = col.epochs.length;
        while (i > 0 && col.epochs[i - 1] > epoch) i -= 1; // streamed epochs come at or near the end
        const fresh = !(i > 0 && col.epochs[i - 1] === epoch);
        const at = fresh ? i : i - 1;
        for (const name of ["epochs", "mean", "std", "min", "max", "n"]) {
          const value = name === "epochs" ? epoch : cell[name][j];
          if (fresh) col[name].splice(at, 0, value); else col[name][at] = value;
        }
      });
    }
    if (state.shown.has(Number(configId))) drawnChanged = true;
  }
  return drawnChanged;
}

// Records on the page which commits (the sweep's commit sequence) its charts show, for tests and the benchmark.
const drawn = (cursor) => { document.body.dataset.drawnCursor = Math.max(Number(document.body.dataset.drawnCursor || 0), cursor); };
const refreshAggregates = throttle(async () => {
  await updateAggregates();
  await drawReplicates();
  drawn(state.agg.cursor);
}, 250);
// A retry deletes a run's epochs: cells it no longer reaches would keep its old values, so the drawn
// configs are read again.
const reloadDrawn = throttle(async () => {
  await loadAggregates();
  await drawReplicates();
  drawn(state.agg.cursor);
}, 1000);
// With the cells in the stream, a redraw needs no request: the curves are the page's own.
const redrawStreamed = throttle(async () => {
  const cursor = state.streamed;
  await drawReplicates();
  drawn(cursor);
}, 250);
const finalsOf = (table) => JSON.stringify(table.configs.map((r) => [r.id, r.final, r.best]));
const refreshTable = throttle(async () => {
  const before = state.table && finalsOf(state.table);
  await loadTable();
  await Promise.all([finalsOf(state.table) === before ? null : drawSweep(), drawTable()]);
}, 1500);

function wireControls() {
  for (const radio of document.querySelectorAll('input[name="band"]')) {
    radio.addEventListener("change", () => { state.band = radio.value; drawReplicates(); });
  }
  document.getElementById("show-replicates").addEventListener("change", async (event) => {
    if (event.target.checked) await loadAllReplicates(); else forgetReplicates();
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
    event.target.disabled = !canCancel(counts);
    document.getElementById("retry-sweep").hidden = !canRetry(counts);
    refreshTable();
  });
  const runs = document.getElementById("runs-details");
  if (!meta.runs_rendered) {
    runs.addEventListener("toggle", () => { if (runs.open && !runs.dataset.loaded) { runs.dataset.loaded = "1"; loadRunRows(); } });
    document.getElementById("more-runs").addEventListener("click", () => loadRunRows().catch((err) => showError(err.message)));
  }
  document.getElementById("retry-sweep").addEventListener("click", async (event) => {
    await post(event.target, `/api/sweeps/${meta.id}/retry`);
    location.reload();
  });
}

async function main() {
  state.stats.key = statsKeys()[0];
  const loading = Promise.all([loadAggregates(), loadTable(),
    meta.auto_replicates ? loadAllReplicates() : Promise.resolve(null)]);
  const statsLoading = loadStats();
  statsLoading.catch(() => {}); // reported by firstStats
  const detect = wireStats();
  const withDetect = firstAnswers(statsLoading, detect);
  await plotlyReady();
  performance.mark("sweeplab-plotly-ready");
  const [, , repCursor] = await loading;
  performance.mark("sweeplab-data-ready");
  state.shown = new Set(configIds.slice(0, MAX_SHOWN));
  showShownHint();
  await drawReplicates();
  performance.mark("sweeplab-replicates-drawn");
  await drawSweep();
  performance.mark("sweeplab-sweep-drawn");
  drawTable();
  wireControls();
  drawn(state.agg.cursor);
  markReady();
  state.stats.first = firstStats(statsLoading, withDetect);
  const start = Math.min(state.agg.cursor, repCursor ?? state.agg.cursor);
  // Every key streams: one the page has no chart for yet gets one (addKeys).
  openStream((cursor) => `/api/sweeps/${meta.id}/stream?cursor=${cursor ?? start}`, {
    epochs: ({ cursor, points, cells }) => {
      addPoints(state.reps, points, state.keys);
      showEpochs(points);
      if (points.some((p) => !state.keys.includes(p.key) && metric(p.key).curve)) {
        for (const p of points) state.dirty.add(p.config_id);
        addKeys(points).then(() => drawn(state.agg.cursor)).catch((err) => console.warn(err));
      } else if (cells) {
        state.streamed = Math.max(state.streamed, cursor);
        state.agg.cursor = Math.max(state.agg.cursor, cursor);
        if (mergeCells(cells) || points.some((p) => state.shown.has(p.config_id) && state.reps.has(p.config_id))) {
          redrawStreamed();
        }
      } else {
        for (const p of points) state.dirty.add(p.config_id);
        if (points.some((p) => state.shown.has(p.config_id))) refreshAggregates();
      }
    },
    status: (statuses) => { // only the runs that changed since the cursor
      const first = state.statuses === null;
      state.statuses ||= {};
      const changed = Object.entries(statuses).filter(([id, s]) => state.statuses[id] !== s);
      for (const [id, s] of changed) forgetRetried(id, s);
      // Statistics count succeeded runs only: they change when a run reaches or leaves such a status.
      const results = changed.some(([id, s]) => statusInfo(s).done || statusInfo(state.statuses[id]).done);
      Object.assign(state.statuses, statuses);
      showStatuses(statuses);
      if (first || changed.length) refreshTable(); // the first event too: runs may have moved since the table was read
      if (first || results) state.stats.first.then(refreshStats); // after the page's first answers
    },
  });
}

main().catch((err) => { console.error(err); document.getElementById("live").textContent = `error: ${err.message}`; });
