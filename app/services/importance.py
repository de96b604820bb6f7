"""What matters in a sweep: an ANOVA of the configs' final values on the settings that vary across
them, with the seeds as the error term. This module is the answer (`importance_of`, and
`sweep_importance` from the database) and the design's Type II table (`Design`); the parts are
siblings: importance_cells (settings as levels, usable finals), importance_design (factors,
interactions, sums of squares), importance_anova_lm (statsmodels' table), importance_bootstrap,
importance_text (the words). Every name importers use is re-exported here.

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

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from app.metrics import PRIMARY_KEY
from app.numbers import finite_or_none
from app.services import stats
from app.services.charts import config_rows
from app.services.finals import finals_by_key
from app.services.importance_anova_lm import Row, anova_lm_on_configs, anova_row
from app.services.importance_bootstrap import BOOTSTRAP_SEED, RESAMPLES, bootstrap, bootstrap_cells
from app.services.importance_cells import NOT_SET, Cell, flatten, level, usable
from app.services.importance_design import DesignSums, Term, build_design, orthonormal_basis, term_key
from app.services.importance_text import METHOD, answer_text, empty_answer
from app.services.memo import memo
from app.services.snapshots import Scope, snapshot
from app.services.sweeps import get_sweep_row

__all__ = ["BOOTSTRAP_SEED", "CONFIDENCE", "METHOD", "NOT_SET", "RESAMPLES", "Cell", "Design", "Row", "Term",
           "anova_lm_on_configs", "anova_row", "bootstrap", "bootstrap_cells", "design_of", "flatten",
           "importance_of", "level", "sweep_importance", "term_key", "usable"]

CONFIDENCE = 0.95
_basis = orthonormal_basis  # the name tests/unit/test_importance_anova.py checks it by


class Design(DesignSums):
    """A sweep's ANOVA design (DesignSums) with its Type II table. The table is here, with the
    answer, because it picks between its own sums and statsmodels' `anova_lm_on_configs`, looked up
    in this module: tests replace it here to check that a grid never fits statsmodels."""

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


def design_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> Design | str:
    """The ANOVA design of CELLS, or why there is none (a sentence)."""
    return build_design(Design, cells, metric)


def importance_of(cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> dict[str, Any]:
    """The importance answer for CELLS (one per config): see the module's doc."""
    import numpy as np

    design = design_of(cells, metric)
    if isinstance(design, str):
        return empty_answer(metric, design)
    y = design.y
    sst = float(((y - y.mean()) ** 2).sum())
    if sst == 0:
        return empty_answer(metric, f"Every replicate has the same final {metric}: there is no variance to explain.",
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
        "text": answer_text(metric, out_factors, out_inter, residual)})


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
