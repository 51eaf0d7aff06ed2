"""Metadata filters: validate the JSON filter language once and compile it to SQL.

`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}`: fields are ANDed; a
field is a metadata key (dots reach into nested objects). Operators: $eq $ne $gt $gte $lt $lte
$in $nin $exists. Values are JSON scalars (strings, numbers, booleans, null).

A filter that matches nothing because it names a field no document has (a typo, or `source`,
which is a document field, not metadata) is an error, not an empty result: `check_fields`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from retrieval.errors import InvalidFilter

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = (*_COMPARE, "$in", "$nin", "$exists")
Scalar = str | int | float | bool | None
DOCUMENT_FIELDS = ("id", "title", "source", "text")


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


def check_fields(conn: sqlite3.Connection, filter: dict[str, Any] | None, collection: str) -> None:
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
    if not names or conn.execute("SELECT 1 FROM documents LIMIT 1").fetchone() is None:
        return
    sql = "SELECT 1 FROM documents WHERE json_type(metadata, ?) IS NOT NULL LIMIT 1"
    missing = [n for n in names if conn.execute(sql, (_json_path(n),)).fetchone() is None]
    if not missing:
        return
    known = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT j.key FROM documents d, json_each(d.metadata) j ORDER BY 1 LIMIT 30"
        )
    ]
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


def _scalar(value: Any, where: str) -> Scalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidFilter(f"{where}: values are JSON scalars (string, number, boolean, null), got {value!r}")


def _bind(value: Scalar) -> Any:
    # json_extract returns 1/0 for JSON true/false; bind booleans the same way.
    return int(value) if isinstance(value, bool) else value


def compile_filter(filter: dict[str, Any] | None, column: str = "d.metadata") -> tuple[str, list[Any]]:
    """Return (SQL boolean expression, parameters) over the JSON `column`; ("1", []) for no filter."""
    if filter is None or filter == {}:
        return "1", []
    if not isinstance(filter, dict):
        raise InvalidFilter(f'a filter is a JSON object like {{"field": value}}, got {filter!r}')
    clauses: list[str] = []
    params: list[Any] = []
    for name, cond in filter.items():
        if not isinstance(name, str) or not _FIELD.match(name):
            raise InvalidFilter(f"bad field name {name!r}: use letters, digits, _ and -, dots for nesting")
        path = _json_path(name)
        ref = f"json_extract({column}, ?)"
        if isinstance(cond, dict):
            if not cond:
                raise InvalidFilter(
                    f"field {name!r}: empty operator object; use one of {', '.join(OPERATORS)}"
                )
            for op, arg in cond.items():
                clauses.append(_operator(name, op, arg, ref, path, column, params))
        else:
            value = _scalar(cond, f"field {name!r}")
            if value is None:
                clauses.append(f"json_type({column}, ?) = 'null'")
                params.append(path)
            else:
                clauses.append(f"{ref} = ?")
                params += [path, _bind(value)]
    return " AND ".join(f"({c})" for c in clauses), params


def _operator(name: str, op: Any, arg: Any, ref: str, path: str, column: str, params: list[Any]) -> str:
    where = f"field {name!r}, operator {op!r}"
    if op in _COMPARE:
        value = _scalar(arg, where)
        if value is None:
            if op not in ("$eq", "$ne"):
                raise InvalidFilter(f"{where}: cannot order against null")
            params.append(path)
            return f"json_type({column}, ?) {'=' if op == '$eq' else 'IS NOT'} 'null'"
        if op in ("$gt", "$gte", "$lt", "$lte") and isinstance(value, bool):
            raise InvalidFilter(f"{where}: cannot order booleans")
        params += [path, _bind(value)]
        if op == "$ne":  # a missing field is "not equal" too
            return f"{ref} IS NOT ?"
        return f"{ref} {_COMPARE[op]} ?"
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not arg:
            raise InvalidFilter(f"{where}: needs a non-empty JSON array of values")
        values = [_bind(_scalar(v, where)) for v in arg]
        params += [path, *values]
        marks = ", ".join("?" * len(values))
        if op == "$in":
            return f"{ref} IN ({marks})"
        return f"coalesce({ref} NOT IN ({marks}), 1)"  # a missing field is "not in" too
    if op == "$exists":
        if not isinstance(arg, bool):
            raise InvalidFilter(f"{where}: needs true or false")
        params.append(path)
        return f"json_type({column}, ?) IS {'NOT ' if arg else ''}NULL"
    raise InvalidFilter(f"field {name!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
