"""How a module's tables change between schema versions, in the spec's own terms.

A module whose tables change in a release raises `ModuleSpec.schema_version` by one and adds a
`Migration` to `ModuleSpec.migrations` that says what changed: a column added, renamed,
dropped or retyped, a table added or split. The engine derives the DDL from these steps,
runs them in one transaction per database, and uses the same steps to translate the audit
log's older entries (and SQL from environments still on the older version) into the new
schema. `RunSql` is for what the steps cannot say (an index); it translates nothing.

A step names tables and columns as they are when it runs: after the steps before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.spec import Column, Table


@dataclass(frozen=True)
class AddColumn:
    """A new column. Existing rows get its default (NULL without one); the audit log's older
    entries leave it out, so replayed SQL gets the default too."""

    table: str
    column: Column


@dataclass(frozen=True)
class DropColumn:
    table: str
    column: str


@dataclass(frozen=True)
class RenameColumn:
    table: str
    old: str
    new: str


@dataclass(frozen=True)
class ChangeType:
    """A column's type changes from `old_type` to `new_type`. `using` is the SQL expression
    that converts a value, naming the column (default: a cast, `"column"::new_type`); the
    same expression converts the audit log's older values, in Postgres. The column's old
    default is dropped; `default` is its new one."""

    table: str
    column: str
    old_type: str
    new_type: str
    using: str | None = None
    default: str | None = None


@dataclass(frozen=True)
class AddTable:
    """A new table, as `table` declares it (pass a copy if a later version changes it). Its
    cloud resources are imported once the upgrade has committed, as an install does."""

    table: Table


@dataclass(frozen=True)
class SplitTable:
    """Moves `columns` of `source` into the new table `table`, one row per source row that
    has a value in any of them; `table`'s column `reference` holds the source row's id."""

    source: str
    table: Table
    reference: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ChangeNaturalKey:
    """The table's natural key becomes `natural_key` (declared on its Table). The migration
    fails if existing rows share a value of it: generated SQL could not tell them apart."""

    table: str
    natural_key: tuple[str, ...]


@dataclass(frozen=True)
class RunSql:
    """Statements the other steps cannot derive (an index, a trigger). They run as they are,
    and the audit log's entries are left as they were."""

    statements: tuple[str, ...]


Step = (
    AddColumn | DropColumn | RenameColumn | ChangeType | AddTable | SplitTable | ChangeNaturalKey
) | RunSql


@dataclass(frozen=True)
class Migration:
    """The steps from schema version `version - 1` to `version`."""

    version: int
    steps: tuple[Step, ...]
    description: str = ""
