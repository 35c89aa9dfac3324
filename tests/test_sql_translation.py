"""SQL written for an older module schema, translated for the newer one
(engine/sql_translation.py): what a target does to SQL promoted from an older iasql. Pure:
no database, no cloud. The whole promotion between two servers is in tests/test_upgrade.py."""

from __future__ import annotations

import pytest
from pglast import parse_sql

from engine.sql_translation import SchemaTranslationError, translate_script, translate_statement
from modules.migration import (
    AddColumn,
    ChangeNaturalKey,
    ChangeType,
    DropColumn,
    RenameColumn,
    RunSql,
    SplitTable,
)
from modules.spec import Column, Table

RENAME = RenameColumn("queue", "name", "queue_name")
RETYPE = ChangeType("queue", "timeout", "varchar", "integer")
SUBSELECT = """(SELECT "id" FROM "queue" WHERE "name" = 'web' AND "region" = 'us-east-1')"""


def same(left: str | None, right: str) -> None:
    """Equal as parse trees: the printed form is pglast's, the meaning is what counts."""
    assert left is not None
    assert parse_sql(left) == parse_sql(right), left


def test_untouched_statements_come_back_byte_for_byte() -> None:
    for sql in (
        """INSERT INTO "other" ("name") VALUES ('web');""",
        """  DELETE FROM queue   WHERE "region" = 'x'  ;""",
        "SELECT 1",
    ):
        assert translate_statement(sql, [RENAME, RETYPE]) == sql
    steps = [
        AddColumn("queue", Column("size", "integer")),
        ChangeNaturalKey("queue", ("name",)),
        RunSql(("CREATE INDEX i ON queue (name)",)),
    ]
    sql = """INSERT INTO "queue" ("name") VALUES ('web');"""
    assert translate_statement(sql, steps) == sql


def test_a_rename_reaches_every_place_the_column_is_named() -> None:
    same(
        translate_statement(
            """INSERT INTO "queue" ("name", "region") VALUES ('web', 'x');""", [RENAME]
        ),
        """INSERT INTO queue (queue_name, region) VALUES ('web', 'x');""",
    )
    same(
        translate_statement(
            """UPDATE "queue" SET "name" = 'api' WHERE "name" = 'web' AND "region" = 'x';""",
            [RENAME],
        ),
        "UPDATE queue SET queue_name = 'api' WHERE queue_name = 'web' AND region = 'x';",
    )
    same(
        translate_statement(
            """SELECT to_jsonb("queue") FROM "queue" WHERE "name" IS NULL LIMIT 1;""", [RENAME]
        ),
        "SELECT to_jsonb(queue) FROM queue WHERE queue_name IS NULL LIMIT 1;",
    )
    # Qualified, aliased, and lower-case unquoted names.
    same(
        translate_statement("UPDATE queue AS q SET region = 'y' WHERE q.name = 'web';", [RENAME]),
        "UPDATE queue AS q SET region = 'y' WHERE q.queue_name = 'web';",
    )
    same(
        translate_statement("""DELETE FROM queue WHERE "queue"."name" IN ('a', 'b');""", [RENAME]),
        "DELETE FROM queue WHERE queue.queue_name IN ('a', 'b');",
    )


def test_a_sub_select_names_the_columns_of_its_own_table() -> None:
    # A foreign key as a sub-select on the renamed table; the outer table's own `name` stays.
    sql = f"""INSERT INTO "tag" ("queue_id", "name") VALUES ({SUBSELECT}, 'k');"""
    same(
        translate_statement(sql, [RENAME]),
        """INSERT INTO tag (queue_id, name) VALUES ((SELECT id FROM queue WHERE queue_name = 'web'"""
        """ AND region = 'us-east-1'), 'k');""",
    )
    nested = f"""DELETE FROM "tag" WHERE "queue_id" = {SUBSELECT} AND "name" = 'k';"""
    same(
        translate_statement(nested, [RENAME]),
        """DELETE FROM tag WHERE queue_id = (SELECT id FROM queue WHERE queue_name = 'web'"""
        """ AND region = 'us-east-1') AND name = 'k';""",
    )


def test_a_dropped_column_leaves_lists_sets_and_conditions() -> None:
    drop = DropColumn("queue", "policy")
    same(
        translate_statement(
            """INSERT INTO "queue" ("name", "policy") VALUES ('a', '{}'::json), ('b', NULL);""",
            [drop],
        ),
        "INSERT INTO queue (name) VALUES ('a'), ('b');",
    )
    same(
        translate_statement("""INSERT INTO queue (policy, name) SELECT NULL, 'c';""", [drop]),
        "INSERT INTO queue (name) SELECT 'c';",
    )
    same(
        translate_statement(
            """SELECT count(*) FROM "queue" WHERE "name" = 'a' AND "policy"::jsonb = '{}'::jsonb;""",
            [drop],
        ),
        "SELECT count(*) FROM queue WHERE name = 'a';",
    )
    sets = """UPDATE "queue" SET "policy" = NULL, "name" = 'b' WHERE "name" = 'a' AND "policy" IS NULL;"""
    same(translate_statement(sets, [drop]), "UPDATE queue SET name = 'b' WHERE name = 'a';")
    # Nothing left to set: nothing to run.
    assert (
        translate_statement("""UPDATE "queue" SET "policy" = NULL WHERE "name" = 'a';""", [drop])
        is None
    )
    # A WHERE with nothing left would touch every row: refused.
    with pytest.raises(SchemaTranslationError, match=r"only condition is on queue\.policy"):
        translate_statement("""DELETE FROM "queue" WHERE "policy" IS NULL;""", [drop])


def test_a_type_change_converts_every_value_written_or_compared() -> None:
    converted = "CAST(CAST('{}' AS varchar) AS integer)"
    same(
        translate_statement(
            """INSERT INTO "queue" ("name", "timeout") VALUES ('a', '30'), ('b', NULL);""", [RETYPE]
        ),
        f"INSERT INTO queue (name, timeout) VALUES ('a', {converted.format(30)}), ('b', NULL);",
    )
    same(
        translate_statement(
            """UPDATE "queue" SET "timeout" = '60' WHERE "timeout" = '30' AND '5' <> "timeout";""",
            [RETYPE],
        ),
        f"UPDATE queue SET timeout = {converted.format(60)} WHERE timeout = {converted.format(30)}"
        f" AND {converted.format(5)} <> timeout;",
    )
    same(
        translate_statement("""DELETE FROM queue WHERE timeout IN ('1', '2');""", [RETYPE]),
        f"DELETE FROM queue WHERE timeout IN ({converted.format(1)}, {converted.format(2)});",
    )
    # The step's own USING expression, with the value in place of the column.
    sized = ChangeType(
        "queue",
        "size",
        "text",
        "integer",
        using="CASE WHEN size = 'big' THEN 10 ELSE size::integer END",
    )
    value = "CAST('big' AS text)"
    same(
        translate_statement("UPDATE queue SET size = 'big' WHERE name = 'a';", [sized]),
        f"UPDATE queue SET size = CAST(CASE WHEN {value} = 'big' THEN 10"
        f" ELSE CAST({value} AS integer) END AS integer) WHERE name = 'a';",
    )


def test_steps_apply_in_order_each_on_the_last_ones_result() -> None:
    steps = [
        RENAME,
        RenameColumn("queue", "timeout", "visibility"),
        ChangeType("queue", "visibility", "varchar", "integer"),
    ]
    same(
        translate_statement(
            """INSERT INTO "queue" ("name", "timeout") VALUES ('a', '30');""", steps
        ),
        "INSERT INTO queue (queue_name, visibility) VALUES ('a', CAST(CAST('30' AS varchar) AS integer));",
    )
    assert translate_script(
        ["SELECT 1;", """DELETE FROM "queue" WHERE "name" = 'a';"""], steps
    ) == [
        "SELECT 1;",
        "DELETE FROM queue WHERE queue_name = 'a';",
    ]


def test_a_split_column_is_refused_and_the_rest_passes() -> None:
    split = SplitTable("app", Table("app_style", (), None, ()), "app_id", ("color",))
    with pytest.raises(
        SchemaTranslationError, match="app's columns color moved to table app_style"
    ):
        translate_statement("""INSERT INTO "app" ("name", "color") VALUES ('a', 'red');""", [split])
    with pytest.raises(SchemaTranslationError, match="moved to table app_style"):
        translate_statement("""UPDATE "app" SET "name" = 'b' WHERE "color" = 'red';""", [split])
    sql = """UPDATE "app" SET "name" = 'b' WHERE "name" = 'a';"""
    assert translate_statement(sql, [split]) == sql


def test_text_that_is_not_one_statement_is_refused() -> None:
    with pytest.raises(SchemaTranslationError, match="not one statement"):
        translate_statement("SELEC nonsense", [RENAME])
