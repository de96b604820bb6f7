"""The `sweeplab` command. Light commands (serve, migrate, submit, import-tensorboard) never import TensorFlow.

An error a user can fix (a spec file that is missing, unreadable, not YAML or not a valid spec; a
server that cannot be reached or refuses the spec; bad settings) is one line on stderr naming the
file, and line and column for YAML and JSON, never a traceback. Exit status: 0 done, 2 any such
error (unreachable server included: nothing was submitted), 1 `submit --wait` where a run failed or
was cancelled (pruned runs are an adaptive sweep's intended ending), 130 interrupted.

Every command logs through sweeplab.logs: sweeplab's lines at INFO (SWEEPLAB_LOG_LEVEL), libraries'
at WARNING unless `--verbose`; `submit --wait` shows its progress bar and nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.logs import configure_logging, configure_server_logging

if TYPE_CHECKING:
    from sweeplab.client import ClientError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
MAX_MESSAGE_CHARS = 600


class CliError(Exception):
    """An error the user can fix, shown as one line: `sweeplab <command>: <message>`."""


def one_line(text: object) -> str:
    """TEXT on one bounded line: server and parser messages may span several."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 1] + "…"


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


def _yaml_error(path: Path, exc: Any) -> CliError:
    """PyYAML's message (several lines, "<unicode string>" for the file) as path:line:column."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return CliError(f"{path}: not valid YAML: {one_line(exc)}")
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = ""
    if context and context_mark is not None and context_mark.line != mark.line:
        where = f" (line {context_mark.line + 1}, column {context_mark.column + 1})"
    problem = getattr(exc, "problem", None) or "not valid YAML"
    lead = f"{context}{where}: " if context else ""
    hint = " (YAML indents with spaces, never tabs)" if "'\\t'" in problem else ""
    return CliError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {one_line(lead + problem)}{hint}")


def _decode_error(path: Path, exc: UnicodeDecodeError) -> CliError:
    try:
        data = path.read_bytes()[:exc.start]
    except OSError:
        return CliError(f"{path}: not UTF-8 text")
    line = data.count(b"\n") + 1
    column = len(data) - (data.rfind(b"\n") + 1) + 1
    bad = exc.object[exc.start:exc.start + 1].hex()
    return CliError(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{bad}); save the file as UTF-8")


def read_spec_file(path: Path) -> list[dict[str, Any]]:
    """The spec documents of PATH, each a mapping; CliError says, in one line, what is wrong."""
    import yaml

    from sweeplab.client import load_spec_file

    try:
        specs = load_spec_file(path)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory; give a YAML or JSON spec file") from None
    except PermissionError:
        raise CliError(f"{path}: permission denied") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read it: {one_line(exc.strerror or exc)}") from None
    except UnicodeDecodeError as exc:
        raise _decode_error(path, exc) from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    except RecursionError:
        raise CliError(f"{path}: nested too deeply") from None
    except ValueError as exc:  # too large, or no document at all: the message names the file
        raise CliError(one_line(exc)) from None
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            what = f"document {i + 1}" if len(specs) > 1 else "the spec"
            kind = "a list" if isinstance(spec, list) else f"a {type(spec).__name__}"
            hint = "; separate several specs with '---' lines" if isinstance(spec, list) else ""
            raise CliError(f"{path}: {what} is {kind}, not a mapping of spec fields (name: ..., grid: ...){hint}")
    return specs


def _spec_json(spec: dict[str, Any]) -> bytes:
    """The spec as JSON the server judges field by field: YAML dates as text, NaN as NaN (the
    server names the field), a lone surrogate escaped (likewise), where httpx's encoder would raise."""
    return json.dumps(spec, default=str).encode()


def refusal(exc: ClientError) -> str:
    """What the server's envelope says is wrong: every failing field (`loc: msg; ...`, where the
    envelope's message names only the first few), else its message."""
    if exc.fields:
        return "; ".join(f"{f['loc']}: {f['msg']}" if f["loc"] else f["msg"] for f in exc.fields)
    return str(exc).removeprefix(f"{exc.status_code}: ")


def _post_spec(client: Any, path: str, spec: dict[str, Any], where: str) -> Any:
    from sweeplab.client import ClientError

    try:
        return client._call("POST", path, content=_spec_json(spec), headers={"content-type": "application/json"})
    except ClientError as exc:
        if exc.status_code is None:
            raise CliError(f"{where}: not submitted: {one_line(exc)}; is `sweeplab serve` running? "
                           "(--url or SWEEPLAB_URL)") from None
        if exc.status_code == 422:
            raise CliError(f"{where}: invalid spec: {one_line(refusal(exc))}") from None
        if exc.status_code >= 500:
            raise CliError(f"{where}: the server failed ({one_line(exc)}); nothing more was submitted") from None
        raise CliError(f"{where}: refused: {one_line(exc)}") from None


def submit_specs(client: Any, path: Path, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit every spec of PATH; several are all checked by the server first, so that a bad third
    document does not leave the first two queued."""
    def where(i: int) -> str:
        return f"{path} document {i + 1}" if len(specs) > 1 else str(path)

    if len(specs) > 1:
        for i, spec in enumerate(specs):
            _post_spec(client, "/api/sweeps/validate", spec, where(i))
    return [_post_spec(client, "/api/sweeps", spec, where(i)) for i, spec in enumerate(specs)]


def cmd_submit(args: argparse.Namespace) -> int:
    from sweeplab.client import Client, ClientError

    path = Path(args.spec)
    specs = read_spec_file(path)
    with Client(args.url, token=os.environ.get("SWEEPLAB_API_TOKEN")) as client:
        created = submit_specs(client, path, specs)
        for sweep in created:
            page = f"{args.url.rstrip('/')}/sweeps/{sweep['id']}"
            print(f"sweep {sweep['id']} '{sweep['name']}': {sweep['runs']} runs queued  {page}", flush=True)
        if not args.wait:
            return 0
        try:
            return 0 if client.wait([s["id"] for s in created]) else 1
        except ClientError as exc:
            raise CliError(f"{path}: submitted, but lost the server while waiting: {one_line(exc)}") from None


def cmd_import_tensorboard(args: argparse.Namespace) -> int:
    from sweeplab.client import Client, ClientError
    from sweeplab.tensorboard_import import LogdirError, import_tensorboard

    logdir = Path(args.logdir)
    try:
        with Client(args.url, token=os.environ.get("SWEEPLAB_API_TOKEN")) as client:
            summary = import_tensorboard(client, logdir, args.sweep, args.study, args.config_from_path,
                                         progress=not args.no_progress)
    except LogdirError as exc:
        raise CliError(one_line(exc)) from None
    except ClientError as exc:
        if exc.status_code is None:
            raise CliError(f"{logdir}: {one_line(exc)}; is `sweeplab serve` running? (--url or SWEEPLAB_URL)") from None
        raise CliError(f"{logdir}: refused: {one_line(refusal(exc))}") from None
    for line in summary.skipped:
        print(f"skipped {line}")
    page = f"{args.url.rstrip('/')}/sweeps/{summary.sweep_id}"
    print(f"sweep {summary.sweep_id} '{args.sweep}': {summary.created} runs imported ({summary.epochs} epochs), "
          f"{summary.resumed} resumed, {len(summary.skipped)} already there  {page}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweeplab", description="Run, watch and compare sweeps of small Keras models.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="libraries' log lines too (httpx, alembic, uvicorn's access log under `up`); "
                             "SWEEPLAB_LOG_LEVEL sets sweeplab's own level")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    up = add("up", help="migrate, start the dashboard and N workers (Ctrl-C stops all)")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--pack-size", type=int, default=None)
    up.set_defaults(func=cmd_up)
    serve = add("serve", help="start the web server (API and dashboard)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.set_defaults(func=cmd_serve)
    worker = add("worker", help="claim and train queued runs")
    worker.add_argument("--pack-size", type=int, default=None, help="most runs trained as one model (1: no packing)")
    worker.add_argument("--once", action="store_true",
                        help="exit (status 0) when nothing queued is left that this worker can claim, after its "
                             "current pack and one grace poll (batch jobs: deploy/slurm/)")
    worker.set_defaults(func=cmd_worker)
    mig = add("migrate", help="create or upgrade the database schema")
    mig.set_defaults(func=cmd_migrate)
    submit = add("submit", help="submit a sweep spec file (YAML or JSON; several YAML documents allowed)",
                 epilog="exit status: 0 submitted (and, with --wait, every run succeeded or was pruned); 1 "
                        "with --wait when some run failed or was cancelled; 2 any error, reported in one line: "
                        "the file (missing, not YAML/JSON, not a valid spec) or the server (unreachable, "
                        "refusing); 130 interrupted")
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="show progress until the sweeps end")
    submit.add_argument("--url", default=os.environ.get("SWEEPLAB_URL", "http://127.0.0.1:8000"))
    submit.set_defaults(func=cmd_submit)
    tb = add("import-tensorboard", help="import TensorBoard event files (Keras' TensorBoard callback) as external runs",
             epilog="one run per run directory (train/ and validation/ under it); Keras' step 0 is epoch 1; the "
                    "config from HParams, else --config-from-path's named groups (group seed: the replicate); "
                    "running it again imports nothing twice. Exit status: 0 done, 2 any error (nothing posted "
                    "when LOGDIR or the options are wrong)")
    tb.add_argument("logdir")
    tb.add_argument("--sweep", required=True, help="the external sweep to import into (created on first use)")
    tb.add_argument("--study", default=None)
    tb.add_argument("--config-from-path", default=None, metavar="REGEX",
                    help="named groups over each run directory's path below LOGDIR, e.g. "
                         "'width=(?P<width>\\d+)/seed=(?P<seed>\\d+)'; used when a run has no HParams")
    tb.add_argument("--url", default=os.environ.get("SWEEPLAB_URL", "http://127.0.0.1:8000"))
    tb.add_argument("--no-progress", action="store_true", help="no progress bars")
    tb.set_defaults(func=cmd_import_tensorboard)
    return p


def _log_level() -> str | None:
    """SWEEPLAB_LOG_LEVEL as Settings reads it; None (INFO) while the settings are invalid: the
    command that needs them reports that in one line."""
    from pydantic import ValidationError

    from app.config import get_settings

    get_settings.cache_clear()
    try:
        return get_settings().log_level
    except ValidationError:
        return None


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, _log_level())
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"sweeplab {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValidationError as exc:  # settings from SWEEPLAB_* variables or .env
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"sweeplab {args.command}: invalid settings: {one_line(errors)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"sweeplab {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
