"""Hostile and slow clients: bodies are bounded on the bytes received (chunked included) and on
the time they take, before anything else runs; an exhausted pool or an absent database answers
503 with Retry-After at once, and routes that need no database do not wait on it; and 40 slow
readers of a large export with 40 idle event streams cannot slow down anyone else.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.db import write_session
from app.main import create_app
from app.middleware import BodyLimit
from app.models import Metric
from app.services.sweeps import list_sweeps
from tests.conftest import PG_URL, LiveServer, make_settings
from tests.factories import make_sweep, runs_of

LIMIT = 1_000_000  # the default max_body_bytes


def raw_request(server: LiveServer, head: str, body_chunks: Iterator[bytes] = iter(()),
                timeout: float = 10) -> tuple[bytes, bool, int]:
    """Send HEAD then BODY_CHUNKS over a raw socket (stopping when the server closes); return the
    answer's bytes, whether the server closed the connection after answering, and the body bytes
    that the client managed to send."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sent = 0
    try:
        s.sendall(head.encode())
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the server stopped reading and closed: expected past the limit
                break
            sent += len(chunk)
        answer, closed = b"", False
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            answer += data
    finally:
        s.close()
    return answer, closed, sent


def chunked(total: int, piece: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"%x\r\n%s\r\n" % (piece, b"a" * piece)
        sent += piece
    yield b"0\r\n\r\n"


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# --------------------------------------------------------------------------------------------
# Body limits


CHUNKED = "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("path", ["/api/external/runs", "/api/sweeps", "/api/sweeps/validate"])
def test_a_chunked_body_over_the_limit_is_413(live_server: LiveServer, path: str) -> None:
    """No token is set, no content-length is sent: the bytes received are what count, and the
    server closes the connection instead of reading the rest."""
    answer, closed, _ = raw_request(live_server, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{CHUNKED}",
                                    chunked(3 * LIMIT))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"payload_too_large"' in answer and b"connection: close" in answer.lower()
    assert closed


@pytest.mark.parametrize("method,path", [("GET", "/api/health"), ("GET", "/"), ("POST", "/no/such/route"),
                                         ("POST", "/api/sweeps/1/cancel")])
def test_a_body_that_a_route_does_not_read_is_never_read(live_server: LiveServer, method: str, path: str) -> None:
    """A route without a body answers without reading one, then the connection closes: the
    server never reads (and drops) the 100 MB the client would send."""
    answer, closed, sent = raw_request(live_server, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{CHUNKED}",
                                       chunked(100 * LIMIT))
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert b"connection: close" in answer.lower() and closed
    assert sent < 50 * LIMIT, f"the server read {sent} bytes of a body it did not want"


def test_a_content_length_over_the_limit_is_413_without_waiting_for_the_body(live_server: LiveServer) -> None:
    head = ("POST /api/sweeps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * LIMIT}\r\n\r\n")
    t0 = time.monotonic()
    answer, closed, _ = raw_request(live_server, head)  # the body is never sent
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert closed and time.monotonic() - t0 < 2


def test_a_huge_chunked_body_is_not_read_into_memory(live_server: LiveServer) -> None:
    assert live_server.proc is not None
    before = peak_memory_mb(live_server.proc.pid)
    head = ("POST /api/external/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    answer, _, _ = raw_request(live_server, head, chunked(200 * LIMIT), timeout=30)
    assert answer.startswith(b"HTTP/1.1 413 ")
    grew = peak_memory_mb(live_server.proc.pid) - before
    assert grew < 30, f"the server's peak memory grew {grew:.0f} MB for a refused body"
    assert httpx.get(f"{live_server.url}/api/health", timeout=5).status_code == 200


async def _echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads its whole body and answers how long it was."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def _post_through_limit(chunks: list[bytes], pause: float, read_seconds: float) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            await asyncio.sleep(pause)
            yield chunk

    async def go() -> httpx.Response:
        app = BodyLimit(_echo_length, max_bytes=10_000, read_seconds=read_seconds)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/", content=body())

    return asyncio.run(go())


def test_a_body_trickling_in_past_its_time_is_408() -> None:
    """A slow-loris body: a few bytes at a time, each well within any idle timeout."""
    t0 = time.monotonic()
    answer = _post_through_limit([b"x"] * 100, pause=0.05, read_seconds=0.5)
    assert answer.status_code == 408 and answer.json()["error"]["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert time.monotonic() - t0 < 1.5
    assert _post_through_limit([b"x" * 1000] * 5, pause=0.01, read_seconds=5).text == "5000"
    too_big = _post_through_limit([b"x" * 4000] * 5, pause=0, read_seconds=5)
    assert too_big.status_code == 413, "the app must never see more than the limit"


# --------------------------------------------------------------------------------------------
# Pool exhausted, database away


@pytest.fixture
def quick_pool_settings(database_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(database_url, data_dir, tmp_path / "artifacts", pool_timeout_seconds=0.5)


def test_an_exhausted_pool_answers_503_with_retry_after_at_once(quick_pool_settings: Settings, engine: Engine) -> None:
    sweep_id = make_sweep(engine).id
    app = create_app(quick_pool_settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        # The first answer of each route that needs no database does one-time work (the schema's build,
        # ~0.5 s on a busy VM; the static files' first stat and MIME table; the docs' template): do it
        # before the pool is held, so the timing below measures waiting for the database, nothing else.
        no_database = ("/static/sweeplab.css", "/openapi.json", "/docs")
        for path in no_database:
            assert client.get(path).status_code == 200, path
        held = []
        try:
            for _ in range(30):  # every connection of the server's pool (10 + 20 overflow)
                held.append(app.state.engine.connect())
            t0 = time.monotonic()
            answer = client.get(f"/api/sweeps/{sweep_id}")
            assert answer.status_code == 503 and time.monotonic() - t0 < 2
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert int(answer.headers["retry-after"]) >= 1
            page = client.get(f"/sweeps/{sweep_id}", headers={"accept": "text/html"})
            assert page.status_code == 503 and "text/html" in page.headers["content-type"]
            assert "retry-after" in page.headers
            for path in no_database:  # no database needed: no wait (a wait would be the pool's 0.5 s)
                t0 = time.monotonic()
                assert client.get(path).status_code == 200, path
                assert time.monotonic() - t0 < 0.3, path
        finally:
            for conn in held:
                conn.close()
        assert client.get(f"/api/sweeps/{sweep_id}").status_code == 200


def test_a_database_that_is_away_answers_503(data_dir: Path, tmp_path: Path) -> None:
    """Nothing listens on port 1: every connection is refused (an OperationalError)."""
    settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/away", data_dir, tmp_path / "a")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.get("/api/sweeps")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable" and "retry-after" in answer.headers
        created = client.post("/api/sweeps", json={"name": "x", "epochs": 1, "replicates": 1})
        assert created.status_code == 503
        health = client.get("/api/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "retry-after" in health.headers
        assert client.get("/static/sweeplab.css").status_code == 200


@pytest.mark.skipif(PG_URL is not None, reason="SQLite's write lock")
def test_sqlite_locked_past_the_busy_timeout_is_503_not_an_error(database_url: str, data_dir: Path,
                                                                 tmp_path: Path, engine: Engine) -> None:
    settings = make_settings(database_url, data_dir, tmp_path / "a", sqlite_busy_timeout_seconds=0.3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        locker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            answer = client.post("/api/sweeps", json={"name": "x", "epochs": 1, "replicates": 1})
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert "locked" not in answer.text
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert client.post("/api/sweeps", json={"name": "x", "epochs": 1, "replicates": 1}).status_code == 201


# --------------------------------------------------------------------------------------------
# Slow readers and idle streams


RUNS, EPOCHS, KEYS = 200, 100, ("loss", "accuracy", "val_loss", "val_accuracy")
SLOW_READERS = 40
IDLE_STREAMS = 40


def big_sweep(engine: Engine) -> int:
    """A sweep of RUNS runs with EPOCHS epochs of every key: 80,000 metric rows, about 5 MB of CSV."""
    sweep = make_sweep(engine, name="big", replicates=RUNS, epochs=EPOCHS)
    for run in runs_of(engine, sweep.id):  # a transaction per run, as workers commit epochs in small ones
        with write_session(engine) as s:
            s.execute(insert(Metric), [{"run_id": run.id, "key": key, "epoch": epoch, "value": epoch / EPOCHS,
                                        "created_at": 0.0} for key in KEYS for epoch in range(1, EPOCHS + 1)])
    return sweep.id


def slow_client(server: LiveServer, path: str) -> socket.socket:
    """A client that asks for PATH and then reads nothing, through a tiny receive buffer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", server.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    return s


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slow_readers_and_idle_streams_do_not_slow_anyone_else(live_server: LiveServer, engine: Engine) -> None:
    sweep_id = big_sweep(engine)
    assert list_sweeps(engine)[0].runs == RUNS
    url = live_server.url
    socks = [slow_client(live_server, f"/api/sweeps/{sweep_id}/metrics.csv") for _ in range(SLOW_READERS)]
    socks += [slow_client(live_server, f"/api/sweeps/{sweep_id}/stream") for _ in range(IDLE_STREAMS)]
    try:
        time.sleep(2)  # every download has filled its buffers and waits on its reader
        worst: dict[str, float] = {}
        problems = []
        probes = ["/api/health", f"/api/sweeps/{sweep_id}", f"/sweeps/{sweep_id}", "/static/sweeplab.css"]
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(6):
                for path in probes:
                    t0 = time.monotonic()
                    answer = client.get(path)
                    worst[path] = max(worst.get(path, 0.0), time.monotonic() - t0)
                    if answer.status_code != 200:
                        problems.append(f"{path}: {answer.status_code}")
                time.sleep(0.5)
        slow = {p: round(t, 2) for p, t in worst.items() if t > 1.0}
        assert not slow and not problems, f"slowest answers {slow}, errors {problems[:4]}"
        # The slow readers were really served and are really stuck (not refused or finished).
        for s in socks[:SLOW_READERS]:
            assert s.recv(15).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
    # And once they are gone the whole export still reads, row for row.
    csv_text = httpx.get(f"{url}/api/sweeps/{sweep_id}/metrics.csv", timeout=60).text
    assert csv_text.count("\n") == 1 + RUNS * EPOCHS * len(KEYS)
