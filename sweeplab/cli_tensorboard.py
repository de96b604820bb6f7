"""`sweeplab import-tensorboard`: TensorBoard event files posted as external runs
(sweeplab.tensorboard_import), with errors as one line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sweeplab.cli_shared import CliError, one_line, refusal


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
