"""The importance's words: the methods sentence every answer carries, the one-line summary of the
shares of variance, and the empty answer with the reason there is no ANOVA. Pure."""

from __future__ import annotations

from typing import Any

from app.services.importance_bootstrap import BOOTSTRAP_SEED, RESAMPLES

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


def percent(share: float) -> str:
    pct = 100 * share
    return "<1%" if 0 < pct < 0.5 else f"{pct:.0f}%"


def empty_answer(metric: str, why: str, factors: list[str] | None = None) -> dict[str, Any]:
    """The answer when there is nothing to attribute variance to: no terms, WHY as its text."""
    return {"metric": metric, "factors": [], "interactions": [], "residual": {"eta_squared": None},
            "observations": 0, "varying": factors or [], "text": why, "method": METHOD}


def answer_text(metric: str, factors: list[dict[str, Any]], inter: list[dict[str, Any]],
                residual: dict[str, Any]) -> str:
    """The shares in one sentence: 'width explains 62% of the variance of final ..., seeds 3%.'"""
    parts: list[str] = []
    for f in factors:
        if f["eta_squared"] is not None:
            share = percent(f["eta_squared"])
            parts.append(f"{f['name']} {share}" if parts else
                         f"{f['name']} explains {share} of the variance of final {metric}")
    for i in inter:
        if i["eta_squared"] is not None:
            a, b = i["names"]
            together = "their interaction" if len(factors) == 2 else f"the interaction of {a} and {b}"
            parts.append(f"{together} {percent(i['eta_squared'])}")
    if residual["eta_squared"] is not None:
        seeds = "seeds" if residual["seeds_only"] else "seeds and what the model leaves out"
        parts.append(f"{seeds} {percent(residual['eta_squared'])}")
    return (", ".join(parts) if parts else f"No share of the variance of final {metric} could be computed") + "."
