"""Numbers and words as the report writes them: values of a metric (percent for accuracies),
differences in points, p-values, ranges of seeds, lists in prose, sentences, times. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from app import metrics
from app.services.latex import scaled

DASH = "\N{EN DASH}"  # a missing value; a range of seeds


def fmt_value(key: str, value: float | None) -> str:
    """A value of KEY: percent with two decimals for accuracies, four decimals otherwise."""
    if value is None:
        return DASH
    return f"{scaled(key, value):.2f}" if metrics.describe(key).format == "percent" else f"{value:.4f}"


def unit(key: str) -> str:
    return "%" if metrics.describe(key).format == "percent" else ""


def points(key: str, value: float | None) -> str:
    """A difference of KEY in words: '0.9 points' for accuracies, '0.0123' otherwise."""
    if value is None:
        return DASH
    if metrics.describe(key).format == "percent":
        return f"{100 * value:.2f} points"
    return f"{value:.4g}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def seed_ranges(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0-3, 7' (with an en dash)."""
    xs = sorted(set(seeds))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}{DASH}{xs[j]}" if j > i + 1 else f"{xs[i]}, {xs[j]}")
        i = j + 1
    return ", ".join(parts)


def and_list(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def capital(text: str) -> str:
    """TEXT as a sentence: a capital first letter, a full stop at the end."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if dt is not None else DASH
