"""The dashboard benchmark in headless Chromium (Debian's /usr/bin/chromium through Playwright): the
time until the sweep page has drawn everything, and many pages streaming while writers commit.

Every page gets an init script that notes (Date.now(), performance.now()) whenever the page sets
one of the body attributes it uses to say what it drew (static/common.js `markReady`: data-ready;
static/sweep.js: data-stats-ready, and data-drawn-cursor, the commit sequence its curves show)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows"]
WATCHED = ("data-ready", "data-stats-ready", "data-drawn-cursor")
OBSERVER = """
window.__bench = [];
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target !== document.body) continue;
    window.__bench.push([r.attributeName, r.target.getAttribute(r.attributeName), Date.now(), performance.now()]);
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: WATCHED });
""".replace("WATCHED", json.dumps(WATCHED))
DRAWN = "() => document.body && document.body.dataset.ready === 'true' && document.body.dataset.statsReady === 'true'"
TIMING = """() => ({
  marks: window.__bench,
  charts: document.querySelectorAll('.js-plotly-plot').length,
  plotly: performance.getEntriesByName('sweeplab-plotly-ready')[0]?.startTime ?? null,
  data: performance.getEntriesByName('sweeplab-data-ready')[0]?.startTime ?? null,
  phases: Object.fromEntries(performance.getEntriesByType('mark').map((m) => [m.name, Math.round(m.startTime)])),
  bytes: performance.getEntriesByType('resource').reduce((n, e) => n + (e.transferSize || 0), 0),
  requests: performance.getEntriesByType('resource').map((e) => [e.name.replace(location.origin, ''),
    Math.round(e.startTime), Math.round(e.responseEnd), e.transferSize]),
})"""


def _first(marks: list[list[Any]], attr: str) -> float | None:
    """performance.now() (ms since navigation start) of the first time the page set ATTR."""
    return next((m[3] for m in marks if m[0] == attr), None)


def launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def visit(context: Any, url: str) -> dict[str, Any]:
    """One visit: navigation start -> the charts drawn (data-ready) and the statistics (data-stats-ready)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="commit")
    page.wait_for_function(DRAWN, timeout=120_000)
    t = page.evaluate(TIMING)
    page.close()
    charts, stats = _first(t["marks"], "data-ready"), _first(t["marks"], "data-stats-ready")
    return {"ms": round(max(charts or 0, stats or 0)), "charts_drawn_ms": round(charts or 0),
            "stats_drawn_ms": round(stats or 0), "plotly_ready_ms": round(t["plotly"] or 0),
            "data_ready_ms": round(t["data"] or 0), "phases": t["phases"], "charts": t["charts"],
            "kb": round(t["bytes"] / 1024),
            "requests": t["requests"], "errors": errors[:3]}


def time_page(url: str, visits: int, restart: Any) -> dict[str, Any]:
    """The first visit after a server restart in a fresh browser (nothing cached anywhere), a fresh
    browser profile on the warm server, then VISITS later visits in that profile (its HTTP cache
    warm). Playwright's contexts are off-the-record profiles, which keep no V8 code cache, so every
    one of those visits compiles Plotly.js' 4.8 MB again. A user's browser has an on-disk profile:
    the last part visits VISITS + 2 times in one (Chromium stores a script's compiled code on its
    second load and uses it from the third), and times the visits from the third on."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(OBSERVER)
        restart()
        cold = visit(context, url)
        context.close()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(OBSERVER)
        first = visit(context, url)
        later = [visit(context, url) for _ in range(visits)]
        browser.close()
        with tempfile.TemporaryDirectory(prefix="sweeplab-bench-profile-") as profile:
            on_disk = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS,
                                                           viewport={"width": 1400, "height": 1000})
            on_disk.add_init_script(OBSERVER)
            priming = [visit(on_disk, url) for _ in range(2)]
            repeat = [visit(on_disk, url) for _ in range(visits)]
            on_disk.close()
    return {"cold_server_first_visit": cold, "first_visit": first, "later_visits": later,
            "later_median_ms": statistics.median(v["ms"] for v in later) if later else None,
            "worst_ms": max(v["ms"] for v in [cold, first, *later]),
            "on_disk_profile_priming_visits": priming, "on_disk_profile_repeat_visits": repeat,
            "on_disk_repeat_median_ms": statistics.median(v["ms"] for v in repeat) if repeat else None}


# ---- many pages streaming ----------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Process ids below PID (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) PIDS have used so far; gone processes count 0."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def browser_pids() -> list[int]:
    out = []
    for pid in descendants(os.getpid()):
        try:
            if "chromium" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                out.append(pid)
        except OSError:
            pass
    return out


def machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (from /proc/stat)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def open_pages(p: Any, url: str, pages: int) -> tuple[Any, list[Any]]:
    """One browser, PAGES contexts of one page each (a context is a profile of its own: Chromium allows
    6 connections per host per profile, and each page holds one for its event stream)."""
    browser = launch(p)
    opened = []
    for _ in range(pages):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.add_init_script(OBSERVER)
        page = context.new_page()
        page.goto(url, wait_until="commit")
        opened.append(page)
    for page in opened:
        page.wait_for_function(DRAWN, timeout=300_000)
    return browser, opened


def drawn_times(marks: list[list[Any]]) -> list[tuple[int, float]]:
    """(cursor, Date.now() ms) each time the page recorded the commits its curves show."""
    return [(int(m[1]), float(m[2])) for m in marks if m[0] == "data-drawn-cursor" and m[1]]


def commit_to_drawn(commits: list[dict[str, Any]], pages: list[list[tuple[int, float]]],
                    until: float) -> dict[str, Any]:
    """For every commit and every page: ms from the commit returning to the page first recording a
    cursor at or past the commit's seq. A commit a page never drew by UNTIL counts as missed."""
    delays: list[float] = []
    per_page_p95: list[float] = []
    missed = 0
    for drawn in pages:
        mine = []
        for c in commits:
            t = next((t for cursor, t in drawn if cursor >= c["seq"]), None)
            if t is None:
                if 1000 * c["committed_at"] < 1000 * until - 3000:  # had 3 s to appear
                    missed += 1
                continue
            mine.append(max(0.0, t - 1000 * c["committed_at"]))
        delays += mine
        if mine:
            per_page_p95.append(percentile(mine, 95))
    return {"pairs": len(delays), "missed": missed, "p50_ms": round(percentile(delays, 50)) if delays else None,
            "p95_ms": round(percentile(delays, 95)) if delays else None,
            "max_ms": round(max(delays)) if delays else None,
            "worst_page_p95_ms": round(max(per_page_p95)) if per_page_p95 else None}


def percentile(values: list[float], q: float) -> float:
    """The Q-th percentile by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]
