"""The commands that run sweeplab's own processes: `migrate`, `serve`, `worker`, and `up` (the
server and N workers as child processes). Each imports what it runs only when it runs: the worker
and TensorFlow come with `worker` alone."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from typing import Any

from sweeplab.cli_shared import _settings
from sweeplab.logs import configure_server_logging


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.migrate import migrate

    settings = _settings()
    revision = migrate(settings.database_url)
    print(f"database at revision {revision}")
    return 0


def _warn_open(host: str, token_set: bool) -> None:
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if token_set:
        logging.getLogger("sweeplab").info("API token set: changes need 'Authorization: Bearer <token>'")
    elif loopback:
        logging.getLogger("sweeplab").warning(
            "no SWEEPLAB_API_TOKEN set: listening on %s only; set a token before serving other hosts", host)
    else:
        logging.getLogger("sweeplab").warning(
            "no SWEEPLAB_API_TOKEN set and listening on %s: anyone who reaches this port can submit and cancel",
            host)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.migrate import migrate

    settings = _settings()
    migrate(settings.database_url)
    _warn_open(args.host, settings.api_token is not None)
    configure_server_logging(args.access_log)
    # log_config=None: uvicorn keeps the set-up of sweeplab.logs instead of installing its own.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, log_level=None,
                access_log=args.access_log)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.migrate import migrate
    from worker.main import Worker

    settings = _settings(pack_size=args.pack_size)
    migrate(settings.database_url)
    worker = Worker(settings)
    worker.install_signal_handlers()
    worker.run(once=args.once)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, then run the server and N workers as child processes until Ctrl-C or SIGTERM."""
    from app.migrate import migrate

    settings = _settings()
    migrate(settings.database_url)
    exe = [sys.executable, "-m", "sweeplab.cli"]
    # A line per request of the dashboard's polls would bury the workers' lines: asked for only.
    quiet = ["--verbose"] if args.verbose else ["--no-access-log"]
    children = [subprocess.Popen([*exe, "serve", "--host", args.host, "--port", str(args.port), *quiet])]
    pack = ["--pack-size", str(args.pack_size)] if args.pack_size else []
    verbose = ["--verbose"] if args.verbose else []
    children += [subprocess.Popen([*exe, "worker", *pack, *verbose]) for _ in range(args.workers)]
    print(f"sweeplab: dashboard on http://{args.host}:{args.port}/ with {args.workers} worker(s); Ctrl-C stops all",
          flush=True)
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.3)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
    return 0 if stopping else 1
