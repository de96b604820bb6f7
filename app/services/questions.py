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
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, select

from app import metrics
from app.config_names import config_name
from app.db import read_session
from app.models import Config, RunStatus
from app.schemas import SweepPublic
from app.services import finals, stats
from app.services.studies import study_sweeps, sweep_summaries
from app.services.verdicts import config_verdicts, unit_of
from app.spec import Question

MAX_STUDY_QUESTIONS = 50  # answered per study page; the rest are counted in `questions_left_off`
MAX_QUESTION_CONFIGS = 100  # configs one question may compare (a chart and a family of tests)
ALPHA = 0.05
TESTED = ("worse", "indistinguishable", "better", "higher", "lower")


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
    """Per config, its succeeded runs' final METRIC (app.services.finals: the value at the last epoch
    the run logged it), [{"run_id", "seed", "value"}], value None when it is not a real number."""
    if not config_ids:
        return {}
    found = finals.final_values(engine, config_ids=config_ids, key=metric)
    return {config_id: [{"run_id": r, "seed": seed, "value": v} for r, seed, v in rows]
            for config_id, rows in found.items()}


def _configs_of(engine: Engine, sweeps: Sequence[SweepPublic], within: bool) -> list[dict[str, Any]]:
    """The configs of SWEEPS in their order (and each sweep's config order), named for a question
    about one sweep (WITHIN) or several."""
    ids = [sw.id for sw in sweeps]
    with read_session(engine) as s:
        rows = s.execute(select(Config.id, Config.sweep_id, Config.label).where(Config.sweep_id.in_(ids))
                         .order_by(Config.position)).all()
    by_sweep: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_sweep[r.sweep_id].append(r)
    def name(sw: SweepPublic, label: str) -> str:
        # Several sweeps: a sweep of one config goes by its name (an external config's label is
        # its settings), the configs of a grid by the sweep's name and their label; one sweep: labels.
        if not within and len(by_sweep[sw.id]) == 1:
            return sw.name
        return config_name(sw.name, label, within_sweep=within)

    return [{"config_id": r.id, "sweep_id": r.sweep_id, "label": r.label, "name": name(sw, r.label)}
            for sw in sweeps for r in by_sweep[sw.id]]


# ---- the sentence ----------------------------------------------------------------------------

def _digits(spread: float | None) -> int:
    """Decimals that show SPREAD (a CI half-width, in written units) to one significant digit, 1 to 6."""
    if spread is None or not math.isfinite(spread) or spread <= 0:
        return 1
    return int(min(6, max(1, -math.floor(math.log10(spread)))))


class _Units:
    """How METRIC's values and differences are written: accuracies (fractions) in percent and
    percentage points (app.services.verdicts.unit_of), other metrics in their own units."""

    def __init__(self, metric: str) -> None:
        self.scale, self.unit = unit_of(metric)
        self.percent = self.scale != 1.0

    def amount(self, diff: float, ci: Sequence[float | None] | None) -> str:
        """'3.2 ± 0.4 points': the size of a difference with the half-width of its 95% CI."""
        if ci and ci[0] is not None and ci[1] is not None and ci[1] > ci[0]:
            half = (ci[1] - ci[0]) / 2 * self.scale
            d = _digits(half)
            return f"{abs(diff) * self.scale:.{d}f} ± {half:.{d}f}{self.unit}"
        return f"exactly {abs(diff) * self.scale:.{_digits(abs(diff) * self.scale / 10)}f}{self.unit}"

    def level(self, mean: float | None, ci: Sequence[float | None] | None) -> str:
        """'97.1 ± 0.2%': a mean with the half-width of its 95% CI."""
        if mean is None:
            return "no value"
        suffix = "%" if self.percent else ""
        if ci and ci[0] is not None and ci[1] is not None:
            half = (ci[1] - ci[0]) / 2 * self.scale
            d = _digits(half)
            return f"{mean * self.scale:.{d}f} ± {half:.{d}f}{suffix}"
        return f"{mean * self.scale:.{_digits(abs(mean) * self.scale / 100)}f}{suffix}"


def _p(c: dict[str, Any], family: int) -> str:
    """Welch's p of one comparison, Holm-adjusted when the question makes several."""
    if c.get("exact"):
        return "no spread in either config, so the difference is exact"
    if family > 1:
        return f"adjusted {stats.p_in_words(c['p_holm'])}"
    return stats.p_in_words(c["p"])


def _name(c: dict[str, Any], names: dict[int, str]) -> str:
    return names.get(c["config_id"]) or str(c["label"])


def _names(cs: Sequence[dict[str, Any]], names: dict[int, str]) -> str:
    return ", ".join(_name(c, names) for c in cs)


WORDS = {"worse": "worse", "better": "better", "higher": "higher", "lower": "lower"}


def _pair_sentence(v: dict[str, Any], c: dict[str, Any], names: dict[int, str], units: _Units) -> str:
    """Two configs: the better one first, by how much, and Welch's p."""
    best = v["best"]
    b, o = _name(best, names), _name(c, names)
    verdict, diff = c.get("verdict"), c.get("difference")
    if verdict not in TESTED or diff is None or c.get("p") is None:
        return (f"Too few succeeded replicates to tell: {b} has {best['n']}, {o} has {c['n']}; "
                "at least 2 each are needed.")
    amount, p = units.amount(diff, c.get("ci")), _p(c, 1)
    if verdict == "worse":
        return f"{b} is better than {o} by {amount}, {p}; {best['n']} vs {c['n']} seeds."
    if verdict in WORDS:  # better, higher, lower: the other config against the best
        return f"{o} is {WORDS[verdict]} than {b} by {amount}, {p}; {c['n']} vs {best['n']} seeds."
    higher = v.get("higher_is_better") is not False
    ahead, behind = (o, b) if (diff > 0) == higher and diff != 0 else (b, o)
    return (f"{b} and {o} are indistinguishable beyond seed noise: {ahead} is ahead of {behind} by {amount}, "
            f"{p}; {best['n']} vs {c['n']} seeds.")


def _family_sentence(v: dict[str, Any], names: dict[int, str], units: _Units) -> str:
    """Three or more configs: the best, then the others grouped by verdict (Holm-adjusted p)."""
    best = v["best"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in v["comparisons"]:
        groups[c["verdict"] if c.get("verdict") in TESTED else "too_few"].append(c)
    parts = [f"Best: {_name(best, names)} ({units.level(best['mean'], best.get('ci'))}, {best['n']} seeds)"]
    same = groups["indistinguishable"]
    if same:
        low = min(c["p_holm"] for c in same)
        parts.append(f"indistinguishable from it beyond seed noise (adjusted p ≥ {low:.2f}): {_names(same, names)}")
    for verdict, word in WORDS.items():
        group = groups[verdict]
        if group:
            high = max(c["p_holm"] for c in group)
            p = "adjusted p < 0.001" if high < 0.001 else f"adjusted p ≤ {high:.3f}"
            parts.append(f"{word} than it ({p}): {_names(group, names)}")
    if groups["too_few"]:
        parts.append(f"too few succeeded replicates to tell: {_names(groups['too_few'], names)}")
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
    configs = _configs_of(engine, found, within=len(question.compare) == 1) if found else []
    config_ids = [c["config_id"] for c in configs]
    answerable = not missing and 0 < len(config_ids) <= MAX_QUESTION_CONFIGS
    verdicts = config_verdicts(engine, config_ids, metric=metric, best_by=metric) if answerable else None
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


def study_overview(engine: Engine, study: str) -> dict[str, Any]:
    """What GET /api/studies/{study} and the study page show: {"study", "runs", "status_counts",
    "sweeps": [sweep_summaries' rows, oldest first], "questions": [study_questions' answers],
    "questions_left_off"}. NotFound for a study without sweeps."""
    sweeps = study_sweeps(engine, study)
    summaries = sweep_summaries(engine, sweeps)
    counts = dict.fromkeys((s.value for s in RunStatus), 0)
    for sw in summaries:
        for status, n in sw["status_counts"].items():
            counts[status] += n
    answered, left_off = answer_questions(engine, sweeps)
    return {"study": study, "runs": sum(sw["runs"] for sw in summaries), "status_counts": counts,
            "sweeps": summaries, "questions": answered, "questions_left_off": left_off}


__all__ = ["answer_questions", "answer_text", "declared_questions", "final_values", "study_overview", "study_questions"]
