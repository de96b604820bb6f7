// Sweeps list: cancel / retry buttons, the one-click MNIST study, and progress bars that follow
// the runs while any sweep on the page is active.
import { api, canCancel, canRetry, drawProgress, post } from "/static/common.js";

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
document.body.dataset.ready = "true";
