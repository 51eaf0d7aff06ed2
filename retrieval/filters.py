"""Metadata filters: validate the JSON filter language once and compile it to SQL.

`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}`: fields are ANDed; a
field is a metadata key (dots reach into nested objects). Operators: $eq $ne $gt $gte $lt $lte
$in $nin $exists. Values are JSON scalars (strings, numbers, booleans, null).
"""

from __future__ import annotations

import json
import re
from typing import Any

from retrieval.errors import InvalidFilter

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = (*_COMPARE, "$in", "$nin", "$exists")
Scalar = str | int | float | bool | None


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter given as JSON text (the CLI's --filter)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFilter(f"filter is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise InvalidFilter(f'a filter is a JSON object like {{"field": value}}, got {text!r}')
    return value


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
        path = "$." + ".".join(f'"{part}"' for part in name.split("."))
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
