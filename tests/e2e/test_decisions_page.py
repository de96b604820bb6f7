"""The sweep page of a race and of a pruning sweep in Debian's Chromium against a live server: each
config's decision and why, as the decisions route says ("settled after 6 seeds: worse than the best,
adjusted p = ..."; "pruned at epoch 2: upper bound ... below the best's lower bound ..."), the methods,
the retry button for pruned runs, the pruned colour in the progress bar; no console error."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from app.services.planner import plan
from app.services.pruning import after_epoch
from app.services.queue import RunStatus, claim_runs, finish_run
from tests.conftest import LiveServer
from tests.e2e.test_pages import CHROMIUM, Page, browser, page  # noqa: F401  (fixtures)
from tests.factories import make_sweep
from tests.integration.test_pruning import NARROW, PRUNE, WIDE, record
from tests.integration.test_race import RACE, settle_round

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
LINES = """() => [...document.querySelectorAll('#decision-list li')].map((li) => [Number(li.dataset.configId),
  li.dataset.state, li.querySelector('.verdict-tag').textContent, li.querySelector('.decision-text').textContent])"""


def test_the_sweep_page_says_what_the_race_and_the_pruning_decided(page: Page, engine: Engine,  # noqa: F811
                                                                  live_server: LiveServer) -> None:
    race = make_sweep(engine, name="race <b>", epochs=1, grid={"model.hidden": [[2], [4], [32]]}, **RACE)
    while True:
        settle_round(engine, race.id)
        if not plan(engine, race.id).changed:
            break
    pruned = make_sweep(engine, name="prune", epochs=6, grid={"model.hidden": [[2], [64]]}, replicates=4,
                        prune=PRUNE)
    narrow, wide = claim_runs(engine, "a", 10, 30.0), claim_runs(engine, "b", 10, 30.0)
    for epoch in (1, 2):
        record(engine, narrow, epoch, NARROW)
        record(engine, wide, epoch, WIDE)
    assert after_epoch(engine, wide, 2) == set()
    for epoch in range(3, 7):
        record(engine, wide, epoch, WIDE)
    assert all(finish_run(engine, c, RunStatus.SUCCEEDED) for c in wide)

    for sweep_id in (race.id, pruned.id):
        answer = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/decisions", timeout=30).json()
        p = page.open(f"/sweeps/{sweep_id}")
        p.wait_for_function("() => Number(document.getElementById('decisions-block').dataset.drawn || 0) >= 1")
        assert p.locator("#decisions-block").is_visible()
        assert p.evaluate(LINES) == [[c["config_id"], c["state"], c["state"], c["text"]] for c in answer["configs"]]
        method = answer["race"]["method"] if answer["race"] else answer["prune"]["text"]
        assert p.locator("#race-method" if answer["race"] else "#prune-method").text_content() == method
        if sweep_id == race.id:
            assert [c["state"] for c in answer["configs"]] == ["settled", "unsettled", "best"]
            assert answer["configs"][0]["text"].startswith("settled after 6 seeds: worse than the best")
            assert "adjusted p" in answer["configs"][0]["text"]
        else:
            assert [c["state"] for c in answer["configs"]] == ["pruned", "done"]
            assert answer["configs"][0]["text"].startswith("pruned at epoch 2: upper bound ")
            assert "below the best's lower bound" in answer["configs"][0]["text"]
            assert p.locator("#retry-sweep").is_visible()  # pruned runs can be retried (they resume)
            assert "4 pruned" in p.locator("#sweep-status").inner_text()
    assert page.errors == []
