"""The report's charts as Plotly figure dicts ({"data", "layout"}), built from what the services
answer: curves per config (mean ± 1 std over replicates), the final metric against each swept
setting, the importance bars and the parallel coordinates. Pure functions.

Plotly reads every string it draws as markup (<b>, <a href>, <br>): text from users (sweep names,
config labels, setting values) goes through `chart_text` once, as static/common.js's chartText
does on the pages, and shows as typed. No user text is ever put into a hovertemplate."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from plotly.colors import qualitative

from app import metrics
from app.numbers import finite_or_none

COLOURS: tuple[str, ...] = tuple(qualitative.D3)  # the pages' first ten config colours (static/common.js)
GROUP_LINES = ("#111827", "#b45309", "#0f766e", "#7c3aed", "#be123c", "#4b5563")
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 12}
SIDE_LEGEND = 5  # configs a half-width curve chart names beside it; with more it takes the whole width
MAX_GROUP_LINES = 6  # lines of a final-vs-setting chart, one per combination of the other settings
Figure = dict[str, Any]


def chart_text(value: object) -> str:
    """VALUE as Plotly shows it as typed: &, < and > as entities (Plotly turns them back)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


TITLE_CHARS, X_TITLE_CHARS, Y_TITLE_CHARS = 72, 60, 36  # as static/common.js's layout clips its titles


def clip(text: str, n: int) -> str:
    """TEXT past N characters as its start and end around an ellipsis, as static/common.js's clip
    does: Plotly wraps no title, and one built from a long metric key ran off its chart."""
    if len(text) <= n:
        return text
    head = math.ceil((n - 1) * 0.6)
    return f"{text[:head]}…{text[len(text) - (n - 1 - head):]}"


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def fade(hex_colour: str, alpha: float) -> str:
    n = int(hex_colour[1:], 16)
    return f"rgba({(n >> 16) & 255}, {(n >> 8) & 255}, {n & 255}, {alpha})"


def layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """A chart's layout; every title given here is clipped and escaped (extra's must come escaped)."""
    xaxis = {"title": {"text": chart_text(clip(x_title, X_TITLE_CHARS))}, "zeroline": False, **extra.pop("xaxis", {})}
    yaxis = {"title": {"text": chart_text(clip(y_title, Y_TITLE_CHARS))}, "zeroline": False, **extra.pop("yaxis", {})}
    return {"title": {"text": chart_text(clip(title, TITLE_CHARS)), "font": {"size": 14}}, "xaxis": xaxis,
            "yaxis": yaxis, "font": FONT, "margin": {"t": 40, "r": 16, "b": 52, "l": 64}, "height": 340,
            "hovermode": "closest", "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff", **extra}


def _band(col: dict[str, list[Any]]) -> tuple[list[Any], list[Any]]:
    """Mean ± 1 std as one closed shape: along the upper bound, back along the lower one."""
    xs, hi, lo = [], [], []
    for epoch, mean, std in zip(col["epochs"], col["mean"], col["std"], strict=True):
        if mean is None:
            continue
        xs.append(epoch)
        hi.append(mean + (std or 0.0))
        lo.append(mean - (std or 0.0))
    return xs + xs[::-1], hi + lo[::-1]


def curve_figure(key: str, configs: Sequence[dict[str, Any]], series: dict[str, dict[str, Any]]) -> Figure | None:
    """KEY over epochs: per config (each {"id", "name", "position"}) its mean over replicates
    (bold) and a ± 1 std band. None when no config has a point of KEY."""
    info = metrics.describe(key)
    traces: list[dict[str, Any]] = []
    for c in configs:
        col = series.get(str(c["id"]), {}).get(key)
        if not col or not col["epochs"]:
            continue
        hue, name, group = colour(c["position"]), chart_text(c["name"]), str(c["id"])
        x, y = _band(col)
        traces.append({"type": "scatter", "mode": "lines", "x": x, "y": y, "fill": "toself",
                       "fillcolor": fade(hue, 0.18), "line": {"width": 0, "color": hue}, "hoverinfo": "skip",
                       "legendgroup": group, "showlegend": False, "name": f"{name} (±1 std)"})
        traces.append({"type": "scatter", "mode": "lines+markers" if len(col["epochs"]) <= 25 else "lines",
                       "x": col["epochs"], "y": col["mean"], "name": name, "legendgroup": group,
                       "line": {"width": 2.5, "color": hue}, "marker": {"size": 4},
                       "customdata": [[n, s] for n, s in zip(col["n"], col["std"], strict=True)],
                       "hovertemplate": "epoch %{x}: mean %{y:.4f}<br>std %{customdata[1]:.4f}, "
                                        "n=%{customdata[0]}<extra>%{fullData.name}</extra>"})
    if not traces:
        return None
    drawn = len(traces) // 2
    if drawn <= SIDE_LEGEND:
        return {"data": traces, "layout": layout(info.title, "epoch", info.axis, showlegend=drawn > 1,
                                                 legend={"title": {"text": "config"}, "tracegroupgap": 0})}
    # Many configs: the chart takes the whole width and grows with its legend (which never scrolls).
    return {"wide": True, "data": traces,
            "layout": layout(info.title, "epoch", info.axis, height=max(340, 110 + 22 * drawn),
                             legend={"title": {"text": "config"}, "font": {"size": 11}, "tracegroupgap": 0})}


def _x_axis(axis: dict[str, Any]) -> dict[str, Any]:
    labels = [chart_text(v) for v in axis["labels"]]
    if axis["kind"] == "category":
        return {"type": "category", "categoryorder": "array", "categoryarray": labels}
    return {"type": "linear" if axis["kind"] == "linear" else "log", "tickvals": axis["x"], "ticktext": labels}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def sweep_figure(key: str, axis: dict[str, Any], rows: Sequence[dict[str, Any]],
                 groups: dict[int, str]) -> Figure | None:
    """Final KEY against the swept setting AXIS (app.services.axes): per group of configs that
    share their other settings (GROUPS: config id -> the group's label), the mean with its 95% CI
    as error bars, and each replicate's own final as a small dot. None when no config has one."""
    info = metrics.describe(key)
    labels = [chart_text(v) for v in axis["labels"]]

    def position(row: dict[str, Any]) -> int:
        return next((i for i, v in enumerate(axis["values"]) if _same(v, row["params"].get(axis["path"]))), -1)

    def at(i: int) -> Any:
        return labels[i] if axis["kind"] == "category" else axis["x"][i]

    traces: list[dict[str, Any]] = []
    names = list(dict.fromkeys(groups.get(r["id"], "") for r in rows))
    if len(names) > MAX_GROUP_LINES:
        return _marginal_figure(key, axis, rows, groups, position, at)
    for gi, group in enumerate(names):
        mine = sorted((r for r in rows if groups.get(r["id"], "") == group and position(r) >= 0), key=position)
        have = [r for r in mine if r["final"][key]["mean"] is not None]
        if not have:
            continue
        hue = GROUP_LINES[gi % len(GROUP_LINES)]
        name = chart_text(group) if group else chart_text(info.title)
        s = [r["final"][key] for r in have]
        dots_x = [at(position(r)) for r in have for v in r["final"][key]["values"] if finite_or_none(v) is not None]
        dots_y = [v for r in have for v in r["final"][key]["values"] if finite_or_none(v) is not None]
        traces.append({"type": "scatter", "mode": "markers", "x": dots_x, "y": dots_y, "name": f"{name}: replicates",
                       "legendgroup": str(gi), "showlegend": False, "hoverinfo": "y",
                       "marker": {"size": 5, "color": fade(hue, 0.35)}})
        traces.append({
            "type": "scatter", "mode": "lines+markers", "name": name, "legendgroup": str(gi),
            "x": [at(position(r)) for r in have], "y": [v["mean"] for v in s],
            "error_y": {"type": "data", "visible": True, "thickness": 1.5, "width": 5,
                        "array": [0.0 if v["ci_high"] is None else v["ci_high"] - v["mean"] for v in s],
                        "arrayminus": [0.0 if v["ci_low"] is None else v["mean"] - v["ci_low"] for v in s]},
            "line": {"color": hue, "width": 2}, "marker": {"size": 9, "color": hue},
            "customdata": [[v["n"]] for v in s],
            "hovertemplate": "%{y:.4f}, n=%{customdata[0]}<extra>%{fullData.name}</extra>"})
    if not traces:
        return None
    scale = {"log2": " (log₂ scale)", "log10": " (log scale)"}.get(axis["kind"], "")
    title = f"final {info.title} vs {axis['title']}"
    return {"data": traces, "layout": layout(title, axis["title"] + scale, f"{info.axis} at the last epoch",
                                             xaxis=_x_axis(axis), showlegend=len(names) > 1,
                                             legend={"title": {"text": "other settings"}, "tracegroupgap": 0})}


def _marginal_figure(key: str, axis: dict[str, Any], rows: Sequence[dict[str, Any]], groups: dict[int, str],
                     position: Any, at: Any) -> Figure | None:
    """Too many combinations of the other settings for a line each: every config's mean as a dot
    (its other settings on hover) and, in bold, the mean of those means at each value."""
    info = metrics.describe(key)
    have = sorted((r for r in rows if position(r) >= 0 and r["final"][key]["mean"] is not None), key=position)
    if not have:
        return None
    by_value: dict[int, list[float]] = {}
    for r in have:
        by_value.setdefault(position(r), []).append(r["final"][key]["mean"])
    order = sorted(by_value)
    traces = [
        {"type": "scatter", "mode": "markers", "name": "configs", "x": [at(position(r)) for r in have],
         "y": [r["final"][key]["mean"] for r in have], "marker": {"size": 7, "color": fade(GROUP_LINES[1], 0.45)},
         "customdata": [[chart_text(groups.get(r["id"], "")), r["final"][key]["n"]] for r in have],
         "hovertemplate": "%{customdata[0]}: %{y:.4f}, n=%{customdata[1]}<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "name": "mean over the other settings",
         "x": [at(i) for i in order], "y": [math.fsum(by_value[i]) / len(by_value[i]) for i in order],
         "line": {"color": GROUP_LINES[0], "width": 3}, "marker": {"size": 9, "color": GROUP_LINES[0]},
         "hovertemplate": "%{y:.4f}<extra>%{fullData.name}</extra>"},
    ]
    scale = {"log2": " (log₂ scale)", "log10": " (log scale)"}.get(axis["kind"], "")
    return {"data": traces, "layout": layout(f"final {info.title} vs {axis['title']}", axis["title"] + scale,
                                             f"{info.axis} at the last epoch", xaxis=_x_axis(axis),
                                             showlegend=False)}


def _percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def importance_figure(importance: dict[str, Any]) -> Figure | None:
    """η² of each factor, interaction and of the residual (seeds), in percent of the variance, with
    the bootstrap 95% CIs as error bars; horizontal bars, the largest first. None without factors."""
    bars: list[tuple[str, float, float | None, float | None]] = []
    for f in importance.get("factors") or []:
        bars.append((chart_text(f["name"]), *_eta(f)))
    for i in importance.get("interactions") or []:
        bars.append((chart_text(" \N{MULTIPLICATION SIGN} ".join(i["names"])), *_eta(i)))
    bars = [b for b in bars if not math.isnan(b[1])]
    if not bars:
        return None
    bars.sort(key=lambda b: b[1])
    residual = finite_or_none((importance.get("residual") or {}).get("eta_squared"))
    names = [b[0] for b in bars] + (["seeds (residual)"] if residual is not None else [])
    values = [b[1] for b in bars] + ([100.0 * residual] if residual is not None else [])
    plus = [0.0 if b[3] is None else b[3] - b[1] for b in bars] + ([0.0] if residual is not None else [])
    minus = [0.0 if b[2] is None else b[1] - b[2] for b in bars] + ([0.0] if residual is not None else [])
    colours = ["#1f77b4"] * len(bars) + (["#9ca3af"] if residual is not None else [])
    metric = metrics.describe(str(importance.get("metric") or metrics.PRIMARY_KEY))
    trace = {"type": "bar", "orientation": "h", "y": names, "x": values, "marker": {"color": colours},
             "error_x": {"type": "data", "array": plus, "arrayminus": minus, "visible": True, "thickness": 1.5},
             "hovertemplate": "%{x:.1f}%<extra></extra>", "name": "η²"}
    return {"data": [trace], "layout": layout(f"share of the variance of final {metric.title}", "η² (%)", "",
                                              showlegend=False, height=max(220, 90 + 34 * len(names)),
                                              xaxis={"rangemode": "tozero"}, yaxis={"automargin": True})}


def _eta(entry: dict[str, Any]) -> tuple[float, float | None, float | None]:
    eta = finite_or_none(entry.get("eta_squared"))
    ci = entry.get("ci") or [None, None]
    return (math.nan if eta is None else 100.0 * eta, _percent(finite_or_none(ci[0])), _percent(finite_or_none(ci[1])))


def parcoords_figure(par: dict[str, Any]) -> Figure | None:
    """The configs in parallel coordinates (app.services.parcoords): one axis per varying setting,
    the mean final metric last and as the colour. None with fewer than two configs or no setting
    that varies."""
    dims = par.get("dimensions") or []
    if len(dims) < 2 or len(par.get("color") or []) < 2:
        return None
    dimensions = []
    for d in dims:
        dim: dict[str, Any] = {"label": chart_text(d["label"]), "values": d["values"]}
        for k in ("range", "tickvals"):
            if d.get(k) is not None:
                dim[k] = d[k]
        if d.get("ticktext") is not None:
            # Parcoords draws tick labels as plain SVG text (checked in Chromium), unlike axis titles and
            # cartesian ticks, which Plotly reads as markup: escaping them would show "&lt;i&gt;" literally.
            dim["ticktext"] = [str(t) for t in d["ticktext"]]
        dimensions.append(dim)
    info = metrics.describe(str(par.get("metric") or metrics.PRIMARY_KEY))
    dimensions[-1]["tickformat"] = ".1%" if info.format == "percent" else ".4g"  # the metric's own axis
    # Viridis runs dark to bright: the better configs bright, whichever direction is better.
    line = {"color": par["color"], "colorscale": "Viridis", "showscale": True,
            "reversescale": info.higher_is_better is False,
            "colorbar": {"title": {"text": chart_text(info.short)}, "thickness": 12}}
    return {"data": [{"type": "parcoords", "dimensions": dimensions, "line": line}],
            "layout": {"title": {"text": chart_text(par.get("title") or f"mean final {info.title}"),
                                 "font": {"size": 14}},
                       "font": FONT, "height": 380, "margin": {"t": 80, "r": 110, "b": 30, "l": 120},
                       "paper_bgcolor": "#ffffff"}}


def question_figure(question: dict[str, Any]) -> Figure | None:
    """A study question's configs (app.services.questions): per config its final values as dots and
    their mean with the 95% CI as error bars. None when no config has a final value."""
    key = str(question.get("metric") or metrics.PRIMARY_KEY)
    info = metrics.describe(key)
    configs = [c for c in question.get("configs") or [] if c.get("mean") is not None]
    if not configs:
        return None
    names = [chart_text(c["name"]) for c in configs]
    dots_x = [names[i] for i, c in enumerate(configs) for v in c["values"] if finite_or_none(v) is not None]
    dots_y = [v for c in configs for v in c["values"] if finite_or_none(v) is not None]
    cis = [c.get("ci") or [None, None] for c in configs]
    means = [c["mean"] for c in configs]
    traces = [
        {"type": "scatter", "mode": "markers", "x": dots_x, "y": dots_y, "name": "replicates", "hoverinfo": "y",
         "marker": {"size": 6, "color": fade(COLOURS[0], 0.4)}},
        {"type": "scatter", "mode": "markers", "x": names, "y": means, "name": "mean ± 95% CI",
         "marker": {"size": 11, "color": COLOURS[0], "symbol": "diamond"},
         "error_y": {"type": "data", "visible": True, "thickness": 1.5, "width": 8,
                     "array": [0.0 if ci[1] is None else ci[1] - m for ci, m in zip(cis, means, strict=True)],
                     "arrayminus": [0.0 if ci[0] is None else m - ci[0] for ci, m in zip(cis, means, strict=True)]},
         "customdata": [[c["n"]] for c in configs],
         "hovertemplate": "%{y:.4f}, n=%{customdata[0]}<extra></extra>"},
    ]
    return {"data": traces, "layout": layout(f"final {info.title}", "config", f"{info.axis} at the last epoch",
                                             xaxis={"type": "category", "automargin": True}, showlegend=False)}
