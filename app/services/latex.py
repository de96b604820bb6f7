"""A sweep's config table as LaTeX to paste into a report: booktabs rules, one row per config, the
mean ± half-width of the 95% confidence interval of each final metric over succeeded replicates
(app.services.results.final_table), and n. Every label is escaped (`latex_escape`), so a config
or sweep name from a user compiles as the text it is. Needs `\\usepackage{booktabs}`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from app import metrics
from app.config_names import config_name
from app.metrics import FINAL_KEYS, PRIMARY_KEY
from app.services.results import final_table
from app.services.sweeps import get_sweep_row

SPECIALS = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "[": "{[}", "]": "{]}",  # a cell starting with [ after \\ or \midrule would be read as their option
    "*": "{*}",  # one starting with * after \\ (past the line break) as its starred form, the * lost
}
NO_VALUE = "--"


def latex_escape(text: str) -> str:
    """TEXT as LaTeX prints it: the special characters `& % $ # _ { } ~ ^ \\` (and `< > |`, which
    OT1 fonts print as other glyphs) as their commands, brackets and stars braced, a - before another
    split from it (-- and --- print as dashes), control characters and line breaks as spaces (a blank
    line would end the table's paragraph)."""
    out = []
    for i, ch in enumerate(text):
        if ch in SPECIALS:
            out.append(SPECIALS[ch])
        elif ch == "-" and text[i + 1:i + 2] == "-":
            out.append("-{}")
        elif ch < " " or ch == "\x7f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def final_metric_keys() -> list[str]:
    """The final metrics a table shows: the primary one first."""
    return [PRIMARY_KEY, *(k for k in FINAL_KEYS if k != PRIMARY_KEY)]


def scaled(key: str, value: float) -> float:
    """VALUE in the unit a table shows KEY in: percent for accuracies held as fractions."""
    return 100.0 * value if metrics.describe(key).format == "percent" else value


def column_title(key: str) -> str:
    info = metrics.describe(key)
    title = info.title[:1].upper() + info.title[1:]
    return f"{title} (%)" if info.format == "percent" else title


def _digits(key: str) -> int:
    return 2 if metrics.describe(key).format == "percent" else 4


def _cell(key: str, summary: dict[str, Any], bold: bool) -> str:
    mean, half = summary.get("mean"), summary.get("half_width")
    if mean is None:
        return NO_VALUE
    d = _digits(key)
    text = f"{scaled(key, mean):.{d}f}"
    if bold:
        text = rf"\mathbf{{{text}}}"
    if half is not None:
        text += rf" \pm {scaled(key, half):.{d}f}"
    return f"${text}$"


def _value_label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def varying_axes(axes: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The AXES (app.services.axes) whose setting differs between the configs ROWS: more than one
    value, or a setting some config lacks (an external sweep's)."""
    return [a for a in axes if len(a["values"]) > 1 or any(a["path"] not in r["params"] for r in rows)]


def _best_config(rows: list[dict[str, Any]]) -> int | None:
    """The config with the best mean final primary metric (its direction from the catalogue)."""
    lower = metrics.describe(PRIMARY_KEY).higher_is_better is False
    scored = [(r["final"][PRIMARY_KEY]["mean"], r["id"]) for r in rows if r["final"][PRIMARY_KEY]["mean"] is not None]
    if not scored:
        return None
    best_id: int = (min(scored) if lower else max(scored))[1]
    return best_id


def sweep_table_tex(engine: Engine, sweep_id: int, version: str) -> str:
    """The LaTeX source of the sweep's table: a `table` float holding a booktabs `tabular`, one
    column per swept setting (or one naming the config when nothing is swept), n (succeeded
    replicates with a final primary metric), then mean ± 95% CI half-width of each final metric.
    The best mean of the primary metric is bold."""
    sweep = get_sweep_row(engine, sweep_id)
    table = final_table(engine, sweep_id)
    rows = table["configs"]
    axes = varying_axes(table["axes"], rows)
    keys = final_metric_keys()
    best = _best_config(rows)
    heads = [latex_escape(a["path"]) for a in axes] if axes else ["Config"]
    heads += ["$n$", *(latex_escape(column_title(k)) for k in keys)]
    align = ("l" * len(axes) if axes else "l") + "r" + "c" * len(keys)
    lines = [
        f"% sweep {latex_escape(sweep.name)} (#{sweep_id}), written by sweeplab {latex_escape(version)}",
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[ht]",
        r"\centering",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(heads) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        if axes:
            first = [latex_escape(_value_label(r["params"][a["path"]])) if a["path"] in r["params"] else NO_VALUE
                     for a in axes]
        else:
            first = [latex_escape(config_name(sweep.name, r["label"], within_sweep=True))]
        n = r["final"][PRIMARY_KEY]["n"]
        cells = [_cell(k, r["final"][k], bold=k == PRIMARY_KEY and r["id"] == best) for k in keys]
        lines.append(" & ".join([*first, str(n), *cells]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{Final metrics of sweep ``{latex_escape(sweep.name)}'': mean $\pm$ half-width of the 95\% "
        r"confidence interval (t distribution) over $n$ succeeded replicates (seeds); the best mean "
        rf"{latex_escape(metrics.describe(PRIMARY_KEY).title)} in bold.}}",
        rf"\label{{tab:sweep-{sweep_id}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
