"""A study's questions (the `questions` of its sweeps' specs) answered from its runs: for each, the
configs of the sweeps it names, their verdicts (app.services.verdicts: each config against the best,
Welch and Holm) and one sentence saying what they come to, plus each config's final values for
the study page's chart.

Names are resolved when the answer is read, not at submit: a study's sweeps arrive one spec at a
time, so a name no sweep of the study has is answered "sweep 'x' not found in this study". A name
that several sweeps of the study share (the study submitted twice) means the newest of them, and
a question declared twice in the same words (by both submissions) is answered once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, and_, select

from app import metrics
from app.config_names import config_name
from app.db import read_session
from app.models import Config, Metric, Run, RunStatus
from app.numbers import finite_or_none
from app.schemas import SweepPublic
from app.services import stats
from app.services.studies import study_sweeps
from app.services.verdicts import config_verdicts
from app.spec import Question

MAX_STUDY_QUESTIONS = 50  # answered per study page; the rest are counted in `questions_left_off`
MAX_QUESTION_CONFIGS = 100  # configs one question may compare (a chart and a family of tests)
ALPHA = 0.05
TESTED = ("worse", "indistinguishable", "better")


def declared_questions(sweeps: Sequence[SweepPublic]) -> list[Question]:
    """The questions of SWEEPS' specs, oldest sweep first, each declaration once."""
    seen: set[str] = set()
    out = []
    for sw in sweeps:
        for raw in sw.spec.get("questions") or []:
            try:
                question = Question.model_validate(raw)
            except ValidationError:  # specs are validated at submit; a hand-edited row is skipped
                continue
            key = json.dumps([question.ask, question.compare, question.metric])
            if key not in seen:
                seen.add(key)
                out.append(question)
    return out


def final_values(engine: Engine, config_ids: Sequence[int], metric: str) -> dict[int, list[dict[str, Any]]]:
    """Per config, its succeeded runs' final value of METRIC (the value at the run's last epoch):
    [{"run_id", "seed", "value"}], value None when it is not a finite number."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not config_ids:
        return out
    with read_session(engine) as s:
        rows = s.execute(
            select(Run.config_id, Run.id, Run.seed, Metric.value)
            .join(Metric, and_(Metric.run_id == Run.id, Metric.epoch == Run.epochs, Metric.key == metric))
            .where(Run.config_id.in_(list(config_ids)), Run.status == RunStatus.SUCCEEDED.value)
            .order_by(Run.id)).all()
    for config_id, run_id, seed, value in rows:
        out[config_id].append({"run_id": run_id, "seed": seed, "value": finite_or_none(value)})
    return out


def _configs_of(engine: Engine, sweeps: Sequence[SweepPublic]) -> list[dict[str, Any]]:
    """The configs of SWEEPS in their order (and each sweep's config order)."""
    ids = [sw.id for sw in sweeps]
    with read_session(engine) as s:
        rows = s.execute(select(Config.id, Config.sweep_id, Config.label).where(Config.sweep_id.in_(ids))
                         .order_by(Config.position)).all()
    by_sweep: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_sweep[r.sweep_id].append(r)
    names = {sw.id: sw.name for sw in sweeps}
    within = len(sweeps) == 1
    return [{"config_id": r.id, "sweep_id": r.sweep_id, "label": r.label,
             "name": config_name(names[r.sweep_id], r.label, within_sweep=within)}
            for sw in sweeps for r in by_sweep[sw.id]]


# ---- the sentence ----------------------------------------------------------------------------

class _Units:
    """How METRIC's differences are spoken: accuracies (fractions) in percentage points."""

    def __init__(self, metric: str) -> None:
        self.percent = metrics.describe(metric).format == "percent"

    def __call__(self, value: float) -> str:
        return f"{100 * value:.1f}" if self.percent else f"{value:.3g}"

    def amount(self, diff: float, ci: Sequence[float | None] | None) -> str:
        """'3.2 ± 0.4 points' (the difference with the half-width of its 95% CI)."""
        unit = " points" if self.percent else ""
        if ci and ci[0] is not None and ci[1] is not None:
            return f"{self(abs(diff))} ± {self((ci[1] - ci[0]) / 2)}{unit}"
        return f"{self(abs(diff))}{unit}"

    def level(self, mean: float | None, ci: Sequence[float | None] | None) -> str:
        if mean is None:
            return "no value"
        suffix = "%" if self.percent else ""
        if ci and ci[0] is not None and ci[1] is not None:
            return f"{self(mean)} ± {self((ci[1] - ci[0]) / 2)}{suffix}"
        return f"{self(mean)}{suffix}"


def _p(value: float | None, adjusted: bool) -> str:
    if value is None:
        return "no test applies"
    words = stats.p_in_words(value)
    return f"adjusted {words}" if adjusted else words


def _names(items: Sequence[str]) -> str:
    return ", ".join(items)


def _pair_sentence(v: dict[str, Any], c: dict[str, Any], names: dict[int, str], units: _Units) -> str:
    """Two configs: the better one first, by how much, Welch's p (one comparison: Holm changes nothing)."""
    best = v["best"]
    b, o = names.get(best["config_id"], best["label"]), names.get(c["config_id"], c["label"])
    seeds = f"{best['n']} vs {c['n']} seeds"
    verdict, diff = c.get("verdict"), c.get("difference")
    if verdict == "too_few" or diff is None:
        return (f"Too few succeeded replicates to tell: {b} has {best['n']}, {o} has {c['n']}; "
                "at least 2 each are needed.")
    if c.get("p") is None:
        return str(c.get("text") or f"{b} and {o} differ by {units.amount(diff, None)}; no test applies; {seeds}.")
    p = _p(c["p"], adjusted=False)
    if verdict == "worse":
        return f"{b} is better than {o} by {units.amount(diff, c.get('ci'))}, {p}; {seeds}."
    if verdict == "better":
        return f"{o} is better than {b} by {units.amount(diff, c.get('ci'))}, {p}; {c['n']} vs {best['n']} seeds."
    other_ahead = diff > 0 if v.get("higher_is_better", True) is not False else diff < 0
    ahead = o if other_ahead else b
    return (f"{b} and {o} are indistinguishable beyond seed noise: {ahead} is ahead by "
            f"{units.amount(diff, c.get('ci'))}, {p}; {seeds}.")


def _family_sentence(v: dict[str, Any], names: dict[int, str], units: _Units) -> str:
    best = v["best"]
    b = names.get(best["config_id"], best["label"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in v["comparisons"]:
        groups[c.get("verdict") if c.get("verdict") in TESTED else "too_few"].append(c)
    parts = [f"Best: {b} ({units.level(best['mean'], best.get('ci'))}, {best['n']} seeds)"]
    if groups["better"]:
        parts.append(f"better than it: {_names([names.get(c['config_id'], c['label']) for c in groups['better']])}")
    if groups["indistinguishable"]:
        low = min(c["p_holm"] for c in groups["indistinguishable"] if c.get("p_holm") is not None) \
            if any(c.get("p_holm") is not None for c in groups["indistinguishable"]) else None
        tail = f" (adjusted p ≥ {low:.2f})" if low is not None else ""
        parts.append("indistinguishable from it beyond seed noise"
                     f"{tail}: {_names([names.get(c['config_id'], c['label']) for c in groups['indistinguishable']])}")
    if groups["worse"]:
        high = max(c["p_holm"] for c in groups["worse"])
        p = "adjusted p < 0.001" if high < 0.001 else f"adjusted p ≤ {high:.3f}" if high < 0.01 else \
            f"adjusted p ≤ {high:.2f}"
        parts.append(f"worse ({p}): {_names([names.get(c['config_id'], c['label']) for c in groups['worse']])}")
    if groups["too_few"]:
        parts.append("too few succeeded replicates to tell: "
                     f"{_names([names.get(c['config_id'], c['label']) for c in groups['too_few']])}")
    return "; ".join(parts) + "."


def answer_text(verdicts: dict[str, Any] | None, names: dict[int, str], n_configs: int,
                missing: Sequence[str]) -> str:
    """One sentence answering a question from its verdicts (config_verdicts' answer)."""
    if missing:
        return "; ".join(f"sweep {name!r} not found in this study" for name in missing).capitalize() + "."
    if n_configs == 0:
        return "Its sweeps have no configs yet."
    if n_configs > MAX_QUESTION_CONFIGS:
        return f"Too many configs to compare: {n_configs}; a question compares at most {MAX_QUESTION_CONFIGS}."
    if verdicts is None or verdicts.get("best") is None:
        return "No run of these sweeps has succeeded yet."
    units = _Units(verdicts["metric"])
    comparisons = verdicts.get("comparisons") or []
    if not comparisons:
        best = verdicts["best"]
        return (f"Only one config to compare: {names.get(best['config_id'], best['label'])} "
                f"({units.level(best['mean'], best.get('ci'))}, {best['n']} seeds).")
    if len(comparisons) == 1:
        return _pair_sentence(verdicts, comparisons[0], names, units)
    return _family_sentence(verdicts, names, units)


# ---- the answers -----------------------------------------------------------------------------

def _chart_configs(configs: list[dict[str, Any]], finals: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for c in configs:
        runs = finals.get(c["config_id"], [])
        summary = stats.summarize([r["value"] for r in runs])
        ci = [summary.ci_low, summary.ci_high] if summary.ci_low is not None else None
        out.append({**c, "n": summary.n, "mean": summary.mean, "ci": ci,
                    "values": [r["value"] for r in runs], "seeds": [r["seed"] for r in runs],
                    "runs": [r["run_id"] for r in runs]})
    return out


def answer_question(engine: Engine, question: Question, sweeps_by_name: dict[str, SweepPublic]) -> dict[str, Any]:
    """One question answered: its sweeps and configs, their verdicts, the sentence and the chart's data."""
    metric = question.metric or metrics.PRIMARY_KEY
    found = [sweeps_by_name[n] for n in question.compare if n in sweeps_by_name]
    missing = [n for n in question.compare if n not in sweeps_by_name]
    configs = _configs_of(engine, found) if found else []
    config_ids = [c["config_id"] for c in configs]
    answerable = not missing and 0 < len(config_ids) <= MAX_QUESTION_CONFIGS
    verdicts = config_verdicts(engine, config_ids, metric=metric) if answerable else None
    names = {c["config_id"]: c["name"] for c in configs}
    shown = configs[:MAX_QUESTION_CONFIGS]
    info = metrics.describe(metric)
    return {"ask": question.ask, "sweeps": list(question.compare), "sweep_ids": [sw.id for sw in found],
            "config_ids": config_ids, "metric": metric, "metric_title": info.title,
            "higher_is_better": info.higher_is_better, "verdicts": verdicts,
            "text": answer_text(verdicts, names, len(config_ids), missing), "missing": missing,
            "configs": _chart_configs(shown, final_values(engine, [c["config_id"] for c in shown], metric))}


def answer_questions(engine: Engine, sweeps: Sequence[SweepPublic]) -> tuple[list[dict[str, Any]], int]:
    """The declared questions of SWEEPS (a study's, oldest first) answered, and how many were left off."""
    by_name = {sw.name: sw for sw in sweeps}  # oldest first: the newest of a name wins
    questions = declared_questions(sweeps)
    answered = [answer_question(engine, q, by_name) for q in questions[:MAX_STUDY_QUESTIONS]]
    return answered, max(0, len(questions) - MAX_STUDY_QUESTIONS)


def study_questions(engine: Engine, study: str) -> list[dict[str, Any]]:
    """Each declared question of STUDY answered (see the module's doc): {"ask", "sweeps", "sweep_ids",
    "config_ids", "metric", "metric_title", "higher_is_better", "verdicts", "text", "missing",
    "configs": [{"config_id", "sweep_id", "label", "name", "n", "mean", "ci", "values", "seeds",
    "runs"}]}. NotFound for a study without sweeps."""
    return answer_questions(engine, study_sweeps(engine, study))[0]


__all__ = ["answer_questions", "answer_text", "declared_questions", "final_values", "study_questions"]
