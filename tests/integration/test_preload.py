"""The server imports scipy and statsmodels in the background once it is up (preload_statistics),
so the first table, verdicts or importance request does not pay for the imports; off, it does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys, time
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
app = create_app(Settings(database_url={url!r}, preload_statistics={on}, warm_up_sweeps=0))
with TestClient(app) as client:
    assert client.get("/api/health").status_code == 200
    wanted = ("scipy.stats", "statsmodels.stats.anova", "statsmodels.stats.power")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(m in sys.modules for m in wanted):
        time.sleep(0.05)
        if not {on}:
            break
    time.sleep(0.5)  # anything the thread imports late would show now
    print(json.dumps(sorted(m for m in wanted if m in sys.modules)))
"""


@pytest.mark.parametrize("on", [True, False])
def test_statistics_libraries_are_imported_after_start_only_when_asked(tmp_path: Path, on: bool) -> None:
    url = f"sqlite:///{tmp_path / 'preload.db'}"
    out = subprocess.run([sys.executable, "-c", PROBE.format(url=url, on=on)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == (["scipy.stats", "statsmodels.stats.anova", "statsmodels.stats.power"] if on else [])
