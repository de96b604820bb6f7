"""statsmodels' Type II table of a design whose model columns are aliased (a setting nested in
another, a fractional design): there anova_lm's answer is its Wald test on the pseudo-inverse's
parameters, not a difference of sums of squares, so statsmodels itself answers, fitted on the
configs rather than on every replicate. pandas and statsmodels are imported only when it is asked."""

from __future__ import annotations

from dataclasses import dataclass

from app.services.importance_design import DesignSums, Term, term_key


@dataclass(frozen=True)
class Row:
    """One row of a Type II ANOVA table (anova_lm's columns sum_sq, df, F, PR(>F)); the residual's
    F and p are NaN, as anova_lm's."""

    sum_sq: float
    df: float
    F: float
    p: float


def anova_row(design: DesignSums, t: Term | None) -> str:
    """The row of statsmodels' table for term T (None: the residual), its columns named f0, f1, ..."""
    column = {p: f"f{i}" for i, p in enumerate(design.factors)}
    if t is None:
        return "Residual"
    if isinstance(t, str):
        return f"C({column[t]})"
    return f"C({column[t[0]]}):C({column[t[1]]})"


def anova_lm_on_configs(design: DesignSums) -> dict[str, Row]:
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
