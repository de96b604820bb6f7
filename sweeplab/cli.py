"""The `sweeplab` command. Light commands (serve, migrate, submit) never import TensorFlow."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(**overrides: Any) -> Any:
    from app.config import get_settings

    get_settings.cache_clear()
    base = get_settings()
    return base.model_copy(update={k: v for k, v in overrides.items() if v is not None}) if overrides else base


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
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=args.access_log)
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
    children = [subprocess.Popen([*exe, "serve", "--host", args.host, "--port", str(args.port)])]
    pack = ["--pack-size", str(args.pack_size)] if args.pack_size else []
    children += [subprocess.Popen([*exe, "worker", *pack]) for _ in range(args.workers)]
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


def cmd_submit(args: argparse.Namespace) -> int:
    from sweeplab.client import Client, ClientError, load_spec_file

    client = Client(args.url, token=os.environ.get("SWEEPLAB_API_TOKEN"))
    try:
        specs = load_spec_file(Path(args.spec))
        created = [client.submit(spec) for spec in specs]
    except (ClientError, OSError, ValueError) as exc:
        print(f"sweeplab submit: {exc}", file=sys.stderr)
        return 2
    for sweep in created:
        page = f"{args.url.rstrip('/')}/sweeps/{sweep['id']}"
        print(f"sweep {sweep['id']} '{sweep['name']}': {sweep['runs']} runs queued  {page}")
    if args.wait:
        return 0 if client.wait([s["id"] for s in created]) else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweeplab", description="Run, watch and compare sweeps of small Keras models.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="migrate, start the dashboard and N workers (Ctrl-C stops all)")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--pack-size", type=int, default=None)
    up.set_defaults(func=cmd_up)
    serve = sub.add_parser("serve", help="start the web server (API and dashboard)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="claim and train queued runs")
    worker.add_argument("--pack-size", type=int, default=None, help="most runs trained as one model (1: no packing)")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    mig = sub.add_parser("migrate", help="create or upgrade the database schema")
    mig.set_defaults(func=cmd_migrate)
    submit = sub.add_parser("submit", help="submit a sweep spec file (YAML or JSON; several YAML documents allowed)")
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="show progress until the sweeps end")
    submit.add_argument("--url", default=os.environ.get("SWEEPLAB_URL", "http://127.0.0.1:8000"))
    submit.set_defaults(func=cmd_submit)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
