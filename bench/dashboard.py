"""The dashboard under big sweeps (issue 16's targets), in one run: for each size a fresh SQLite
database seeded straight through plain INSERTs (bench/dashboard_seed.py: every trigger fires),
`sweeplab serve` as a process, headless Chromium; prints each target as met / MISSED with its figure
and saves everything under bench/results/.

Per size (default 1,000 runs x 50 epochs in 50 configs, and 10,000 runs x 20 epochs in 100 configs,
4 metrics each):
- every JSON endpoint the sweep page calls (bench/dashboard_server.py lists them): cold = the worst of
  the first request after a server restart (one restart per endpoint: every process cache empty;
  asked once the server has settled, its start-up imports done), and the first request after the
  data changed (an epoch committed through the worker's write path; a run finished); warm = the
  median of repeats;
- the sweep page until every chart and the statistics are drawn (Plotly.js load included): the first
  visit right after a server restart in a fresh browser (its requests meet the server's start-up),
  a fresh browser on the warm server, later visits.
Then, on the first size, PAGES sweep pages open and streaming while WRITERS worker processes claim
the live runs (a real lease) and commit their epochs (bench/dashboard_writers.py): /api/health p95,
and for every commit and every page the time from commit to the page drawing it.

    .venv/bin/python -m bench.dashboard [--quick] [--sizes 1000x50x50,10000x20x100] [--pages 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.config import PROJECT_ROOT
from app.db import get_engine
from app.models import RunStatus
from app.services.queue import Claim, claim_runs, finish_run, record_epoch
from bench import dashboard_browser as browser
from bench.dashboard_seed import KEYS, Seeded, seed
from bench.dashboard_server import Server, StreamClients, endpoints, ms, time_after, time_cold, time_warm
from bench.dashboard_writers import LEASE_SECONDS, Writers
from sweeplab.logs import configure_logging

LIVE_CONFIGS, LIVE_PER_CONFIG = 10, 8  # queued runs in the configs a page draws first (bands.js MAX_SHOWN)


@dataclass(frozen=True)
class Size:
    runs: int
    epochs: int
    configs: int

    @property
    def name(self) -> str:
        return f"{self.runs} runs x {self.epochs} epochs"

    def targets(self) -> tuple[float, float, float]:
        """(warm, cold, page) limits in ms: issue 16's for up to 1,000 runs, and for 10,000."""
        return (100.0, 200.0, 1000.0) if self.runs <= 1000 else (300.0, 300.0, 2000.0)


def parse_size(text: str) -> Size:
    runs, epochs, configs = (int(v) for v in text.lower().split("x"))
    return Size(runs, epochs, configs)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


class Changer:
    """Changes the data as a worker does, between an endpoint's warm answer and its timed one."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)
        self.held: Claim | None = None
        self.epoch = 0

    def epoch_committed(self) -> None:
        """One more epoch of one held live run (claimed once), through record_epoch."""
        if self.held is None or self.epoch >= self.held.epochs:
            claims = claim_runs(self.engine, "bench-changer-epochs", 1, LEASE_SECONDS)
            if not claims:
                raise SystemExit("no queued live run left to commit epochs of")
            self.held, self.epoch = claims[0], claims[0].last_epoch
        self.epoch += 1
        record_epoch(self.engine, self.held, self.epoch, dict.fromkeys(KEYS, 0.5), None, LEASE_SECONDS)

    def run_finished(self) -> None:
        """A live run claimed and finished (succeeded): the finals change."""
        claims = claim_runs(self.engine, "bench-changer-finish", 1, LEASE_SECONDS)
        if not claims:
            raise SystemExit("no queued live run left to finish")
        finish_run(self.engine, claims[0], RunStatus.SUCCEEDED)


def measure_size(size: Size, args: argparse.Namespace, stream: bool,
                 save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Everything about one size; SAVE gets what is measured so far after each part."""
    work = Path(tempfile.mkdtemp(prefix="sweeplab-dash-"))
    url = f"sqlite:///{work / 'bench.db'}"
    out: dict[str, Any] = {"size": size.name, "configs": size.configs, "load_at_start": load()}
    try:
        seeded = seed(url, size.runs, size.configs, size.epochs, LIVE_CONFIGS, LIVE_PER_CONFIG)
        out["seeded"] = seeded.public()
        print(f"\n== {size.name} x {len(KEYS)} metrics: {seeded.runs} runs in {seeded.configs} configs, "
              f"{seeded.metric_rows} metric rows seeded in {seeded.seconds} s (load {load()})", flush=True)
        server = Server(url, work)
        server.start()
        try:
            out |= measure_endpoints(server, seeded, url, args)
            save(out)
            out["page"] = measure_page(server, seeded, args)
            save(out)
            if stream:
                out["streaming"] = measure_stream(server, seeded, url, work, args)
                save(out)
        finally:
            server.stop()
        out["server_start_s"] = [round(s, 1) for s in server.starts]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def measure_endpoints(server: Server, seeded: Seeded, url: str, args: argparse.Namespace) -> dict[str, Any]:
    eps = endpoints(seeded)
    changer = Changer(url)
    cold = time_cold(server, eps) if not args.no_restarts else {}
    load_cold = load()
    warm = time_warm(server, eps, args.repeats)
    after_epoch = time_after(server, eps, changer.epoch_committed)
    after_finish = time_after(server, eps, changer.run_finished)
    rows = {}
    print(f"  {'endpoint':38s} {'when':10s} {'restart':>8s} {'epoch+':>8s} {'finish+':>8s} {'warm':>7s}   size")
    for ep in eps:
        row = {"path": ep.path, "when": ep.when, "cold_restart_ms": cold.get(ep.name),
               "after_epoch_ms": after_epoch[ep.name], "after_finish_ms": after_finish[ep.name], **warm[ep.name]}
        row["cold_ms"] = max(v for v in (row["cold_restart_ms"], row["after_epoch_ms"], row["after_finish_ms"])
                             if v is not None)
        rows[ep.name] = row
        restart = f"{row['cold_restart_ms']:8.0f}" if row["cold_restart_ms"] is not None else "       -"
        print(f"  {ep.name:38s} {ep.when:10s} {restart} {row['after_epoch_ms']:8.0f} {row['after_finish_ms']:8.0f} "
              f"{row['median_ms']:7.1f}   {row['kb']} KB", flush=True)
    print(f"  (ms; restart: first request after a server restart, once it settled; epoch+/finish+: first after "
          f"an epoch committed / a run finished; cold = the worst of the three; warm: median of {args.repeats}; "
          f"load {load_cold} during the restarts)")
    return {"endpoints": rows, "load_after_endpoints": load()}


def measure_page(server: Server, seeded: Seeded, args: argparse.Namespace) -> dict[str, Any]:
    page = browser.time_page(f"{server.base}/sweeps/{seeded.sweep_id}", args.visits, server.restart)
    cold, first = page["cold_server_first_visit"], page["first_visit"]
    later = [v["ms"] for v in page["later_visits"]]
    print(f"  sweep page, {first['charts']} charts and the statistics drawn: after a server restart {cold['ms']} ms "
          f"(charts {cold['charts_drawn_ms']}, statistics {cold['stats_drawn_ms']}); fresh browser {first['ms']} ms "
          f"(Plotly ready at {first['plotly_ready_ms']}, data at {first['data_ready_ms']}, {first['kb']} KB); "
          f"later visits {later} ms; on-disk profile (V8 code cache), from its third visit "
          f"{[v['ms'] for v in page['on_disk_profile_repeat_visits']]} ms (Plotly ready at "
          f"{[v['plotly_ready_ms'] for v in page['on_disk_profile_repeat_visits']]}) (load {load()})", flush=True)
    for v in (cold, first, *page["later_visits"], *page["on_disk_profile_repeat_visits"]):
        if v["errors"]:
            print(f"  page errors: {v['errors']}")
    return page | {"load": load()}


def sample_health(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            client.get("/api/health").raise_for_status()
            out.append(time.perf_counter() - t0)
            stop.wait(0.1)


def commit_window(server: Server, url: str, work: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """ARGS.WRITERS worker processes commit for ARGS.SECONDS while /api/health is sampled every 0.1 s;
    the commits, the health figures and the CPU the server, the browser (if any) and the machine used."""
    writers = Writers(url, work / tag, args.writers, args.pack, args.interval, args.seconds)
    writers.start()
    server_pids = [server.pid, *browser.descendants(server.pid)]
    cpu0, server0 = browser.machine_cpu(), browser.process_cpu(server_pids)
    browser0 = browser.process_cpu(browser.browser_pids())
    wall0 = time.monotonic()
    health: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_health, args=(server.base, stop, health), daemon=True)
    sampler.start()
    results = writers.join()
    time.sleep(3)  # the last commits reach the pages
    stop.set()
    sampler.join()
    wall = time.monotonic() - wall0
    cores = os.cpu_count() or 1
    commits = [c for r in results for c in r["commits"]]
    return {
        "commits": commits, "until": time.time(), "seconds": round(wall, 1),
        "epochs_committed": len(commits), "runs_finished": sum(r["finished"] for r in results),
        "leases_lost": sum(r["lost"] for r in results),
        "writer_errors": [r["error"] for r in results if r.get("error")],
        "commit_ms_median": round(statistics.median(c["commit_ms"] for c in commits), 1) if commits else None,
        "health_samples": len(health),
        "health_p50_ms": ms(browser.percentile(health, 50)) if health else None,
        "health_p95_ms": ms(browser.percentile(health, 95)) if health else None,
        "health_max_ms": ms(max(health)) if health else None,
        "cpu": {"machine_busy": round((browser.machine_cpu() - cpu0) / (wall * cores), 2),
                "server_cores": round((browser.process_cpu(server_pids) - server0) / wall, 2),
                "browser_cores": round((browser.process_cpu(browser.browser_pids()) - browser0) / wall, 2),
                "writers_cores": round(sum(r.get("cpu_seconds", 0.0) for r in results) / wall, 2),
                "cores": cores},
        "load": load(),
    }


def report_window(w: dict[str, Any], what: str, delays: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"  {what} while {args.writers} workers committed {w['epochs_committed']} epochs "
          f"({w['runs_finished']} runs finished) in {w['seconds']} s: /api/health p50 {w['health_p50_ms']} ms, "
          f"p95 {w['health_p95_ms']} ms, max {w['health_max_ms']} ms; commit -> shown over {delays['pairs']} "
          f"(commit, page) pairs: p50 {delays['p50_ms']} ms, p95 {delays['p95_ms']} ms, max {delays['max_ms']} ms, "
          f"worst page's p95 {delays['worst_page_p95_ms']} ms, {delays['missed']} never shown", flush=True)
    if w["writer_errors"]:
        print(f"    workers ended early: {w['writer_errors']}", flush=True)
    print(f"    CPU: machine {100 * w['cpu']['machine_busy']:.0f}% busy of {w['cpu']['cores']} cores; server "
          f"{w['cpu']['server_cores']} cores, browser {w['cpu']['browser_cores']} cores, workers "
          f"{w['cpu']['writers_cores']} cores; the rest is other processes (load {w['load']})", flush=True)


def measure_stream(server: Server, seeded: Seeded, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two windows of commits: PAGES event-stream clients without a browser (what the server's fan-out
    costs), then PAGES real sweep pages in Chromium (commit -> drawn, the target)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"pages": args.pages, "writers": args.writers, "pack": args.pack,
                           "interval_s": args.interval, "browser_nice": args.browser_nice}
    (work / "sse").mkdir()
    (work / "pages").mkdir()
    clients = StreamClients(server.base, seeded.sweep_id, seeded.cursor, args.pages)
    clients.start()
    time.sleep(2)
    w = commit_window(server, url, work, args, "sse")
    clients.stop()
    delays = browser.commit_to_drawn(w["commits"], clients.received, w["until"])
    out["streams_without_browser"] = {**{k: v for k, v in w.items() if k not in ("commits", "until")},
                                      "commit_to_received": delays, "errors": clients.errors[:3]}
    report_window(w, f"{args.pages} event streams read by HTTP clients (no browser)", delays, args)

    page_url = f"{server.base}/sweeps/{seeded.sweep_id}"
    with sync_playwright() as p:
        t0 = time.perf_counter()
        chromium, pages = browser.open_pages(p, page_url, args.pages)
        out["pages_opened_s"] = round(time.perf_counter() - t0, 1)
        if args.browser_nice:
            for pid in browser.browser_pids():
                try:
                    os.setpriority(os.PRIO_PROCESS, pid, args.browser_nice)
                except OSError:
                    pass
        time.sleep(2)  # the pages' first stream answers and table refreshes settle
        w = commit_window(server, url, work, args, "pages")
        marks = [page.evaluate("() => window.__bench") for page in pages]
        errors = sum(1 for page in pages if page.evaluate("() => document.getElementById('live').textContent")
                     .startswith("error"))
        chromium.close()
    delays = browser.commit_to_drawn(w["commits"], [browser.drawn_times(m) for m in marks], w["until"])
    out |= {k: v for k, v in w.items() if k not in ("commits", "until")}
    out |= {"commit_to_drawn": delays, "pages_in_error": errors}
    report_window(w, f"{args.pages} sweep pages open in Chromium (opened in {out['pages_opened_s']} s)", delays, args)
    return out


def targets(sizes: list[Size], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 16 with its figure and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, figure: float | None, limit: float, unit: str = "ms") -> None:
        out.append({"target": name, "figure": figure, "limit": limit, "unit": unit,
                    "met": figure is not None and figure < limit})

    for size, r in zip(sizes, results, strict=True):
        warm, cold, page_limit = size.targets()
        for name, e in r["endpoints"].items():
            add(f"{size.name}: {name} ({e['when']}) warm", e["median_ms"], warm)
            add(f"{size.name}: {name} ({e['when']}) cold", e["cold_ms"], cold)
        add(f"{size.name}: sweep page drawn, worst visit (fresh profiles)", r["page"]["worst_ms"], page_limit)
        add(f"{size.name}: sweep page drawn, repeat visit in an on-disk profile, median",
            r["page"].get("on_disk_repeat_median_ms"), page_limit)
        if "streaming" in r:
            s = r["streaming"]
            add(f"{s['pages']} pages streaming, {s['writers']} workers: /api/health p95", s["health_p95_ms"], 100.0)
            add(f"{s['pages']} pages streaming: commit -> drawn on every page, p95", s["commit_to_drawn"]["p95_ms"],
                1000.0)
            add(f"{s['pages']} pages streaming: commits never drawn on some page", s["commit_to_drawn"]["missed"], 1,
                "")
            sse = s["streams_without_browser"]
            add(f"{s['pages']} event streams without a browser (server's part): /api/health p95", sse["health_p95_ms"],
                100.0)
            add(f"{s['pages']} event streams without a browser: commit -> event received, p95",
                sse["commit_to_received"]["p95_ms"], 1000.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x50x50,10000x20x100", help="RUNSxEPOCHSxCONFIGS, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a short development run: 300x20x30, 8 pages, 10 s")
    parser.add_argument("--pages", type=int, default=50, help="sweep pages open while workers commit")
    parser.add_argument("--writers", type=int, default=4, help="worker processes committing epochs")
    parser.add_argument("--pack", type=int, default=5, help="runs each worker claims at once")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a pack's epochs")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the workers commit")
    parser.add_argument("--visits", type=int, default=4, help="later page visits timed")
    parser.add_argument("--repeats", type=int, default=10, help="warm requests per endpoint")
    parser.add_argument("--browser-nice", type=int, default=10,
                        help="niceness of the streaming browser (it stands for the users' own machines; 0: none)")
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming part")
    parser.add_argument("--no-restarts", action="store_true", help="skip the per-endpoint server restarts")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.pages, args.seconds, args.visits, args.repeats = "300x20x30", 8, 10.0, 2, 3
    configure_logging()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    started = datetime.now(UTC)
    print(f"machine: {machine()}; load {load()} at start; {started.isoformat(timespec='seconds')}")
    out = PROJECT_ROOT / "bench" / "results" / f"dashboard-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []

    def save(part: dict[str, Any]) -> None:  # what is measured so far, should the run die later
        out.write_text(json.dumps({"date": started.isoformat(timespec="seconds"), "machine": machine(),
                                   "args": vars(args), "complete": False, "sizes": [*results, part]}, indent=1))

    for i, size in enumerate(sizes):
        results.append(measure_size(size, args, i == 0 and not args.no_stream, save))
    checked = targets(sizes, results)
    print("\ntargets (issue 16):")
    for t in checked:
        figure = "-" if t["figure"] is None else f"{t['figure']:g}"
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {figure} {t['unit']} (limit {t['limit']:g})")
    print(f"{sum(t['met'] for t in checked)}/{len(checked)} met")
    result = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "load_at_end": load(),
              "args": vars(args), "complete": True, "sizes": results, "targets": checked}
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
