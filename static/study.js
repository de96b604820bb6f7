// Study page: every sweep of the study (progress, best config) and each declared question with its
// verdict sentence and a chart of the final values (mean ± 95% CI per config, a dot per replicate).
// Live but cheap: a progress poll of the study's sweeps every few seconds (one GROUP BY); the
// answers are fetched again only when a run's status changed.
import {
  PLOT_CONFIG, PRIMARY, STATUSES, api, canCancel, chartText, clearEmpty, drawProgress, el, fade, formatValue, layout,
  markReady, metric, plotlyReady, showEmpty, waitingText,
} from "/static/common.js";

let state = JSON.parse(document.getElementById("study-data").textContent);
const sweepIds = () => state.sweeps.map((s) => s.id);

// How a config's verdict against the question's best config is drawn and named.
const VERDICTS = {
  best: { colour: "#16a34a", name: "best (highest mean)" },
  better: { colour: "#ea580c", name: "better than the best" },
  indistinguishable: { colour: "#2563eb", name: "indistinguishable from the best" },
  worse: { colour: "#6b7280", name: "worse than the best" },
  too_few: { colour: "#c4c4c4", name: "too few replicates" },
  none: { colour: "#9ca3af", name: "not compared" },
};

function verdictsOf(q) {
  const out = new Map();
  const v = q.verdicts;
  if (!v) return out;
  if (v.best) out.set(v.best.config_id, "best");
  for (const c of v.comparisons || []) out.set(c.config_id, VERDICTS[c.verdict] ? c.verdict : "none");
  return out;
}

// ---- sweeps ----
function bestText(s) {
  if (!s.best) return "–";
  const spread = s.best.std !== null && s.best.std !== undefined ? ` ± ${formatValue(PRIMARY, s.best.std)}` : "";
  return `${formatValue(PRIMARY, s.best.mean)}${spread}`;
}

function drawSweeps() {
  for (const s of state.sweeps) {
    const row = document.querySelector(`#study-sweeps tr[data-sweep-id="${s.id}"]`);
    if (!row) continue;
    row.querySelector(".progress-text").textContent = drawProgress(row.querySelector(".progress"), s.status_counts, s.runs);
    const cell = row.querySelector(".best");
    const label = s.best && s.configs > 1 ? el("small", { class: "muted" }, s.best.label) : null;
    cell.replaceChildren(el("span", { title: s.best ? `${s.best.label}, over ${s.best.n} replicates` : "no run has succeeded yet" },
      bestText(s)), ...(label ? [el("br"), label] : []));
  }
  document.getElementById("study-status").textContent =
    drawProgress(document.getElementById("study-progress"), state.status_counts, state.runs);
  const live = document.getElementById("live");
  const active = canCancel(state.status_counts);
  live.classList.toggle("idle", !active);
  live.textContent = active ? "live" : "every run has ended";
}

// ---- questions ----
function countsOf(q) {
  const counts = {};
  for (const s of state.sweeps) {
    if (!q.sweep_ids.includes(s.id)) continue;
    for (const [status, n] of Object.entries(s.status_counts)) counts[status] = (counts[status] || 0) + n;
  }
  return counts;
}

const decisive = (q) => (q.verdicts?.comparisons || []).some((c) => c.verdict === "worse" || c.verdict === "better");

function questionBox(q, i) {
  const links = q.sweeps.map((name) => {
    const sweep = state.sweeps.find((s) => s.name === name && q.sweep_ids.includes(s.id));
    return sweep ? el("a", { href: `/sweeps/${sweep.id}` }, name) : el("span", { class: "error-message" }, `${name} (not found)`);
  });
  const joined = links.flatMap((link, j) => (j ? [", ", link] : [link]));
  return el("article", { class: "question", id: `question-${i}`, "data-index": i },
    el("h3", { class: "ask" }, q.ask),
    el("p", { class: "hint muted" }, `final ${metric(q.metric).title} of `, ...joined),
    el("p", { class: "verdict answer" }),
    el("div", { class: "chart question-chart", id: `question-chart-${i}` }));
}

function drawQuestionText(box, q) {
  const answer = box.querySelector(".answer");
  answer.textContent = q.text;
  answer.classList.toggle("unclear", !decisive(q));
}

function drawQuestionChart(holder, q) {
  const m = metric(q.metric);
  const configs = q.configs;
  if (!configs.some((c) => c.values.some((v) => v !== null))) {
    showEmpty(holder, q.missing.length ? q.text : waitingText(countsOf(q), { finals: true }));
    return Promise.resolve();
  }
  clearEmpty(holder);
  const verdicts = verdictsOf(q);
  const kind = (c) => verdicts.get(c.config_id) ?? "none";
  const names = configs.map((c) => chartText(c.name));
  const percent = m.format === "percent";
  const traces = [];
  for (const [verdict, look] of Object.entries(VERDICTS)) {
    const group = configs.map((c, i) => [c, i]).filter(([c]) => c.mean !== null && kind(c) === verdict);
    if (!group.length) continue;
    traces.push({
      type: "scatter", mode: "markers", x: group.map(([, i]) => i), y: group.map(([c]) => c.mean),
      name: verdict === "best" && q.higher_is_better === false ? "best (lowest mean)" : look.name,
      marker: { color: look.colour, size: 11, symbol: "diamond" },
      error_y: { type: "data", visible: true, thickness: 2, width: 7, color: look.colour,
        array: group.map(([c]) => (c.ci ? c.ci[1] - c.mean : 0)), arrayminus: group.map(([c]) => (c.ci ? c.mean - c.ci[0] : 0)) },
      customdata: group.map(([c, i]) => [names[i], c.n]),
      hovertemplate: `%{customdata[0]}<br>mean %{y:${percent ? ".2%" : ".4g"}} over %{customdata[1]} replicates<extra>%{fullData.name}</extra>`,
    });
  }
  // One dot per replicate in a strip just right of its config's mean, spread a little (a fixed
  // pattern, the same on every refresh) so that equal values stay visible.
  const dots = { x: [], y: [], colour: [], data: [] };
  configs.forEach((c, i) => c.values.forEach((v, j) => {
    if (v === null) return;
    dots.x.push(i + 0.25 + 0.12 * (((j * 3) % 5) / 4 - 0.5));
    dots.y.push(v);
    dots.colour.push(fade(VERDICTS[kind(c)].colour, 0.55));
    dots.data.push([names[i], c.runs[j], c.seeds[j]]);
  }));
  traces.push({
    type: "scatter", mode: "markers", name: "replicates", x: dots.x, y: dots.y, customdata: dots.data,
    marker: { color: dots.colour, size: 6 },
    hovertemplate: `%{customdata[0]}<br>run %{customdata[1]} · seed %{customdata[2]}: %{y:${percent ? ".2%" : ".4g"}}<extra></extra>`,
  });
  const title = `final ${m.title}: mean ± 95% CI and replicates`;
  return Plotly.react(holder, traces, layout(title, "", m.title, {
    xaxis: { tickmode: "array", tickvals: configs.map((_, i) => i), ticktext: names, range: [-0.5, configs.length - 0.3],
      automargin: true, showgrid: false },
    yaxis: { automargin: true, ...(percent ? { tickformat: ".1%" } : {}) },
    legendTitle: "verdict", margin: { t: 44, r: 16, b: 40, l: 64 },
  }), PLOT_CONFIG);
}

function drawQuestions() {
  const list = document.getElementById("question-list");
  if (list.children.length !== state.questions.length) list.replaceChildren(...state.questions.map(questionBox));
  return Promise.all(state.questions.map((q, i) => {
    const box = document.getElementById(`question-${i}`);
    drawQuestionText(box, q);
    return drawQuestionChart(box.querySelector(".question-chart"), q);
  }));
}

// ---- live ----
const FINAL = STATUSES.filter((s) => s.final).map((s) => s.value);
function progressKey(perSweep) {
  return JSON.stringify(perSweep.map((p) => [p.id, p.runs, p.ended, p.running, p.succeeded, p.failed]));
}
function keyOfState() {
  return progressKey(state.sweeps.map((s) => {
    const c = s.status_counts;
    return { id: s.id, runs: s.runs, ended: FINAL.reduce((n, f) => n + (c[f] || 0), 0), running: c.running || 0,
      succeeded: c.succeeded || 0, failed: c.failed || 0 };
  }));
}

let seen = keyOfState();
async function refresh() {
  const progress = await api(`/api/sweeps/progress?${sweepIds().map((id) => `ids=${id}`).join("&")}`);
  const key = progressKey(progress.sweeps);
  if (key === seen) return;
  const fresh = await api(`/api/studies/${encodeURIComponent(state.study)}`);
  if (JSON.stringify(fresh.sweeps.map((s) => s.id)) !== JSON.stringify(sweepIds())) {
    location.reload(); // a sweep joined the study: its row and questions come with the page
    return;
  }
  state = fresh;
  seen = keyOfState();
  drawSweeps();
  await drawQuestions();
}

async function tick() {
  if (!document.hidden) {
    try { await refresh(); } catch (err) { console.warn(err); }
  }
  setTimeout(tick, canCancel(state.status_counts) ? 3000 : 15000);
}

async function main() {
  drawSweeps();
  await plotlyReady();
  await drawQuestions();
  markReady();
  setTimeout(tick, 3000);
}

main().catch((err) => { console.error(err); });
