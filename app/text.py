"""Text the databases can store: a lone UTF-16 surrogate (JSON allows "\\ud800") cannot be encoded
as UTF-8, so PostgreSQL and SQLite both refuse it. Input is checked before it reaches them."""

from __future__ import annotations

from typing import Any


def encodable(text: str) -> bool:
    """Whether TEXT can be stored (encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_unencodable(value: Any, where: str = "") -> str | None:
    """The dotted path of the first string (key or value) in VALUE that cannot be stored, else None."""
    if isinstance(value, str):
        return None if encodable(value) else (where or "value")
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if isinstance(k, str) and not encodable(k):
                return f"{where}.<key>" if where else "<key>"
            found = first_unencodable(v, path)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = first_unencodable(v, f"{where}.{i}" if where else str(i))
            if found:
                return found
    return None


def not_blank(value: str | None) -> str | None:
    """VALUE stripped of surrounding spaces; a ValueError (a 422 at its field) when nothing is left."""
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value.strip() if value is not None else None
