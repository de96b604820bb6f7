// What an adaptive sweep decided about each config and why (issue 13): the race's state (racing,
// settled, best, unsettled) and the prunes, one line per config ("pruned at epoch 4: upper bound 0.912
// below the best's lower bound 0.951"; "settled after 6 seeds: worse than the best, adjusted p = 0.003"),
// and the methods in words. Re-read every few seconds while a config is still racing or training.
import { api } from "/static/common.js";

const block = document.getElementById("decisions-block");
const sweepId = block.dataset.sweepId;
const ACTIVE_MS = 3000;
const IDLE_MS = 20000;
const STATE_CLASS = { best: "verdict-best", settled: "verdict-worse", pruned: "verdict-worse",
  unsettled: "verdict-indistinguishable", racing: "verdict-too_few", training: "verdict-too_few", done: "verdict-too_few" };

function line(row) {
  const item = document.createElement("li");
  item.dataset.configId = String(row.config_id);
  item.dataset.state = row.state;
  const name = document.createElement("span");
  name.className = "config-name";
  name.textContent = row.label; // typed by a user: text, never markup
  const tag = document.createElement("span");
  tag.className = `verdict-tag ${STATE_CLASS[row.state] ?? "verdict-too_few"}`;
  tag.textContent = row.state;
  const text = document.createElement("span");
  text.className = "decision-text";
  text.textContent = row.text;
  item.append(name, " ", tag, " ", text);
  return item;
}

function draw(answer) {
  block.hidden = !(answer.race || answer.prune);
  document.getElementById("decision-list").replaceChildren(...answer.configs.map(line));
  const race = document.getElementById("race-method");
  race.hidden = !answer.race;
  race.textContent = answer.race ? answer.race.method : "";
  const prune = document.getElementById("prune-method");
  prune.hidden = !answer.prune;
  prune.textContent = answer.prune ? answer.prune.text : "";
  block.dataset.drawn = String(Number(block.dataset.drawn || 0) + 1); // for tests: a refresh completed
  const moving = answer.configs.some((c) => c.state === "racing" || c.state === "training");
  return moving || (answer.race !== null && !answer.race.done);
}

async function loop() {
  let active = true;
  try {
    if (document.visibilityState !== "hidden") active = draw(await api(`/api/sweeps/${sweepId}/decisions`));
  } catch (err) {
    console.warn(err);
  }
  setTimeout(loop, active ? ACTIVE_MS : IDLE_MS);
}

loop();
