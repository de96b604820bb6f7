"""A small HTTP client for sweeplab's REST API (pure Python + httpx; pandas only for `metrics`).

    from sweeplab import Client
    client = Client("http://127.0.0.1:8000")
    sweep = client.submit("examples/hidden-width.yaml")
    client.wait(sweep["id"])                 # a live bar: runs done/total, epochs/s, ETA
    df = client.metrics(sweep["id"])         # long form: sweep, config, seed, run, key, epoch, value
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from app.statuses import ExternalEnding, RunStatus

if TYPE_CHECKING:
    import pandas as pd

MAX_SPEC_FILE_BYTES = 1_000_000
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_ERROR_TEXT = 300  # characters of an answer that is not sweeplab's envelope (a proxy's page)
# The long-form metrics columns of GET /api/sweeps/{id}/metrics.jsonl (and .csv), with their types.
COLUMNS = ("sweep", "config", "config_label", "seed", "run", "key", "epoch", "value")
DTYPES = {"sweep": "int64", "config": "int64", "config_label": "object", "seed": "int64", "run": "int64",
          "key": "object", "epoch": "int64", "value": "float64"}


class ClientError(Exception):
    """The server refused a request, or could not be reached; the message says why.

    `status_code` is the HTTP status (None when the server was not reached); `code` and `fields`
    come from sweeplab's error envelope, {"error": {"code", "message", "fields": [{"loc", "msg"}]}}
    (`code` None and `fields` empty when the answer was not one, e.g. a proxy's error page)."""

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None,
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.fields = fields or []

    @property
    def retryable(self) -> bool:
        """Unreachable, overloaded or failing server: trying again later may succeed."""
        return self.status_code is None or self.status_code in (408, 425, 429) or self.status_code >= 500

    @property
    def unavailable(self) -> bool:
        """The server is not there or not serving (unreachable, restarting behind a proxy, busy):
        every request would get the same answer for now, whatever it holds."""
        return self.status_code is None or self.status_code in (429, 502, 503, 504)


def error_from(response: httpx.Response) -> ClientError:
    """The ClientError of an error answer: its envelope's message, code and fields, or the start of
    its text when it is not sweeplab's envelope."""
    message, code, fields = response.text[:MAX_ERROR_TEXT], None, []
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        code = str(error["code"]) if error.get("code") else None
        fields = [{"loc": str(f.get("loc", "")), "msg": str(f.get("msg", ""))}
                  for f in error.get("fields") or () if isinstance(f, dict)]
    return ClientError(f"{response.status_code}: {message}", response.status_code, code, fields)


def load_spec_file(path: Path) -> list[dict[str, Any]]:
    """Sweep specs from a YAML (one or more documents) or JSON file."""
    if path.stat().st_size > MAX_SPEC_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SPEC_FILE_BYTES} bytes")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs:
        raise ValueError(f"{path} holds no sweep spec")
    return docs


class Client:
    """sweeplab's REST API from Python. The token defaults to $SWEEPLAB_API_TOKEN."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | httpx.Timeout = 30.0):
        url = url or os.environ.get("SWEEPLAB_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("SWEEPLAB_API_TOKEN")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach sweeplab at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    # Sweeps and runs

    def submit(self, spec: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Submit one spec (a dict, or a YAML/JSON file path); returns the created sweep."""
        if isinstance(spec, str | Path):
            specs = load_spec_file(Path(spec))
            if len(specs) != 1:
                raise ValueError(f"{spec} holds {len(specs)} specs; submit them one at a time")
            spec = specs[0]
        result: dict[str, Any] = self._call("POST", "/api/sweeps", json=spec)
        return result

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/sweeps/{sweep_id}")
        return result

    def sweeps(self, study: str | None = None) -> list[dict[str, Any]]:
        """Sweeps, newest first (at most 1000)."""
        params: dict[str, Any] = {"limit": 1000, **({"study": study} if study else {})}
        result: list[dict[str, Any]] = self._call("GET", "/api/sweeps", params=params)
        return result

    def configs(self, sweep_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/api/sweeps/{sweep_id}/configs")
        return result

    def runs(self, sweep_id: int, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        result: list[dict[str, Any]] = self._call("GET", f"/api/sweeps/{sweep_id}/runs", params=params)
        return result

    def run(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/runs/{run_id}")
        return result

    def run_metrics(self, run_id: int) -> dict[str, dict[str, list[Any]]]:
        """One run's series: {key: {"epochs": [...], "values": [...]}}."""
        result: dict[str, dict[str, list[Any]]] = self._call("GET", f"/api/runs/{run_id}/metrics")["series"]
        return result

    def cancel(self, sweep_id: int) -> dict[str, Any]:
        """Cancel the sweep's queued runs and ask running ones to stop."""
        result: dict[str, Any] = self._call("POST", f"/api/sweeps/{sweep_id}/cancel")
        return result

    def metrics(self, sweep_id: int, keys: list[str] | None = None) -> pd.DataFrame:
        """Every value of the sweep in long form: columns sweep, config, config_label, seed, run,
        key, epoch, value (NaN where the run reported NaN or inf)."""
        import pandas as pd

        params = {"keys": keys} if keys else {}
        records = []
        try:
            with self.http.stream("GET", f"/api/sweeps/{sweep_id}/metrics.jsonl", params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                for line in response.iter_lines():
                    if line:
                        records.append(json.loads(line))
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach sweeplab at {self.url}: {exc}") from exc
        frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
        return frame.astype(DTYPES)

    # External runs (what SweeplabCallback uses)

    def create_external_run(self, sweep: str, config: dict[str, Any], seed: int, **extra: Any) -> dict[str, Any]:
        """Start a run of CONFIG with SEED in the external sweep named SWEEP (created on first use).
        EXTRA: study, dataset, epochs, client_token (idempotency key), host."""
        body = {"sweep": sweep, "config": config, "seed": seed, **{k: v for k, v in extra.items() if v is not None}}
        result: dict[str, Any] = self._call("POST", "/api/external/runs", json=body)
        return result

    def log_epoch(self, run_id: int, epoch: int, metrics: dict[str, float | None],
                  seconds: float = 0.0) -> dict[str, Any]:
        """Record one epoch of an external run (idempotent); the answer says if a stop was asked."""
        body = {"epoch": epoch, "metrics": metrics, "seconds": seconds}
        result: dict[str, Any] = self._call("POST", f"/api/runs/{run_id}/epochs", json=body)
        return result

    def heartbeat(self, run_id: int) -> dict[str, Any]:
        """Tell the server an external run's client is alive (during a long epoch); the answer says
        if a stop was asked and how often the server expects a heartbeat (`heartbeat_seconds`)."""
        result: dict[str, Any] = self._call("POST", f"/api/runs/{run_id}/heartbeat")
        return result

    def finish_run(self, run_id: int, status: str = ExternalEnding.SUCCEEDED,
                   error: str | None = None) -> dict[str, Any]:
        """End an external run: succeeded, failed or cancelled."""
        result: dict[str, Any] = self._call("POST", f"/api/runs/{run_id}/finish",
                                            json={"status": status, "error": error})
        return result

    # Progress

    def progress(self, sweep_ids: list[int]) -> dict[str, Any]:
        """Runs ended, running, succeeded and failed, epochs done and left: {"sweeps": [{"id", ...}],
        "total": {...}}, counted by the server in one request however many runs the sweeps hold."""
        result: dict[str, Any] = self._call("GET", "/api/sweeps/progress", params={"ids": sweep_ids})
        return result

    def wait(self, sweep_ids: list[int] | int, poll: float = 2.0, progress: bool = True,
             timeout: float | None = None) -> bool:
        """Block until no run of the sweeps is queued or running and no adaptive sweep among them has
        more to come (a race's next round, a search's next configs), showing runs done/total, epochs/s
        and ETA; True if every run succeeded or was pruned (an adaptive sweep's intended early stop).
        TimeoutError after TIMEOUT seconds."""
        ids = [sweep_ids] if isinstance(sweep_ids, int) else list(sweep_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = SweepProgress(enabled=progress)
        try:
            while True:  # one request per tick, whatever the number of sweeps and runs
                total: dict[str, int] = self.progress(ids)["total"]
                bar.update(total)
                if total["ended"] == total["runs"] and not total.get("more_to_come", False):
                    return total[RunStatus.SUCCEEDED] + total.get(RunStatus.PRUNED, 0) == total["runs"]
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"sweeps {ids} still have active runs after {timeout} s")
                time.sleep(poll)
        finally:
            bar.close()


class SweepProgress:
    """A tqdm bar over runs (done / total) whose postfix shows epochs/s and an ETA from epochs left.

    Epochs are the better clock: runs of a pack end together, so a rate of runs jumps."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]"

    def __init__(self, enabled: bool = True, file: Any = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc="runs", bar_format=self.BAR_FORMAT, disable=not enabled,
                        file=file or sys.stderr, dynamic_ncols=True)
        self.start: tuple[float, int] | None = None

    def update(self, t: dict[str, int]) -> str:
        """Redraw from fresh totals (GET /api/sweeps/progress's `total`: runs, ended, running,
        failed, epochs_done, epochs_left); returns the postfix (for tests and logs)."""
        from tqdm import tqdm

        now = time.monotonic()
        if self.start is None:
            self.start = (now, t["epochs_done"])
        elapsed, trained = now - self.start[0], t["epochs_done"] - self.start[1]
        rate = trained / elapsed if elapsed > 0 and trained > 0 else 0.0
        eta = tqdm.format_interval(t["epochs_left"] / rate) if rate > 0 else "?"
        postfix = f"{rate:.1f} epochs/s, ETA {eta}, {t[RunStatus.RUNNING]} running, {t[RunStatus.FAILED]} failed"
        self.bar.total, self.bar.n = t["runs"], t["ended"]
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()
        return postfix

    def close(self) -> None:
        self.bar.close()
