"""What matters in a sweep: an ANOVA of the configs' final values on the settings that vary across
them, with the seeds as the error term.

Each varying setting (a grid axis; for an external sweep, a config key whose values differ, nested
keys as dotted paths) is a categorical factor, its values written as text (`[32, 64]`, `0.001`).
One observation per succeeded replicate's finite final value (app.services.finals). Type II sums
of squares from statsmodels (`ols` + `anova_lm(typ=2)`), with the two-way interaction of every
pair of factors whose every combination of values has replicates, as long as residual degrees of
freedom remain. η² is a term's sum of squares over the total sum of squares; its 95% CI is the
percentile interval of a bootstrap that resamples replicates within each config (a fixed seed, so
every call gives the same answer). `importance_of` is the pure core; statsmodels and numpy's
linear algebra are imported only when an importance is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from app.metrics import PRIMARY_KEY
from app.numbers import finite_or_none
from app.services import stats
from app.services.charts import config_rows
from app.services.finals import finals_by_key
from app.services.memo import memo
from app.services.snapshots import Scope, snapshot
from app.services.sweeps import get_sweep_row

if TYPE_CHECKING:
    import numpy as np

BOOTSTRAP_SEED = 20261201
RESAMPLES = 400
CONFIDENCE = 0.95
NOT_SET = "(not set)"


def level(value: Any) -> str:
    """A setting's value as a factor level: text as it is, anything else as JSON (`[32, 64]`)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(", ", ": "))


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted paths ({"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}); lists stay."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


@dataclass(frozen=True)
class Cell:
    """One config: its settings (path -> value) and its replicates' finals."""

    config_id: int
    settings: dict[str, Any]
    values: Sequence[float | None]


def _percent(share: float) -> str:
    pct = 100 * share
    return "<1%" if 0 < pct < 0.5 else f"{pct:.0f}%"


def _empty(metric: str, why: str, factors: list[str] | None = None) -> dict[str, Any]:
    return {"metric": metric, "factors": [], "interactions": [], "residual": {"eta_squared": None},
            "observations": 0, "varying": factors or [], "text": why, "method": METHOD}


METHOD = ("An ANOVA of each succeeded replicate's final value (the value at the last epoch it logged the metric;"
          " non-finite finals dropped) on the settings that vary across configs, each a categorical factor, with"
          " the two-way interaction of each pair of factors whose every combination has replicates (when residual"
          " degrees of freedom remain). Type II sums of squares (statsmodels ols and anova_lm, typ=2); F and p test"
          " each term against the residual, the variation between seeds of one config (plus any interaction the"
          " model leaves out). eta squared is a term's sum of squares over the total sum of squares; its 95%"
          f" interval is the percentile interval of {RESAMPLES} bootstrap resamples of the replicates within each"
          f" config, with a fixed seed ({BOOTSTRAP_SEED}), so every call gives the same answer.")


def _design(columns: list[np.ndarray], n: int) -> np.ndarray:
    import numpy as np

    return np.column_stack([np.ones(n), *columns]) if columns else np.ones((n, 1))


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of X's column space (rank-revealing: aliased columns add nothing)."""
    import numpy as np

    u, s, _ = np.linalg.svd(x, full_matrices=False)
    tol = s.max() * max(x.shape) * np.finfo(float).eps if s.size else 0.0
    return u[:, s > tol]


def _rss(basis: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The residual sum of squares of each column of YS on the column space of BASIS."""
    resid = ys - basis @ (basis.T @ ys)
    return (resid * resid).sum(axis=0)  # type: ignore[no-any-return]


def importance_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> dict[str, Any]:
    """The importance answer for CELLS (one per config): see the module's doc."""
    import numpy as np

    finals = [(c, stats.finite(c.values)) for c in cells]
    finals = [(c, xs) for c, xs in finals if xs]
    paths: dict[str, None] = {}
    for c, _ in finals:
        paths.update(dict.fromkeys(c.settings))
    levels = {p: [level(c.settings[p]) if p in c.settings else NOT_SET for c, _ in finals] for p in paths}
    varying = [p for p in paths if len(set(levels[p])) > 1]
    n_obs = sum(len(xs) for _, xs in finals)
    if not finals:
        return _empty(metric, f"No succeeded replicate has a final {metric} yet.")
    if not varying:
        return _empty(metric, f"No setting varies across the configs with a final {metric}, so there is nothing"
                              " to attribute its variance to.")
    # A setting that varies exactly with an earlier one (an external run's name and its width) is the
    # same factor: keep the first; its name says both.
    partitions: dict[tuple[int, ...], str] = {}
    names: dict[str, str] = {}
    for p in varying:
        first: dict[str, int] = {}
        key = tuple(first.setdefault(v, len(first)) for v in levels[p])
        if key in partitions:
            names[partitions[key]] += f" = {p}"
        else:
            partitions[key] = p
            names[p] = p
    factors = list(names)
    y = np.array([x for _, xs in finals for x in xs])
    per_obs = {p: [lv for lv, (_, xs) in zip(levels[p], finals, strict=True) for _ in xs] for p in factors}
    sst = float(((y - y.mean()) ** 2).sum())
    if sst == 0:
        return _empty(metric, f"Every replicate has the same final {metric}: there is no variance to explain.",
                      factors)
    pairs = [(a, b) for i, a in enumerate(factors) for b in factors[i + 1:]
             if len(set(zip(levels[a], levels[b], strict=True))) == len(set(levels[a])) * len(set(levels[b]))]

    def dummies(p: str) -> list[np.ndarray]:
        values = sorted(set(per_obs[p]))
        return [np.array([v == lv for v in per_obs[p]], dtype=float) for lv in values[1:]]

    main = {p: dummies(p) for p in factors}
    inter = {(a, b): [da * db for da in main[a] for db in main[b]] for a, b in pairs}

    def basis_of(mains: Sequence[str], pair_terms: Sequence[tuple[str, str]]) -> np.ndarray:
        cols = [col for p in mains for col in main[p]] + [col for ab in pair_terms for col in inter[ab]]
        return _basis(_design(cols, len(y)))

    full = basis_of(factors, pairs)
    if pairs and len(y) - full.shape[1] <= 0:
        pairs = []
        full = basis_of(factors, pairs)
    if len(y) - full.shape[1] <= 0:
        return _empty(metric, f"Too few replicates: {n_obs} finals of {metric} leave no residual degrees of freedom"
                              " for the seeds' variation (give configs a second seed).", factors)

    # Type II: a main effect is tested after the other main effects and the interactions without
    # it; an interaction after everything else.
    terms: list[tuple[str | tuple[str, str], np.ndarray, np.ndarray]] = []
    for p in factors:
        others = [ab for ab in pairs if p not in ab]
        rest = [q for q in factors if q != p]
        terms.append((p, basis_of(rest, others), basis_of(factors, others)))
    for ab in pairs:
        terms.append((ab, basis_of(factors, [q for q in pairs if q != ab]), full))

    # Bootstrap: replicates resampled within each config; the design stays as it is.
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ys = np.empty((len(y), RESAMPLES))
    start = 0
    for _, xs in finals:
        block = y[start:start + len(xs)]
        ys[start:start + len(xs)] = block[rng.integers(0, len(xs), size=(len(xs), RESAMPLES))]
        start += len(xs)
    sst_boot = ((ys - ys.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares_of = {name: (_rss(without, ys) - _rss(with_, ys)) / sst_boot for name, without, with_ in terms}
        residual_boot = _rss(full, ys) / sst_boot

    def interval(boot: np.ndarray) -> list[float | None]:
        ok = boot[np.isfinite(boot)]
        if ok.size == 0:
            return [None, None]
        lo, hi = np.percentile(np.clip(ok, 0.0, 1.0), [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return [float(lo), float(hi)]

    table = _anova_lm(y, factors, per_obs, pairs)

    def entry(row: str) -> dict[str, Any]:
        ss, f, p = table[row]
        return {"eta_squared": finite_or_none(ss / sst), "F": finite_or_none(f), "p": finite_or_none(p),
                "sum_sq": finite_or_none(ss)}

    column = {p: f"f{i}" for i, p in enumerate(factors)}
    out_factors = [{"name": names[p], **entry(f"C({column[p]})"), "ci": interval(shares_of[p]),
                    "levels": sorted(set(per_obs[p]))} for p in factors]
    out_inter = [{"names": [names[a], names[b]], **entry(f"C({column[a]}):C({column[b]})"),
                  "ci": interval(shares_of[(a, b)])} for a, b in pairs]
    resid_ss, _, _ = table["Residual"]
    saturated = full.shape[1] == len(finals)  # the model has one mean per config: its residual is seed noise
    residual = {"eta_squared": finite_or_none(resid_ss / sst), "ci": interval(residual_boot),
                "df": int(len(y) - full.shape[1]), "seeds_only": saturated}
    return {"metric": metric, "factors": out_factors, "interactions": out_inter, "residual": residual,
            "observations": len(y), "varying": varying, "method": METHOD,
            "text": _text(metric, out_factors, out_inter, residual)}


def _anova_lm(y: np.ndarray, factors: list[str], per_obs: dict[str, list[str]],
              pairs: list[tuple[str, str]]) -> dict[str, tuple[float, float, float]]:
    """statsmodels' Type II table: per row name (`C(f0)`, `C(f0):C(f1)`, `Residual`), SS, F and p.
    Columns are named f0, f1, ... so no setting's path can break the formula."""
    import warnings

    import pandas as pd
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    column = {p: f"f{i}" for i, p in enumerate(factors)}
    frame = pd.DataFrame({"y": y, **{column[p]: per_obs[p] for p in factors}})
    formula = "y ~ " + " + ".join([f"C({column[p]})" for p in factors]
                                  + [f"C({column[a]}):C({column[b]})" for a, b in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an aliased design: its NaN rows are answered as null
        result = anova_lm(ols(formula, data=frame).fit(), typ=2)
    return {str(name): (float(row["sum_sq"]), float(row["F"]), float(row["PR(>F)"]))
            for name, row in result.iterrows()}


def _text(metric: str, factors: list[dict[str, Any]], inter: list[dict[str, Any]], residual: dict[str, Any]) -> str:
    parts: list[str] = []
    for f in factors:
        if f["eta_squared"] is not None:
            share = _percent(f["eta_squared"])
            parts.append(f"{f['name']} {share}" if parts else
                         f"{f['name']} explains {share} of the variance of final {metric}")
    for i in inter:
        if i["eta_squared"] is not None:
            a, b = i["names"]
            together = "their interaction" if len(factors) == 2 else f"the interaction of {a} and {b}"
            parts.append(f"{together} {_percent(i['eta_squared'])}")
    if residual["eta_squared"] is not None:
        seeds = "seeds" if residual["seeds_only"] else "seeds and what the model leaves out"
        parts.append(f"{seeds} {_percent(residual['eta_squared'])}")
    return (", ".join(parts) if parts else f"No share of the variance of final {metric} could be computed") + "."


# ---- from the database ----------------------------------------------------------------------

def _compute(engine: Engine, sweep_id: int, metric: str) -> dict[str, Any]:
    scope = Scope(sweep_id)
    configs = config_rows(engine, scope)
    finals = finals_by_key(engine, scope, [metric])[metric]
    cells = [Cell(c["id"], flatten(c["params"] or {}), [v for _, _, v in finals.get(c["id"], [])]) for c in configs]
    return importance_of(cells, metric)


def sweep_importance(engine: Engine, sweep_id: int, metric: str = PRIMARY_KEY) -> dict[str, Any]:
    """The importance of a sweep's varying settings for final METRIC; 404 for an unknown sweep.
    Cached while the sweep's run statuses hold, so the bootstrap runs once per change."""
    get_sweep_row(engine, sweep_id)
    snap = snapshot(engine, Scope(sweep_id))
    return memo.get((engine.url, "importance", sweep_id, metric), snap.status_digest,
                    lambda: _compute(engine, sweep_id, metric))


