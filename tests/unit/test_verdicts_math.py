"""Verdicts, power and importance (app.services.verdicts, power, importance) against independent
computations in the test: scipy's Welch test, statsmodels' multipletests, TTestIndPower, anova_lm."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from app.services.importance import Cell, bootstrap, design_of, flatten, importance_of, level
from app.services.power import power_block
from app.services.verdicts import Group, short, verdicts_of

NAN = float("nan")


def welch_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """A minus B's 95% CI with Welch-Satterthwaite df, computed here from the formulas."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = a.mean() - b.mean()
    return d - h, d + h


def by_id(answer: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["config_id"]: c for c in answer["comparisons"]}


@pytest.fixture(scope="module")
def widths() -> dict[int, np.ndarray]:
    """Five configs of unequal n; 3 is the best; 1 is far worse; 4 close to the best; 5's raw p is
    below 0.05, its adjusted p is not."""
    rng = np.random.default_rng(14)
    means, ns = {1: 0.90, 2: 0.94, 3: 0.955, 4: 0.953, 5: 0.93}, {1: 4, 2: 7, 3: 5, 4: 9, 5: 3}
    return {c: means[c] + 0.01 * rng.standard_normal(ns[c]) for c in means}


def test_welch_and_holm_against_scipy_and_multipletests(widths: dict[int, np.ndarray]) -> None:
    got = verdicts_of([Group(c, f"c{c}", xs.tolist()) for c, xs in widths.items()], "val_accuracy")
    best = max(widths, key=lambda c: widths[c].mean())
    assert got["higher_is_better"] is True and got["best"]["config_id"] == best
    lo, hi = scipy_stats.t.interval(0.95, len(widths[best]) - 1, loc=widths[best].mean(),
                                    scale=scipy_stats.sem(widths[best]))
    assert got["best"]["mean"] == pytest.approx(widths[best].mean()) and got["best"]["ci"] == pytest.approx([lo, hi])
    others = [c for c in widths if c != best]
    ps = [scipy_stats.ttest_ind(widths[c], widths[best], equal_var=False).pvalue for c in others]
    holm = multipletests(ps, method="holm")[1]
    rows = by_id(got)
    assert list(rows) == others  # display order, the best left out
    for c, p, ph in zip(others, ps, holm, strict=True):
        row = rows[c]
        assert row["difference"] == pytest.approx(widths[c].mean() - widths[best].mean(), abs=1e-12)
        assert row["ci"] == pytest.approx(list(welch_ci(widths[c], widths[best])), abs=1e-12)
        assert row["p"] == pytest.approx(p, rel=1e-9) and row["p_holm"] == pytest.approx(ph, rel=1e-9)
        assert row["verdict"] == ("worse" if ph < 0.05 else "indistinguishable")
        assert f"{len(widths[c])} vs {len(widths[best])} seeds" in row["text"]
    assert rows[1]["verdict"] == "worse" and rows[4]["verdict"] == "indistinguishable"
    assert rows[5]["p"] < 0.05 < rows[5]["p_holm"] and rows[5]["verdict"] == "indistinguishable"
    assert rows[4]["text"].startswith("c4 is indistinguishable from the best, c3: ")
    assert "4 comparisons" in got["method"] and "Holm" in got["method"]


def test_lower_is_better_picks_the_smallest_mean(widths: dict[int, np.ndarray]) -> None:
    losses = {c: 1 - xs for c, xs in widths.items()}
    got = verdicts_of([Group(c, f"c{c}", xs.tolist()) for c, xs in losses.items()], "val_loss")
    assert got["higher_is_better"] is False and got["best_by"] == "val_loss"
    assert got["best"]["config_id"] == min(losses, key=lambda c: losses[c].mean())
    row = by_id(got)[1]
    assert row["difference"] > 0 and row["verdict"] == "worse"  # a larger loss is worse
    assert "points" not in row["text"]  # a loss is written in its own units


def test_better_for_a_non_primary_metric() -> None:
    """Ranked by val_accuracy, config 1 is best; config 2 has a clearly lower val_loss: better."""
    acc = {1: [0.95, 0.951, 0.949, 0.952], 2: [0.94, 0.941, 0.939, 0.942]}
    loss = {1: [0.30, 0.31, 0.29, 0.30], 2: [0.20, 0.21, 0.19, 0.20]}
    groups = [Group(c, f"c{c}", loss[c], acc[c]) for c in (1, 2)]
    got = verdicts_of(groups, "val_loss", rank_key="val_accuracy")
    assert got["best_by"] == "val_accuracy" and got["best"]["config_id"] == 1
    row = by_id(got)[2]
    p = scipy_stats.ttest_ind(loss[2], loss[1], equal_var=False).pvalue
    assert row["p"] == pytest.approx(p) and row["p_holm"] == pytest.approx(p)  # a family of one
    assert row["verdict"] == "better" and "is better than the best, c1 (the best by val_accuracy)" in row["text"]
    # Without the ranking metric's finals, the best is ranked by the metric itself.
    alone = verdicts_of([Group(c, f"c{c}", loss[c], []) for c in (1, 2)], "val_loss", rank_key="val_accuracy")
    assert alone["best_by"] == "val_loss" and alone["best"]["config_id"] == 2


def test_one_replicate_and_nan_finals_are_too_few_and_out_of_the_family() -> None:
    a, b, c = [0.90, 0.91, 0.92], [0.80, 0.81, 0.79, NAN], [0.70, NAN, None]
    got = verdicts_of([Group(1, "a", a), Group(2, "b", b), Group(3, "c", c), Group(4, "d", [])], "val_accuracy")
    rows = by_id(got)
    assert got["dropped"] == 3 and "3 dropped" in got["method"]
    assert rows[2]["n"] == 3 and rows[2]["mean"] == pytest.approx(0.80)
    p = scipy_stats.ttest_ind(b[:3], a, equal_var=False).pvalue
    assert rows[2]["p_holm"] == pytest.approx(p)  # the family holds this comparison only
    for cid, n, mean in ((3, 1, 0.70), (4, 0, None)):
        assert rows[cid]["verdict"] == "too_few" and rows[cid]["n"] == n and rows[cid]["mean"] == mean
        assert rows[cid]["difference"] is None and rows[cid]["ci"] == [None, None] and rows[cid]["p"] is None
        assert rows[cid]["p_holm"] is None and "too few replicates" in rows[cid]["text"]


def test_no_config_with_two_replicates_has_no_best() -> None:
    got = verdicts_of([Group(1, "a", [0.9]), Group(2, "b", [0.8, NAN])], "val_accuracy", detect=0.01)
    assert got["best"] is None and got["best_by"] is None
    assert [c["verdict"] for c in got["comparisons"]] == ["too_few", "too_few"]
    assert got["power"]["detectable_difference"] is None and got["power"]["replicates_needed"] is None
    assert "0 configs" in got["power"]["reason"] and "nothing to compare" in got["text"]


def test_zero_variance_configs() -> None:
    """No spread in both: the difference is exact (p 0 when the means differ, 1 when equal); a config
    without spread against a best with spread is an ordinary Welch test."""
    best, flat_low, flat_same = [0.95, 0.95, 0.95], [0.90, 0.90], [0.95, 0.95, 0.95]
    got = verdicts_of([Group(1, "best", best), Group(2, "low", flat_low), Group(3, "same", flat_same)],
                      "val_accuracy")
    rows = by_id(got)
    assert rows[2]["difference"] == pytest.approx(-0.05) and rows[2]["ci"] == pytest.approx([-0.05, -0.05])
    assert rows[2]["p"] == 0.0 and rows[2]["p_holm"] == 0.0 and rows[2]["verdict"] == "worse"
    assert rows[2]["exact"] is True and "exactly -5.0 points" in rows[2]["text"]
    assert rows[3]["difference"] == 0.0 and rows[3]["p"] == 1.0 and rows[3]["verdict"] == "indistinguishable"
    assert got["power"]["pooled_sd"] == 0.0 and got["power"]["detectable_difference"] is None
    assert "no spread" in got["power"]["reason"]
    spread = [0.94, 0.95, 0.96]
    mixed = verdicts_of([Group(1, "best", spread), Group(2, "flat", [0.90, 0.90])], "val_accuracy")
    row = by_id(mixed)[2]
    assert row["p"] == pytest.approx(scipy_stats.ttest_ind([0.90, 0.90], spread, equal_var=False).pvalue)
    assert row["ci"] == pytest.approx(list(welch_ci(np.array([0.90, 0.90]), np.array(spread))))


def smallest_n(effect: float) -> int:
    n = 2
    while TTestIndPower().power(effect_size=effect, nobs1=n, alpha=0.05, ratio=1.0) < 0.8:
        n += 1
    return n


@pytest.mark.parametrize("ns, median", [((4, 6, 5), 5), ((3, 4, 6, 8), 5), ((3, 4), 3.5)])
def test_power_block_against_ttestindpower(ns: tuple[int, ...], median: float) -> None:
    rng = np.random.default_rng(sum(ns))
    groups = [(0.9 + 0.02 * rng.standard_normal(n)).tolist() for n in ns]
    block = power_block([*groups, [0.5]], detect=0.01)  # a single replicate adds nothing
    sd = math.sqrt(sum((len(g) - 1) * np.var(g, ddof=1) for g in groups) / sum(len(g) - 1 for g in groups))
    assert block["pooled_sd"] == pytest.approx(sd, rel=1e-12) and block["n"] == median
    mde = TTestIndPower().solve_power(effect_size=None, nobs1=median, alpha=0.05, power=0.8, ratio=1.0) * sd
    assert block["detectable_difference"] == pytest.approx(mde, rel=1e-9)
    need = smallest_n(0.01 / sd)
    assert block["replicates_needed"] == need
    assert TTestIndPower().power(effect_size=0.01 / sd, nobs1=need - 1, alpha=0.05, ratio=1.0) < 0.8
    assert (block["alpha"], block["power"], block["detect"]) == (0.05, 0.8, 0.01)


def test_power_extremes() -> None:
    groups = [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]]
    assert power_block(groups, detect=10.0)["replicates_needed"] == 2  # 100 sd: two seeds suffice
    assert power_block(groups, detect=1e-300)["replicates_needed"] is None  # beyond any count
    huge = power_block(groups, detect=1e-7)["replicates_needed"]
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert huge == pytest.approx(2 * (z * 0.01 / 1e-7) ** 2, rel=1e-6)
    assert power_block([groups[0]])["reason"].startswith("1 config with")


def test_power_sentence_in_points() -> None:
    rng = np.random.default_rng(1)
    groups = [Group(i, f"c{i}", (0.9 + 0.01 * rng.standard_normal(10)).tolist()) for i in range(3)]
    power = verdicts_of(groups, "val_accuracy", detect=0.005)["power"]
    assert power["sentence"] == (f"with 10 seeds this sweep can tell apart differences of "
                                 f"{short(power['detectable_difference'] * 100)} points or more; "
                                 f"0.50 points would need {power['replicates_needed']} seeds per config")
    assert short(1.57) == "1.6" and short(0.0157) == "0.016" and short(153.0) == "153"


# ---- importance ------------------------------------------------------------------------------

def reference_anova(cells: list[Cell], formula: str) -> pd.DataFrame:
    """anova_lm typ=2 on the observations, the factors under their own (quoted) names."""
    rows = [{**{k: level(v) for k, v in c.settings.items()}, "y": x}
            for c in cells for x in c.values if x is not None and math.isfinite(x)]
    return anova_lm(ols(formula, data=pd.DataFrame(rows)).fit(), typ=2)


def check_against(got: dict[str, Any], ref: pd.DataFrame, factor_rows: dict[str, str],
                  interaction_rows: dict[tuple[str, str], str]) -> None:
    facs = {f["name"]: f for f in got["factors"]}
    assert set(facs) == set(factor_rows)
    inters = {tuple(i["names"]): i for i in got["interactions"]}
    assert set(inters) == set(interaction_rows)
    sst = got["_sst"]
    for name, row in [*factor_rows.items(), *interaction_rows.items()]:
        mine = facs[name] if isinstance(name, str) else inters[name]
        assert mine["eta_squared"] == pytest.approx(ref.loc[row, "sum_sq"] / sst, rel=1e-9, abs=1e-12)
        assert mine["F"] == pytest.approx(ref.loc[row, "F"], rel=1e-9)
        assert mine["p"] == pytest.approx(ref.loc[row, "PR(>F)"], rel=1e-7, abs=1e-300)
        lo, hi = mine["ci"]
        assert 0.0 <= lo <= hi <= 1.0
    assert got["residual"]["eta_squared"] == pytest.approx(ref.loc["Residual", "sum_sq"] / sst, rel=1e-9)


def total_ss(cells: list[Cell]) -> float:
    y = np.array([x for c in cells for x in c.values if x is not None and math.isfinite(x)])
    return float(((y - y.mean()) ** 2).sum())


def test_one_factor_unbalanced_against_anova_lm() -> None:
    rng = np.random.default_rng(3)
    cells = [Cell(i, {"optimizer.name": name}, (m + 0.01 * rng.standard_normal(n)).tolist())
             for i, (name, m, n) in enumerate([("adam", 0.95, 3), ("sgd", 0.90, 7), ("rmsprop", 0.93, 5)])]
    cells[1] = Cell(1, cells[1].settings, [*cells[1].values, NAN])  # a NaN final is no observation
    got = {**importance_of(cells, "val_accuracy"), "_sst": total_ss(cells)}
    ref = reference_anova(cells, 'y ~ C(Q("optimizer.name"))')
    check_against(got, ref, {"optimizer.name": 'C(Q("optimizer.name"))'}, {})
    assert got["observations"] == 15 and got["interactions"] == []
    assert got["text"].startswith("optimizer.name explains ")
    assert got["text"].endswith(f"seeds {round(100 * got['residual']['eta_squared'])}%.")


@pytest.mark.parametrize("ns", [(5, 5, 5, 5), (3, 6, 4, 8)], ids=["balanced", "unbalanced"])
def test_two_factors_with_interaction_against_anova_lm(ns: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(ns))
    eff = {("adam", 0.001): 0.95, ("adam", 0.01): 0.94, ("sgd", 0.001): 0.85, ("sgd", 0.01): 0.90}
    cells = [Cell(i, {"opt": o, "lr": lr}, (m + 0.008 * rng.standard_normal(n)).tolist())
             for i, (((o, lr), m), n) in enumerate(zip(eff.items(), ns, strict=True))]
    got = {**importance_of(cells, "val_accuracy"), "_sst": total_ss(cells)}
    ref = reference_anova(cells, "y ~ C(opt) + C(lr) + C(opt):C(lr)")
    check_against(got, ref, {"opt": "C(opt)", "lr": "C(lr)"}, {("opt", "lr"): "C(opt):C(lr)"})
    assert got["residual"]["seeds_only"] is True and "their interaction" in got["text"]
    assert got["factors"][1]["levels"] == ["0.001", "0.01"]


def test_a_missing_cell_means_main_effects_only() -> None:
    rng = np.random.default_rng(11)
    design = [("adam", [32, 64], 0.95), ("adam", [64, 64], 0.96), ("sgd", [32, 64], 0.90), ("sgd", [64, 64], 0.92),
              ("rmsprop", [32, 64], 0.93)]
    cells = [Cell(i, {"opt": o, "model.hidden": h}, (m + 0.01 * rng.standard_normal(3 + i % 2)).tolist())
             for i, (o, h, m) in enumerate(design)]
    got = {**importance_of(cells, "val_accuracy"), "_sst": total_ss(cells)}
    ref = reference_anova(cells, 'y ~ C(opt) + C(Q("model.hidden"))')
    check_against(got, ref, {"opt": "C(opt)", "model.hidden": 'C(Q("model.hidden"))'}, {})
    assert got["factors"][1]["levels"] == ["[32, 64]", "[64, 64]"]  # list values readable
    assert got["residual"]["seeds_only"] is False and "seeds and what the model leaves out" in got["text"]


def test_bootstrap_sums_of_squares_are_anova_lm_on_each_resample() -> None:
    """The fast bootstrap (config means, weighted) gives anova_lm's sums of squares on each resample,
    and the same resamples every call."""
    rng = np.random.default_rng(5)
    cells = [Cell(i, {"a": a, "b": b}, (0.1 * a + 0.05 * b + 0.02 * rng.standard_normal(2 + i)).tolist())
             for i, (a, b) in enumerate([(a, b) for a in range(3) for b in range(2)])]
    design = design_of(cells)
    assert not isinstance(design, str)
    ys = bootstrap(design, resamples=12)
    assert np.array_equal(ys, bootstrap(design, resamples=12))
    sums = design.sums_of_squares(ys)
    levels = [(str(c.settings["a"]), str(c.settings["b"])) for c in cells for _ in c.values]
    for j in range(ys.shape[1]):
        frame = pd.DataFrame({"y": ys[:, j], "a": [a for a, _ in levels], "b": [b for _, b in levels]})
        ref = anova_lm(ols("y ~ C(a) + C(b) + C(a):C(b)", data=frame).fit(), typ=2)
        for key, row in (("a", "C(a)"), ("b", "C(b)"), ("a:b", "C(a):C(b)"), ("Residual", "Residual")):
            assert sums[key][j] == pytest.approx(ref.loc[row, "sum_sq"], rel=1e-8, abs=1e-14)
        assert sums["Total"][j] == pytest.approx(((ys[:, j] - ys[:, j].mean()) ** 2).sum())


def test_bootstrap_intervals_are_identical_across_calls() -> None:
    rng = np.random.default_rng(9)
    cells = [Cell(i, {"w": w}, (0.9 + 0.01 * w + 0.01 * rng.standard_normal(6)).tolist())
             for i, w in enumerate([1, 2, 3, 4])]
    first, second = importance_of(cells), importance_of(cells)
    assert first == second
    lo, hi = first["factors"][0]["ci"]
    assert lo < first["factors"][0]["eta_squared"] < hi


def test_settings_that_vary_together_are_one_factor() -> None:
    cells = [Cell(i, {"width": w, "name": f"w{w}", "fixed": 1}, [0.9 + 0.01 * w, 0.901 + 0.01 * w, 0.899 + 0.01 * w])
             for i, w in enumerate([1, 2, 3])]
    got = importance_of(cells)
    assert [f["name"] for f in got["factors"]] == ["width = name"] and got["varying"] == ["width", "name"]


@pytest.mark.parametrize("cells, why", [
    ([], "No succeeded replicate"),
    ([Cell(1, {"w": 1}, [0.9, 0.91]), Cell(2, {"w": 1, "x": None}, [NAN])], "No setting varies"),
    ([Cell(1, {"w": 1}, [0.9]), Cell(2, {"w": 2}, [0.8])], "no residual degrees of freedom"),
    ([Cell(1, {"w": 1}, [0.9, 0.9]), Cell(2, {"w": 2}, [0.9, 0.9])], "no variance to explain"),
], ids=["nothing", "no-varying-setting", "one-replicate-each", "identical"])
def test_no_anova_says_why(cells: list[Cell], why: str) -> None:
    got = importance_of(cells)
    assert got["factors"] == [] and got["interactions"] == [] and got["residual"] == {"eta_squared": None}
    assert why in got["text"]


def test_nested_config_keys_flatten_to_dotted_paths() -> None:
    assert flatten({"optimizer": {"name": "adam", "lr": 0.1}, "hidden": [32, 64], "empty": {}}) == \
        {"optimizer.name": "adam", "optimizer.lr": 0.1, "hidden": [32, 64], "empty": {}}
    assert [level(v) for v in ("adam", [32, 64], 0.001, True, {"b": 1})] == \
        ["adam", "[32, 64]", "0.001", "true", '{"b": 1}']


@pytest.mark.parametrize("values", [[1e308, 1e308, -1e308], [1e49, 1.7e49], [1e-320, 2e-320, 3e-320], [-1e50, 1e50]])
@pytest.mark.parametrize("detect", [1e-300, 5e-324, 1e300])
def test_extreme_finals_answer_real_numbers_or_null(values: list[float], detect: float) -> None:
    """A diverged run's 1e308 is dropped like a NaN; whatever is left answers JSON's numbers."""
    import json

    got = verdicts_of([Group(1, "a", values), Group(2, "b", [0.5, 0.6, 0.7]), Group(3, "c", [0.4, 0.5])],
                      "val_accuracy", detect=detect)
    json.dumps(got, allow_nan=False)
    assert got["dropped"] == sum(abs(v) > 1e50 for v in values)
    cells = [Cell(1, {"w": 1}, values), Cell(2, {"w": 2}, [0.5, 0.6, 0.7]), Cell(3, {"w": 3}, [0.4, 0.5])]
    json.dumps(importance_of(cells), allow_nan=False)


@pytest.mark.parametrize("ps", [[0.01, 0.04, 0.03, 0.5], [0.2], [0.001, 0.001, 0.9, 0.02, 0.0], []])
def test_holm_is_multipletests(ps: list[float]) -> None:
    from app.services.verdicts import holm

    want = multipletests(ps, method="holm")[1].tolist() if ps else []
    assert holm(ps) == pytest.approx(want, rel=1e-15)
