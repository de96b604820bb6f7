"""Verdicts across configs: which configs are really different from the best one, beyond seed noise.

The best config is the one with the best mean final value among the configs with at least two
replicates, ranked by the primary metric (app.metrics.PRIMARY_KEY) when they report it, else by the
metric asked about; every other config is compared with it on the metric asked about: difference
of means (config minus best) with its 95% Welch CI, Welch's p, and Holm's adjusted p over the family
of all comparisons with the best. The power block (app.services.power) says how large a difference
the configs' seed noise lets them tell apart. Finals are app.services.finals'; answers are cached
while the runs' statuses hold (app.services.memo). `verdicts_of` is the pure core.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from app.config_names import config_name
from app.metrics import PRIMARY_KEY, describe
from app.services import stats
from app.services.charts import config_rows
from app.services.finals import finals_by_key
from app.services.memo import memo
from app.services.power import power_block
from app.services.snapshots import Scope, snapshot
from app.services.sweeps import get_sweep_row

ALPHA = 0.05
TOO_FEW = "too_few"
INDISTINGUISHABLE = "indistinguishable"


@dataclass(frozen=True)
class Group:
    """One config's finals: of the metric compared (VALUES) and of the metric the best is ranked by
    (RANK_VALUES; the same list when both are one metric). None and non-finite values are kept here
    and dropped by `verdicts_of`."""

    config_id: int
    label: str
    values: Sequence[float | None]
    rank_values: Sequence[float | None] = field(default_factory=list)


def unit_of(metric: str) -> tuple[float, str]:
    """How differences of METRIC are written: percentage points (x100) for the catalogue's percent
    metrics (accuracies in [0, 1]), raw units otherwise (losses, a key only external runs report)."""
    return (100.0, " points") if describe(metric).format == "percent" else (1.0, "")


def _decimals(spread: float | None) -> int:
    """Enough decimals to show SPREAD (a CI half-width, in written units) with one significant digit."""
    if spread is None or spread <= 0 or not math.isfinite(spread):
        return 2
    return int(min(8, max(1, -math.floor(math.log10(spread)))))


def _number(x: float, decimals: int, signed: bool = False) -> str:
    if abs(x) >= 1e7:
        return f"{x:+.2g}" if signed else f"{x:.2g}"
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def short(x: float) -> str:
    """X with two significant digits and no exponent: 1.6, 0.5, 0.016, 150 (2.5e-07 when tiny or huge)."""
    if x == 0 or not math.isfinite(x) or not 1e-4 <= abs(x) < 1e7:
        return f"{x:.2g}"
    return f"{x:.{max(0, 1 - math.floor(math.log10(abs(x))))}f}"


def adjusted_p(p: float) -> str:
    """'adjusted p = 0.62', 'adjusted p < 0.001'."""
    return f"adjusted {stats.p_in_words(p)}"


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of PS: the i-th smallest p times (m - i), made monotone, capped
    at 1. The same numbers as statsmodels' multipletests(method="holm") (tests compare them), which
    runs a full gc.collect() on every call: 0.1-0.4 s in a server's heap, for a few multiplications."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def _verdict(difference: float, p_holm: float, higher_is_better: bool | None) -> str:
    if p_holm >= ALPHA or difference == 0:
        return INDISTINGUISHABLE
    if higher_is_better is None:
        return "higher" if difference > 0 else "lower"
    return "better" if (difference > 0) == higher_is_better else "worse"


def _welch(xs: list[float], best: list[float]) -> dict[str, Any]:
    """`_welch_of` XS and BEST, a copy of its own (the answer's rows are changed later)."""
    found = _welch_of(tuple(xs), tuple(best))
    return {**found, "ci": list(found["ci"])}


@functools.lru_cache(maxsize=4096)
def _welch_of(xs: tuple[float, ...], best: tuple[float, ...]) -> dict[str, Any]:
    """XS minus BEST: difference, 95% Welch CI, Welch's p. With no spread in either group the
    difference is exact: the CI is the difference itself and p is Welch's limit as the spread goes
    to zero (0 when the means differ, 1 when they are equal); `exact` says so. A pure function of
    the finals, so kept: after a run finishes, only the configs whose finals (or the best's) changed
    are tested again (scipy's ttest_ind: 2-7 ms a call, 100 configs' worth per verdicts answer)."""
    if min(xs) == max(xs) and min(best) == max(best):  # no spread (whatever the rounding of a mean)
        diff = xs[0] - best[0]
        return {"difference": diff, "ci": [diff, diff], "p": 0.0 if diff != 0 else 1.0, "df": None, "exact": True}
    cmp = stats.welch(best, xs)
    assert cmp.diff is not None and cmp.p is not None
    return {"difference": cmp.diff, "ci": [cmp.ci_low, cmp.ci_high], "p": cmp.p, "df": cmp.df, "exact": False}


@functools.lru_cache(maxsize=4096)
def _summarize(xs: tuple[float, ...]) -> stats.Summary:
    """stats.summarize of XS, kept as `_welch_of` is (its t quantile is a scipy call)."""
    return stats.summarize(xs)


def _sentence(c: dict[str, Any], best: dict[str, Any], metric: str, ranked_by: str | None) -> str:
    scale, unit = unit_of(metric)
    name, best_name = c["label"], best["label"]
    counts = f"{c['n']} vs {best['n']} seeds"
    if c["verdict"] == TOO_FEW:
        return (f"{name} has too few replicates to compare ({_seeds(c['n'])} with a final {metric};"
                " at least 2 are needed)")
    d = c["difference"] * scale
    half = (c["ci"][1] - c["ci"][0]) / 2 * scale
    decimals = _decimals(half if half > 0 else abs(d) / 10 if d else None)
    if c["exact"]:
        amount = (f"exactly {_number(d, decimals, signed=True)}{unit}"
                  " (no spread in either config, so the difference is exact)")
    else:
        amount = f"{_number(d, decimals, signed=True)} ± {_number(half, decimals)}{unit}, {adjusted_p(c['p_holm'])}"
    whom = f"the best, {best_name}" + (f" (the best by {ranked_by})" if ranked_by else "")
    word = {INDISTINGUISHABLE: "is indistinguishable from", "worse": "is worse than", "better": "is better than",
            "higher": "is higher than", "lower": "is lower than"}[c["verdict"]]
    return f"{name} {word} {whom}: {amount}; {counts}"


def _method(metric: str, rank_key: str, higher_is_better: bool | None, dropped: int, family: int) -> str:
    direction = {True: "higher is better", False: "lower is better",
                 None: "the catalogue gives no direction, so verdicts say higher or lower"}[higher_is_better]
    ranked = (f"ranked by the mean final {rank_key}" + (" (the primary metric)" if rank_key == PRIMARY_KEY else "")
              if rank_key != metric
              else f"ranked by the mean final {metric}")
    scale, _ = unit_of(metric)
    units = "Differences are written in percentage points (x100). " if scale != 1 else ""
    return (
        f"Each run's final {metric} is its value at the last epoch it logged {metric}; only succeeded runs count"
        f" and finals that are not real numbers (NaN, infinite, beyond 1e50 in size) are dropped"
        f" ({dropped} dropped here). For {metric}"
        f" {direction}. Configs with fewer than 2 finals are marked too_few and left out of the comparisons. The best"
        f" config is the one with the best mean among the configs with at least 2 finals, {ranked}. Every other"
        f" config is compared with it:"
        f" the difference of means (config minus best) with a 95% confidence interval from Welch's t distribution"
        f" (Welch-Satterthwaite degrees of freedom), Welch's two-sided p (scipy.stats.ttest_ind, equal_var=False),"
        f" and Holm's step-down adjustment over the family of all {family} comparisons with the best."
        f" A config is worse or better when its adjusted p is below {ALPHA} and the"
        f" difference goes that way, else indistinguishable. When neither config shows any spread the difference is"
        f" exact: its interval is the difference itself and p is taken as 0 (means differ) or 1 (equal), the limits"
        f" of Welch's test. {units}The power block pools the configs' seed noise,"
        f" sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1)), and gives the smallest difference a two-sided two-sample"
        f" t-test (pooled, equal n per config, alpha 0.05) detects with power 0.8 at the median number of"
        f" replicates, and the replicates per config needed for a given difference (statsmodels TTestIndPower)."
    ).replace("  ", " ")


def _power_sentence(block: dict[str, Any], metric: str) -> str:
    scale, unit = unit_of(metric)
    if block["detectable_difference"] is None:
        return f"No power statement: {block['reason']}."
    n = block["n"]
    seeds = f"{n:g} seeds" if isinstance(n, float) else _seeds(n)
    dd = block["detectable_difference"] * scale
    text = f"with {seeds} this sweep can tell apart differences of {short(dd)}{unit} or more"
    if block["detect"] is not None:
        need = block["replicates_needed"]
        needs = f"{need} seeds per config" if need is not None else "more seeds than can be counted"
        text += f"; {short(block['detect'] * scale)}{unit} would need {needs}"
    return text


def verdicts_of(groups: Sequence[Group], metric: str = PRIMARY_KEY, *, rank_key: str | None = None,
                detect: float | None = None) -> dict[str, Any]:
    """The verdicts answer for GROUPS (one per config, in display order): see the module's doc.
    RANK_KEY names the metric of the groups' rank_values (the best is ranked by it when any config
    with 2+ finals of METRIC has a finite mean of it); None ranks by METRIC itself."""
    info = describe(metric)
    higher = info.higher_is_better
    finals = {g.config_id: stats.usable(g.values) for g in groups}
    dropped = sum(len(g.values) - len(finals[g.config_id]) for g in groups)
    eligible = [g for g in groups if len(finals[g.config_id]) >= 2]

    def mean(xs: Sequence[float]) -> float:
        return math.fsum(xs) / len(xs)

    used_key = metric
    ranking = {g.config_id: finals[g.config_id] for g in eligible}
    if rank_key is not None and rank_key != metric:
        ranked = {g.config_id: stats.usable(g.rank_values) for g in eligible}
        ranked = {c: xs for c, xs in ranked.items() if xs}
        if ranked:
            ranking, used_key = ranked, rank_key
    rank_higher = describe(used_key).higher_is_better
    best_group: Group | None = None
    if ranking:
        sign = -1.0 if rank_higher is False else 1.0
        position = {g.config_id: i for i, g in enumerate(eligible)}  # ties: the first in display order
        best_id = max(ranking, key=lambda c: (sign * mean(ranking[c]), -position[c]))
        best_group = next(g for g in eligible if g.config_id == best_id)

    best: dict[str, Any] | None = None
    comparisons: list[dict[str, Any]] = []
    if best_group is not None:
        xs = finals[best_group.config_id]
        summary = _summarize(tuple(xs))
        best = {"config_id": best_group.config_id, "label": best_group.label, "n": summary.n, "mean": summary.mean,
                "ci": [summary.ci_low, summary.ci_high], "std": summary.std}
    for g in groups:
        if best is not None and g.config_id == best["config_id"]:
            continue
        xs = finals[g.config_id]
        summary = _summarize(tuple(xs))
        row: dict[str, Any] = {"config_id": g.config_id, "label": g.label, "n": summary.n, "mean": summary.mean,
                               "std": summary.std, "difference": None, "ci": [None, None], "p": None,
                               "p_holm": None, "verdict": TOO_FEW, "text": "", "exact": False, "df": None}
        if best is not None and len(xs) >= 2:
            row.update(_welch(xs, finals[best["config_id"]]))
        comparisons.append(row)
    family = [c for c in comparisons if c["p"] is not None]
    for c, adjusted in zip(family, holm([c["p"] for c in family]), strict=True):
        c["p_holm"] = adjusted
        c["verdict"] = _verdict(c["difference"], adjusted, higher)
    for c in comparisons:
        c["text"] = _sentence(c, best or {"label": "", "n": 0}, metric, used_key if used_key != metric else None)
    power = power_block([finals[g.config_id] for g in groups], detect)
    power["sentence"] = _power_sentence(power, metric)
    return stats.finite_tree({  # type: ignore[no-any-return]
        "metric": metric, "higher_is_better": higher, "best_by": used_key if best is not None else None,
        "best": best, "comparisons": comparisons, "power": power,
        "method": _method(metric, used_key, higher, dropped, len(family)),
        "dropped": dropped, "text": _summary(best, comparisons, metric)})


def _summary(best: dict[str, Any] | None, comparisons: list[dict[str, Any]], metric: str) -> str:
    if best is None:
        return f"No config has 2 succeeded replicates with a final {metric} yet, so there is nothing to compare."
    scale, unit = unit_of(metric)
    half = (best["ci"][1] - best["ci"][0]) / 2 * scale if best["ci"][0] is not None else None
    dec = _decimals(half)
    spread = f" ± {_number(half, dec)}" if half is not None else ""
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    words = {"worse": "worse", "better": "better", INDISTINGUISHABLE: "indistinguishable from it",
             "higher": "higher", "lower": "lower", TOO_FEW: "with too few replicates"}
    parts = [f"{n} {words[v]}" for v, n in counts.items()]
    return (f"best: {best['label']}, final {metric} {_number(best['mean'] * scale, dec)}{spread}{unit}"
            f" ({_seeds(best['n'])})" + (f"; of the other configs {', '.join(parts)}" if parts else ""))


# ---- from the database ----------------------------------------------------------------------

def _groups(engine: Engine, scope: Scope, metric: str, rank_key: str, within_sweep: bool) -> list[Group]:
    configs = config_rows(engine, scope)
    keys = [metric] if rank_key == metric else [metric, rank_key]
    finals = finals_by_key(engine, scope, keys)

    def values(key: str, config_id: int) -> list[float | None]:
        return [v for _, _, v in finals[key].get(config_id, [])]

    return [Group(c["id"], config_name(c["sweep_name"], c["label"], within_sweep=within_sweep),
                  values(metric, c["id"]), values(rank_key, c["id"])) for c in configs]


def _cached(engine: Engine, scope: Scope, metric: str, detect: float | None, best_by: str | None,
            within_sweep: bool) -> dict[str, Any]:
    rank_key = best_by or PRIMARY_KEY
    snap = snapshot(engine, scope)
    return memo.get((engine.url, "verdicts", scope, metric, rank_key, detect), snap.status_digest,
                    lambda: verdicts_of(_groups(engine, scope, metric, rank_key, within_sweep), metric,
                                        rank_key=rank_key, detect=detect))


def sweep_verdicts(engine: Engine, sweep_id: int, metric: str = PRIMARY_KEY, detect: float | None = None,
                   best_by: str | None = None) -> dict[str, Any]:
    """The verdicts of a sweep's configs (labels within the sweep); 404 for an unknown sweep. A
    raced sweep's verdicts on its race's metric are the race's (app.services.racing.raced_verdicts)."""
    sweep = get_sweep_row(engine, sweep_id)
    answer = _cached(engine, Scope(sweep_id), metric, detect, best_by, within_sweep=True)
    if isinstance(sweep.spec, dict) and sweep.spec.get("race"):
        from app.services.racing import raced_verdicts  # imports this module's neighbours: only for a race

        return raced_verdicts(engine, sweep, metric, answer)
    return answer


def config_verdicts(engine: Engine, config_ids: Sequence[int], metric: str = PRIMARY_KEY,
                    detect: float | None = None, best_by: str | None = None) -> dict[str, Any]:
    """The verdicts of any configs, possibly of different sweeps (labels name the sweep);
    404 naming the first unknown config."""
    scope = Scope(None, tuple(config_ids))
    config_rows(engine, scope)  # NotFound for an unknown id before anything is cached
    return _cached(engine, scope, metric, detect, best_by, within_sweep=False)
