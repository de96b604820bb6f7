"""The browser fixtures of every page test: one Chromium per test module, a fresh page per test
(tests/e2e/chromium.py holds what they share; a module marks itself with BROWSER_MARKS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.e2e.chromium import ARGS, CHROMIUM, SHOTS, Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # only where a test asks for a browser

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Page]:
    p = Page(browser, live_server.url)
    yield p
    p.context.close()
