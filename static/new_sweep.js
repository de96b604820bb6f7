// New sweep form: every spec field, the spec as YAML (editable both ways), the number of runs it
// expands to, the server's field errors next to their fields, and submit -> the sweep's page.
// The server writes the YAML (POST /api/sweeps/validate answers it): no YAML emitter here.
import { api, authHeaders } from "/static/common.js";

const { start, defaults } = JSON.parse(document.getElementById("form-data").textContent);
const form = document.getElementById("sweep-form");
const yamlBox = document.getElementById("spec-yaml");
const countBox = document.getElementById("run-count");
const gridRows = document.getElementById("grid-rows");
const layerRows = document.getElementById("layer-rows");
const LAYER_FIELDS = JSON.parse(document.getElementById("layer-data").textContent); // kind -> [{name, default, choices|step}]
const input = (name) => form.elements.namedItem(name);
const modelKind = () => form.querySelector('input[name="model-kind"]:checked').value;

// ---- values in the form ----
function listText(values) {
  return values.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ");
}

function parseList(text, { nested = false } = {}) {
  const t = text.trim();
  if (!t) return [];
  try {
    let v = JSON.parse(`[${t}]`);
    if (v.length === 1 && Array.isArray(v[0]) && (!nested || Array.isArray(v[0][0]))) v = v[0];
    return v;
  } catch {
    return t.split(",").map((s) => s.trim()).filter(Boolean).map((s) => (s !== "" && !Number.isNaN(Number(s)) ? Number(s) : s));
  }
}

const numberOr = (text) => (text.trim() === "" ? undefined : Number.isNaN(Number(text)) ? text : Number(text));

function formToSpec() {
  const spec = { name: input("name").value };
  if (input("study").value.trim()) spec.study = input("study").value;
  if (input("description").value.trim()) spec.description = input("description").value;
  spec.dataset = input("dataset").value;
  const limit = { train: numberOr(input("limit.train").value), test: numberOr(input("limit.test").value) };
  if (limit.train !== undefined || limit.test !== undefined) spec.limit = Object.fromEntries(Object.entries(limit).filter(([, v]) => v !== undefined));
  const kind = modelKind();
  if (kind === "layers") spec.model = { layers: [...layerRows.children].map(rowToLayer) };
  else if (kind === "builder") spec.model = { builder: input("model.builder").value.trim() };
  else spec.model = { hidden: parseList(input("model.hidden").value), activation: input("model.activation").value };
  spec.model.output_activation = input("model.output_activation").value;
  const params = paramsValue();
  if (params !== undefined) spec.params = params;
  spec.loss = input("loss").value;
  spec.optimizer = { name: input("optimizer.name").value };
  const lr = numberOr(input("optimizer.learning_rate").value);
  if (lr !== undefined) spec.optimizer.learning_rate = lr;
  spec.epochs = numberOr(input("epochs").value);
  spec.batch_size = numberOr(input("batch_size").value);
  if (form.querySelector('input[name="replicate-mode"]:checked').value === "seeds") spec.seeds = parseList(input("seeds").value);
  else spec.replicates = numberOr(input("replicates").value);
  const grid = {};
  for (const row of gridRows.querySelectorAll(".grid-row")) {
    const path = row.querySelector(".grid-path").value;
    grid[path] = parseList(row.querySelector(".grid-values").value, { nested: path === "model.hidden" || path === "model.layers" });
  }
  spec.grid = grid;
  return JSON.parse(JSON.stringify(spec)); // drops undefined
}

// ---- the layer list: one row per layer, its kind and that kind's fields ----
function paramsValue() {
  const text = input("params").value.trim();
  if (!text) return undefined;
  try { return JSON.parse(text); } catch { return text; } // not JSON: the server says so at params
}

function rowToLayer(row) {
  const kind = row.querySelector(".layer-kind").value, settings = {};
  for (const f of LAYER_FIELDS[kind]) {
    const box = row.querySelector(`[data-field="${f.name}"]`);
    const value = f.choices ? box.value : numberOr(box.value);
    if (value !== undefined) settings[f.name] = value;
  }
  return { [kind]: settings };
}

function fillLayerFields(row, kind, settings = {}) {
  const holder = row.querySelector(".layer-fields");
  holder.replaceChildren();
  for (const f of LAYER_FIELDS[kind]) {
    const label = document.createElement("label");
    label.className = "inline";
    label.append(`${f.name} `);
    let box;
    if (f.choices) {
      box = document.createElement("select");
      for (const c of f.choices) box.append(new Option(c, c));
    } else {
      box = document.createElement("input");
      Object.assign(box, { type: "number", step: f.step, min: "0", required: f.default === null });
      box.style.width = "6em";
      if (f.default !== null) box.placeholder = String(f.default);
    }
    box.dataset.field = f.name;
    box.setAttribute("aria-label", `${kind} ${f.name}`);
    const value = settings[f.name] ?? (f.choices ? f.default : undefined);
    if (value !== undefined && value !== null) box.value = String(value);
    label.append(box);
    holder.append(label);
  }
}

function numberLayerRows() {
  [...layerRows.children].forEach((row, i) => { row.dataset.loc = `model.layers.${i}`; });
}

function addLayerRow(layer = { dense: { units: 32 } }) {
  const row = document.getElementById("layer-row").content.firstElementChild.cloneNode(true);
  const [kind, settings] = Object.entries(layer)[0] || ["dense", {}];
  const select = row.querySelector(".layer-kind");
  select.value = kind in LAYER_FIELDS ? kind : "dense";
  fillLayerFields(row, select.value, settings || {});
  select.addEventListener("change", () => { fillLayerFields(row, select.value); changed(); });
  row.querySelector(".remove-layer").addEventListener("click", () => { row.remove(); numberLayerRows(); changed(); });
  layerRows.append(row);
  numberLayerRows();
  return row;
}

function showModelKind() {
  const kind = modelKind();
  for (const node of form.querySelectorAll("[data-kind]")) node.hidden = node.dataset.kind !== kind;
}

// Grid axes may also name a field of a layer in the list, or a key of params.
const BASE_PATHS = [...document.getElementById("grid-row").content.querySelectorAll(".grid-path option")].map((o) => o.value);
function gridPaths() {
  const extra = [];
  if (modelKind() === "layers") {
    [...layerRows.children].forEach((row, i) => {
      const kind = row.querySelector(".layer-kind").value;
      for (const f of LAYER_FIELDS[kind]) extra.push(`model.layers.${i}.${kind}.${f.name}`);
    });
  }
  const params = paramsValue();
  if (params && typeof params === "object" && !Array.isArray(params)) extra.push(...Object.keys(params).map((k) => `params.${k}`));
  return [...BASE_PATHS, ...extra];
}

function setGridOptions(select, keep) {
  const paths = gridPaths();
  if (keep && !paths.includes(keep)) paths.push(keep);
  const current = [...select.options].map((o) => o.value);
  if (current.join("\n") !== paths.join("\n")) select.replaceChildren(...paths.map((p) => new Option(p, p)));
  if (keep) select.value = keep;
}

function refreshGridPaths() {
  for (const select of gridRows.querySelectorAll(".grid-path")) setGridOptions(select, select.value);
}

function addGridRow(path, values) {
  const row = document.getElementById("grid-row").content.firstElementChild.cloneNode(true);
  setGridOptions(row.querySelector(".grid-path"), path);
  row.querySelector(".grid-values").value = values ? listText(values) : "";
  row.querySelector(".remove-axis").addEventListener("click", () => { row.remove(); changed(); });
  gridRows.append(row);
  return row;
}

function specToForm(spec) {
  const d = defaults;
  const set = (name, v) => { input(name).value = v ?? ""; };
  set("name", spec.name); set("study", spec.study); set("description", spec.description);
  set("dataset", spec.dataset ?? d.dataset);
  set("limit.train", spec.limit?.train); set("limit.test", spec.limit?.test);
  const kind = Array.isArray(spec.model?.layers) ? "layers" : spec.model?.builder ? "builder" : "hidden";
  form.querySelector(`input[name="model-kind"][value="${kind}"]`).checked = true;
  set("model.hidden", listText(spec.model?.hidden ?? d.model.hidden));
  set("model.activation", spec.model?.activation ?? d.model.activation);
  set("model.builder", spec.model?.builder);
  layerRows.replaceChildren();
  for (const layer of spec.model?.layers || []) addLayerRow(layer);
  set("model.output_activation", spec.model?.output_activation ?? d.model.output_activation);
  set("params", spec.params === undefined ? "" : JSON.stringify(spec.params));
  set("loss", spec.loss ?? d.loss);
  set("optimizer.name", spec.optimizer?.name ?? d.optimizer.name);
  set("optimizer.learning_rate", spec.optimizer?.learning_rate);
  set("epochs", spec.epochs ?? d.epochs); set("batch_size", spec.batch_size ?? d.batch_size);
  const seeds = Array.isArray(spec.seeds);
  form.querySelector(`input[name="replicate-mode"][value="${seeds ? "seeds" : "replicates"}"]`).checked = true;
  set("replicates", seeds ? "" : spec.replicates ?? 1); set("seeds", seeds ? listText(spec.seeds) : "");
  gridRows.replaceChildren();
  for (const [path, values] of Object.entries(spec.grid || {})) addGridRow(path, values);
  showMode();
  showModelKind();
}

function showMode() {
  const seeds = form.querySelector('input[name="replicate-mode"]:checked').value === "seeds";
  form.querySelector('[data-loc="seeds"]').hidden = !seeds;
  form.querySelector('[data-loc="replicates"]').hidden = seeds;
}

// ---- validation and errors ----
const fieldLocs = () => [...document.querySelectorAll("[data-loc]")].map((n) => n.dataset.loc);

function fieldFor(loc, msg) {
  let best = null;
  for (const f of fieldLocs()) if ((loc === f || loc.startsWith(`${f}.`)) && (!best || f.length > best.length)) best = f;
  if (best && best !== "spec") return best;
  if (/\bgrid\b/.test(msg)) return "grid";
  if (/replicates|seeds/.test(msg)) return form.querySelector('input[name="replicate-mode"]:checked').value;
  return "spec";
}

function clearErrors() {
  for (const node of document.querySelectorAll("[data-loc]")) {
    node.classList.remove("invalid");
    node.querySelector(".field-error").textContent = "";
  }
}

function showErrors(error) {
  clearErrors();
  const fields = error?.fields?.length ? error.fields : [{ loc: "spec", msg: error?.message || "invalid spec" }];
  for (const f of fields) {
    const node = document.querySelector(`[data-loc="${fieldFor(String(f.loc), f.msg)}"]`);
    node.classList.add("invalid");
    const box = node.querySelector(".field-error");
    const msg = f.msg.replace(/^Value error, /, "");
    const where = f.loc && f.loc !== node.dataset.loc && f.loc !== "spec" ? `${f.loc}: ` : "";
    box.textContent = box.textContent ? `${box.textContent}; ${where}${msg}` : `${where}${msg}`;
  }
  countBox.textContent = "The spec is not valid yet: see the messages in red.";
  countBox.className = "run-count error-message";
}

// ---- checking: the server answers the counts, the filled-in spec and its YAML ----
const NOT_VALID = "# Not a valid spec yet: the fields in red say why. As JSON (which YAML reads too):\n";
let lastYaml = null, checking = 0, formPending = false;

// The answer of the newest check ({ok, answer}), or null when a newer one superseded it.
async function check(body, contentType) {
  const ticket = ++checking;
  let answer = null, error = null;
  try {
    answer = await api("/api/sweeps/validate", { method: "POST", headers: { "content-type": contentType }, body });
  } catch (err) {
    error = err.body?.error || { message: err.message };
  }
  if (ticket !== checking) return null;
  if (error) { showErrors(error); return { ok: false }; }
  clearErrors();
  countBox.className = "run-count";
  countBox.textContent = `${answer.configs} config${answer.configs === 1 ? "" : "s"} × ${answer.replicates} replicate${answer.replicates === 1 ? "" : "s"} = ${answer.runs} run${answer.runs === 1 ? "" : "s"}`;
  countBox.dataset.runs = answer.runs;
  return { ok: true, answer };
}

// The form changed: the YAML box shows the server's YAML of it (or, while invalid, its JSON).
async function fromForm() {
  formPending = false;
  const spec = formToSpec(), shown = yamlBox.value;
  const result = await check(JSON.stringify(spec), "application/json");
  if (!result || yamlBox.value !== shown) return; // superseded, or the YAML was edited meanwhile
  yamlBox.value = result.ok ? result.answer.yaml : `${NOT_VALID}${JSON.stringify(spec, null, 2)}\n`;
  lastYaml = yamlBox.value;
}

// The YAML changed: it fills the form.
async function fromYaml() {
  if (yamlBox.value === lastYaml) return;
  lastYaml = yamlBox.value;
  const result = await check(lastYaml, "application/yaml");
  if (result?.ok) specToForm(result.answer.spec);
}

let timer = null;
const later = (fn, ms = 250) => { clearTimeout(timer); timer = setTimeout(fn, ms); };
function changed() {
  refreshGridPaths();
  formPending = true;
  later(fromForm);
}

form.addEventListener("input", changed);
form.addEventListener("change", (event) => {
  if (event.target.name === "replicate-mode") showMode();
  if (event.target.name === "model-kind") {
    if (modelKind() === "layers" && !layerRows.children.length) addLayerRow();
    showModelKind();
  }
  changed();
});
document.getElementById("add-layer").addEventListener("click", () => { addLayerRow(); changed(); });
yamlBox.addEventListener("input", () => { formPending = false; later(fromYaml, 400); });
document.getElementById("add-axis").addEventListener("click", () => { addGridRow(); changed(); });
form.addEventListener("submit", (event) => event.preventDefault());

document.getElementById("submit-sweep").addEventListener("click", async (event) => {
  const button = event.target;
  button.disabled = true;
  try {
    if (formPending) { clearTimeout(timer); await fromForm(); } // submit what the form says now
    const response = await fetch("/api/sweeps", { method: "POST", body: yamlBox.value,
      headers: { "content-type": "application/yaml", ...authHeaders() } });
    const body = await response.json();
    if (response.status === 201) { location.href = `/sweeps/${body.id}`; return; }
    showErrors(body.error || { message: JSON.stringify(body) });
  } catch (err) {
    showErrors({ message: err.message });
  } finally {
    button.disabled = false;
  }
});

specToForm(start);
fromForm().then(() => { document.body.dataset.ready = "true"; });
