// Sweeps list: cancel / retry buttons, the one-click MNIST study, and progress bars that follow
// the runs while any sweep on the page is active.
import { api, canCancel, canRetry, drawProgress, post } from "/static/common.js";
import { el } from "/static/common.js";

function showSweep(sweep) {
  const row = document.querySelector(`#sweep-table tr[data-sweep-id="${sweep.id}"]`);
  if (!row) return;
  const c = sweep.status_counts;
  row.querySelector(".progress-text").textContent = drawProgress(row.querySelector(".progress"), c, sweep.runs);
  row.querySelector(".cancel-sweep").hidden = !canCancel(c);
  row.querySelector(".retry-sweep").hidden = !canRetry(c);
}

for (const button of document.querySelectorAll(".cancel-sweep")) {
  button.addEventListener("click", async () => {
    if (!confirm(`Cancel sweep ${button.dataset.sweepId}: every queued run, and stop the running ones?`)) return;
    showSweep(await post(button, `/api/sweeps/${button.dataset.sweepId}/cancel`));
  });
}
for (const button of document.querySelectorAll(".retry-sweep")) {
  button.addEventListener("click", async () => showSweep(await post(button, `/api/sweeps/${button.dataset.sweepId}/retry`)));
}
document.getElementById("run-study").addEventListener("click", async (event) => {
  if (!confirm("Submit the whole MNIST study (every sweep of presets/mnist-study.yaml)?")) return;
  const sweeps = await post(event.target, "/api/presets/mnist-study");
  location.href = `/?study=${encodeURIComponent(sweeps[0]?.study || "")}`;
});

// Poll while something on the page is queued or running.
const active = () => [...document.querySelectorAll(".cancel-sweep")].some((b) => !b.hidden);
async function poll() {
  if (!document.hidden && active()) {
    const params = new URLSearchParams(location.search);
    params.set("limit", "200");
    try {
      for (const sweep of await api(`/api/sweeps?${params}`)) showSweep(sweep);
    } catch (err) { console.warn(err); }
  }
  setTimeout(poll, 3000);
}
setTimeout(poll, 3000);

// The live workers (GET /api/workers), every 10 s while the page is shown; every value as text.
const utc = (iso) => (iso ? new Date(iso).toISOString().slice(0, 19).replace("T", " ") : "");
async function refreshWorkers() {
  if (!document.hidden) {
    try {
      const workers = await api("/api/workers");
      document.getElementById("worker-count").textContent = `(${workers.length} live)`;
      document.getElementById("no-workers").hidden = workers.length > 0;
      document.getElementById("worker-table").hidden = workers.length === 0;
      document.querySelector("#worker-table tbody").replaceChildren(...workers.map((w) => el("tr", { "data-worker-id": w.id },
        el("td", {}, w.host), el("td", { class: "num" }, String(w.pid)), el("td", {}, w.programs.join(", ") || "–"),
        el("td", { class: "nowrap" }, utc(w.started_at)), el("td", { class: "nowrap" }, utc(w.heartbeat_at)))));
    } catch (err) { console.warn(err); }
  }
  setTimeout(refreshWorkers, 10000);
}
setTimeout(refreshWorkers, 10000);
document.body.dataset.ready = "true";
