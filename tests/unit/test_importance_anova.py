"""The importance's Type II table (app.services.importance: Design.anova, from each config's count,
mean and within-config sum of squares) against statsmodels' ols + anova_lm(typ=2) on every
replicate, computed here: balanced, unbalanced, with interactions, a missing cell, three factors,
one factor, single replicates, saturated, aliased (nested, fractional, disconnected) designs; the
bootstrap's per-config sums against the observations' resamples; the basis and the usable finals
against numpy's SVD and stats.usable."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm

from app.services import importance, stats
from app.services.importance import (
    Cell,
    Design,
    _basis,
    anova_lm_on_configs,
    bootstrap,
    bootstrap_cells,
    design_of,
    importance_of,
    level,
    term_key,
    usable,
)

Spec = list[tuple[dict[str, Any], int]]  # per config: its settings and its replicates


def grid(sizes: list[int], **axes: list[Any]) -> Spec:
    combos: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        combos = [{**c, name: v} for c in combos for v in values]
    return [(c, sizes[i % len(sizes)]) for i, c in enumerate(combos)]


DESIGNS: dict[str, Spec] = {
    "balanced-2x2": grid([5], opt=["adam", "sgd"], lr=[0.001, 0.01]),
    "unbalanced-3x2": grid([3, 6, 4, 8, 2, 5], opt=["adam", "sgd", "rmsprop"], lr=[0.001, 0.01]),
    "missing-cell": [s for s in grid([4, 3], a=[0, 1, 2], b=["x", "y", "z"]) if s[0] != {"a": 2, "b": "z"}],
    "three-factors": grid([2, 3, 4], a=[0, 1, 2], b=[0, 1], c=["p", "q"]),
    "one-factor": grid([3, 7, 5], optimizer=["adam", "sgd", "rmsprop"]),
    "single-replicates": [({"a": a, "b": b}, n) for (a, b), n in
                          zip([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)], [1, 1, 3, 2, 1, 4], strict=True)],
    "saturated-one-factor": grid([1, 1, 1, 2], w=[1, 2, 3, 4]),
    "wide-5x10": grid([2, 3, 1, 4], h=[[8], [16], [32], [64], [128]], b=list(range(10))),
    "aliased-nested": [({"a": a, "b": a // 2}, 3) for a in range(4)],
    "aliased-nested-three": [({"a": a, "b": a // 2, "c": a % 3}, 2 + a % 2) for a in range(6)],
    "aliased-fractional": [({"a": a, "b": b, "c": a ^ b}, 3) for a in range(2) for b in range(2)],
    "aliased-disconnected": [({"a": a, "b": b}, 3) for a, b in [(1, "x"), (2, "x"), (3, "y"), (4, "y"), (3, "z")]],
}


def cells_of(spec: Spec, seed: int, noise: float = 0.02) -> list[Cell]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (settings, n) in enumerate(spec):
        effect = sum(0.03 * ((sum(map(ord, level(v))) + j) % 5) for j, v in enumerate(settings.values()))
        out.append(Cell(i, settings, (0.8 + effect + noise * rng.standard_normal(n)).tolist()))
    return out


def quoted(design: Design, t: importance.Term | None) -> str:
    """anova_lm's row name of term T for a formula with the settings' own (quoted) names."""
    if t is None:
        return "Residual"
    if isinstance(t, str):
        return f'C(Q("{t}"))'
    return f"{quoted(design, t[0])}:{quoted(design, t[1])}"


def reference(cells: list[Cell], design: Design) -> tuple[pd.DataFrame, Any]:
    """anova_lm typ=2 fitted on every replicate (the way importance answered before it used configs)."""
    rows = [{**{p: level(c.settings[p]) for p in design.factors}, "y": x}
            for c in cells for x in c.values if x is not None and math.isfinite(x)]
    formula = "y ~ " + " + ".join(quoted(design, t) for t in design.terms())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ols(formula, data=pd.DataFrame(rows)).fit()
        return anova_lm(fit, typ=2), fit


def assert_tables_equal(mine: dict[str, importance.Row], ref: pd.DataFrame, design: Design, sst: float) -> None:
    """Equal to 1e-9 relative; a term anova_lm finds worth nothing (a sum of squares below 1e-12 of
    the total: aliased away) is rounding both ways, so it is checked as nothing: |SS|, |F| tiny, p ~ 1."""
    assert set(mine) == {term_key(t) for t in design.terms()} | {"Residual"}
    for t in [*design.terms(), None]:
        got, want = mine["Residual" if t is None else term_key(t)], ref.loc[quoted(design, t)]
        assert got.df == want["df"]
        if t is None:
            assert got.sum_sq == pytest.approx(want["sum_sq"], rel=1e-9)
            assert math.isnan(got.F) and math.isnan(got.p) and math.isnan(want["F"]) and math.isnan(want["PR(>F)"])
        elif abs(want["sum_sq"]) <= 1e-12 * sst:
            assert abs(got.sum_sq) <= 1e-12 * sst and abs(got.F) <= 1e-9 and got.p > 0.999 and want["PR(>F)"] > 0.999
        else:
            assert got.sum_sq == pytest.approx(want["sum_sq"], rel=1e-9)
            assert got.F == pytest.approx(want["F"], rel=1e-9)
            assert got.p == pytest.approx(want["PR(>F)"], rel=1e-9)


@pytest.mark.parametrize("name", list(DESIGNS))
@pytest.mark.parametrize("seed", [1, 2])
def test_the_table_is_anova_lm_on_every_replicate(name: str, seed: int) -> None:
    cells = cells_of(DESIGNS[name], seed)
    design = design_of(cells)
    assert isinstance(design, Design)
    ref, fit = reference(cells, design)
    assert design.aliased == name.startswith("aliased")
    assert design.aliased == (fit.model.rank < fit.model.exog.shape[1])  # the path taken: anova_lm's rank
    assert design.columns == fit.model.exog.shape[1] and design.df_resid == fit.df_resid
    y = design.y
    assert_tables_equal(design.anova(), ref, design, float(((y - y.mean()) ** 2).sum()))
    got = importance_of(cells)
    sst = float(((y - y.mean()) ** 2).sum())
    for f in got["factors"]:
        want = ref.loc[quoted(design, f["name"])]
        if abs(want["sum_sq"]) > 1e-12 * sst:
            assert f["sum_sq"] == pytest.approx(want["sum_sq"], rel=1e-9)
            assert f["eta_squared"] == pytest.approx(want["sum_sq"] / sst, rel=1e-9)
            assert f["F"] == pytest.approx(want["F"], rel=1e-9) and f["p"] == pytest.approx(want["PR(>F)"], rel=1e-9)
    assert got["residual"]["sum_sq"] == pytest.approx(ref.loc["Residual", "sum_sq"], rel=1e-9)
    assert got["residual"]["df"] == ref.loc["Residual", "df"]


@pytest.mark.parametrize("name", [n for n in DESIGNS if not n.startswith("aliased")])
def test_statsmodels_on_the_configs_is_the_table_computed_here(name: str) -> None:
    """The two paths agree where both apply: two rows per config carry everything anova_lm reads."""
    design = design_of(cells_of(DESIGNS[name], 3))
    assert isinstance(design, Design) and not design.aliased
    here, there = design.anova(), anova_lm_on_configs(design)
    assert set(here) == set(there)
    for k, row in here.items():
        other = there[k]
        assert row.df == other.df and row.sum_sq == pytest.approx(other.sum_sq, rel=1e-9)
        if k != "Residual":
            assert row.F == pytest.approx(other.F, rel=1e-9) and row.p == pytest.approx(other.p, rel=1e-9)


def test_a_grid_never_fits_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 replicates in 50 configs: the answer comes from the configs' sums, no model is fitted."""
    def refuse(design: Design) -> None:
        raise AssertionError("statsmodels fitted")

    monkeypatch.setattr(importance, "anova_lm_on_configs", refuse)
    rng = np.random.default_rng(4)
    spec = grid([200], h=[[8], [16], [32], [64], [128]], b=list(range(10)))
    cells = [Cell(i, s, (0.9 + 0.002 * i + 0.01 * rng.standard_normal(n)).tolist()) for i, (s, n) in enumerate(spec)]
    got = importance_of(cells)
    assert got["observations"] == 10_000 and got["residual"]["df"] == 10_000 - 50
    assert all(f["p"] is not None for f in [*got["factors"], *got["interactions"]])


@pytest.mark.parametrize("cells", [
    [Cell(1, {"w": 1}, [0.9, 0.9]), Cell(2, {"w": 2}, [0.8, 0.8]), Cell(3, {"w": 3}, [0.7, 0.7])],
    [Cell(1, {"w": 1}, [0.9, 0.9]), Cell(2, {"w": 2}, [0.8]), Cell(3, {"w": 3}, [0.7])],
    [Cell(i, {"a": a, "b": b}, [0.1 * a + 0.3 * b] * 2) for i, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])],
    [Cell(i, {"a": a, "b": a // 2}, [0.1 * a] * 2) for i, a in enumerate(range(4))],
], ids=["one-factor", "single-replicates", "two-way", "aliased"])
def test_replicates_that_agree_exactly_have_no_f_test(cells: list[Cell]) -> None:
    """No residual but rounding: anova_lm's F is a ratio of rounding errors (1e29, or 0.26 for a
    nothing), so F and p are null; the sums of squares are anova_lm's."""
    design = design_of(cells)
    assert isinstance(design, Design)
    ref, _ = reference(cells, design)
    table = design.anova()
    y = design.y
    sst = float(((y - y.mean()) ** 2).sum())
    for t in design.terms():
        row, want = table[term_key(t)], ref.loc[quoted(design, t)]
        assert math.isnan(row.F) and math.isnan(row.p) and row.df == want["df"]
        assert row.sum_sq == pytest.approx(want["sum_sq"], rel=1e-9, abs=1e-12 * sst)
    got = importance_of(cells)
    assert all(f["F"] is None and f["p"] is None and f["eta_squared"] is not None for f in got["factors"])


@pytest.mark.parametrize("name", ["unbalanced-3x2", "single-replicates", "aliased-nested"])
def test_the_bootstraps_config_sums_are_its_resamples(name: str) -> None:
    """bootstrap_cells draws what bootstrap draws; the sums of squares from its per-config means and
    within sums are those of the resampled observations (themselves checked against anova_lm in
    tests/unit/test_verdicts_math.py)."""
    design = design_of(cells_of(DESIGNS[name], 5))
    assert isinstance(design, Design)
    fast = design.sums_of_squares_of(*bootstrap_cells(design, resamples=50))
    slow = design.sums_of_squares(bootstrap(design, resamples=50))
    assert set(fast) == set(slow)
    for k in fast:
        assert fast[k] == pytest.approx(slow[k], rel=1e-9, abs=1e-12 * float(slow["Total"].max()))


@pytest.mark.parametrize("seed", range(5))
def test_the_basis_spans_what_an_svd_spans(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.random((30, 8)) < 0.4).astype(float) * np.sqrt(rng.integers(1, 300, 30))[:, None]
    x = np.column_stack([x, x[:, 0] + x[:, 3], 2 * x[:, 5], x[:, 1] - x[:, 2] + x[:, 7]])  # aliased columns
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    want = u[:, s > s.max() * max(x.shape) * np.finfo(float).eps]
    got = _basis(x)
    assert got.shape == want.shape
    assert np.allclose(got.T @ got, np.eye(got.shape[1]), atol=1e-13)
    assert np.allclose(got @ got.T, want @ want.T, atol=1e-12)


def test_usable_finals_are_stats_usable() -> None:
    values = [0.5, None, math.nan, math.inf, -math.inf, 1e50, -1e50, 1.0000001e50, -2e300, 3, 0.0, -0.25]
    assert usable(values).tolist() == stats.usable(values)
    assert usable([]).tolist() == [] and usable([None]).tolist() == []
