"""Columns that are each one entry of an API's attribute dict: SQS's queue attributes
(GetQueueAttributes / SetQueueAttributes), an S3 public access block, a target group's
health check keywords."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modules.spec import Record


def _same(value: Any) -> Any:
    return value


def camel_case(column: str) -> str:
    """The API's name of a column: `delay_seconds` is `DelaySeconds`."""
    return "".join(part.capitalize() for part in column.split("_"))


class AttributeMap:
    """Columns and the attributes they are: each column is its name in CamelCase, unless
    `named` says otherwise; `to_column` and `to_api` change a value's form between the two.

    `AttributeMap("delay_seconds", to_column=int, to_api=str)` reads SQS's
    `{"DelaySeconds": "0"}` as `{"delay_seconds": 0}`, and writes it back as text."""

    def __init__(
        self,
        *columns: str,
        named: Mapping[str, str] | None = None,
        to_column: Callable[[Any], Any] = _same,  # the API's value (None: absent) -> the column's
        to_api: Callable[[Any], Any] = _same,  # a column's value (never None) -> the API's
    ) -> None:
        self.columns = {c: camel_case(c) for c in columns} | dict(named or {})
        self.to_column, self.to_api = to_column, to_api

    def record(self, attributes: Mapping[str, Any]) -> Record:
        """The columns, from the API's attributes."""
        return {c: self.to_column(attributes.get(a)) for c, a in self.columns.items()}

    def attributes(self, record: Record, current: Record | None = None) -> dict[str, Any]:
        """The attributes `record` sets: its columns that are not None (the API's defaults
        apply to the others) and, given `current`, differ from it (compared as columns)."""
        return {
            a: self.to_api(record[c])
            for c, a in self.columns.items()
            if record.get(c) is not None and (current is None or record[c] != current.get(c))
        }
