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

import itertools
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
          " finals that are not real numbers or beyond 1e50 in size dropped) on the settings that vary across"
          " configs, each a categorical factor, with"
          " the two-way interaction of each pair of factors whose every combination has replicates (when residual"
          " degrees of freedom remain). Type II sums of squares (statsmodels ols and anova_lm, typ=2); F and p test"
          " each term against the residual, the variation between seeds of one config (plus any interaction the"
          " model leaves out). eta squared is a term's sum of squares over the total sum of squares; its 95%"
          f" interval is the percentile interval of {RESAMPLES} bootstrap resamples of the replicates within each"
          f" config, with a fixed seed ({BOOTSTRAP_SEED}), so every call gives the same answer.")


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of X's column space (rank-revealing: aliased columns add nothing)."""
    import numpy as np

    u, s, _ = np.linalg.svd(x, full_matrices=False)
    tol = s.max() * max(x.shape) * np.finfo(float).eps if s.size else 0.0
    return u[:, s > tol]


Term = str | tuple[str, str]  # a factor's path, or a pair of them (their interaction)


@dataclass
class Design:
    """A sweep's ANOVA design, one row per config: every model column is constant within a config,
    so each fit is a weighted least squares of the config means (weights: replicates), plus the
    within-config sum of squares, which every model leaves as residual."""

    finals: list[tuple[Cell, list[float]]]  # configs with finite finals, and those finals
    factors: list[str]  # the paths used as factors (aliases merged into the first: `names`)
    names: dict[str, str]
    levels: dict[str, list[str]]  # per factor, each config's level
    pairs: list[tuple[str, str]]  # the interactions in the model
    varying: list[str]  # every path that varies, aliases included
    bases: dict[str, np.ndarray]  # "full" and, per term, "without:<term>" / "with:<term>" (weighted)

    @property
    def y(self) -> np.ndarray:
        import numpy as np

        return np.array([x for _, xs in self.finals for x in xs])

    @property
    def df_resid(self) -> int:
        return int(sum(len(xs) for _, xs in self.finals) - self.bases["full"].shape[1])

    def terms(self) -> list[Term]:
        return [*self.factors, *self.pairs]

    def sums_of_squares(self, ys: np.ndarray) -> dict[str, np.ndarray]:
        """For each column of YS (observations in `finals` order): each term's Type II sum of squares
        (key: its path, or "a:b"), the residual's and the total ("Residual", "Total")."""
        import numpy as np

        sizes = [len(xs) for _, xs in self.finals]
        spans = list(itertools.pairwise(np.cumsum([0, *sizes])))
        means = np.stack([ys[a:b].mean(axis=0) for a, b in spans])
        within = sum(((ys[a:b] - means[i]) ** 2).sum(axis=0) for i, (a, b) in enumerate(spans))
        root = np.sqrt(np.array(sizes, dtype=float))[:, None]
        weighted = means * root

        def between_rss(basis: np.ndarray) -> np.ndarray:
            resid = weighted - basis @ (basis.T @ weighted)
            return (resid * resid).sum(axis=0)  # type: ignore[no-any-return]

        grand = ys.mean(axis=0)
        out = {"Total": ((ys - grand) ** 2).sum(axis=0), "Residual": within + between_rss(self.bases["full"])}
        for t in self.terms():
            k = term_key(t)
            out[k] = between_rss(self.bases[f"without:{k}"]) - between_rss(self.bases[f"with:{k}"])
        return out


def term_key(t: Term) -> str:
    return t if isinstance(t, str) else f"{t[0]}:{t[1]}"


def design_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> Design | str:
    """The ANOVA design of CELLS, or why there is none (a sentence)."""
    import numpy as np

    finals = [(c, stats.usable(c.values)) for c in cells]
    finals = [(c, xs) for c, xs in finals if xs]
    if not finals:
        return f"No succeeded replicate has a final {metric} yet."
    paths: dict[str, None] = {}
    for c, _ in finals:
        paths.update(dict.fromkeys(c.settings))
    levels = {p: [level(c.settings[p]) if p in c.settings else NOT_SET for c, _ in finals] for p in paths}
    varying = [p for p in paths if len(set(levels[p])) > 1]
    if not varying:
        return f"No setting varies across the configs with a final {metric}, so there is nothing to attribute" \
               " its variance to."
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
    pairs = [(a, b) for i, a in enumerate(factors) for b in factors[i + 1:]
             if len(set(zip(levels[a], levels[b], strict=True))) == len(set(levels[a])) * len(set(levels[b]))]
    root = np.sqrt(np.array([len(xs) for _, xs in finals], dtype=float))

    def dummies(p: str) -> list[np.ndarray]:
        return [np.array([v == lv for v in levels[p]], dtype=float) for lv in sorted(set(levels[p]))[1:]]

    main = {p: dummies(p) for p in factors}
    inter = {(a, b): [da * db for da in main[a] for db in main[b]] for a, b in pairs}

    def basis_of(mains: Sequence[str], pair_terms: Sequence[tuple[str, str]]) -> np.ndarray:
        cols = [np.ones(len(finals)), *(c for p in mains for c in main[p]),
                *(c for ab in pair_terms for c in inter[ab])]
        return _basis(np.column_stack(cols) * root[:, None])

    n_obs = sum(len(xs) for _, xs in finals)
    full = basis_of(factors, pairs)
    if pairs and n_obs - full.shape[1] <= 0:
        pairs = []
        full = basis_of(factors, pairs)
    if n_obs - full.shape[1] <= 0:
        return f"Too few replicates: {n_obs} finals of {metric} leave no residual degrees of freedom for the" \
               " seeds' variation (give configs a second seed)."
    # Type II: a main effect is tested after the other main effects and the interactions without
    # it; an interaction after everything else.
    bases = {"full": full}
    for p in factors:
        others = [ab for ab in pairs if p not in ab]
        bases[f"without:{p}"] = basis_of([q for q in factors if q != p], others)
        bases[f"with:{p}"] = basis_of(factors, others)
    for ab in pairs:
        bases[f"without:{term_key(ab)}"] = basis_of(factors, [q for q in pairs if q != ab])
        bases[f"with:{term_key(ab)}"] = full
    return Design(finals, factors, names, {p: levels[p] for p in factors}, pairs, varying, bases)


def bootstrap(design: Design, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """RESAMPLES columns of observations, each config's replicates drawn with replacement from its
    own (a generator with a fixed SEED: the same columns every call)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = [np.asarray(xs)[rng.integers(0, len(xs), size=(len(xs), resamples))] for _, xs in design.finals]
    return np.concatenate(blocks, axis=0)


def importance_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> dict[str, Any]:
    """The importance answer for CELLS (one per config): see the module's doc."""
    import numpy as np

    design = design_of(cells, metric)
    if isinstance(design, str):
        return _empty(metric, design)
    y = design.y
    sst = float(((y - y.mean()) ** 2).sum())
    if sst == 0:
        return _empty(metric, f"Every replicate has the same final {metric}: there is no variance to explain.",
                      design.varying)
    boot = design.sums_of_squares(bootstrap(design))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = {k: v / boot["Total"] for k, v in boot.items() if k != "Total"}

    def interval(k: str) -> list[float | None]:
        ok = shares[k][np.isfinite(shares[k])]
        if ok.size == 0:
            return [None, None]
        lo, hi = np.percentile(np.clip(ok, 0.0, 1.0), [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return [float(lo), float(hi)]

    table = _anova_lm(y, design)

    def entry(t: Term | None) -> dict[str, Any]:
        ss, f, p = table[anova_row(design, t)]
        return {"eta_squared": finite_or_none(ss / sst), "F": finite_or_none(f), "p": finite_or_none(p),
                "sum_sq": finite_or_none(ss)}

    names = design.names
    out_factors = [{"name": names[p], **entry(p), "ci": interval(p), "levels": sorted(set(design.levels[p]))}
                   for p in design.factors]
    out_inter = [{"names": [names[a], names[b]], **entry((a, b)), "ci": interval(term_key((a, b)))}
                 for a, b in design.pairs]
    saturated = design.bases["full"].shape[1] == len(design.finals)  # one mean per config: residual = seeds
    residual = {**{k: v for k, v in entry(None).items() if k in ("eta_squared", "sum_sq")},
                "ci": interval("Residual"), "df": design.df_resid, "seeds_only": saturated}
    return stats.finite_tree({  # type: ignore[no-any-return]
        "metric": metric, "factors": out_factors, "interactions": out_inter, "residual": residual,
        "observations": len(y), "varying": design.varying, "method": METHOD,
        "text": _text(metric, out_factors, out_inter, residual)})


def anova_row(design: Design, t: Term | None) -> str:
    """The row of statsmodels' table for term T (None: the residual)."""
    column = {p: f"f{i}" for i, p in enumerate(design.factors)}
    if t is None:
        return "Residual"
    if isinstance(t, str):
        return f"C({column[t]})"
    return f"C({column[t[0]]}):C({column[t[1]]})"


def _anova_lm(y: np.ndarray, design: Design) -> dict[str, tuple[float, float, float]]:
    """statsmodels' Type II table: per row name (`C(f0)`, `C(f0):C(f1)`, `Residual`), SS, F and p.
    Columns are named f0, f1, ... so no setting's path can break the formula."""
    import warnings

    import pandas as pd
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    sizes = [len(xs) for _, xs in design.finals]
    columns = {f"f{i}": [lv for lv, n in zip(design.levels[p], sizes, strict=True) for _ in range(n)]
               for i, p in enumerate(design.factors)}
    frame = pd.DataFrame({"y": y, **columns})
    formula = "y ~ " + " + ".join(anova_row(design, t) for t in design.terms())
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


