"""A small HTTP client for sweeplab's REST API (pure Python + httpx)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

MAX_SPEC_FILE_BYTES = 1_000_000


class ClientError(Exception):
    """The server refused a request, or could not be reached; the message says why."""


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
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 30.0):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach sweeplab at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("error", {}).get("message") or json.dumps(body.get("detail", body))
            except ValueError:
                message = response.text[:300]
            raise ClientError(f"{response.status_code}: {message}")
        return response.json()

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

    def sweeps(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/sweeps")
        return result

    def runs(self, sweep_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/api/sweeps/{sweep_id}/runs")
        return result

    def cancel(self, sweep_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/sweeps/{sweep_id}/cancel")
        return result

    def wait(self, sweep_ids: list[int] | int, poll: float = 2.0, progress: bool = True) -> bool:
        """Block until no run of the sweeps is queued or running; True if every run succeeded."""
        from tqdm import tqdm

        ids = [sweep_ids] if isinstance(sweep_ids, int) else list(sweep_ids)
        bar = tqdm(total=0, unit="run", desc="runs", disable=not progress, file=sys.stderr)
        while True:
            counts = [self.sweep(i)["status_counts"] for i in ids]
            total = sum(sum(c.values()) for c in counts)
            ended = sum(c["succeeded"] + c["failed"] + c["cancelled"] for c in counts)
            bar.total = total
            bar.n = ended
            bar.set_postfix(running=sum(c["running"] for c in counts), failed=sum(c["failed"] for c in counts))
            bar.refresh()
            if ended >= total:
                bar.close()
                return all(c["failed"] == 0 and c["cancelled"] == 0 for c in counts)
            time.sleep(poll)
