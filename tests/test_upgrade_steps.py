"""Migration steps (modules/migration.py) as engine/upgrade.py runs and translates them: the
DDL each derives, the audit entries each rewrites (a split into two), and, on a real Postgres
database, the migration itself, its check against the spec and the conversion of older
values. Whole upgrades through the server are in tests/test_upgrade.py."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from engine import ddl, platform
from engine.audit import Change
from engine.contract import EngineError
from engine.database import _init_connection
from engine.sqlgen import generate
from engine.translation import Translator, translate_history
from engine.upgrade import ModuleUpgrade, _check_columns, step_sql, upgrade_sql
from iasql.postgres import LocalPostgres
from modules.migration import (
    AddColumn,
    AddTable,
    ChangeNaturalKey,
    ChangeType,
    DropColumn,
    Migration,
    RenameColumn,
    RunSql,
    SplitTable,
)
from modules.spec import Column, ModuleSpec, Table, foreign_key


class _NoCloud:
    async def read(self, cloud: Any, region: str | None) -> list[dict[str, Any]]:
        return []


def _table(name: str, *columns: Column, key: tuple[str, ...] = ("name",)) -> Table:
    return Table(name, columns, _NoCloud(), natural_key=key, regional=False)  # type: ignore[arg-type]


# v1: app (name, colour text, size text); v2: size an integer, colour renamed color, a note
# column, and the style split out into its own table.
APP_V1 = _table("app", Column("name", "varchar"), Column("colour", "text"), Column("size", "text"))
STYLE = _table(
    "app_style",
    foreign_key("app_id", "app", "name"),
    Column("color", "text"),
    Column("size", "integer"),
    key=("app_id",),
)
APP_V2 = _table("app", Column("name", "varchar"), Column("note", "text", default="'none'"))
SIZE = "CASE WHEN size = 'big' THEN 10 ELSE size::integer END"
V2_STEPS = (
    RenameColumn("app", "colour", "color"),
    ChangeType("app", "size", "text", "integer", using=SIZE),
    AddColumn("app", Column("note", "text", default="'none'")),
    SplitTable("app", STYLE, "app_id", ("color", "size")),
)
V1 = ModuleSpec("apps", "1", tables=(APP_V1,))
V2 = ModuleSpec(
    "apps", "2", tables=(APP_V2, STYLE), schema_version=2, migrations=(Migration(2, V2_STEPS),)
)


def test_each_step_derives_its_ddl() -> None:
    module = V2
    assert step_sql(RenameColumn("app", "colour", "color"), module) == [
        'ALTER TABLE "app" RENAME COLUMN "colour" TO "color"'
    ]
    assert step_sql(DropColumn("app", "note"), module) == ['ALTER TABLE "app" DROP COLUMN "note"']
    assert step_sql(ChangeType("app", "size", "text", "integer", default="0"), module) == [
        'ALTER TABLE "app" ALTER COLUMN "size" DROP DEFAULT, ALTER COLUMN "size" TYPE integer'
        ' USING "size"::integer, ALTER COLUMN "size" SET DEFAULT 0'
    ]
    added = step_sql(AddColumn("app_style", foreign_key("owner_id", "app", "name")), module)
    assert added == [
        'ALTER TABLE "app_style" ADD COLUMN "owner_id" integer NOT NULL',
        'ALTER TABLE "app_style" ADD FOREIGN KEY ("owner_id") REFERENCES "app" ("id")'
        " ON DELETE NO ACTION DEFERRABLE INITIALLY IMMEDIATE",
    ]
    [check] = step_sql(ChangeNaturalKey("app", ("name", "note")), module)
    assert 'GROUP BY "name", "note" HAVING count(*) > 1' in check and "23505" in check
    assert step_sql(RunSql(("CREATE INDEX x ON app (note)",)), module) == [
        "CREATE INDEX x ON app (note)"
    ]
    table = step_sql(AddTable(STYLE), module)
    assert table[0].startswith('CREATE TABLE "app_style"')
    assert table[-1] == "INSERT INTO iasql_tables VALUES ('app_style', 'apps')"
    # A split copies the values before the new table's audit trigger exists: no one's change.
    split = step_sql(V2_STEPS[-1], module)
    assert split[0].startswith('CREATE TABLE "app_style"')
    assert split[1] == (
        'INSERT INTO "app_style" ("app_id", "color", "size") SELECT id, "color", "size"'
        ' FROM "app" WHERE "color" IS NOT NULL OR "size" IS NOT NULL ORDER BY id'
    )
    assert split[2].startswith('CREATE TRIGGER "app_style_audit"')
    assert split[-2:] == [
        'ALTER TABLE "app" DROP COLUMN "color"',
        'ALTER TABLE "app" DROP COLUMN "size"',
    ]


def test_a_module_declares_a_migration_for_each_version() -> None:
    with pytest.raises(ValueError, match=r"needs migrations to versions \[2, 3\], not \[2\]"):
        ModuleSpec("apps", "3", schema_version=3, migrations=(Migration(2, ()),))


def _change(id_: int, kind: str, **sides: dict[str, Any]) -> Change:
    return Change(id_, "app", kind, dict(sides))


# A history written in schema 1: made with a style, restyled, another made plain, the first
# deleted.
HISTORY = [
    _change(1, "INSERT", change={"id": 1, "name": "a", "colour": "red", "size": "big"}),
    _change(
        2,
        "UPDATE",
        original={"id": 1, "name": "a", "colour": "red", "size": "big"},
        change={"id": 1, "name": "a", "colour": "blue", "size": "big"},
    ),
    _change(3, "INSERT", change={"id": 2, "name": "b", "colour": None, "size": None}),
    _change(4, "DELETE", original={"id": 1, "name": "a", "colour": "blue", "size": "big"}),
]


def test_a_split_history_replays_as_two_tables() -> None:
    translator = Translator()
    translator.converted[(V2_STEPS[1], '"big"')] = 10  # what Postgres answers (tested below)
    changes = [c for change in HISTORY for c in translator.change(change, V2_STEPS)]
    assert not translator.missing
    assert [(c.id, c.table_name, c.change_type) for c in changes] == [
        (1, "app", "INSERT"),
        (1, "app_style", "INSERT"),
        (2, "app", "UPDATE"),
        (2, "app_style", "UPDATE"),
        (3, "app", "INSERT"),
        (4, "app_style", "DELETE"),
        (4, "app", "DELETE"),
    ]
    assert HISTORY[0].change["change"]["colour"] == "red"  # the log's own entries untouched
    tables = {t.name: t for t in V2.tables}
    key = """(SELECT "id" FROM "app" WHERE "name" = 'a')"""
    assert generate(tables, changes, {1, 2, 3, 4}) == [
        """INSERT INTO "app" ("name") VALUES ('a');""",
        f"""INSERT INTO "app_style" ("app_id", "color", "size") VALUES ({key}, 'red', 10);""",
        f"""UPDATE "app_style" SET "color" = 'blue' WHERE "app_id" = {key};""",
        """INSERT INTO "app" ("name") VALUES ('b');""",
        f"""DELETE FROM "app_style" WHERE "app_id" = {key};""",
        """DELETE FROM "app" WHERE "name" = 'a';""",
    ]


def test_renames_and_drops_reach_json_text_too() -> None:
    steps = (RenameColumn("app", "doc", "policy"), DropColumn("app", "old"))
    change = _change(
        1,
        "INSERT",
        change={"id": 1, "name": "a", "doc": {"b": 1, "a": 2}, "old": {"x": 1}},
        json_text={"doc": '{"b": 1, "a": 2}', "old": '{"x": 1}'},
    )
    [translated] = Translator().change(change, steps)
    assert translated.change == {
        "change": {"id": 1, "name": "a", "policy": {"b": 1, "a": 2}},
        "json_text": {"policy": '{"b": 1, "a": 2}'},
    }


# --- on a real database ------------------------------------------------------------------


@pytest.fixture
def database(postgres: LocalPostgres) -> Iterator[str]:
    name = f"upgrade_steps_{secrets.token_hex(4)}"

    async def create(sql: str) -> None:
        conn = await asyncpg.connect(postgres.dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(create(f"CREATE DATABASE {name}"))
    yield postgres.dsn(database=name)
    asyncio.run(create(f"DROP DATABASE {name} WITH (FORCE)"))


async def _v1_database(dsn: str) -> asyncpg.Connection:
    """The platform schema, module apps at schema 1 and two rows (one in the audit log)."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    await platform.ensure(conn, [])
    for statement in [
        *(s for table in V1.tables for s in ddl.create_table(table)),
        "INSERT INTO iasql_module (name, version) VALUES ('apps', '1')",
        "INSERT INTO iasql_tables VALUES ('app', 'apps')",
        "INSERT INTO app (name, colour, size) VALUES ('a', 'red', 'big'), ('b', NULL, '3')",
    ]:
        await conn.execute(statement)
    return conn


def test_the_migration_runs_in_postgres_and_converts_older_values(database: str) -> None:
    async def scenario() -> None:
        conn = await _v1_database(database)
        try:
            async with conn.transaction():
                for statement in upgrade_sql(ModuleUpgrade(V2, 1)):
                    await conn.execute(statement)
                await _check_columns(conn, V2)
            assert [tuple(r) for r in await conn.fetch("SELECT * FROM app ORDER BY id")] == [
                (1, "a", "none"),
                (2, "b", "none"),
            ]
            styles = await conn.fetch("SELECT app_id, color, size FROM app_style ORDER BY app_id")
            assert [tuple(r) for r in styles] == [(1, "red", 10), (2, None, 3)]
            assert await conn.fetchval("SELECT schema_version FROM iasql_module") == 2
            # Entries now record schema 2; the older ones 1, and read back in schema 2.
            await conn.execute("UPDATE app_style SET size = 4 WHERE app_id = 2")
            log = await conn.fetch(
                "SELECT id, table_name, change_type::text AS kind, change, schema_version"
                " FROM iasql_audit_log ORDER BY id"
            )
            assert [(r["table_name"], r["schema_version"]) for r in log] == [
                ("app", 1),
                ("app", 1),
                ("app_style", 2),
            ]
            written = [
                (Change(r["id"], r["table_name"], r["kind"], r["change"]), r["schema_version"])
                for r in log
            ]
            translated = await translate_history(conn, written, [V2])
            inserted = [(c.table_name, c.change.get("change")) for c in translated[:4]]
            assert inserted == [
                ("app", {"id": 1, "name": "a"}),
                ("app_style", {"id": "split:1", "app_id": 1, "color": "red", "size": 10}),
                ("app", {"id": 2, "name": "b"}),
                ("app_style", {"id": "split:2", "app_id": 2, "size": 3}),
            ]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_migration_that_misses_a_step_or_meets_duplicates_fails(database: str) -> None:
    forgetful = ModuleSpec(
        "apps",
        "2",
        tables=(APP_V2, STYLE),
        schema_version=2,
        migrations=(Migration(2, V2_STEPS[:2] + V2_STEPS[3:]),),  # no note column
    )

    async def scenario() -> None:
        conn = await _v1_database(database)
        try:
            with pytest.raises(EngineError) as missing:
                async with conn.transaction():
                    for statement in upgrade_sql(ModuleUpgrade(forgetful, 1)):
                        await conn.execute(statement)
                    await _check_columns(conn, forgetful)
            assert missing.value.sqlstate == "42P16"
            assert missing.value.message == (
                "after the migration steps, table app differs from module apps's spec"
                " (note: has none, declared text): a migration step is missing"
            )
            # Rolled back whole: schema 1 as it was.
            assert await conn.fetchval("SELECT colour FROM app WHERE id = 1") == "red"
            await conn.execute("INSERT INTO app (name) VALUES ('a')")
            [check] = step_sql(ChangeNaturalKey("app", ("name",)), V2)
            with pytest.raises(asyncpg.UniqueViolationError, match="share a value of its new"):
                await conn.execute(check)
            bad = ChangeType("app", "size", "text", "integer")
            with pytest.raises(EngineError, match=r'cannot convert app\.size .* "big"'):
                await _convert(conn, bad)
        finally:
            await conn.close()

    asyncio.run(scenario())


async def _convert(conn: asyncpg.Connection, step: ChangeType) -> None:
    translator = Translator()
    translator.convert(step, "big")
    await translator.fetch_missing(conn)


def test_chained_type_changes_convert_in_order_and_a_bad_using_is_not_hidden(
    database: str,
) -> None:
    digits = ChangeType(
        "app", "size", "text", "integer", using="regexp_replace(size, '[^0-9]', '', 'g')::integer"
    )
    wider = ChangeType("app", "size", "integer", "bigint")
    change = _change(1, "INSERT", change={"id": 1, "name": "a", "size": "30s"})
    # Names a column the conversion cannot see: the migration's fault, not the value's.
    other = ChangeType("app", "size", "text", "integer", using="size::integer + width")
    module = ModuleSpec(
        "apps", "2", tables=(APP_V2,), schema_version=2, migrations=(Migration(2, (other,)),)
    )

    async def scenario() -> None:
        conn = await asyncpg.connect(database)
        await _init_connection(conn)
        try:
            translator = Translator()  # strict, as an upgrade carries the open transaction
            [translated] = await translator.until_converted(
                conn, lambda: translator.change(change, (digits, wider))
            )
            assert translated.change["change"]["size"] == 30
            with pytest.raises(EngineError, match='column "width" does not exist') as bad:
                await translate_history(conn, [(change, 1)], [module])
            assert bad.value.sqlstate == "42703"
        finally:
            await conn.close()

    asyncio.run(scenario())
