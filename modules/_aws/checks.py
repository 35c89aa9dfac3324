"""CHECK constraints of columns that hold one of a fixed list of values (IaSQL's enums)."""

from __future__ import annotations

from collections.abc import Iterable


def one_of(column: str, values: Iterable[str]) -> str:
    """A CHECK text: `column IN ('a', 'b')`, each value an SQL string literal."""
    listed = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({listed})"
