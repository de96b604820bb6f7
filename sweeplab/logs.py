"""One logging set-up for every command (serve, up, worker, migrate, submit, the bench scripts).

sweeplab's own loggers (all named `sweeplab.*`) write at INFO; libraries (httpx, alembic,
uvicorn, TensorFlow's Python side) only at WARNING, so that a line per HTTP request or per
migration step never drowns what matters, nor a progress bar. SWEEPLAB_LOG_LEVEL (Settings.log_level)
sets sweeplab's level; `--verbose` lets libraries write at it too (at least INFO). A server's
own lines (uvicorn's start and shutdown, its access log when it keeps one) are written at INFO:
they are the record of what the server did and answered.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(client_addr)s - "%(request_line)s" %(status_code)s'
OWN_LOGGER = "sweeplab"


def configure_logging(verbose: bool = False, level: str | None = None, stream: TextIO | None = None) -> None:
    """Send every log record to STREAM (stderr) in one format: sweeplab's at LEVEL (INFO unless
    given), other libraries' at WARNING, or at LEVEL too when VERBOSE. Safe to call again (a test,
    or a command that learns its level late): it replaces what an earlier call set."""
    own = logging.getLevelNamesMapping().get((level or "INFO").upper(), logging.INFO)
    if verbose:
        own = min(own, logging.INFO)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(own if verbose else max(own, logging.WARNING))
    logging.getLogger(OWN_LOGGER).setLevel(own)
    for name in ("httpx", "httpcore", "alembic", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.NOTSET)  # the root's level decides


def configure_server_logging(access_log: bool, stream: TextIO | None = None) -> None:
    """A server's own lines at INFO: uvicorn's start and shutdown (`Application shutdown
    complete`), and its access log when ACCESS_LOG (one line per request, status phrase included:
    `"GET /api/sweeps HTTP/1.1" 200 OK`). uvicorn is then run with log_config=None, so it keeps these."""
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    access = logging.getLogger("uvicorn.access")
    for old in list(access.handlers):
        access.removeHandler(old)
    access.propagate = False
    access.disabled = not access_log
    if not access_log:
        return
    from uvicorn.logging import AccessFormatter

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(AccessFormatter(ACCESS_FORMAT, use_colors=False))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
