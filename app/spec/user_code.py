"""What a spec hands to the user's own code: bounded free-form `params` (for a builder or program) and the
name of a training program; only JSON and a name ever travel, never a path or a command."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_PARAMS_CHARS = 20_000
MAX_PARAMS_DEPTH = 10


def check_params(value: dict[str, Any]) -> dict[str, Any]:
    """`params` is free-form JSON, bounded: text keys, finite numbers, at most MAX_PARAMS_CHARS as JSON
    and MAX_PARAMS_DEPTH deep."""

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_PARAMS_DEPTH:
            raise ValueError(f"params nest at most {MAX_PARAMS_DEPTH} levels deep")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValueError(f"params keys are text, not {k!r}")
                walk(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, depth + 1)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"params hold finite numbers only, not {node}")
        elif node is not None and not isinstance(node, (str, int, float, bool)):
            raise ValueError(f"params hold JSON values only, not {type(node).__name__}")

    walk(value, 0)
    if len(json.dumps(value)) > MAX_PARAMS_CHARS:
        raise ValueError(f"params take at most {MAX_PARAMS_CHARS} characters as JSON")
    return value


PROGRAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
PROGRAM_NAME_RULE = ("a program is named by its file in a worker's programs folder (SWEEPLAB_PROGRAMS_DIR) without "
                     "'.py': a letter or _, then letters, digits, _ or -, at most 100 characters; no path")


def _check_program_name(value: str | None) -> str | None:
    if value is not None and not PROGRAM_NAME.fullmatch(value):
        raise ValueError(PROGRAM_NAME_RULE)
    return value


# A training program a worker offers (worker.programs): only its name ever travels, never a path or command.
ProgramName = Annotated[str | None, AfterValidator(_check_program_name)]
