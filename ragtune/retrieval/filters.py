"""Metadata filters: validate the JSON filter language once and compile it to SQL.

`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}`: fields are ANDed; a
field is a metadata key (dots reach into nested objects). Operators: $eq $ne $gt $gte $lt $lte
$in $nin $exists. Values are JSON scalars (strings, numbers, booleans, null).

A filter that matches nothing because it names a field no document has (a typo, or `source`,
which is a document field, not metadata) is an error, not an empty result: `check_fields`.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from typing import Any, Literal, Protocol

from ragtune.core.errors import InvalidFilter

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = (*_COMPARE, "$in", "$nin", "$exists")
Scalar = str | int | float | bool | None
DOCUMENT_FIELDS = ("id", "title", "source", "text")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_FILTER_TERMS = 64  # fields, operators and list values of one filter together


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter given as JSON text (the CLI's --filter)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFilter(f"filter is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise InvalidFilter(f'a filter is a JSON object like {{"field": value}}, got {text!r}')
    return value


def _json_path(name: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in name.split("."))


class FieldProbe(Protocol):
    """What `check_fields` asks of a store (SQLite and PostgreSQL answer in their own SQL)."""

    def has_documents(self) -> bool: ...
    def has_field(self, name: str) -> bool: ...
    def field_names(self, limit: int) -> list[str]: ...


def check_fields(probe: FieldProbe, filter: dict[str, Any] | None, collection: str) -> None:
    """Raise InvalidFilter when `filter` names a metadata field that no document of the
    collection has. Call it only when the filter matched nothing (it scans the documents).

    A field present in some documents is fine (the others just do not match); `$exists` may
    name any field; an empty collection has no fields to check against."""
    if not filter:
        return
    names = [
        name
        for name, cond in filter.items()
        if not (isinstance(cond, dict) and cond and set(cond) <= {"$exists"})
    ]
    if not names or not probe.has_documents():
        return
    missing = [n for n in names if not probe.has_field(n)]
    if not missing:
        return
    known = probe.field_names(30)
    name = missing[0]
    hint = (
        f" ({name!r} is a document field, not metadata: filters match metadata only)"
        if name in DOCUMENT_FIELDS
        else ""
    )
    raise InvalidFilter(
        f"unknown filter field {name!r}: no document in collection {collection!r} has it in its "
        f"metadata{hint}; metadata fields here: {', '.join(known) or 'none'}",
        param="filter",
    )


class SqliteFields:
    """`FieldProbe` over a SQLite store's documents table (metadata as JSON text)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def has_documents(self) -> bool:
        return self.conn.execute("SELECT 1 FROM documents LIMIT 1").fetchone() is not None

    def has_field(self, name: str) -> bool:
        sql = "SELECT 1 FROM documents WHERE json_type(metadata, ?) IS NOT NULL LIMIT 1"
        return self.conn.execute(sql, (_json_path(name),)).fetchone() is not None

    def field_names(self, limit: int) -> list[str]:
        sql = "SELECT DISTINCT j.key FROM documents d, json_each(d.metadata) j ORDER BY 1 LIMIT ?"
        return [r[0] for r in self.conn.execute(sql, (limit,))]


def _scalar(value: Any, where: str) -> Scalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidFilter(f"{where}: values are JSON scalars (string, number, boolean, null), got {value!r}")


def _bind(value: Scalar) -> Any:
    # json_extract returns 1/0 for JSON true/false; bind booleans the same way.
    return int(value) if isinstance(value, bool) else value


class _Sqlite:
    """SQL over a JSON text column with SQLite's json1 functions (`?` parameters)."""

    def __init__(self, column: str):
        self.column = column

    def ref(self, path: str, params: list[Any]) -> str:
        params.append(_json_path(path))
        return f"json_extract({self.column}, ?)"

    def is_null(self, path: str, params: list[Any], negate: bool) -> str:
        params.append(_json_path(path))
        return f"json_type({self.column}, ?) {'IS NOT' if negate else '='} 'null'"

    def exists(self, path: str, params: list[Any], yes: bool) -> str:
        params.append(_json_path(path))
        return f"json_type({self.column}, ?) IS {'NOT ' if yes else ''}NULL"

    def compare(self, path: str, op: str, value: Scalar, params: list[Any]) -> str:
        ref = self.ref(path, params)
        params.append(_bind(value))
        if op == "$ne":  # a missing field is "not equal" too
            return f"{ref} IS NOT ?"
        return f"{ref} {_COMPARE[op]} ?"

    def member(self, path: str, values: list[Scalar], params: list[Any], negate: bool) -> str:
        ref = self.ref(path, params)
        params += [_bind(v) for v in values]
        marks = ", ".join("?" * len(values))
        if not negate:
            return f"{ref} IN ({marks})"
        return f"coalesce({ref} NOT IN ({marks}), 1)"  # a missing field is "not in" too


class _Postgres:
    """The same language over a jsonb column (psycopg's `%s` parameters). Values compare as
    JSON values: ordering only within numbers or within strings (bytewise, like SQLite)."""

    def __init__(self, column: str):
        self.column = column

    def ref(self, path: str, params: list[Any]) -> str:
        # Inlined, not bound: _FIELD admits no quote, comma or brace, and a ref may appear twice.
        parts = ",".join(f'"{part}"' for part in path.split("."))
        return f"({self.column} #> '{{{parts}}}')"

    def is_null(self, path: str, params: list[Any], negate: bool) -> str:
        return f"jsonb_typeof({self.ref(path, params)}) {'IS DISTINCT FROM' if negate else '='} 'null'"

    def exists(self, path: str, params: list[Any], yes: bool) -> str:
        return f"{self.ref(path, params)} IS {'NOT ' if yes else ''}NULL"

    def compare(self, path: str, op: str, value: Scalar, params: list[Any]) -> str:
        ref = self.ref(path, params)
        if op in ("$eq", "$ne"):
            params.append(json.dumps(value))
            return f"{ref} {'=' if op == '$eq' else 'IS DISTINCT FROM'} %s::jsonb"
        params.append(value)
        if isinstance(value, str):
            text = f"(CASE WHEN jsonb_typeof({ref}) = 'string' THEN {ref} #>> '{{}}' END)"
            return f'{text} COLLATE "C" {_COMPARE[op]} %s'
        number = f"(CASE WHEN jsonb_typeof({ref}) = 'number' THEN ({ref})::numeric END)"
        return f"{number} {_COMPARE[op]} %s::numeric"

    def member(self, path: str, values: list[Scalar], params: list[Any], negate: bool) -> str:
        ref = self.ref(path, params)
        params += [json.dumps(v) for v in values]
        marks = ", ".join(["%s::jsonb"] * len(values))
        if not negate:
            return f"{ref} IN ({marks})"
        return f"coalesce({ref} NOT IN ({marks}), true)"


Dialect = Literal["sqlite", "postgres"]


def compile_filter(
    filter: dict[str, Any] | None, column: str = "d.metadata", dialect: Dialect = "sqlite"
) -> tuple[str, list[Any]]:
    """Return (SQL boolean expression, parameters) over the JSON `column`; ("1=1", []) for no
    filter. `dialect` picks SQLite (JSON text, `?`) or PostgreSQL (jsonb, `%s`)."""
    if filter is None or filter == {}:
        return "1=1", []
    if not isinstance(filter, dict):
        raise InvalidFilter(f'a filter is a JSON object like {{"field": value}}, got {filter!r}')
    sql = _Sqlite(column) if dialect == "sqlite" else _Postgres(column)
    clauses: list[str] = []
    params: list[Any] = []
    for name, cond in filter.items():
        if not isinstance(name, str) or not _FIELD.match(name):
            raise InvalidFilter(f"bad field name {name!r}: use letters, digits, _ and -, dots for nesting")
        if isinstance(cond, dict):
            if not cond:
                raise InvalidFilter(
                    f"field {name!r}: empty operator object; use one of {', '.join(OPERATORS)}"
                )
            for op, arg in cond.items():
                clauses.append(_operator(sql, name, op, arg, params))
        else:
            value = _scalar(cond, f"field {name!r}")
            if value is None:
                clauses.append(sql.is_null(name, params, negate=False))
            else:
                clauses.append(sql.compare(name, "$eq", value, params))
    return " AND ".join(f"({c})" for c in clauses), params


def _operator(sql: _Sqlite | _Postgres, name: str, op: Any, arg: Any, params: list[Any]) -> str:
    where = f"field {name!r}, operator {op!r}"
    if op in _COMPARE:
        value = _scalar(arg, where)
        if value is None:
            if op not in ("$eq", "$ne"):
                raise InvalidFilter(f"{where}: cannot order against null")
            return sql.is_null(name, params, negate=op == "$ne")
        if op in ("$gt", "$gte", "$lt", "$lte") and isinstance(value, bool):
            raise InvalidFilter(f"{where}: cannot order booleans")
        return sql.compare(name, op, value, params)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not arg:
            raise InvalidFilter(f"{where}: needs a non-empty JSON array of values")
        values = [_scalar(v, where) for v in arg]
        return sql.member(name, values, params, negate=op == "$nin")
    if op == "$exists":
        if not isinstance(arg, bool):
            raise InvalidFilter(f"{where}: needs true or false")
        return sql.exists(name, params, yes=arg)
    raise InvalidFilter(f"field {name!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")


def _terms(value: Any) -> int:
    if isinstance(value, dict):
        return sum(1 + _terms(v) for v in value.values())
    if isinstance(value, list):
        return sum(1 + _terms(v) for v in value)
    return 0


def _check_filter_values(value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise InvalidFilter(f"filter value {value} does not fit a 64-bit integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter("filter values must be finite numbers")
    if isinstance(value, dict):
        for v in value.values():
            _check_filter_values(v)
    elif isinstance(value, list):
        for v in value:
            _check_filter_values(v)


def check_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metadata filter checked the way the store will use it: size, 64-bit numbers, syntax.

    Raises InvalidFilter, which pydantic passes through (it is no ValueError), so the error keeps
    its code whichever request carried the filter."""
    if value is None:
        return None
    if _terms(value) > MAX_FILTER_TERMS:
        raise InvalidFilter(
            f"the filter has more than {MAX_FILTER_TERMS} fields, operators and values", param="filter"
        )
    try:
        _check_filter_values(value)
        compile_filter(value)
    except InvalidFilter as exc:
        exc.param = "filter"
        raise
    return value
