// Shared helpers: API calls carrying the token when the server asks for one, config colours,
// chart defaults, number formats, and an event stream that pauses while its tab is hidden.
export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
export const colourFor = (index) => PALETTE[index % PALETTE.length];
export const PLOT_CONFIG = { responsive: true, displaylogo: false };

// The vocabulary the server puts on every page (app/pages.py, from app/metrics.py and app/statuses.py):
// no page spells a metric key, its title or a status itself.
const VOCABULARY = JSON.parse(document.getElementById("sweeplab-vocabulary").textContent);
const METRICS = new Map(VOCABULARY.metrics.map((m) => [m.key, m]));
const METRIC_ORDER = new Map(VOCABULARY.metrics.map((m, i) => [m.key, i]));
export const PRIMARY = VOCABULARY.primary; // the metric a sweep is judged by
export const FINALS = [PRIMARY, ...VOCABULARY.finals.filter((k) => k !== PRIMARY)]; // final metrics, the primary first
// The page's runs' keys all have entries; a key first seen in a stream gets its name until a reload.
export const metric = (key) => METRICS.get(key)
  ?? { key, title: key, short: key, axis: key, curve: true, format: "number", higher_is_better: null };
export const orderKeys = (keys) => [...new Set(keys)].sort((a, b) =>
  (METRIC_ORDER.get(a) ?? Infinity) - (METRIC_ORDER.get(b) ?? Infinity) || (a < b ? -1 : a > b ? 1 : 0));
export const STATUSES = VOCABULARY.statuses; // in progress-bar order
const STATUS = new Map(STATUSES.map((s) => [s.value, s]));
export const statusInfo = (value) => STATUS.get(value) ?? { value, label: value, final: false, waiting: "" };
export const statusLabel = (value) => statusInfo(value).label;
export const isFinal = (value) => STATUS.get(value)?.final ?? false;
export const canCancel = (counts) => STATUSES.some((s) => !s.final && counts[s.value]);
export const canRetry = (counts) => STATUSES.some((s) => s.retryable && counts[s.value]);
export const doneCount = (counts) => STATUSES.filter((s) => s.done).reduce((n, s) => n + (counts[s.value] || 0), 0);
// A value as its metric's format wants it (accuracies are fractions shown as percent).
export const formatValue = (key, v, digits = 2) => (metric(key).format === "percent" ? pct(v, digits) : num(v, digits + 1));

export function fade(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

export function authHeaders() {
  if (document.body.dataset.tokenRequired !== "true") return {};
  let token = sessionStorage.getItem("sweeplab-token") || localStorage.getItem("sweeplab-token");
  if (!token) {
    token = window.prompt("This sweeplab server needs its API token for changes:") || "";
    if (token) localStorage.setItem("sweeplab-token", token);
  }
  return token ? { authorization: `Bearer ${token}` } : {};
}

export async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), ...(options.method && options.method !== "GET" ? authHeaders() : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) localStorage.removeItem("sweeplab-token");
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body?.error?.message || response.statusText;  // the envelope: {error: {code, message, fields}}
    throw Object.assign(new Error(message), { status: response.status, body });
  }
  return body;
}

// A POST from a button: disables it meanwhile, reports failure next to it.
export async function post(button, path, body) {
  button.disabled = true;
  try {
    return await api(path, { method: "POST", ...(body ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}) });
  } catch (err) {
    showError(err.message);
    throw err;
  } finally {
    button.disabled = false;
  }
}

export function showError(message) {
  let box = document.getElementById("page-error");
  if (!box) {
    box = document.createElement("p");
    box.id = "page-error";
    box.className = "error-message banner";
    document.querySelector("main").prepend(box);
  }
  box.textContent = message;
}

// Percent with one decimal for accuracies held as fractions.
export const pct = (v, digits = 1) => (v === null || v === undefined ? "–" : (100 * v).toFixed(digits));
export const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

// Plotly reads every string it draws (trace names, legends, hover labels, axis titles and ticks,
// annotations) as markup: <a href>, <b>, <span style>, <br>. Text from users (sweep names, config
// labels, class names) goes through chartText once, before it reaches Plotly, and shows as typed:
// Plotly turns the entities back into characters. Never put such text into a hovertemplate: pass
// it as the trace name (%{fullData.name}) or in customdata, which Plotly does not expand again.
export const chartText = (value) => String(value ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// The epoch axis of curve charts: on short runs Plotly's automatic ticks fall between epochs
// (0, 0.5, 1, ...); up to 10 epochs every epoch gets its own tick instead.
export function epochTicks(traces) {
  let last = 0;
  for (const t of traces) for (const x of t.x || []) if (x > last) last = x;
  return last <= 10 ? { tick0: 0, dtick: 1 } : {};
}

// Text past N characters keeps its start and its end around an ellipsis (by code points, so no
// character is cut in two). Plotly wraps no title, and one built from a long metric key (up to
// 250 characters) or sweep name ran off its chart.
export function clip(value, n) {
  const chars = Array.from(String(value ?? ""));
  if (chars.length <= n) return chars.join("");
  const head = Math.ceil((n - 1) * 0.6);
  return `${chars.slice(0, head).join("")}…${chars.slice(chars.length - (n - 1 - head)).join("")}`;
}
// A chart's title, its axis titles and its legend's names at most (the report's charts clip
// theirs alike: app/services/report_figures.py). Charts drawn without layout() clip with these.
export const TITLE_CHARS = 72, X_TITLE_CHARS = 60, Y_TITLE_CHARS = 36, NAME_CHARS = 60;

// Titles are plain text (clipped and escaped here); extra.xaxis / extra.yaxis titles must come escaped.
export function layout(title, xTitle, yTitle, extra = {}) {
  return {
    title: { text: chartText(clip(title, TITLE_CHARS)), font: { size: 15 } },
    xaxis: { title: { text: chartText(clip(xTitle, X_TITLE_CHARS)) }, zeroline: false, ...(extra.xaxis || {}) },
    yaxis: { title: { text: chartText(clip(yTitle, Y_TITLE_CHARS)) }, zeroline: false, ...(extra.yaxis || {}) },
    legend: { title: { text: chartText(extra.legendTitle || "config") }, ...(extra.legend || {}) },
    margin: { t: 44, r: 16, b: 52, l: 64 },
    hovermode: "closest",
    uirevision: "keep",
    ...Object.fromEntries(Object.entries(extra).filter(([k]) => !["xaxis", "yaxis", "legend", "legendTitle"].includes(k))),
  };
}

// Runs fn soon after a call, but at most once per `ms` and never more than a fifth of the time (after
// a slow run it waits four times as long); calls meanwhile fold into one more run.
export function throttle(fn, ms) {
  let timer = null, running = false, again = false, cost = 0, last = -Infinity;
  const run = async () => {
    timer = null; running = true;
    const t0 = performance.now();
    try { await fn(); } catch (err) { console.warn(err); }
    last = performance.now();
    cost = last - t0;
    running = false;
    if (again) { again = false; schedule(); }
  };
  const schedule = () => {
    if (running) { again = true; return; }
    if (timer) return;
    const gap = Math.max(ms, 4 * cost) - (performance.now() - last);
    timer = setTimeout(run, Math.max(0, gap));
  };
  return schedule;
}

// An EventSource that closes while the tab is hidden (browsers allow few connections per server)
// and resumes from the last cursor it saw when the tab shows again.
export function openStream(urlFor, handlers) {
  let source = null, cursor = null;
  const open = () => {
    if (source) return;
    source = new EventSource(urlFor(cursor));
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        const data = JSON.parse(event.data);
        if (data && typeof data.cursor === "number") cursor = data.cursor;
        fn(data);
      });
    }
  };
  const close = () => { if (source) { source.close(); source = null; } };
  document.addEventListener("visibilitychange", () => (document.hidden ? close() : open()));
  window.addEventListener("pagehide", close);
  open();
  return { close };
}

// The one progress-bar renderer: fills a .progress element with one bar per status (in the
// catalogue's order) and returns its one-line summary, e.g. "3/10 succeeded, 2 running, 5 queued".
export function drawProgress(bar, counts, total) {
  bar.replaceChildren(...STATUSES.filter((s) => counts[s.value]).map((s) =>
    el("span", { class: `bar ${s.value}`, style: `width: ${(100 * counts[s.value] / Math.max(1, total)).toFixed(2)}%` })));
  bar.title = STATUSES.map((s) => `${counts[s.value] || 0} ${s.label}`).join(", ");
  const done = STATUSES.filter((s) => s.done).map((s) => s.label).join(" or ");
  const parts = [`${doneCount(counts)}/${total} ${done}`];
  for (const s of STATUSES) if (!s.done && counts[s.value]) parts.push(`${counts[s.value]} ${s.label}`);
  return parts.join(", ");
}

// What a chart with nothing to draw yet says instead of empty axes, from the runs' status counts:
// "80 runs queued, waiting for a worker." A chart of results (finals) says "No run has succeeded
// yet: 2 runs running, 78 queued." instead.
export function waitingText(counts, { finals = false } = {}) {
  const active = STATUSES.filter((s) => !s.final && counts[s.value]);
  const ended = STATUSES.filter((s) => s.final && counts[s.value]);
  const list = (group) => group.map((s, i) => {
    const n = counts[s.value];
    return `${n}${i ? "" : ` run${n === 1 ? "" : "s"}`} ${s.label}`;
  }).join(", ");
  const done = STATUSES.filter((s) => s.done).map((s) => s.label).join(" or ");
  const head = finals ? `No run has ${done} yet: ` : "";
  if (!active.length) return ended.length ? `${head || "No epochs: "}${list(ended)}.` : "No runs.";
  return `${head}${list(active)}${finals ? "" : `, ${active[0].waiting}`}.`;
}

// Shows TEXT in a chart's box instead of its plot, or takes the text away before a plot is drawn.
export function showEmpty(holder, text) {
  if (window.Plotly && holder.classList.contains("js-plotly-plot")) Plotly.purge(holder);
  holder.classList.add("empty");
  if (holder.textContent !== text) holder.textContent = text;
}
export function clearEmpty(holder) {
  if (!holder.classList.contains("empty")) return;
  holder.classList.remove("empty");
  holder.textContent = "";
}

// Every progress bar the server rendered carries its counts; they are drawn here, as every update is.
for (const bar of document.querySelectorAll(".progress[data-counts]")) {
  const text = drawProgress(bar, JSON.parse(bar.dataset.counts), Number(bar.dataset.total));
  const summary = bar.parentElement.querySelector(".progress-text");
  if (summary) summary.textContent = text;
}

export function markReady() {
  document.body.dataset.ready = "true";
  performance.mark("sweeplab-charts-drawn");
  window.sweeplabReady = true;
}

// Plotly loads with `defer`; page modules run `async` and fetch their data meanwhile, then wait here.
export function plotlyReady() {
  if (window.Plotly) return Promise.resolve();
  const script = document.querySelector('script[src="/vendor/plotly.min.js"]');
  return new Promise((resolve, reject) => {
    script.addEventListener("load", resolve, { once: true });
    script.addEventListener("error", () => reject(new Error("could not load /vendor/plotly.min.js")), { once: true });
  });
}
