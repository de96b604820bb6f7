"""The verdicts of a raced sweep (app.services.racing): on the race's metric they are the race's,
since plain Holm on final data whose amount the race chose would not keep its error rate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from app.models import Sweep
from app.services.racing_sweep import Race, read_race, spec_of
from app.services.racing_words import ConfigState, config_states, method_text


def overlay(answer: dict[str, Any], race: Race) -> dict[str, Any]:
    """The verdicts answer (app.services.verdicts) of a raced sweep on the race's metric, its
    verdicts the race's: a config the race settled is worse, one it did not settle is
    indistinguishable; each comparison gains `race` (state, sentence, adjusted p) and the answer a
    `race` block; numbers (difference, CI, p, p_holm) stay those of the final data."""
    states = {row["config_id"]: row for row in config_states(race)}
    best = answer.get("best") or {}
    best_state = states.get(best.get("config_id"))
    if best_state is not None and best_state["state"] in (ConfigState.SETTLED, ConfigState.PRUNED):
        answer["race"] = {"method": method_text(race.plan, race.metric), "applied": False,
                          "why": "the best config of the final data is one the race settled or pruned"}
        return answer
    for c in answer.get("comparisons", []):
        row = states.get(c["config_id"])
        if row is None:
            continue
        c["race"] = {k: row[k] for k in ("state", "text", "seeds", "p_adjusted", "look")}
        if c["verdict"] == "too_few":
            continue
        if row["state"] == ConfigState.SETTLED:
            c["verdict"] = "worse" if answer.get("higher_is_better") is not None else (
                "lower" if race.plan.higher_is_better else "higher")
        elif row["state"] in (ConfigState.UNSETTLED, ConfigState.RACING):
            c["verdict"] = "indistinguishable"
        c["text"] = f"{c['label']}: {row['text']} (race); final data: {c['text']}"
    answer["race"] = {"method": method_text(race.plan, race.metric), "applied": True,
                      "done": bool(race.state.done[0]), "looks_done": int(race.state.looks_done[0]),
                      "sizes": list(race.plan.sizes), "levels": list(race.plan.levels), "pairs": race.plan.pairs,
                      "alpha": race.plan.alpha}
    answer["method"] = method_text(race.plan, race.metric) + " " + answer.get("method", "")
    return answer


def raced_verdicts(engine: Engine, sweep: Sweep, metric: str, answer: dict[str, Any]) -> dict[str, Any]:
    """ANSWER (app.services.verdicts' for SWEEP) with the race's verdicts when SWEEP races on METRIC
    (`overlay`, on a copy: ANSWER may be a cached one); unchanged otherwise."""
    import copy

    spec = spec_of(sweep)
    if spec is None or spec.race is None or spec.race.metric != metric:
        return answer
    race = read_race(engine, sweep.id)
    if race is None:
        return answer
    return overlay(copy.deepcopy(answer), race)
