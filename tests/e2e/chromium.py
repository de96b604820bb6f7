"""What the browser tests share (their fixtures, `browser` and `page`, are in tests/e2e/conftest.py):
Debian's Chromium driven by Playwright (never a downloaded browser), the markers of a browser test
(a module's `pytestmark = BROWSER_MARKS`), and a page that records console errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from app.config import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = PROJECT_ROOT / "test-output" / "screenshots"
BROWSER_MARKS = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs Playwright's Python package"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


class Page:
    """A fresh browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.base, self.errors = base, []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path, wait_until="domcontentloaded")
        assert response is not None and response.status == 200, f"{path} answered {response and response.status}"
        self.page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        return self.page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def charts(self) -> int:
        return int(self.page.locator(".js-plotly-plot").count())
