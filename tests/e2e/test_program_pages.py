"""The pages of a program's run in Chromium: the run page shows the program's output and follows it
while it runs (no confusion matrix, no console error); the dashboard lists the worker with its
programs; the sweep page says who offers the program."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from app.config import Settings
from app.services.runs import cancel_run
from tests.conftest import LiveServer, wait_for
from tests.e2e.test_pages import CHROMIUM, Page, browser  # noqa: F401 (the module's browser fixture)
from tests.factories import get_run, make_sweep, metric_rows, runs_of
from tests.integration.test_programs import FAKE, BackgroundWorker

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Page]:  # noqa: F811
    p = Page(browser, live_server.url)
    yield p
    p.context.close()


def test_a_programs_run_page_follows_its_output(page: Page, settings: Settings, engine: Engine,
                                                tmp_path: Path) -> None:
    folder = tmp_path / "programs"
    folder.mkdir()
    (folder / "fake.py").write_text(FAKE)
    psettings = settings.model_copy(update={"programs_dir": folder, "program_kill_grace_seconds": 0.5})
    sweep_id = make_sweep(engine, program="fake", epochs=40, params={"sleep": 0.4, "chatty": True}).id
    (run,) = runs_of(engine, sweep_id)
    with BackgroundWorker(psettings, engine) as worker:
        wait_for(lambda: len(metric_rows(engine, run.id)) >= 2 and get_run(engine, run.id).output, 20,
                 message="the first epochs and output")
        p = page.open(f"/runs/{run.id}")
        output = p.locator("#run-output")
        first = output.text_content() or ""
        assert "[sweeplab worker] program fake" in first and p.locator("#chart-confusion").count() == 0
        assert p.locator("#run-program").text_content().startswith("fake")
        # followed live: later epochs' lines arrive without a reload
        p.wait_for_function("(n) => document.getElementById('run-output').textContent.length > n", arg=len(first),
                            timeout=15_000)
        page.shot("program-run")
        index = page.open("/")
        row = index.locator(f'#worker-table tr[data-worker-id="{worker.worker_id}"]')
        assert "fake" in (row.text_content() or "")
        sweep = page.open(f"/sweeps/{sweep_id}")
        assert "offered by 1 live worker" in (sweep.locator("#program-workers").text_content() or "")
        cancel_run(engine, run.id)
        wait_for(lambda: get_run(engine, run.id).status == "cancelled", 10, message="cancelled")
    done = page.open(f"/runs/{run.id}").locator("#run-output").text_content() or ""
    # stopped by its channel's answer (told to stop) or by SIGTERM, whichever saw the cancel first
    assert "told to stop" in done or "stopping the program: cancelled" in done
    assert done.rstrip().splitlines()[-1].startswith("[sweeplab worker] ")
    assert page.errors == []
