"""`sweeplab submit`: a spec file read with every error as one line naming the file (line and
column for YAML and JSON), its documents checked by the server before any is queued, then posted,
and `--wait`'s progress."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sweeplab.cli_shared import CliError, one_line, refusal


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
