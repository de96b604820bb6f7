"""Which database errors are transient (app.retry.is_transient): retried by the worker while its
lease lasts, answered 503 by the server; a bug (a missing column) is neither."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from app.retry import is_transient


def wrapped(message: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize("message", ["database is locked", "database table is locked", "database or disk is full"])
def test_sqlite_busy_locked_and_full_are_transient(message: str) -> None:
    assert is_transient(wrapped(message)) and is_transient(sqlite3.OperationalError(message))


@pytest.mark.parametrize("message", ["no such column: runs.nope", "near \"SELEC\": syntax error"])
def test_sqlite_errors_of_a_bug_are_not(message: str) -> None:
    assert not is_transient(wrapped(message))
