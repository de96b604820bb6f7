"""MLflow's search syntax, the part sweeplab understands, evaluated over runs already read.

A filter is clauses joined by AND, each an identifier, an operator and a value:

    metrics.val_accuracy > 0.9 AND params.optimizer = 'adam' AND tags.note LIKE 'rep%'
    attributes.status = 'FINISHED' AND run_name != 'x' AND params.hidden IN ('32', '64')

identifiers are `metrics.<key>`, `params.<key>`, `tags.<key>` or `attributes.<name>` (the prefix may
be singular, and an attribute may be named alone); a key may be quoted with backticks or double
quotes. Operators: =, !=, <, <=, >, >= (numbers: metrics and the start and end times), =, !=, LIKE,
ILIKE, IN, NOT IN (text: params, tags and the other attributes). A metric compares its latest
value. An order_by item is an identifier and ASC or DESC; runs without the value come last. What
is not understood is INVALID_PARAMETER_VALUE naming where, never a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidSpec

MAX_FILTER_CHARS = 2000
MAX_CLAUSES = 50
MAX_LIKE_CHARS = 200
MAX_PAGE = 1000  # runs or experiments per answer; the client asks for the next page
MAX_RESULTS = 50_000  # MLflow's own bound on max_results
KINDS = {"metrics": "metrics", "metric": "metrics", "params": "params", "param": "params", "parameter": "params",
         "parameters": "params", "tags": "tags", "tag": "tags", "attributes": "attributes", "attribute": "attributes",
         "attr": "attributes", "run": "attributes", "experiments": "attributes", "experiment": "attributes"}
NUMERIC_ATTRIBUTES = frozenset({"start_time", "end_time", "creation_time", "last_update_time"})
TEXT_ATTRIBUTES = frozenset({"run_id", "run_uuid", "run_name", "status", "user_id", "experiment_id", "artifact_uri",
                             "lifecycle_stage", "name"})
NUMERIC_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})
TEXT_OPS = frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"})

_IDENT = r"""[A-Za-z_]+(?:\.(?:`[^`]+`|"[^"]+"|[\w./:-]+))?"""
_STRING = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# Each part matches one way only (no nested quantifiers over the same text), so a long filter that
# does not parse fails in linear time, not exponential (MAX_FILTER_CHARS of "'x'  'x'  ...").
_CLAUSE = re.compile(
    rf"""\s*(?P<ident>{_IDENT})\s*(?P<op>!=|>=|<=|=|<|>|NOT\s+IN\b|IN\b|ILIKE\b|LIKE\b)\s*"""
    rf"""(?P<value>{_STRING}|\(\s*(?:(?:{_STRING})(?:\s*,\s*(?:{_STRING}))*)?\s*\)|{_NUMBER})\s*(?P<end>AND\b|$)""",
    re.IGNORECASE)
_ORDER = re.compile(rf"""\s*(?P<ident>{_IDENT})\s*(?P<dir>ASC|DESC)?\s*$""", re.IGNORECASE)
_LIST_ITEM = re.compile(_STRING)


@dataclass(frozen=True)
class Clause:
    kind: str  # metrics, params, tags or attributes
    key: str
    op: str
    value: Any  # a float, a str or a tuple of str


@dataclass(frozen=True)
class OrderItem:
    kind: str
    key: str
    descending: bool


@dataclass
class Row:
    """What a filter or an order reads of one run (or experiment)."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)

    def get(self, kind: str, key: str) -> Any:
        values: dict[str, Any] = getattr(self, kind)
        return values.get(key)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        return re.sub(r"\\(.)", r"\1", text[1:-1]) if text[0] != "`" else text[1:-1]
    return text


def _identifier(text: str, allowed: frozenset[str] | None = None) -> tuple[str, str]:
    head, dot, rest = text.partition(".")
    if dot and head.lower() in KINDS:
        kind, key = KINDS[head.lower()], _unquote(rest)
    elif not dot:
        kind, key = "attributes", text
    else:
        raise InvalidSpec(f"filter: {text!r}: say metrics., params., tags. or attributes. before the name")
    if kind == "attributes":
        key = {"run_uuid": "run_id"}.get(key.lower(), key.lower())
        known = allowed if allowed is not None else NUMERIC_ATTRIBUTES | TEXT_ATTRIBUTES
        if key not in known:
            raise InvalidSpec(f"filter: unknown attribute {key!r}; known: {', '.join(sorted(known))}")
    return kind, key


def _value(text: str, numeric: bool, op: str, where: str) -> Any:
    if text.startswith("("):
        if op not in ("IN", "NOT IN"):
            raise InvalidSpec(f"filter: {where}: a list goes with IN or NOT IN only")
        return tuple(_unquote(m.group(0)) for m in _LIST_ITEM.finditer(text))
    if op in ("IN", "NOT IN"):
        raise InvalidSpec(f"filter: {where}: IN takes a list of quoted values, ('a', 'b')")
    if op in ("LIKE", "ILIKE") and len(text) > MAX_LIKE_CHARS:
        raise InvalidSpec(f"filter: {where}: a LIKE pattern of at most {MAX_LIKE_CHARS} characters")
    if numeric:
        try:
            return float(_unquote(text))
        except ValueError:
            raise InvalidSpec(f"filter: {where}: compare with a number, not {text}") from None
    if text[0] not in "'\"":
        raise InvalidSpec(f"filter: {where}: quote the value: '{text}'")
    return _unquote(text)


def parse_filter(text: str | None, attributes: frozenset[str] | None = None) -> list[Clause]:
    """The clauses of a filter string (empty for none); InvalidSpec says what it cannot read."""
    if text is None or not text.strip():
        return []
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidSpec(f"filter: over {MAX_FILTER_CHARS} characters")
    clauses: list[Clause] = []
    pos = 0
    while pos < len(text):
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise InvalidSpec(f"filter: cannot read it from character {pos + 1}: {text[pos:pos + 60]!r} "
                              "(clauses like metrics.acc > 0.9 or params.lr = '0.01', joined by AND)")
        kind, key = _identifier(m.group("ident"), attributes)
        op = " ".join(m.group("op").upper().split())
        numeric = kind == "metrics" or (kind == "attributes" and key in NUMERIC_ATTRIBUTES)
        ops = NUMERIC_OPS if numeric else TEXT_OPS
        if op not in ops:
            raise InvalidSpec(f"filter: {m.group('ident')} takes {', '.join(sorted(ops))}, not {op}")
        clauses.append(Clause(kind, key, op, _value(m.group("value"), numeric, op, m.group("ident"))))
        if len(clauses) > MAX_CLAUSES:
            raise InvalidSpec(f"filter: at most {MAX_CLAUSES} clauses")
        pos = m.end()
        if not m.group("end") and pos < len(text):
            raise InvalidSpec(f"filter: expected AND at character {pos + 1}")
        if m.group("end") and m.group("end").upper() == "AND" and pos >= len(text.rstrip()):
            raise InvalidSpec("filter: ends with AND")
    return clauses


def parse_order(items: Sequence[str], attributes: frozenset[str] | None = None) -> list[OrderItem]:
    out = []
    for item in items:
        m = _ORDER.match(item or "")
        if m is None:
            raise InvalidSpec(f"order_by: cannot read {item!r} (e.g. 'metrics.val_accuracy DESC')")
        kind, key = _identifier(m.group("ident"), attributes)
        out.append(OrderItem(kind, key, (m.group("dir") or "ASC").upper() == "DESC"))
    return out


def _like(pattern: str, value: str, ignore_case: bool) -> bool:
    """SQL's LIKE (% any run of characters, _ one), by the two-pointer wildcard match: at most
    len(pattern) x len(value) steps, where a regular expression of many % can take exponential time."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    p = v = 0
    star, mark = -1, 0
    while v < len(value):
        if p < len(pattern) and pattern[p] != "%" and (pattern[p] == "_" or pattern[p] == value[v]):
            p, v = p + 1, v + 1
        elif p < len(pattern) and pattern[p] == "%":
            star, mark, p = p, v, p + 1
        elif star >= 0:
            mark += 1
            p, v = star + 1, mark
        else:
            return False
    return pattern[p:].strip("%") == ""


def _holds(clause: Clause, have: Any) -> bool:
    if have is None:
        return False
    if isinstance(clause.value, float):
        try:
            number = float(have)
        except (TypeError, ValueError):
            return False
        if math.isnan(number):
            return False
        target = clause.value
        return {"=": number == target, "!=": number != target, "<": number < target, "<=": number <= target,
                ">": number > target, ">=": number >= target}[clause.op]
    text = str(have)
    if clause.op in ("IN", "NOT IN"):
        listed: tuple[str, ...] = clause.value
        return (text in listed) == (clause.op == "IN")
    if clause.op in ("=", "!="):
        return (text == str(clause.value)) == (clause.op == "=")
    return _like(str(clause.value), text, clause.op == "ILIKE")


def matches(row: Row, clauses: Sequence[Clause]) -> bool:
    return all(_holds(c, row.get(c.kind, c.key)) for c in clauses)


def _sort_value(value: Any) -> tuple[int, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0)
    if isinstance(value, int | float):
        return (0, (0, float(value), ""))
    return (0, (1, 0.0, str(value)))


def sort_rows(rows: list[Row], order: Sequence[OrderItem]) -> list[Row]:
    """ROWS in ORDER (stable: earlier items decide first); missing values last either way."""
    out = list(rows)
    for item in reversed(order):
        present = [r for r in out if _sort_value(r.get(item.kind, item.key))[0] == 0]
        missing = [r for r in out if _sort_value(r.get(item.kind, item.key))[0] == 1]
        present.sort(key=lambda r, i=item: _sort_value(r.get(i.kind, i.key))[1], reverse=item.descending)  # type: ignore[misc]
        out = present + missing
    return out


def page(items: list[dict[str, Any]], max_results: int, page_token: str | None
          ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ITEMS (at most MAX_RESULTS asked, MAX_PAGE given) and the token of the next."""
    if not 1 <= max_results <= MAX_RESULTS:
        raise InvalidSpec(f"max_results: between 1 and {MAX_RESULTS}",
                          fields=[{"loc": "max_results", "msg": f"between 1 and {MAX_RESULTS}"}])
    start = 0
    if page_token:
        if not page_token.isascii() or not page_token.isdigit() or len(page_token) > 9:  # not '²'
            raise InvalidSpec("page_token: not a token this server gave",
                              fields=[{"loc": "page_token", "msg": "not a token this server gave"}])
        start = int(page_token)
    size = min(max_results, MAX_PAGE)
    chunk = items[start:start + size]
    more = start + size < len(items)
    return chunk, str(start + size) if more else None
