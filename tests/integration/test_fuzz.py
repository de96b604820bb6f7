"""API fuzzing with schemathesis against a live server's /openapi.json: no 5xx, and every answer
conforms to the schema. Plus the inputs a fuzzer is unlikely to build: bodies over the size
limit, specs expanding past the run limit, YAML bombs.

schemathesis is a dev dependency: this module fails (never skips) when it is missing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import BaseSchema, GenerationMode, checks

from app.config import Settings
from tests.conftest import LiveServer, make_settings

MAX_EXAMPLES = 40  # per operation: the whole module runs in about a minute on 2 cores
MAX_RUNS = 50  # the live server's run limit, so fuzzed specs stay cheap to store
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    """One server for the module, on a database of its own (SQLite, or PostgreSQL when set)."""
    from tests.conftest import PG_URL, _drop_pg_database, _fresh_pg_database

    folder = tmp_path_factory.mktemp("fuzz")
    url = _fresh_pg_database(PG_URL) if PG_URL else f"sqlite:///{folder / 'fuzz.db'}"
    server_settings = make_settings(url, data_dir, folder / "artifacts", max_runs_per_sweep=MAX_RUNS)
    server = LiveServer(server_settings, folder / "server.log").start()
    # A few rows, so reads of existing sweeps and runs are exercised too.
    for name in ("seed", "grid"):
        spec = {"name": name, "epochs": 2, "replicates": 2, "grid": {"model.hidden": [[4], [8]]}}
        httpx.post(f"{server.url}/api/sweeps", json=spec, timeout=10).raise_for_status()
    yield server
    server.stop()
    if PG_URL:
        _drop_pg_database(url)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    # The event stream never ends by design: test_crash reads it instead.
    return schema.exclude(path_regex=r".*/stream$")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_answers_without_5xx_and_as_documented(mode: GenerationMode, api_schema: BaseSchema,
                                                   fuzz_server: LiveServer) -> None:
    """Every operation, MAX_EXAMPLES cases each: valid inputs (positive) and invalid ones (negative)."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    TALLY["operations"] = len(operations)
    for operation in operations:

        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            TALLY["cases"] += 1
            response = case.call(base_url=fuzz_server.url, timeout=30)
            TALLY[f"{response.status_code // 100}xx"] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
            TALLY["operations without negative cases"] += 1
        except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure, not just the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_fuzz_tally(fuzz_server: LiveServer) -> None:
    """Report what the fuzzer tried (the README's Reliability figures come from this line)."""
    assert TALLY["cases"] > 0, "the fuzz test did not run"
    assert TALLY["5xx"] == 0
    assert "Traceback" not in fuzz_server.log_path.read_text(errors="replace")
    print(f"\nschemathesis: {TALLY['cases']} cases; " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))


# --------------------------------------------------------------------------------------------
# Explicit cases


@pytest.fixture
def server(settings: Settings, live_server: LiveServer) -> LiveServer:
    return live_server


def test_body_over_one_megabyte_is_413(server: LiveServer) -> None:
    big = {"name": "big", "description": "x" * 1_100_000}
    answer = httpx.post(f"{server.url}/api/sweeps", json=big, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(server: LiveServer) -> None:
    """No content-length to check up front: the body is counted as it streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked", "description": "'
        for _ in range(1200):
            yield b"y" * 1000
        yield b'"}'

    answer = httpx.post(f"{server.url}/api/sweeps", content=chunks(), timeout=30,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_spec_expanding_past_the_run_limit_is_422(server: LiveServer) -> None:
    spec = {"name": "huge", "seeds": list(range(1000)), "grid": {"optimizer.learning_rate": [0.1, 0.01, 0.001],
                                                                   "batch_size": [16, 32, 64, 128]}}
    answer = httpx.post(f"{server.url}/api/sweeps", json=spec, timeout=30)
    assert answer.status_code == 422
    assert "runs" in answer.json()["error"]["message"]
    assert httpx.get(f"{server.url}/api/sweeps", timeout=10).json() == [], "nothing was stored"


def test_yaml_upload_is_parsed_safely(server: LiveServer) -> None:
    yaml_spec = "name: from yaml\nepochs: 2\nreplicates: 2\ngrid:\n  model.hidden: [[4], [8]]\n"
    answer = httpx.post(f"{server.url}/api/sweeps", content=yaml_spec, timeout=10,
                        headers={"content-type": "application/yaml"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["runs"] == 4
    # Python objects are never constructed from YAML tags.
    evil = "name: !!python/object/apply:os.system ['touch /tmp/sweeplab-pwned']\n"
    answer = httpx.post(f"{server.url}/api/sweeps", content=evil, timeout=10,
                        headers={"content-type": "application/yaml"})
    assert answer.status_code == 422
    assert not Path("/tmp/sweeplab-pwned").exists()


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["name: *i"]
)


def test_yaml_billion_laughs_is_422_not_a_hang(server: LiveServer) -> None:
    t0 = time.monotonic()
    answer = httpx.post(f"{server.url}/api/sweeps", content=BILLION_LAUGHS, timeout=20,
                        headers={"content-type": "application/yaml"})
    assert answer.status_code == 422
    assert time.monotonic() - t0 < 5
    assert httpx.get(f"{server.url}/api/health", timeout=5).status_code == 200


def test_yaml_over_the_size_limit_is_413(server: LiveServer) -> None:
    doc = "name: long\ndescription: " + json.dumps("z" * 1_200_000) + "\n"
    answer = httpx.post(f"{server.url}/api/sweeps", content=doc, timeout=30,
                        headers={"content-type": "application/yaml"})
    assert answer.status_code == 413


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
@pytest.mark.parametrize("depth", [600, 50_000])
def test_deeply_nested_bodies_are_422(server: LiveServer, content_type: str, depth: int) -> None:
    deep = '{"name": "deep", "grid": {"model.hidden": ' + "[" * depth + "]" * depth + "}}"
    answer = httpx.post(f"{server.url}/api/sweeps", content=deep, timeout=30, headers={"content-type": content_type})
    assert answer.status_code == 422, answer.text[:300]
    assert httpx.get(f"{server.url}/api/health", timeout=5).status_code == 200


# Answers a fuzzer reaches only by luck (an id that is not stored, a refused content type, a
# cross-site Origin, a body over the limit): each must be an answer the schema documents, as
# schemathesis' status-code check judges it.
UNLIKELY_ANSWERS = [
    ("GET", "/api/compare", {"query": {"configs": "999999"}}, 404),
    ("GET", "/api/configs/aggregates", {"query": {"ids": "999998,999999"}}, 404),
    ("GET", "/api/configs/{config_id}/series", {"path_parameters": {"config_id": 999999}}, 404),
    ("GET", "/api/sweeps/{sweep_id}/metrics.csv", {"path_parameters": {"sweep_id": 999999}}, 404),
    ("POST", "/api/runs/{run_id}/cancel", {"path_parameters": {"run_id": 999999}}, 404),
    ("POST", "/api/presets/{name}", {"path_parameters": {"name": "no-such-preset"}}, 404),
    ("POST", "/api/sweeps", {"body": '{"name": "x"}', "media_type": "text/plain"}, 415),
    ("POST", "/api/sweeps/validate", {"body": "a=b", "media_type": "application/x-www-form-urlencoded"}, 415),
    ("POST", "/api/external/runs", {"body": "sweep: x\nseed: 1\n", "media_type": "application/yaml"}, 415),
    ("POST", "/api/sweeps", {"body": {"name": "x", "description": "d" * 1_100_000},
                             "media_type": "application/json"}, 413),
    ("POST", "/api/sweeps", {"body": {"name": "x"}, "media_type": "application/json",
                             "headers": {"origin": "http://evil.example"}}, 403),
]


@pytest.mark.parametrize("method,path,parts,status", UNLIKELY_ANSWERS,
                         ids=[f"{m} {p} {s}" for m, p, _, s in UNLIKELY_ANSWERS])
def test_unlikely_answers_are_documented(api_schema: BaseSchema, fuzz_server: LiveServer, method: str, path: str,
                                         parts: dict[str, object], status: int) -> None:
    operation = api_schema[path][method]
    case = operation.Case(**parts)  # type: ignore[arg-type]
    response = case.call(base_url=fuzz_server.url, timeout=30)
    assert response.status_code == status, response.text[:300]
    case.validate_response(response, checks=CHECKS)


def test_every_operation_documents_the_answers_of_the_guards(fuzz_server: LiveServer) -> None:
    """503 (no pooled connection in time, or the database away) on every operation; 403 and 415
    on every change; 413 wherever a body may come."""
    spec = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "503" in codes, f"{method} {path}"
            if method != "get":
                assert {"403", "413", "415"} <= codes, f"{method} {path}: {sorted(codes)}"
