"""What matters in a sweep: an ANOVA of the configs' final values on the settings that vary across
them, with the seeds as the error term.

Each varying setting (a grid axis; for an external sweep, a config key whose values differ, nested
keys as dotted paths) is a categorical factor, its values written as text (`[32, 64]`, `0.001`).
One observation per succeeded replicate's finite final value (app.services.finals). The model: the
factors' main effects and the two-way interaction of every pair of factors whose every combination
of values has replicates, as long as residual degrees of freedom remain. A Type II ANOVA table (sum
of squares, df, F, p) as statsmodels' `ols` + `anova_lm(typ=2)` computes it; checked equal in tests
(tests/unit/test_importance_anova.py: anova_lm on every replicate, balanced, unbalanced, aliased,
saturated designs, single replicates).

Every term is constant within a config, so the table depends on each config's count, mean and
within-config sum of squares only: a fit is a weighted least squares of the config means (weights:
replicates), and the residual is the within-config sum of squares plus the lack of fit between
configs. When the model's columns are independent (a grid, a full factorial, most external sweeps)
the table is computed here (`Design.anova`: sums of squares from orthonormal bases, df from their
ranks, F, p from scipy's F distribution), milliseconds at 10,000 runs where anova_lm on the runs
took 0.3-1 s. When they are aliased (a setting nested in another, a fractional design),
anova_lm's answer is its Wald test on the pseudo-inverse's parameters, not a difference of sums of
squares, so statsmodels itself answers, on the configs (`anova_lm_on_configs`: two rows per config
carrying its mean and within-config sum of squares, the residual df of the runs). A residual that
is rounding (replicates agreeing exactly, the model fitting the means) leaves F and p null:
anova_lm's would be a ratio of rounding errors.

η² is a term's sum of squares over the total sum of squares; its 95% CI is the percentile interval
of a bootstrap that resamples replicates within each config (a fixed seed, so every call gives the
same answer). `importance_of` is the pure core; numpy, scipy and statsmodels are imported only when
an importance is asked for.
"""

from __future__ import annotations

import itertools
import json
import math
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
          " degrees of freedom remain). Type II ANOVA: sums of squares, F and p as statsmodels' ols and anova_lm"
          " (typ=2) compute them, from each config's count, mean and within-config sum of squares (every term"
          " is constant within a config; checked equal in tests); F and p test each term against the residual,"
          " the variation between seeds of one config (plus any interaction the model leaves out). eta squared"
          " is a term's sum of squares over the total sum of squares; its 95%"
          f" interval is the percentile interval of {RESAMPLES} bootstrap resamples of the replicates within each"
          f" config, with a fixed seed ({BOOTSTRAP_SEED}), so every call gives the same answer.")


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of X's column space, rank-revealing: a column whose part orthogonal to
    the columns before it is rounding (below max(shape) x eps x X's Frobenius norm, at least the
    tolerance numpy's matrix_rank puts on singular values) adds nothing. Gram-Schmidt, orthogonalised
    twice (as good as a QR to rounding): an SVD's LAPACK call on a configs x columns matrix took 10-20
    ms in OpenBLAS's threads on a loaded 2-core machine, this 1 ms."""
    import numpy as np

    tol = max(x.shape) * np.finfo(float).eps * float(np.sqrt((x * x).sum()))
    q = np.empty((x.shape[1], x.shape[0]))  # the basis, as rows
    rank = 0
    for col in x.T:
        v = col - (q[:rank] @ col) @ q[:rank]
        v -= (q[:rank] @ v) @ q[:rank]
        norm = float(np.sqrt(v @ v))
        if norm > tol:
            q[rank] = v / norm
            rank += 1
    return q[:rank].T


Term = str | tuple[str, str]  # a factor's path, or a pair of them (their interaction)


@dataclass(frozen=True)
class Row:
    """One row of a Type II ANOVA table (anova_lm's columns sum_sq, df, F, PR(>F)); the residual's
    F and p are NaN, as anova_lm's."""

    sum_sq: float
    df: float
    F: float
    p: float


@dataclass
class Design:
    """A sweep's ANOVA design, one row per config: every model column is constant within a config,
    so each fit is a weighted least squares of the config means (weights: replicates), plus the
    within-config sum of squares, which every model leaves as residual."""

    finals: list[tuple[Cell, np.ndarray]]  # configs with usable finals, and those finals
    factors: list[str]  # the paths used as factors (aliases merged into the first: `names`)
    names: dict[str, str]
    levels: dict[str, list[str]]  # per factor, each config's level
    pairs: list[tuple[str, str]]  # the interactions in the model
    varying: list[str]  # every path that varies, aliases included
    bases: dict[str, np.ndarray]  # "full" and, per term, "without:<term>" / "with:<term>" (weighted)
    columns: int  # the model's columns as anova_lm's design has them (intercept, treatment dummies)

    @property
    def y(self) -> np.ndarray:
        import numpy as np

        return np.concatenate([xs for _, xs in self.finals])

    @property
    def sizes(self) -> np.ndarray:
        import numpy as np

        return np.array([len(xs) for _, xs in self.finals], dtype=float)

    @property
    def df_resid(self) -> int:
        return int(sum(len(xs) for _, xs in self.finals) - self.bases["full"].shape[1])

    @property
    def aliased(self) -> bool:
        """Whether some model column is a combination of others (anova_lm's design is rank-deficient)."""
        return bool(self.bases["full"].shape[1] < self.columns)

    def terms(self) -> list[Term]:
        return [*self.factors, *self.pairs]

    def sums_of_squares(self, ys: np.ndarray) -> dict[str, np.ndarray]:
        """For each column of YS (observations in `finals` order): each term's Type II sum of squares
        (key: its path, or "a:b"), the residual's and the total ("Residual", "Total")."""
        import numpy as np

        spans = list(itertools.pairwise(np.cumsum([0, *(len(xs) for _, xs in self.finals)])))
        means = np.stack([ys[a:b].mean(axis=0) for a, b in spans])
        within = sum(((ys[a:b] - means[i]) ** 2).sum(axis=0) for i, (a, b) in enumerate(spans))
        return self.sums_of_squares_of(means, np.asarray(within))

    def sums_of_squares_of(self, means: np.ndarray, within: np.ndarray) -> dict[str, np.ndarray]:
        """`sums_of_squares` from each config's means (one row per config, one column per set of
        observations) and the within-config sums of squares summed over configs (one per column)."""
        sizes = self.sizes
        grand = sizes @ means / sizes.sum()
        # Deviations from the grand mean, weighted: the intercept is in every basis, so the
        # residuals are those of the means themselves, with less rounding.
        weighted = (means - grand) * sizes[:, None] ** 0.5

        def between_rss(basis: np.ndarray) -> np.ndarray:
            resid = weighted - basis @ (basis.T @ weighted)
            return (resid * resid).sum(axis=0)  # type: ignore[no-any-return]

        out = {"Total": within + (weighted * weighted).sum(axis=0),
               "Residual": within + between_rss(self.bases["full"])}
        for t in self.terms():
            k = term_key(t)
            out[k] = between_rss(self.bases[f"without:{k}"]) - between_rss(self.bases[f"with:{k}"])
        return out

    def df(self, t: Term) -> int:
        """Term T's degrees of freedom: the rank it adds to the model without it."""
        k = term_key(t)
        return int(self.bases[f"with:{k}"].shape[1] - self.bases[f"without:{k}"].shape[1])

    def anova(self) -> dict[str, Row]:
        """The Type II table of the finals, per term key and "Residual", as anova_lm(typ=2) answers it:
        computed here when the model's columns are independent, by anova_lm on the configs when not.
        When the residual is rounding (every config's replicates agree and the model fits the means),
        F is a ratio of rounding errors (anova_lm's: 1e29 or 0.3, as its pseudo-inverse rounds): F
        and p are NaN, as anova_lm's are when its residual is exactly 0."""
        import numpy as np

        table = anova_lm_on_configs(self) if self.aliased else self._anova()
        y = self.y
        if table["Residual"].sum_sq <= len(y) * (64 * np.finfo(float).eps * float(np.abs(y).max())) ** 2:
            table = {k: Row(row.sum_sq, row.df, math.nan, math.nan) for k, row in table.items()}
        return table

    def _anova(self) -> dict[str, Row]:
        import numpy as np
        from scipy import stats as scipy_stats

        sums = self.sums_of_squares(self.y[:, None])
        resid, df_resid = float(sums["Residual"][0]), self.df_resid
        table = {"Residual": Row(resid, df_resid, math.nan, math.nan)}
        for t in self.terms():
            ss, df = float(sums[term_key(t)][0]), self.df(t)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = float(np.float64(ss / df) / np.float64(resid / df_resid))
            table[term_key(t)] = Row(ss, df, f, float(scipy_stats.f.sf(f, df, df_resid)))
        return table


def term_key(t: Term) -> str:
    return t if isinstance(t, str) else f"{t[0]}:{t[1]}"


def design_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> Design | str:
    """The ANOVA design of CELLS, or why there is none (a sentence)."""
    import numpy as np

    finals = [(c, usable(c.values)) for c in cells]
    finals = [(c, xs) for c, xs in finals if xs.size]
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

    known: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], np.ndarray] = {}

    def basis_of(mains: Sequence[str], pair_terms: Sequence[tuple[str, str]]) -> np.ndarray:
        key = (tuple(mains), tuple(pair_terms))  # with:a is often without:a:b, or with:b
        if key not in known:
            cols = [np.ones(len(finals)), *(c for p in mains for c in main[p]),
                    *(c for ab in pair_terms for c in inter[ab])]
            known[key] = _basis(np.column_stack(cols) * root[:, None])
        return known[key]

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
    columns = 1 + sum(len(main[p]) for p in factors) + sum(len(inter[ab]) for ab in pairs)
    return Design(finals, factors, names, {p: levels[p] for p in factors}, pairs, varying, bases, columns)


def bootstrap(design: Design, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """RESAMPLES columns of observations, each config's replicates drawn with replacement from its
    own (a generator with a fixed SEED: the same columns every call)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = [np.asarray(xs)[rng.integers(0, len(xs), size=(len(xs), resamples))] for _, xs in design.finals]
    return np.concatenate(blocks, axis=0)


def bootstrap_cells(design: Design, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """`bootstrap`'s resamples (the same draws) as `Design.sums_of_squares_of` takes them: each
    config's mean per resample (configs x RESAMPLES) and the within-config sums of squares, one
    config's block at a time (never all the observations at once). The block holds deviations from
    the config's own mean, so sum of squares less square of sum over n loses nothing to cancellation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.empty((len(design.finals), resamples))
    within = np.zeros(resamples)
    for i, (_, xs) in enumerate(design.finals):
        n, centre = len(xs), xs.mean()
        block = np.take(xs - centre, rng.integers(0, n, size=(n, resamples)))
        sums = block.sum(axis=0)
        means[i] = centre + sums / n
        within += np.maximum(np.einsum("ij,ij->j", block, block) - sums * sums / n, 0.0)
    return means, within


def usable(values: Sequence[float | None]) -> np.ndarray:
    """stats.usable's values (real numbers no larger than stats.LARGEST_FINAL in size) as an array,
    without a Python call per value (10,000 finals: 10 ms less)."""
    import numpy as np

    xs = np.array(values, dtype=float)  # None is NaN
    with np.errstate(invalid="ignore"):
        return xs[np.isfinite(xs) & (np.abs(xs) <= stats.LARGEST_FINAL)]  # type: ignore[no-any-return]


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
    boot = design.sums_of_squares_of(*bootstrap_cells(design))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = {k: v / boot["Total"] for k, v in boot.items() if k != "Total"}

    def interval(k: str) -> list[float | None]:
        ok = shares[k][np.isfinite(shares[k])]
        if ok.size == 0:
            return [None, None]
        lo, hi = np.percentile(np.clip(ok, 0.0, 1.0), [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return [float(lo), float(hi)]

    table = design.anova()

    def entry(k: str) -> dict[str, Any]:
        row = table[k]
        return {"eta_squared": finite_or_none(row.sum_sq / sst), "F": finite_or_none(row.F),
                "p": finite_or_none(row.p), "sum_sq": finite_or_none(row.sum_sq)}

    names = design.names
    out_factors = [{"name": names[p], **entry(p), "ci": interval(p), "levels": sorted(set(design.levels[p]))}
                   for p in design.factors]
    out_inter = [{"names": [names[a], names[b]], **entry(term_key((a, b))), "ci": interval(term_key((a, b)))}
                 for a, b in design.pairs]
    saturated = design.bases["full"].shape[1] == len(design.finals)  # one mean per config: residual = seeds
    residual = {**{k: v for k, v in entry("Residual").items() if k in ("eta_squared", "sum_sq")},
                "ci": interval("Residual"), "df": design.df_resid, "seeds_only": saturated}
    return stats.finite_tree({  # type: ignore[no-any-return]
        "metric": metric, "factors": out_factors, "interactions": out_inter, "residual": residual,
        "observations": len(y), "varying": design.varying, "method": METHOD,
        "text": _text(metric, out_factors, out_inter, residual)})


def anova_row(design: Design, t: Term | None) -> str:
    """The row of statsmodels' table for term T (None: the residual), its columns named f0, f1, ..."""
    column = {p: f"f{i}" for i, p in enumerate(design.factors)}
    if t is None:
        return "Residual"
    if isinstance(t, str):
        return f"C({column[t]})"
    return f"C({column[t[0]]}):C({column[t[1]]})"


def anova_lm_on_configs(design: Design) -> dict[str, Row]:
    """statsmodels' Type II table of the finals (`ols` + `anova_lm(typ=2)`), fitted on two rows per
    config instead of one per replicate: a config of n replicates, mean m and within-config sum of
    squares w is the rows m ± sqrt(w / n), each of weight n / 2 (a weighted least squares: the same
    normal equations, the same singular values, the same residual sum of squares), with the residual
    df of the replicates (their count less the design's rank). Per term key and "Residual"."""
    import warnings

    import numpy as np
    import pandas as pd
    from statsmodels.formula.api import wls
    from statsmodels.stats.anova import anova_lm

    values = [xs for _, xs in design.finals]
    means = np.array([x.mean() for x in values])
    spread = np.sqrt([((x - x.mean()) ** 2).sum() / len(x) for x in values])
    sizes = design.sizes
    frame = pd.DataFrame({"y": np.concatenate([means + spread, means - spread]),
                          **{f"f{i}": design.levels[p] * 2 for i, p in enumerate(design.factors)}})
    formula = "y ~ " + " + ".join(anova_row(design, t) for t in design.terms())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient: anova_lm answers what it can, NaN where not
        model = wls(formula, data=frame, weights=np.concatenate([sizes, sizes]) / 2)
        model.fit()  # its rank
        model.df_resid = sizes.sum() - model.rank
        result = anova_lm(model.fit(), typ=2)
    keys = {anova_row(design, t): term_key(t) for t in design.terms()} | {"Residual": "Residual"}
    return {keys[str(name)]: Row(float(row["sum_sq"]), float(row["df"]), float(row["F"]), float(row["PR(>F)"]))
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


