"""SQL for a module's tables, generated from their specs."""

from __future__ import annotations

import math

from modules.spec import Column, Table


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: object) -> str:
    """A constant as SQL text: for DDL and function defaults, where parameters cannot be
    used, and for the SQL `iasql_get_sql_*` writes for users to replay elsewhere.

    The text reads back as the same value whatever the reader's `standard_conforming_strings`
    (on by default, but a server or a client may turn it off): a string holding a backslash is
    written E'' with the backslash doubled, any other string plainly. A float is written by
    its shortest exact form (`repr`), NaN and the infinities as typed constants, since `nan`
    and `inf` are not SQL. Other values (a Decimal, a date) are written as their text, which
    Postgres casts to the type the context asks for."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))  # an IntEnum's number, not its name
    if isinstance(value, float):
        if math.isnan(value):
            return "'NaN'::float8"
        if math.isinf(value):
            return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
        return repr(float(value))
    text = str(value).replace("'", "''")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\") + "'"
    return "'" + text + "'"


def column_sql(column: Column) -> str:
    parts = [quote_ident(column.name), column.type]
    if not column.nullable:
        parts.append("NOT NULL")
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.check is not None:
        parts.append(f"CHECK ({column.check})")
    return " ".join(parts)


def _keys(columns: tuple[str, ...]) -> str:
    return ", ".join(quote_ident(c) for c in columns)


def foreign_key_sql(column: Column) -> str:
    """The table constraint of a column with a `ref`."""
    assert column.ref is not None
    return (
        f"FOREIGN KEY ({quote_ident(column.name)}) REFERENCES"
        f" {quote_ident(column.ref.table)} ({quote_ident(column.ref.key)})"
        f" ON DELETE {column.ref.on_delete} DEFERRABLE INITIALLY IMMEDIATE"
    )


def create_table(table: Table) -> list[str]:
    """CREATE TABLE, its foreign keys and uniques, the audit trigger and the grants."""
    name = quote_ident(table.name)
    lines = [column_sql(c) for c in table.columns]
    if table.primary_key:
        lines.append(f"PRIMARY KEY ({_keys(table.primary_key)})")
    for unique in table.unique:
        lines.append(f"UNIQUE ({_keys(unique)})")
    lines += [foreign_key_sql(column) for column in table.references]
    secrets = ", ".join(quote_literal(c.name) for c in table.columns if c.secret)
    statements = [
        f"CREATE TABLE {name} (\n    " + ",\n    ".join(lines) + "\n)",
        f"CREATE TRIGGER {quote_ident(table.name + '_audit')}"
        f" AFTER INSERT OR UPDATE OR DELETE ON {name}"
        f" FOR EACH ROW EXECUTE FUNCTION iasql_audit({secrets})",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO PUBLIC",
    ]
    for column in table.columns:
        if column.type == "serial":
            sequence = f"{table.name}_{column.name}_seq"
            statements.append(f"GRANT USAGE, SELECT ON SEQUENCE {quote_ident(sequence)} TO PUBLIC")
    return [*statements, *table.extra_ddl]


def drop_table(table: Table) -> str:
    return f"DROP TABLE IF EXISTS {quote_ident(table.name)} CASCADE"
