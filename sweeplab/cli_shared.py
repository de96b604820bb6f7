"""What every `sweeplab` command shares: the exit statuses, CliError (an error the user can fix,
shown as one line), one bounded line of any message, what a server's refusal says, and the
settings read afresh."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def refusal(exc: ClientError) -> str:
    """What the server's envelope says is wrong: every failing field (`loc: msg; ...`, where the
    envelope's message names only the first few), else its message."""
    if exc.fields:
        return "; ".join(f"{f['loc']}: {f['msg']}" if f["loc"] else f["msg"] for f in exc.fields)
    return str(exc).removeprefix(f"{exc.status_code}: ")
