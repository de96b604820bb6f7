"""`sweeplab submit` of the bad files users write, as a real process: one line on stderr naming the
file (line and column for YAML and JSON), exit status 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.config import PROJECT_ROOT, Settings
from tests.conftest import LiveServer, free_port, settings_env, sweeplab_command

pytestmark = pytest.mark.slow


def submit(path: Path | str, url: str, settings: Settings | None = None) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings) if settings else None
    return subprocess.run(sweeplab_command("submit", str(path), "--url", url), cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The process failed with status 2 and exactly one line on stderr holding each of EXPECTED."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sweeplab submit: "), lines[0]
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert done.stdout == ""
    return lines[0]


NOWHERE = f"http://127.0.0.1:{free_port()}"  # nothing listens: the file is judged before any request

BAD_FILES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("tabs.yaml", b"name: a\n\tepochs: 2\n", (":2:1: not valid YAML", "tab")),
    ("unclosed.yaml", b"name: a\ngrid: {model.hidden: [[4], [8]\n", (":3:1: not valid YAML", "flow sequence",
                                                                      "line 2, column 22")),
    ("colon.yaml", b"name: a: b\n", (":1:8: not valid YAML", "mapping values")),
    ("quote.yaml", b"name: \"a\nepochs: 2\n", ("not valid YAML", "quoted scalar")),
    ("list.yaml", b"- name: a\n- name: b\n", ("the spec is a list, not a mapping", "---")),
    ("scalar.yaml", b"just words\n", ("the spec is a str, not a mapping",)),
    ("second.yaml", b"name: a\n---\n[1, 2]\n", ("document 2 is a list",)),
    ("empty.yaml", b"# nothing yet\n", ("holds no sweep spec",)),
    ("latin1.yaml", "name: a\nstudy: caf\u00e9\n".encode("latin-1"), (":2:11: not UTF-8 text (byte 0xe9)",)),
    ("broken.json", b'{"name": "a",\n "epochs": }\n', (":2:12: not valid JSON: Expecting value",)),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, name: str, content: bytes,
                                          expected: tuple[str, ...]) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    line = one_line_error(submit(path, NOWHERE), str(path), *expected)
    assert "<unicode string>" not in line


def test_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    one_line_error(submit(tmp_path / "nope.yaml", NOWHERE), f"{tmp_path / 'nope.yaml'}: no such file")
    one_line_error(submit(tmp_path, NOWHERE), f"{tmp_path}: is a directory")


def test_an_unreachable_server_is_one_line_and_status_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nmodel: {hidden: [4]}\n")
    one_line_error(submit(path, NOWHERE), f"{path}: not submitted: cannot reach sweeplab at {NOWHERE}",
                   "SWEEPLAB_URL")


def test_specs_the_server_refuses(live_server: LiveServer, settings: Settings, tmp_path: Path) -> None:
    cases = {
        "zero.yaml": ("name: z\nepochs: 0\n", "invalid spec: epochs: Input should be greater than or equal to 1"),
        "two.yaml": ("name: a\nepochs: 0\nbogus: 1\n", "epochs: ", "bogus: Extra inputs are not permitted"),
        "nan.yaml": ("name: n\noptimizer: {learning_rate: .nan}\n", "invalid spec: optimizer.learning_rate"),
        "surrogate.yaml": ('name: "\\ud800"\n', "invalid spec: name: text with a lone surrogate"),
        "grid.yaml": ("name: g\ngrid: {model.width: [1]}\n", "invalid spec: ", "unknown path 'model.width'"),
        # Several documents are all checked first: a bad second one leaves nothing queued.
        "multi.yaml": ("name: first\n---\nname: second\nloss: hinge\n", "multi.yaml document 2: invalid spec: loss"),
    }
    for name, (text, *expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        one_line_error(submit(path, live_server.url, settings), str(path), *expected)
    assert httpx.get(f"{live_server.url}/api/sweeps").json() == []
    good = tmp_path / "good.yaml"
    good.write_text("name: fine\nstudy: 2024-05-01\nmodel: {hidden: [4]}\nreplicates: 2\n---\nname: also\n")
    done = submit(good, live_server.url, settings)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "'fine': 2 runs queued" in done.stdout and "'also': 1 runs queued" in done.stdout
    assert {s["study"] for s in httpx.get(f"{live_server.url}/api/sweeps").json()} == {"2024-05-01", None}


def test_every_failing_field_is_named(live_server: LiveServer, settings: Settings, tmp_path: Path) -> None:
    """The envelope's message names the first five fields; the line names all of them, from its fields."""
    path = tmp_path / "many.yaml"
    extras = [f"extra{i}" for i in range(6)]
    path.write_text("name: many\nepochs: 0\n" + "".join(f"{e}: 1\n" for e in extras))
    line = one_line_error(submit(path, live_server.url, settings), f"{path}: invalid spec: epochs: ")
    for extra in extras:
        assert f"{extra}: Extra inputs are not permitted" in line, line


def test_libraries_log_only_warnings_unless_verbose(settings: Settings) -> None:
    """Alembic's INFO lines (a dozen per migrate) only with --verbose; a bad SWEEPLAB_LOG_LEVEL is
    the one-line settings error."""
    def migrate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(sweeplab_command("migrate", *args), cwd=PROJECT_ROOT, env=settings_env(settings, **env),
                              capture_output=True, text=True, timeout=60)

    quiet = migrate()
    assert quiet.returncode == 0 and quiet.stdout.startswith("database at revision"), quiet.stderr
    assert quiet.stderr == ""
    loud = migrate("--verbose")
    assert loud.returncode == 0 and "INFO alembic.runtime.migration: " in loud.stderr, loud.stderr
    assert migrate(SWEEPLAB_LOG_LEVEL="warning").stderr == ""
    bad = migrate(SWEEPLAB_LOG_LEVEL="chatty")
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr
    assert bad.stderr.splitlines() == [
        "sweeplab migrate: invalid settings: log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"]


class _Failing(BaseHTTPRequestHandler):
    """A server that fails every request: an HTML 502 from a proxy, or sweeplab's own 500 envelope."""

    def do_POST(self) -> None:
        if self.path.startswith("/proxy"):
            body, ctype, status = b"<html>\n<h1>502 Bad Gateway</h1>\n</html>\n", "text/html", 502
        else:
            body = json.dumps({"error": {"code": "internal_error", "message": "internal error;\nsee the log"}}).encode()
            ctype, status = "application/json", 500
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_error_is_one_line(failing_server: str, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\n")
    one_line_error(submit(path, failing_server), f"{path}: the server failed (500: internal error; see the log)")
    one_line_error(submit(path, f"{failing_server}/proxy"), f"{path}: the server failed (502:", "Bad Gateway")
