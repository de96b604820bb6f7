"""A report as PDF: the HTML report opened from a temporary file in headless Chromium (Debian's,
at the setting `report_chromium_path`; a browser is never downloaded) through Playwright's Python
package (the `report` extra), with every request that is not for the file itself refused, printed
once its charts are drawn.

One PDF at a time per server process (a second request while one renders is answered 503 at once,
so a burst never piles up threads), each bounded by PDF_TIMEOUT_SECONDS; the last few are kept
while the runs they show are unchanged, so asking again costs no browser. Blocking: callers run it
in a worker thread (app/api/reports.py)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import SweeplabError
from app.services.memo import Memo

PDF_TIMEOUT_SECONDS = 60.0
PAGE_WIDTH_PX = 752  # A4 less 13 mm margins each side at 96 dpi (695 px), plus the page padding (56 px)
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--no-first-run")
FOOTER = ('<div style="width: 100%; text-align: center; font: 8px Helvetica, Arial, sans-serif; color: #6b7280">'
          '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')
CACHED_PDFS = 8  # the last PDFs made, each kept while what it shows is unchanged
_rendering = threading.Lock()


recent = Memo(CACHED_PDFS)  # app.services.memo's versioned LRU, of its own: PDFs never evict chart answers


class ReportUnavailable(SweeplabError):
    """What a PDF needs is missing on this server: Playwright or Chromium."""

    status_code = 501
    code = "report_unavailable"


class ReportBusy(SweeplabError):
    status_code = 503
    code = "report_busy"


class ReportTimeout(SweeplabError):
    status_code = 504
    code = "report_timeout"


def check_available(chromium: Path) -> None:
    """Raise ReportUnavailable naming what is missing: the playwright package or the browser."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise ReportUnavailable(
            "PDF reports need the Python package playwright, which is not installed: "
            "pip install 'sweeplab[report]' (the HTML report needs nothing more)") from None
    if not chromium.is_file() or not os.access(chromium, os.X_OK):
        raise ReportUnavailable(
            f"PDF reports need Chromium, which is not at {chromium}: install it (Debian: apt-get install chromium) "
            f"or set SWEEPLAB_REPORT_CHROMIUM_PATH to its executable (the HTML report needs nothing more)")


def _left(deadline: float) -> float:
    """Milliseconds until DEADLINE, as Playwright's timeouts take them (at least 1)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReportTimeout(f"the PDF took longer than {PDF_TIMEOUT_SECONDS:.0f} s to render")
    return max(1.0, left * 1000)


def _only_the_file(route: Any) -> None:
    if route.request.url.startswith("file:"):
        route.continue_()
    else:
        route.abort()


def html_to_pdf(make_html: Callable[[], str], chromium: Path, timeout: float = PDF_TIMEOUT_SECONDS, *,
                key: Any = None, version: Any = None) -> bytes:
    """The HTML that MAKE_HTML answers, printed to A4 by Chromium at CHROMIUM once its charts are
    drawn (the report's script sets body[data-ready]), with page numbers. 501 when Playwright or
    Chromium is missing and 503 while another PDF renders (both before MAKE_HTML is called), 504
    past TIMEOUT seconds of rendering. With a KEY, the PDF last made under it is answered again
    while VERSION (of the data it shows) is the same."""
    check_available(chromium)
    if key is not None and (hit := recent.peek(key)) is not None and hit[0] == version:
        pdf_made: bytes = hit[1]
        return pdf_made
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    if not _rendering.acquire(blocking=False):
        raise ReportBusy("another PDF report is being rendered: try again in a few seconds")
    try:
        html = make_html()
        deadline = time.monotonic() + timeout
        with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as folder:
            path = Path(folder) / "report.html"
            path.write_text(html, encoding="utf-8")
            with sync_playwright() as p:
                try:
                    browser = p.chromium.launch(executable_path=str(chromium), args=list(CHROMIUM_ARGS),
                                                timeout=_left(deadline))
                except PlaywrightTimeout:
                    raise
                except PlaywrightError as exc:
                    raise ReportUnavailable(f"Chromium at {chromium} did not start: "
                                            f"{str(exc).splitlines()[0][:300]}") from None
                try:
                    context = browser.new_context(viewport={"width": PAGE_WIDTH_PX, "height": 1000})
                    context.route("**/*", _only_the_file)
                    page = context.new_page()
                    page.goto(path.as_uri(), wait_until="load", timeout=_left(deadline))
                    page.wait_for_function("document.body.dataset.ready !== undefined", timeout=_left(deadline))
                    page.emulate_media(media="print")
                    pdf: bytes = page.pdf(format="A4", print_background=True, display_header_footer=True,
                                          header_template="<span></span>", footer_template=FOOTER,
                                          margin={"top": "14mm", "bottom": "16mm", "left": "13mm", "right": "13mm"})
                    if key is not None:
                        recent.put(key, version, pdf)
                    return pdf
                finally:
                    browser.close()
    except PlaywrightTimeout:
        raise ReportTimeout(f"the PDF took longer than {timeout:.0f} s to render") from None
    finally:
        _rendering.release()
