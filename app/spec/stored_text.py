"""Text a spec may hold: what both databases store alike, checked at the field so a bad character is a 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from app.text import encodable

SURROGATE_MESSAGE = "text with a lone surrogate character cannot be stored"


def storable(value: str) -> bool:
    """Whether both databases store VALUE alike: UTF-8 encodable and no NUL (PostgreSQL's text
    refuses NUL where SQLite keeps it)."""
    return encodable(value) and "\x00" not in value


def _check_storable(value: str) -> str:
    """Unstorable text is a 422 at its field instead of a driver error (a 500, or a broken stream)."""
    if not encodable(value):
        raise ValueError(SURROGATE_MESSAGE)
    if "\x00" in value:
        raise ValueError("text with a NUL character cannot be stored")
    return value


# A string that reaches a text column or a query on one (names, filters, metric keys).
StoredText = Annotated[str, AfterValidator(_check_storable)]
