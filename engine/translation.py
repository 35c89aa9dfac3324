"""Audit entries and journal records written in an older schema of a module, rewritten in
this server's schema through the module's migration steps (modules/migration.py): what
`iasql_get_sql_since()` reads, and what an upgrade carries across for the open transaction.

Renames and drops are done here; a type change runs the step's own USING expression in
Postgres; a split makes a row's change into two: the source row's and the new table's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from engine.audit import Change
from engine.contract import EngineError
from engine.ddl import quote_ident
from modules.migration import ChangeType, DropColumn, RenameColumn, SplitTable, Step
from modules.spec import ModuleSpec


def steps_between(module: ModuleSpec, installed: int) -> list[Step]:
    """The steps from schema version `installed` to the module's."""
    return [s for m in module.migrations[max(installed - 1, 0) :] for s in m.steps]


Image = dict[str, Any]
T = TypeVar("T")


class _Pending:
    """A value whose conversion Postgres has not answered yet: the pass is run again."""


@dataclass
class Translator:
    """Rewrites audit entries (and journal records) from the schema they were written in to
    this server's. A type change converts values with the step's own USING expression, run in
    Postgres: `convert` answers from what was converted so far and notes what is missing."""

    converted: dict[tuple[ChangeType, str], Any] = field(default_factory=dict)
    missing: dict[ChangeType, set[str]] = field(default_factory=dict)
    # A value the conversion refuses fails the translation; otherwise (history) it is kept
    # as written, so that one old value does not keep the rest of the log from being read:
    # a statement replaying it fails where it is replayed, with Postgres's own error.
    strict: bool = True

    def convert(self, step: ChangeType, value: Any) -> Any:
        if isinstance(value, _Pending):  # an earlier step's conversion comes first
            return value
        key = json.dumps(value, sort_keys=True)
        if (step, key) in self.converted:
            return self.converted[(step, key)]
        self.missing.setdefault(step, set()).add(key)
        return _Pending()

    async def until_converted(self, conn: asyncpg.Connection, translate: Callable[[], T]) -> T:
        """`translate()`'s result once every value it converts is known: each pass asks
        Postgres for the values the pass before missed."""
        while True:
            result = translate()
            if not await self.fetch_missing(conn):
                return result

    async def fetch_missing(self, conn: asyncpg.Connection) -> bool:
        """Converts what `convert` missed; False when nothing was missing."""
        if not self.missing:
            return False
        for step, keys in self.missing.items():
            values = sorted(keys)
            try:
                converted = await convert_values(conn, step, values)
            except EngineError:
                if self.strict:
                    raise
                converted = [await self._one(conn, step, key) for key in values]
            for key, new in zip(values, converted, strict=True):
                self.converted[(step, key)] = new
        self.missing = {}
        return True

    @staticmethod
    async def _one(conn: asyncpg.Connection, step: ChangeType, key: str) -> Any:
        try:
            [new] = await convert_values(conn, step, [key])
        except EngineError as exc:
            if not exc.sqlstate.startswith("22"):  # not the value's fault: the migration's
                raise
            return json.loads(key)
        return new

    def image(self, table: str, image: Image, steps: Sequence[Step]) -> Image:
        """A record or row image through the steps (a split's moved columns left out)."""
        image = dict(image)
        for step in steps:
            if isinstance(step, SplitTable) and step.source == table:
                for column in step.columns:
                    image.pop(column, None)
            elif getattr(step, "table", None) == table:
                _apply(step, image, self.convert)
        return image

    def change(self, change: Change, steps: Sequence[Step]) -> list[Change]:
        """One audit entry through the steps: usually one entry, two where a split moved
        values of the row into the new table."""
        changes = [
            Change(change.id, change.table_name, change.change_type, copy.deepcopy(change.change))
        ]
        for step in steps:
            changes = [c for one in changes for c in self._step(one, step)]
        return changes

    def _step(self, change: Change, step: Step) -> list[Change]:
        if isinstance(step, SplitTable):
            return _split_change(change, step) if step.source == change.table_name else [change]
        if getattr(step, "table", None) != change.table_name:
            return [change]
        for side in ("change", "original"):
            if isinstance(change.change.get(side), dict):
                _apply(step, change.change[side], self.convert)
        written = change.change.get("json_text")
        if isinstance(written, dict):
            _apply_json_text(step, written)
        return [change]


def _apply(step: Step, image: Image, convert: Callable[[ChangeType, Any], Any]) -> None:
    if isinstance(step, RenameColumn) and step.old in image:
        image[step.new] = image.pop(step.old)
    elif isinstance(step, DropColumn):
        image.pop(step.column, None)
    elif isinstance(step, ChangeType) and image.get(step.column) is not None:
        image[step.column] = convert(step, image[step.column])


def _apply_json_text(step: Step, written: dict[str, str]) -> None:
    """The text of JSON objects as written: kept while the column stays json."""
    if isinstance(step, RenameColumn) and step.old in written:
        written[step.new] = written.pop(step.old)
    elif isinstance(step, DropColumn | ChangeType) and not _stays_json(step):
        written.pop(getattr(step, "column", ""), None)


def _stays_json(step: Step) -> bool:
    return isinstance(step, ChangeType) and step.new_type.lower() == step.old_type.lower() == "json"


def _split_change(change: Change, step: SplitTable) -> list[Change]:
    """A source row's change, and the change of its row in the new table: made where the row
    gets values in the moved columns, changed, or deleted where it loses them."""
    entry = change.change
    original, new = entry.get("original"), entry.get("change")
    before = _moved(original, step)
    after = _moved(new, step)
    for side in (original, new, entry.get("json_text")):
        for column in step.columns:
            if isinstance(side, dict):
                side.pop(column, None)
    source_id = (new or original or {}).get("id")

    def row(values: Image) -> Image:
        # An id of the row's own, apart from the new table's serial ids: only the replay
        # in memory (sqlgen's row images) uses it.
        return {"id": f"split:{source_id}", step.reference: source_id, **values}

    if before and after:
        derived = {"original": row(before), "change": row(after)}
        kind = "UPDATE"
    elif after:
        derived, kind = {"change": row(after)}, "INSERT"
    elif before:
        derived, kind = {"original": row(before)}, "DELETE"
    else:
        return [change]
    moved = Change(change.id, step.table.name, kind, derived)
    return [moved, change] if change.change_type == "DELETE" else [change, moved]


def _moved(image: Image | None, step: SplitTable) -> Image:
    if not isinstance(image, dict):
        return {}
    return {c: image[c] for c in step.columns if image.get(c) is not None}


async def convert_values(conn: asyncpg.Connection, step: ChangeType, keys: list[str]) -> list[Any]:
    """Values (as JSON text) of the step's column converted by its USING expression."""
    column = quote_ident(step.column)
    old = step.old_type
    if old.endswith("[]"):
        decoded = f"ARRAY(SELECT jsonb_array_elements_text(a.value))::{old}"
    elif old.lower() in ("json", "jsonb"):
        decoded = f"a.value::{old}"
    else:
        decoded = f"(a.value #>> '{{}}')::{old}"
    sql = (
        f"SELECT to_jsonb(({using(step)})::{step.new_type}) AS value FROM ("
        f"SELECT a.n, {decoded} AS {column}"
        " FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS a(value, n)) s ORDER BY s.n"
    )
    values = [json.loads(k) for k in keys]
    try:
        rows = await conn.fetch(sql, values)
    except asyncpg.PostgresError as exc:
        raise EngineError(
            exc.sqlstate or "22000",
            f"cannot convert {step.table}.{step.column} of older audit entries from {old} to"
            f" {step.new_type}: {first_line(exc)}",
        ) from exc
    return [r["value"] for r in rows]


async def translate_history(
    conn: asyncpg.Connection,
    changes: list[tuple[Change, int | None]],
    modules: Iterable[ModuleSpec],
) -> list[Change]:
    """Audit entries, each with the schema version it was written in (None: 1), in the
    schema of `modules` (the installed ones, on this server's versions)."""
    module_of = {t.name: m for m in modules for t in m.tables}
    translator = Translator(strict=False)

    def translate() -> list[Change]:
        translated: list[Change] = []
        for change, version in changes:
            module = module_of.get(change.table_name)
            written_in = version or 1
            if module is None or written_in >= module.schema_version:
                translated.append(change)
            else:
                translated += translator.change(change, steps_between(module, written_in))
        return translated

    return await translator.until_converted(conn, translate)


def using(step: ChangeType) -> str:
    """The SQL expression that converts a value of the step's column."""
    return step.using or f"{quote_ident(step.column)}::{step.new_type}"


def first_line(exc: BaseException) -> str:
    """An error's message, its first line only."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
