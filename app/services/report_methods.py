"""The report's prose about how the numbers were made: the methods paragraph (design, replicates,
tests, the importance's ANOVA, software, dataset), the power sentence and the provenance table.
Pure: from what the services answered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app import metrics, statuses
from app.metrics import PRIMARY_KEY
from app.schemas import SweepPublic
from app.services import results, stats
from app.services.report_format import DASH, and_list, points, seed_ranges

# The provenance fields the methods paragraph and the software table name, in this order.
SOFTWARE = (("sweeplab", "sweeplab"), ("python", "Python"), ("tensorflow", "TensorFlow"), ("keras", "Keras"),
            ("numpy", "NumPy"))
MACHINE = (("host", "host"), ("cpu", "CPU"), ("gpu", "GPU"), ("trainer", "trainer"), ("packed", "packed"),
           ("pack_size", "pack size"))


def power_sentence(key: str, power: dict[str, Any] | None) -> str | None:
    """The verdicts' power sentence (app.services.verdicts) with the test and the noise it assumes."""
    sentence = str((power or {}).get("sentence") or "").strip().rstrip(".")
    if not power or not sentence:
        return None
    sentence = sentence[:1].upper() + sentence[1:]
    if power.get("detectable_difference") is not None:
        alpha = "\N{GREEK SMALL LETTER ALPHA}"
        sentence += (f" (a two-sided two-sample t-test at {alpha} = {power.get('alpha', 0.05):g} with power "
                     f"{power.get('power', 0.8):g}, for the seed noise of this sweep: a pooled standard deviation of "
                     f"{points(key, power.get('pooled_sd'))} in the final {metrics.describe(key).title})")
    return sentence + "."


def _versions(prov: dict[str, list[Any]], fields: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{title} {and_list([str(v) for v in prov[key]])}" for key, title in fields if prov.get(key)]


def provenance_rows(prov: dict[str, list[Any]]) -> list[tuple[str, str]]:
    """The provenance table: (field's name, its values in prose), software and machine first."""
    named = dict((*SOFTWARE, *MACHINE, ("dataset", "dataset"), ("dataset_sha256", "dataset sha256"),
                  ("seed", "seeds")))
    rows = []
    for key, values in prov.items():
        if key in ("attempt",):
            continue
        text = seed_ranges([int(v) for v in values if isinstance(v, int)]) if key == "seed" else \
            and_list([("yes" if v else "no") if isinstance(v, bool) else str(v) for v in values])
        rows.append((named.get(key, key), text))
    order = list(named.values())
    return sorted(rows, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0]))


def methods(sweep: SweepPublic, rows: list[dict[str, Any]], axes: list[dict[str, Any]],
            verdicts: dict[str, Any] | None, importance: dict[str, Any] | None,
            prov: dict[str, list[Any]], generated: str, version: str) -> list[str]:
    """The methods paragraph, as sentences a student can hand in."""
    key = PRIMARY_KEY
    title = metrics.describe(key).title
    ns = [r["final"][key]["n"] for r in rows]
    seed_sets = {tuple(sorted(r["final"][key]["seeds"])) for r in rows if r["final"][key]["n"]}
    counts: dict[str, int] = {}
    for r in rows:
        for status, n in r["status_counts"].items():
            counts[status] = counts.get(status, 0) + n
    out = []
    varied = f", varying {and_list([a['title'] for a in axes])}" if axes else ""
    design = (f"Sweep “{sweep.name}” (#{sweep.id}) trained {len(rows)} configuration{'s' * (len(rows) != 1)} on the "
              f"{sweep.dataset} dataset{varied}, each replicated over random seeds. ")
    if not ns or max(ns) == 0:
        design += "No run has succeeded yet, so there are no final values to report."
        out.append(design)
    else:
        n_text = f"n = {ns[0]}" if min(ns) == max(ns) else f"between {min(ns)} and {max(ns)}"
        design += f"Each configuration has {n_text} succeeded replicates"
        if len(seed_sets) == 1:
            design += f" (seeds {seed_ranges(next(iter(seed_sets)))})"
        else:
            design += " (the table lists each configuration's seeds)"
        left_out = [f"{n} {statuses.label(s)}" for s, n in counts.items() if n and s != results.SUCCEEDED]
        if left_out:
            design += f"; runs that did not succeed ({and_list(left_out)}) are left out"
        out.append(design + ".")
        out.append(f"A run's final value of a metric is its value at the last epoch it logged. The table gives the "
                   f"mean over replicates with the {stats.CONFIDENCE:.0%} confidence interval of the mean "
                   f"(t distribution, n \N{MINUS SIGN} 1 degrees of freedom).")
    if verdicts and verdicts.get("best") and verdicts.get("comparisons"):
        family = [c for c in verdicts["comparisons"] if c.get("p_holm") is not None]
        direction = "highest" if verdicts.get("higher_is_better", True) is not False else "lowest"
        tests = (f"Every configuration was compared with the best one (the {direction} mean final "
                 f"{metrics.describe(verdicts.get('best_by') or verdicts['metric']).title}, "
                 f"“{verdicts['best']['label']}”) by Welch's unequal-variances t-test, with the 95% confidence "
                 f"interval of the difference of means from the Welch{DASH}Satterthwaite degrees of freedom; the "
                 f"{len(family)} p-value{'s' * (len(family) != 1)} of this family "
                 f"{'were' if len(family) != 1 else 'was'} adjusted by Holm's step-down method, and a configuration "
                 f"counts as different from the best when its adjusted p is below 0.05 (configurations with fewer "
                 f"than 2 replicates are not tested)")
        if verdicts.get("dropped"):
            tests += f"; {verdicts['dropped']} final values that were not real numbers (NaN, infinite) were dropped"
        out.append(tests + ".")
    if verdicts:
        sentence = power_sentence(verdicts["metric"], verdicts.get("power"))
        if sentence:
            out.append(sentence)
    if importance and importance.get("factors"):
        out.append(f"The share of the variance of the final {title} that each setting explains is η², its sum of "
                   f"squares over the total in a type II analysis of variance with the settings as categorical "
                   f"factors (two-way interactions where every cell has replicates) and the seeds as the error "
                   f"term, with 95% confidence intervals from a seeded bootstrap over replicates within configs.")
    software = _versions(prov, SOFTWARE)
    if software:
        sentence = f"Trained with {and_list(software)}"
        machine = _versions(prov, (("host", "on host"), ("cpu", "CPU"), ("gpu", "GPU")))
        if machine:
            sentence += f" ({'; '.join(machine)})"
        if prov.get("packed") == [True] and prov.get("pack_size"):
            sentence += f", packed {and_list([str(v) for v in prov['pack_size']])} runs per model"
        out.append(sentence + ".")
    if prov.get("dataset_sha256"):
        out.append(f"Dataset {and_list([str(v) for v in prov.get('dataset') or [sweep.dataset]])}, "
                   f"sha256 {and_list([str(v) for v in prov['dataset_sha256']])}.")
    if not software and not prov.get("dataset_sha256"):
        out.append("The runs recorded no provenance (software versions, dataset hash).")
    out.append(f"Report generated on {generated} by sweeplab {version}.")
    return out
