// Statistics shared by the sweep and compare pages: the power sentence with its difference input,
// verdict cells and lists, the importance bar chart and the parallel coordinates. The numbers and
// the sentences come from the server (app/services/verdicts.py, importance.py, parcoords.py); this
// module only draws them. User text (config labels, setting names) reaches Plotly through chartText.
import { PLOT_CONFIG, TITLE_CHARS, Y_TITLE_CHARS, chartText, clearEmpty, clip, el, layout, metric, showEmpty } from "/static/common.js";

// Differences of a percent metric (an accuracy held as a fraction) are written in points (x100).
export const unitOf = (key) => (metric(key).format === "percent" ? { scale: 100, word: "points" } : { scale: 1, word: "" });

// Decimals that show a spread (a CI half-width, in written units) to one significant digit, as the
// server's sentences do (app/services/verdicts.py).
export function decimalsFor(key, spread) {
  const x = Math.abs((spread ?? 0) * unitOf(key).scale);
  return x > 0 && Number.isFinite(x) ? Math.min(8, Math.max(1, -Math.floor(Math.log10(x)))) : 2;
}

// A value of KEY in written units (points for accuracies) with DECIMALS digits: −5.3, +0.4.
export function written(key, value, { decimals = 1, signed = false } = {}) {
  if (value === null || value === undefined) return "–";
  const text = (value * unitOf(key).scale).toFixed(decimals);
  if (Number(text) === 0) return text.replace("-", "");
  return signed && value > 0 ? `+${text}` : text.replace("-", "−");
}

const capitalised = (text) => (text ? text[0].toUpperCase() + text.slice(1) : text);

// The power sentence of a verdicts answer, as the server words it; SUBJECT replaces "this sweep"
// where the configs come from several sweeps (the compare page).
export function powerText(power, subject = null) {
  let text = (power.sentence || "").replace(/\.$/, "");
  if (subject) text = text.replace("this sweep", subject);
  const test = power.detectable_difference === null ? ""
    : ` (two-sided t-test, α = ${power.alpha}, power ${Math.round(power.power * 100)}%)`;
  return `${capitalised(text)}${test}.`;
}

// Wires a difference input (written units: points for accuracies) to ONCHANGE(detect in the
// metric's own units, or null when empty); returns a function that sets a starting value.
export function wireDetectInput(input, unitLabel, keyOf, onChange) {
  let timer = null;
  const fire = () => {
    const raw = input.value.trim();
    const value = Number(raw);
    input.classList.toggle("invalid", raw !== "" && !(value > 0));
    if (raw !== "" && !(value > 0)) return;
    onChange(raw === "" ? null : value / unitOf(keyOf()).scale);
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(fire, 250); });
  return {
    unit: () => { unitLabel.textContent = unitOf(keyOf()).word || `(in ${metric(keyOf()).title})`; },
    // A round starting value: half the detectable difference (the question one asks next).
    start: (detectable) => {
      if (input.value.trim() !== "" || detectable === null || detectable === undefined) return null;
      const x = (detectable / 2) * unitOf(keyOf()).scale;
      const step = 10 ** Math.floor(Math.log10(x));
      const nice = Math.max(step, Math.round(x / step) * step);
      input.value = Number(nice.toPrecision(2));
      return Number(input.value) / unitOf(keyOf()).scale;
    },
  };
}

// A verdict as a word in a coloured tag, the comparison's sentence as its tooltip.
export function verdictTag(verdict, title) {
  return el("span", { class: `verdict-tag verdict-${verdict}`, title, "data-verdict": verdict }, verdict.replace(/_/g, " "));
}

// Per config id: {verdict, text, difference, ci} from a verdicts answer (the best included).
export function verdictsByConfig(answer) {
  const out = new Map();
  if (!answer) return out;
  if (answer.best) {
    out.set(answer.best.config_id, { verdict: "best", text: capitalised(answer.text), difference: 0, ci: null, best: true });
  }
  for (const c of answer.comparisons) out.set(c.config_id, { ...c, best: false });
  return out;
}

// The verdicts as a list of sentences (the compare page).
export function drawVerdictList(holder, answer) {
  if (!answer.best) { holder.replaceChildren(el("p", { class: "muted" }, answer.text)); return; }
  holder.replaceChildren(el("p", {}, capitalised(answer.text), "."),
    el("ul", { class: "stat-verdicts" }, answer.comparisons.map((c) => el("li", { "data-config-id": c.config_id },
      verdictTag(c.verdict, c.text), " ", c.text, "."))));
}

// ---- importance: η² of each setting and interaction, seeds as the rest ----
const BAR = { factor: "#2563eb", interaction: "#7c3aed", residual: "#9ca3af" };

// WAITING: what the chart says while no run has succeeded (null once one has).
export function drawImportance(holder, sentence, answer, waiting) {
  const rows = [
    ...answer.factors.map((f) => ({ name: f.name, kind: "factor", ...f })),
    ...answer.interactions.map((f) => ({ name: f.names.join(" × "), kind: "interaction", ...f })),
  ];
  const said = answer.text ? `${answer.text}${answer.text.endsWith(".") ? "" : "."}` : "";
  if (!rows.length || answer.residual?.eta_squared === null || answer.residual?.eta_squared === undefined) {
    sentence.textContent = "";
    showEmpty(holder, waiting || said);  // nothing succeeded yet, or the server's reason (one config only)
    return Promise.resolve();
  }
  // Not capitalised: the sentence may start with a setting's name (optimizer.name explains ...).
  sentence.textContent = said;
  clearEmpty(holder);
  rows.push({ name: "seeds (residual)", kind: "residual", eta_squared: answer.residual.eta_squared, ci: null, F: null, p: null });
  const pct = (v) => (v === null || v === undefined ? null : 100 * v);
  const labels = rows.map((r) => chartText(r.name));
  const trace = {
    type: "bar", orientation: "h", y: labels, x: rows.map((r) => pct(r.eta_squared)),
    marker: { color: rows.map((r) => BAR[r.kind]) }, name: "share of variance",
    error_x: { type: "data", visible: true, thickness: 1.5, width: 5,
      array: rows.map((r) => (r.ci && r.ci[1] !== null ? pct(r.ci[1]) - pct(r.eta_squared) : 0)),
      arrayminus: rows.map((r) => (r.ci && r.ci[0] !== null ? pct(r.eta_squared) - pct(r.ci[0]) : 0)) },
    customdata: rows.map((r) => [r.F ?? NaN, r.p ?? NaN, r.ci ? pct(r.ci[0]) ?? NaN : NaN, r.ci ? pct(r.ci[1]) ?? NaN : NaN]),
    hovertemplate: "%{x:.1f}% of the variance<br>95% CI [%{customdata[2]:.1f}, %{customdata[3]:.1f}]<br>F = %{customdata[0]:.2f}, p = %{customdata[1]:.3g}<extra></extra>",
  };
  const extra = { yaxis: { autorange: "reversed", automargin: true }, xaxis: { rangemode: "tozero", ticksuffix: "%" },
    showlegend: false, margin: { t: 44, r: 24, b: 52, l: 64 } };
  return Plotly.react(holder, [trace], layout(`what explains final ${metric(answer.metric).title}`, "η² (share of variance, 95% bootstrap CI)", "", extra), PLOT_CONFIG);
}

// ---- parallel coordinates: one axis per varying setting, the mean final metric last ----
// Red for the worst configs, green for the best (reversed where lower is better).
const GOOD_SCALE = [[0, "#b91c1c"], [0.5, "#d97706"], [1, "#15803d"]];

export function drawParcoords(holder, answer, waiting) {
  if (!answer.config_ids.length) {
    showEmpty(holder, waiting || `No succeeded run has a final ${answer.metric} yet.`);
    return Promise.resolve();
  }
  if (answer.dimensions.length < 2) {
    showEmpty(holder, "No setting varies across this sweep's configs: nothing to draw in parallel coordinates.");
    return Promise.resolve();
  }
  clearEmpty(holder);
  const percent = metric(answer.metric).format === "percent" ? ".1%" : undefined;
  const dims = answer.dimensions.map((d) => ({
    label: chartText(d.label), values: d.values, range: d.range,
    // Plotly reads a parcoords label as markup but its tick texts as plain text: only labels are escaped.
    ...(d.tickvals ? { tickvals: d.tickvals, ticktext: d.ticktext } : {}),
    ...(d.kind === "metric" && percent ? { tickformat: percent } : {}),
  }));
  const trace = {
    type: "parcoords", dimensions: dims, labelangle: 0, labelside: "top",
    labelfont: { size: 13 }, tickfont: { size: 12 }, rangefont: { size: 10, color: "#9ca3af" },
    line: { color: answer.color, colorscale: GOOD_SCALE, reversescale: answer.higher_is_better === false, showscale: true,
      colorbar: { title: { text: chartText(clip(answer.title, Y_TITLE_CHARS)), side: "right" }, thickness: 14, tickformat: percent } },
  };
  const title = `${answer.config_ids.length} config${answer.config_ids.length === 1 ? "" : "s"}: settings and ${answer.title}`;
  return Plotly.react(holder, [trace], { title: { text: chartText(clip(title, TITLE_CHARS)), font: { size: 15 } },
    margin: { t: 96, r: 110, b: 36, l: 90 } }, PLOT_CONFIG);
}
