// The sortable table of configs: swept values, replicates done, the final primary metric (mean ±
// std and 95% CI), the verdict against the best config and the difference from it (when the page
// has verdicts, app/services/verdicts.py), its best value, the other final metrics, epochs to 99% of the final value, wall time.
import { FINALS, PRIMARY, STATUSES, el, formatValue, metric, seconds } from "/static/common.js";
import { decimalsFor, unitOf, verdictTag, written } from "/static/stats.js";

const sortState = new WeakMap(); // table -> {column, dir}

// A setting's value as the charts label it: text as typed, lists as [32, 64].
const readable = (v) => (typeof v === "string" ? v : Array.isArray(v) ? `[${v.map(readable).join(", ")}]` : JSON.stringify(v));

function columns(data, opts) {
  const cols = [
    { title: "config", sort: (r) => r.position, cell: (r) => el("td", {},
      el("span", { class: "swatch", style: `background: ${opts.colourOf(r.id)}` }),
      el("a", { href: opts.linkOf ? opts.linkOf(r) : `/compare?configs=${r.id}` }, opts.nameOf(r))) },
  ];
  for (const axis of data.axes) {
    cols.push({ title: axis.path, sort: (r) => {
      const i = axis.values.findIndex((v) => JSON.stringify(v) === JSON.stringify(r.params[axis.path]));
      return typeof axis.x[i] === "number" ? axis.x[i] : i;
    }, cell: (r) => el("td", {}, readable(r.params[axis.path])) });
  }
  const p = metric(PRIMARY);
  const unit = (m) => (m.format === "percent" ? " %" : "");
  const fmt = (key, v) => formatValue(key, v, 2);
  const fin = (r) => r.final[PRIMARY];
  cols.push(
    { title: "replicates done", sort: (r) => r.done, cell: (r) => {
      const c = r.status_counts;
      const extra = STATUSES.filter((s) => !s.done && c[s.value]).map((s) => el("span", { class: `status ${s.value}` }, ` ${c[s.value]} ${s.label}`));
      return el("td", { class: "num" }, `${r.done}/${r.runs}`, extra);
    } },
    { title: `final ${p.short}${unit(p)} (mean ± std)`, sort: (r) => fin(r).mean ?? -1, cell: (r) => el("td", { class: "num", "data-mean": fin(r).mean ?? "" },
      fin(r).mean === null ? "–" : `${fmt(PRIMARY, fin(r).mean)} ± ${fmt(PRIMARY, fin(r).std)}`) },
    { title: "95% CI", sort: (r) => fin(r).ci_low ?? -1, cell: (r) => el("td", { class: "num" },
      fin(r).ci_low === null ? (fin(r).n === 1 ? "n=1" : "–") : `[${fmt(PRIMARY, fin(r).ci_low)}, ${fmt(PRIMARY, fin(r).ci_high)}]`) },
    ...verdictColumns(opts.verdicts),
    { title: `best ${p.short}${unit(p)}`, sort: (r) => r.best[PRIMARY].mean ?? -1, cell: (r) => el("td", { class: "num" }, fmt(PRIMARY, r.best[PRIMARY].mean)) },
    ...FINALS.slice(1).map((key) => ({ title: `final ${metric(key).short}${unit(metric(key))}`, sort: (r) => r.final[key].mean ?? -1,
      cell: (r) => el("td", { class: "num" }, fmt(key, r.final[key].mean)) })),
    { title: "epochs to 99%", sort: (r) => r.epochs_to_99 ?? 1e9, cell: (r) => el("td", { class: "num", title: `first epoch where the mean ${p.title} reaches 99% of its final value` },
      r.epochs_to_99 ?? "–", r.epochs_to_99 !== null ? el("span", { class: "muted" }, ` / ${r.epochs}`) : null) },
    { title: "wall time / replicate", sort: (r) => r.wall_seconds.mean ?? 1e12, cell: (r) => el("td", { class: "num" }, seconds(r.wall_seconds.mean)) },
  );
  if (opts.shown) {
    cols.push({ title: "chart", cell: (r) => {
      const box = el("input", { type: "checkbox", checked: opts.shown.has(r.id), class: "shown-box",
        title: "draw this config in the replicate charts" });
      box.addEventListener("change", () => { if (box.checked) opts.shown.add(r.id); else opts.shown.delete(r.id); opts.onShown(); });
      return el("td", {}, box);
    } });
  }
  if (opts.showCurves) {
    cols.push({ title: "curves", cell: (r) => {
      const box = el("input", { type: "checkbox", checked: opts.curvesLoaded(r.id), disabled: opts.curvesLoading(r.id),
        title: "draw every replicate of this config" });
      box.addEventListener("change", () => {
        if (box.checked && opts.shown && !opts.shown.has(r.id)) opts.shown.add(r.id);
        opts.onCurves(r.id, box.checked);
      });
      return el("td", {}, box);
    } });
  }
  cols.push({ title: "compare", cell: (r) => {
    const box = el("input", { type: "checkbox", checked: opts.selected.has(r.id), "data-config-id": r.id, class: "compare-box" });
    box.addEventListener("change", () => { if (box.checked) opts.selected.add(r.id); else opts.selected.delete(r.id); opts.onSelect(); });
    return el("td", {}, box);
  } });
  return cols;
}

// The verdict of each config against the best (its sentence as the tooltip) and the difference of
// means from the best with its 95% CI, for the metric the verdicts are about.
const VERDICT_ORDER = ["best", "better", "higher", "indistinguishable", "lower", "worse", "too_few"];
function verdictColumns(verdicts) {
  if (!verdicts) return [];
  const { key, byConfig } = verdicts;
  const of = (r) => byConfig.get(r.id);
  const rank = (r) => { const i = VERDICT_ORDER.indexOf(of(r)?.verdict); return i < 0 ? VERDICT_ORDER.length : i; };
  const words = unitOf(key).word;
  return [
    { title: `verdict (${metric(key).short})`, sort: rank, cell: (r) => {
      const v = of(r);
      const none = !v || (v.n === 0 && !v.best); // no final yet: a dash, not "too few"
      return el("td", { class: "verdict-cell", "data-verdict": v?.verdict ?? "", title: v?.text },
        none ? "–" : verdictTag(v.verdict, v.text));
    } },
    { title: `Δ vs best${words ? ` (${words})` : ""}, 95% CI`, sort: (r) => of(r)?.difference ?? -Infinity, cell: (r) => {
      const v = of(r);
      if (!v || v.best) return el("td", { class: "num muted" }, v ? "best" : "–");
      if (v.difference === null || v.difference === undefined) return el("td", { class: "num muted" }, "–");
      const has = v.ci && v.ci[0] !== null;
      const decimals = decimalsFor(key, has ? (v.ci[1] - v.ci[0]) / 2 : v.difference / 10);
      const ci = has ? ` [${written(key, v.ci[0], { decimals })}, ${written(key, v.ci[1], { decimals })}]` : "";
      return el("td", { class: "num", "data-difference": v.difference, title: v.text },
        written(key, v.difference, { decimals, signed: true }), el("span", { class: "muted" }, ci));
    } },
  ];
}

export function drawConfigTable(table, data, opts) {
  const cols = columns(data, opts);
  const sort = sortState.get(table) || { column: 0, dir: 1 };
  const head = el("tr", {}, cols.map((c, i) => {
    const th = el("th", { class: c.sort ? "sortable" : "", "aria-sort": i === sort.column ? (sort.dir > 0 ? "ascending" : "descending") : "none" },
      c.title, i === sort.column ? (sort.dir > 0 ? " ▲" : " ▼") : "");
    if (c.sort) th.addEventListener("click", () => {
      sortState.set(table, { column: i, dir: i === sort.column ? -sort.dir : (i === 0 ? 1 : -1) });
      drawConfigTable(table, data, opts);
    });
    return th;
  }));
  table.tHead.replaceChildren(head);
  const key = cols[sort.column].sort || cols[0].sort;
  const rows = [...data.configs].sort((a, b) => sort.dir * (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  table.tBodies[0].replaceChildren(...rows.map((r) => el("tr", { "data-config-id": r.id }, cols.map((c) => c.cell(r)))));
}
