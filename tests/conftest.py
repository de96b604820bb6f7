"""Shared fixtures: a real database per test (temp-file SQLite, or PostgreSQL when
SWEEPLAB_TEST_DATABASE_URL is set), settings, a small generated dataset, live servers and workers."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.config import PROJECT_ROOT, Settings
from app.db import dispose_engines, engine_for
from app.migrate import migrate

PG_URL = os.environ.get("SWEEPLAB_TEST_DATABASE_URL")
UNIT_DIR = Path(__file__).parent / "unit"


def _is_unit(item: pytest.Item) -> bool:
    return UNIT_DIR in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit touch no database (the `database_url` fixture refuses them), so the PostgreSQL
    pass leaves them to the SQLite pass instead of running the same code twice."""
    if not PG_URL:
        return
    unit = [item for item in items if _is_unit(item)]
    if unit:
        config.hook.pytest_deselected(items=unit)
        items[:] = [item for item in items if not _is_unit(item)]


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: each class lights its own 7x7 block (plus noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 4)
        x[i, r * 7 : r * 7 + 7, c * 7 : c * 7 + 7] = 220
    return x, y


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a small generated `mnist.npz` and `fashion_mnist.npz`."""
    folder = tmp_path_factory.mktemp("datasets")
    xt, yt = make_images(600, 1)
    xs, ys = make_images(200, 2)
    for name in ("mnist", "fashion_mnist"):
        np.savez(folder / f"{name}.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return folder


def _fresh_pg_database(base_url: str, template: str | None = None) -> str:
    """A new database on BASE_URL's server: empty, or a copy of the database named TEMPLATE."""
    url = make_url(base_url)
    name = f"sweeplab_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(db_url: str) -> None:
    url = make_url(db_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database that `migrate` brought to head once per session: a test that asks for `engine`
    gets a copy of it (a PostgreSQL template, a SQLite file) instead of running every migration."""
    if PG_URL:
        url = _fresh_pg_database(PG_URL)
        migrate(url)  # disposes its engine: CREATE DATABASE ... TEMPLATE needs no one connected
        yield make_url(url).database or ""
        _drop_pg_database(url)
    else:
        path = tmp_path_factory.mktemp("template") / "head.db"
        migrate(f"sqlite:///{path}")
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself, none in a -wal
        con.close()
        yield str(path)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own for each test: empty, or already at head when the test asks for
    `engine` (whose `migrate` then finds nothing to do). Unit tests get none: a test that needs a
    database belongs in tests/integration (and runs in both passes)."""
    if _is_unit(request.node):
        pytest.fail(f"{request.node.nodeid}: a unit test asked for a database; move it to tests/integration")
    template = request.getfixturevalue("migrated_template") if "engine" in request.fixturenames else None
    if PG_URL:
        url = _fresh_pg_database(PG_URL, template)
        yield url
        dispose_engines()
        _drop_pg_database(url)
    else:
        path = tmp_path / "sweeplab.db"
        if template:
            shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        dispose_engines()


def make_settings(database_url: str, data_dir: Path, artifacts_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url, "data_dir": data_dir, "artifacts_dir": artifacts_dir,
        "lease_seconds": 5.0, "heartbeat_seconds": 1.0, "reap_seconds": 1.0, "poll_seconds": 0.1,
        "trainer": "fake", "pack_size": 4,
        "preload_statistics": False,  # 1-3 s of CPU per server start; tests/integration/test_preload.py turns it on
        "warm_up_sweeps": 0,  # background reads at start; tests/integration/test_warmup.py turns it on
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    """Short leases and the fake trainer; tests that train for real override `trainer`."""
    return make_settings(database_url, data_dir, tmp_path / "artifacts")


@pytest.fixture
def engine(settings: Settings) -> Engine:
    migrate(settings.database_url)
    return engine_for(settings)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPLAB_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"SWEEPLAB_{name.upper()}"] = str(value)
    env.update(extra)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether anything accepts connections on this port of 127.0.0.1."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def healthy(port: int) -> bool:
    """Whether a sweeplab server on this port answers /api/health with 200."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def sweeplab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeplab.cli", *args]


class LiveServer:
    """`sweeplab serve` as a real process on a free port."""

    def __init__(self, settings: Settings, log_path: Path, **env: str):
        self.settings, self.log_path, self.env = settings, log_path, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LiveServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(sweeplab_command("serve", "--port", str(self.port)), cwd=PROJECT_ROOT,
                                     env=settings_env(self.settings, **self.env), stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # A bare connect until the port listens (an HTTP client costs ~30 ms of CPU to build,
            # taken from the server starting on the other core), then the health check.
            if listening(self.port) and healthy(self.port):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def live_server(settings: Settings, engine: Engine, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(settings, tmp_path / "server.log").start()
    yield server
    server.stop()


def start_worker(settings: Settings, log_path: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`sweeplab worker` as a real process (its output appended to log_path)."""
    log = open(log_path, "ab")
    return subprocess.Popen(sweeplab_command("worker", *args), cwd=PROJECT_ROOT,
                            env=settings_env(settings, **env), stdout=log, stderr=log)


def wait_for(predicate: object, timeout: float, interval: float = 0.2, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
