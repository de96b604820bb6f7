"""The `sweeplab` command. Light commands (serve, migrate, submit, import-tensorboard) never import TensorFlow.

An error a user can fix (a spec file that is missing, unreadable, not YAML or not a valid spec; a
server that cannot be reached or refuses the spec; bad settings) is one line on stderr naming the
file, and line and column for YAML and JSON, never a traceback. Exit status: 0 done, 2 any such
error (unreachable server included: nothing was submitted), 1 `submit --wait` where a run failed or
was cancelled (pruned runs are an adaptive sweep's intended ending), 130 interrupted.

Every command logs through sweeplab.logs: sweeplab's lines at INFO (SWEEPLAB_LOG_LEVEL), libraries'
at WARNING unless `--verbose`; `submit --wait` shows its progress bar and nothing else.

The commands live by concept in sweeplab.cli_processes (migrate, serve, worker, up), sweeplab.cli_submit
and sweeplab.cli_tensorboard; what they share in sweeplab.cli_shared. This module builds the parser
and runs a command (the console script `sweeplab` and `python -m sweeplab.cli`), and re-exports
their names.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sweeplab.cli_processes import _warn_open, cmd_migrate, cmd_serve, cmd_up, cmd_worker
from sweeplab.cli_shared import EXIT_ERROR, EXIT_INTERRUPTED, MAX_MESSAGE_CHARS, CliError, _settings, one_line, refusal
from sweeplab.cli_submit import (
    _decode_error,
    _post_spec,
    _spec_json,
    _yaml_error,
    cmd_submit,
    read_spec_file,
    submit_specs,
)
from sweeplab.cli_tensorboard import cmd_import_tensorboard
from sweeplab.logs import configure_logging

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "MAX_MESSAGE_CHARS", "CliError", "_decode_error", "_log_level",
           "_post_spec", "_settings", "_spec_json", "_warn_open", "_yaml_error", "build_parser",
           "cmd_import_tensorboard", "cmd_migrate", "cmd_serve", "cmd_submit", "cmd_up", "cmd_worker", "main",
           "one_line", "read_spec_file", "refusal", "submit_specs"]


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
