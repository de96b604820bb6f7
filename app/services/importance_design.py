"""The importance's design: which settings are factors, which pairs interact, and the sums of
squares of the Type II models they make, from each config's count, mean and within-config sum of
squares alone.

The model: the main effects of the settings that vary (a setting varying exactly with an earlier
one is the same factor) and the two-way interaction of every pair of factors whose every
combination of values has replicates, as long as residual degrees of freedom remain. Every term is
constant within a config, so a fit is a weighted least squares of the config means (weights:
replicates), and the residual is the within-config sum of squares plus the lack of fit between
configs: sums of squares from orthonormal bases of each model's columns, df from their ranks.

The table (F, p; statsmodels when the columns are aliased) is app.services.importance.Design's,
built on DesignSums here. numpy is imported only when a design is built."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from app.metrics import PRIMARY_KEY
from app.services.importance_cells import NOT_SET, Cell, level, usable

if TYPE_CHECKING:
    import numpy as np

Term = str | tuple[str, str]  # a factor's path, or a pair of them (their interaction)


def term_key(t: Term) -> str:
    return t if isinstance(t, str) else f"{t[0]}:{t[1]}"


def orthonormal_basis(x: np.ndarray) -> np.ndarray:
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


@dataclass
class DesignSums:
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


D = TypeVar("D", bound=DesignSums)


def build_design(kind: type[D], cells: Sequence[Cell], metric: str = PRIMARY_KEY) -> D | str:
    """The ANOVA design of CELLS as a KIND (app.services.importance.Design: DesignSums with its
    table), or why there is none (a sentence)."""
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
            known[key] = orthonormal_basis(np.column_stack(cols) * root[:, None])
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
    return kind(finals, factors, names, {p: levels[p] for p in factors}, pairs, varying, bases, columns)
