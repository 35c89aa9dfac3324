"""engine/schema_sql.py: SQL text for an older module schema, rewritten through migration
steps. Pure: pglast only, no database."""

from __future__ import annotations

import pytest
from pglast import parse_sql
from pglast.stream import RawStream

from engine.schema_sql import SchemaTranslationError, translate_script, translate_statement
from modules.migration import (
    AddColumn,
    AddTable,
    ChangeNaturalKey,
    ChangeType,
    DropColumn,
    RenameColumn,
    RunSql,
    SplitTable,
    Step,
)
from modules.spec import Column, Table

RENAME = RenameColumn("t", "a", "b")
DROP = DropColumn("t", "a")
RETYPE = ChangeType("t", "a", "varchar", "integer")


def norm(sql: str) -> str:
    """One statement as pglast prints it: the same for SQL that parses the same."""
    [raw] = parse_sql(sql)
    return RawStream()(raw.stmt)


def run(sql: str, *steps: Step) -> str | None:
    """translate_statement(), checking that what it returns is one statement again."""
    out = translate_statement(sql, steps)
    if out is not None:
        assert len(parse_sql(out)) == 1
    return out


def check(sql: str, expected: str, *steps: Step) -> None:
    out = run(sql, *steps)
    assert out is not None
    assert norm(out) == norm(expected)


def cast(value: str, old: str = "varchar", new: str = "integer") -> str:
    return f"({value})::{old}::{new}"


# --- untouched ------------------------------------------------------------------------


UNTOUCHED = [
    """INSERT INTO "t" ("x", "y") VALUES ('x', 5);""",
    """insert   into t (x) values ('a')  -- no column a""",
    """UPDATE "other" SET "a" = 'y' WHERE "a" = 'q';""",
    """SELECT to_jsonb("t") FROM "t" WHERE "name" = 'q' LIMIT 1;""",
    """INSERT INTO "t" ("pid") VALUES ((SELECT "id" FROM "parent" WHERE "a" = 'q'));""",
    "SET search_path = public",
    "BEGIN",
    "SELECT iasql_install('aws_sqs');",
    "TRUNCATE t",
]


@pytest.mark.parametrize("sql", UNTOUCHED)
@pytest.mark.parametrize("step", [RENAME, DROP, RETYPE], ids=["rename", "drop", "retype"])
def test_untouched_statements_come_back_byte_for_byte(sql: str, step: Step) -> None:
    assert translate_statement(sql, [step]) is sql


def test_steps_that_change_no_text_return_the_input_even_unparsable() -> None:
    table = Table("t2", (Column("name", "text"),), mapper=None, natural_key=("name",))
    steps = [
        AddColumn("t", Column("z", "text")),
        AddTable(table),
        ChangeNaturalKey("t", ("name",)),
        RunSql(("CREATE INDEX i ON t (a)",)),
    ]
    for sql in ["UPDATE t SET a = 1 WHERE a = 2;", "not sql at all"]:
        assert translate_statement(sql, steps) is sql


# --- RenameColumn -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            """INSERT INTO "t" ("a", "c") VALUES ('x', 5);""",
            """INSERT INTO t (b, c) VALUES ('x', 5)""",
        ),
        (
            """UPDATE "t" SET "a" = 'y' WHERE "a" = 'q' AND "region" = 'us-east-1';""",
            """UPDATE t SET b = 'y' WHERE b = 'q' AND region = 'us-east-1'""",
        ),
        (
            """DELETE FROM "t" WHERE "name" = 'q' AND "a" = 'us-east-1';""",
            """DELETE FROM t WHERE name = 'q' AND b = 'us-east-1'""",
        ),
        (
            """SELECT count(*) FROM "t" WHERE "name" = 'q' AND "a" IS NULL;""",
            """SELECT count(*) FROM t WHERE name = 'q' AND b IS NULL""",
        ),
        (
            """SELECT to_jsonb("t") FROM "t" WHERE "a" = 'q' LIMIT 1;""",
            """SELECT to_jsonb(t) FROM t WHERE b = 'q' LIMIT 1""",
        ),
        (
            """UPDATE "t" SET "c" = 1 WHERE "t"."a" = 'q' RETURNING "a", t.a""",
            """UPDATE t SET c = 1 WHERE t.b = 'q' RETURNING b, t.b""",
        ),
        (
            "UPDATE t AS x SET a = x.a || 'z' WHERE x.a = 'q'",
            "UPDATE t AS x SET b = x.b || 'z' WHERE x.b = 'q'",
        ),
        (
            'UPDATE T SET A = 1 WHERE "A" = 2',  # unquoted names fold; "A" is another column
            'UPDATE t SET b = 1 WHERE "A" = 2',
        ),
        (
            "INSERT INTO t (a, c) VALUES ('x', 1), ('y', 2), ('z', 3)",
            "INSERT INTO t (b, c) VALUES ('x', 1), ('y', 2), ('z', 3)",
        ),
        (
            "INSERT INTO t (a) SELECT a FROM t WHERE a = 'q'",
            "INSERT INTO t (b) SELECT b FROM t WHERE b = 'q'",
        ),
        (
            "INSERT INTO t (a, c) VALUES ('x', 1) ON CONFLICT (a) DO UPDATE SET a = excluded.a",
            "INSERT INTO t (b, c) VALUES ('x', 1) ON CONFLICT (b) DO UPDATE SET b = excluded.b",
        ),
        (
            "SELECT o.a, t.a FROM other AS o JOIN t ON t.a = o.a WHERE t.a = 'q'",
            "SELECT o.a, t.b FROM other AS o JOIN t ON t.b = o.a WHERE t.b = 'q'",
        ),
        (
            "WITH t AS (SELECT 1 AS a) SELECT a FROM t",  # a CTE hides the table
            "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
        ),
    ],
)
def test_rename(sql: str, expected: str) -> None:
    check(sql, expected, RENAME)


def test_rename_keeps_a_trailing_semicolon_and_adds_none() -> None:
    assert run("""UPDATE "t" SET "a" = 1;""", RENAME) == "UPDATE t SET b = 1;"
    assert run("UPDATE t SET a = 1 -- c", RENAME) == "UPDATE t SET b = 1"
    assert run("UPDATE t SET a = 1; /* c */", RENAME) == "UPDATE t SET b = 1;"


def test_rename_in_a_sub_select_belongs_to_the_sub_selects_table() -> None:
    # The parent's column of the same name stays; the target's is renamed.
    check(
        """INSERT INTO "t" ("parent_id", "a") VALUES ((SELECT "id" FROM "parent" WHERE"""
        """ "a" = 'q' AND "region" = 'us-east-1'), 'k');""",
        "INSERT INTO t (parent_id, b) VALUES ((SELECT id FROM parent WHERE a = 'q'"
        " AND region = 'us-east-1'), 'k')",
        RENAME,
    )
    # A row of t referenced from a child: only the sub-select names t's column.
    check(
        """INSERT INTO "child" ("queue_id", "a") VALUES ((SELECT "id" FROM "t" WHERE"""
        """ "a" = 'q' AND "region" = 'us-east-1'), 'k');""",
        "INSERT INTO child (queue_id, a) VALUES ((SELECT id FROM t WHERE b = 'q'"
        " AND region = 'us-east-1'), 'k')",
        RENAME,
    )


def test_rename_in_nested_sub_selects() -> None:
    sql = (
        """INSERT INTO "child" ("pid") VALUES ((SELECT "id" FROM "parent" WHERE "a" = 'p'"""
        """ AND "tid" = (SELECT "id" FROM "t" WHERE "a" = 'q' AND "x" = (SELECT "a" FROM"""
        """ "parent" WHERE "a" = 'r'))));"""
    )
    expected = (
        "INSERT INTO child (pid) VALUES ((SELECT id FROM parent WHERE a = 'p' AND tid ="
        " (SELECT id FROM t WHERE b = 'q' AND x = (SELECT a FROM parent WHERE a = 'r'))))"
    )
    check(sql, expected, RENAME)


def test_rename_of_an_outer_reference_from_a_correlated_sub_select() -> None:
    check(
        "SELECT 1 FROM t AS x WHERE EXISTS (SELECT 1 FROM parent AS p WHERE p.a = x.a)",
        "SELECT 1 FROM t AS x WHERE EXISTS (SELECT 1 FROM parent AS p WHERE p.a = x.b)",
        RENAME,
    )


def test_an_unqualified_column_of_a_join_is_refused() -> None:
    with pytest.raises(SchemaTranslationError, match="qualify the column"):
        translate_statement("SELECT 1 FROM t JOIN other ON true WHERE a = 1", [RENAME])


def test_other_statement_kinds_on_the_table_are_refused() -> None:
    with pytest.raises(
        SchemaTranslationError, match="AlterTable statements on t are not translated"
    ):
        translate_statement("ALTER TABLE t ADD COLUMN z int", [RENAME])


# --- DropColumn -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            """INSERT INTO "t" ("c", "a", "d") VALUES ('x', 5, ARRAY['a', 'b']::text[]);""",
            "INSERT INTO t (c, d) VALUES ('x', ARRAY['a', 'b']::text[])",
        ),
        (
            "INSERT INTO t (a, c) VALUES (1, 'x'), (2, 'y'), (NULL, 'z')",
            "INSERT INTO t (c) VALUES ('x'), ('y'), ('z')",
        ),
        (
            "INSERT INTO t (c, a) SELECT o.c, o.a FROM other AS o WHERE o.a = 1",
            "INSERT INTO t (c) SELECT o.c FROM other AS o WHERE o.a = 1",
        ),
        (
            "INSERT INTO t (a) VALUES (1)",
            "INSERT INTO t DEFAULT VALUES",
        ),
        (
            """UPDATE "t" SET "a" = 'y', "c" = 2 WHERE "name" = 'q' AND "a" = 'z'"""
            """ AND "region" = 'us-east-1';""",
            "UPDATE t SET c = 2 WHERE name = 'q' AND region = 'us-east-1'",
        ),
        (
            """DELETE FROM "t" WHERE "name" = 'q' AND "a" = 'us-east-1';""",
            "DELETE FROM t WHERE name = 'q'",
        ),
        (
            """SELECT count(*) FROM "t" WHERE "name" = 'q' AND ("a" IS NULL OR "a" = 1)"""
            """ AND "c" = 2;""",
            "SELECT count(*) FROM t WHERE name = 'q' AND c = 2",
        ),
        (
            """SELECT to_jsonb("t") FROM "t" WHERE "name" = 'q' AND "t"."a"::jsonb ="""
            """ '{"k": 1}'::jsonb LIMIT 1;""",
            "SELECT to_jsonb(t) FROM t WHERE name = 'q' LIMIT 1",
        ),
        (
            """INSERT INTO "child" ("tid", "a") VALUES ((SELECT "id" FROM "t" WHERE"""
            """ "name" = 'q' AND "a" = 'r'), 'k');""",
            "INSERT INTO child (tid, a) VALUES ((SELECT id FROM t WHERE name = 'q'), 'k')",
        ),
        (
            "UPDATE t AS x SET c = 1 WHERE x.name = 'q' AND x.a = 2",
            "UPDATE t AS x SET c = 1 WHERE x.name = 'q'",
        ),
    ],
)
def test_drop(sql: str, expected: str) -> None:
    check(sql, expected, DROP)


def test_drop_of_the_only_set_item_leaves_nothing() -> None:
    assert translate_statement("""UPDATE "t" SET "a" = 'y' WHERE "name" = 'q';""", [DROP]) is None
    assert translate_script(["UPDATE t SET a = 1 WHERE name = 'q'"], [DROP]) == [None]


@pytest.mark.parametrize(
    "sql",
    [
        """DELETE FROM "t" WHERE "a" = 'q';""",
        """UPDATE "t" SET "c" = 1 WHERE "a" = 'q' AND "t"."a" IS NOT NULL;""",
        "SELECT count(*) FROM t WHERE a = 1 OR name = 'q'",
        "INSERT INTO child (tid) VALUES ((SELECT id FROM t WHERE a = 'q'))",
    ],
)
def test_drop_of_the_whole_where_is_refused(sql: str) -> None:
    with pytest.raises(SchemaTranslationError, match="touch every row") as info:
        translate_statement(sql, [DROP])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t WHERE name = 'q'",
        "UPDATE t SET c = a WHERE name = 'q'",
        "DELETE FROM t WHERE name = 'q' RETURNING a",
        "INSERT INTO t VALUES (1, 2)",
        "INSERT INTO t (a, c) VALUES (1, 2), (3, 4) ON CONFLICT (a) DO NOTHING",
    ],
)
def test_a_dropped_column_still_needed_is_refused(sql: str) -> None:
    with pytest.raises(SchemaTranslationError, match="cannot translate"):
        translate_statement(sql, [DROP])


# --- ChangeType -------------------------------------------------------------------------


def test_retype_converts_an_inserted_value_with_the_default_cast() -> None:
    out = run("""INSERT INTO "t" ("a", "c") VALUES ('30', 5);""", RETYPE)
    assert out == "INSERT INTO t (a, c) VALUES (CAST(CAST('30' AS varchar) AS integer), 5);"
    assert norm(out) == norm(f"INSERT INTO t (a, c) VALUES ({cast(repr('30'))}, 5)")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "INSERT INTO t (c, a) VALUES (1, '10'), (2, NULL), (3, '30')",
            f"INSERT INTO t (c, a) VALUES (1, {cast(chr(39) + '10' + chr(39))}), (2, NULL),"
            f" (3, {cast(chr(39) + '30' + chr(39))})",
        ),
        (
            "INSERT INTO t (a) SELECT o.v FROM other AS o",
            f"INSERT INTO t (a) SELECT {cast('o.v')} FROM other AS o",
        ),
        (
            """UPDATE "t" SET "a" = '7', "c" = 'x' WHERE "name" = 'q';""",
            f"UPDATE t SET a = {cast(chr(39) + '7' + chr(39))}, c = 'x' WHERE name = 'q'",
        ),
        (
            "UPDATE t SET a = NULL WHERE a = '1'",
            f"UPDATE t SET a = NULL WHERE a = {cast(chr(39) + '1' + chr(39))}",
        ),
        (
            "DELETE FROM t WHERE '1' <> a AND name = 'q'",
            f"DELETE FROM t WHERE {cast(chr(39) + '1' + chr(39))} <> a AND name = 'q'",
        ),
        (
            "SELECT count(*) FROM t WHERE a IS DISTINCT FROM '1' AND a IS NULL",
            f"SELECT count(*) FROM t WHERE a IS DISTINCT FROM {cast(chr(39) + '1' + chr(39))}"
            " AND a IS NULL",
        ),
        (
            "SELECT 1 FROM t WHERE t.a IN ('1', NULL, '2')",
            f"SELECT 1 FROM t WHERE t.a IN ({cast(chr(39) + '1' + chr(39))}, NULL,"
            f" {cast(chr(39) + '2' + chr(39))})",
        ),
        (
            "UPDATE t AS x SET c = 1 WHERE x.a = '5'",
            f"UPDATE t AS x SET c = 1 WHERE x.a = {cast(chr(39) + '5' + chr(39))}",
        ),
        (
            # A value that is a sub-select is converted as a whole.
            "UPDATE t SET a = (SELECT v FROM other WHERE a = 'q') WHERE name = 'n'",
            f"UPDATE t SET a = {cast('(SELECT v FROM other WHERE a = $$q$$)')} WHERE name = 'n'",
        ),
        (
            # Comparisons inside a sub-select on t are converted; those on parent are not.
            "INSERT INTO child (tid, a) VALUES ((SELECT id FROM t WHERE a = '1' AND pid ="
            " (SELECT id FROM parent WHERE a = '2')), '3')",
            "INSERT INTO child (tid, a) VALUES ((SELECT id FROM t WHERE a ="
            f" {cast(chr(39) + '1' + chr(39))} AND pid = (SELECT id FROM parent WHERE a = '2')),"
            " '3')",
        ),
    ],
)
def test_retype(sql: str, expected: str) -> None:
    check(sql, expected, RETYPE)


def test_retype_with_a_using_expression() -> None:
    step = ChangeType("t", "tags", "text", "text[]", using="string_to_array(tags, ',')")
    check(
        "UPDATE t SET tags = 'a,b' WHERE name = 'q' AND tags = 'c'",
        "UPDATE t SET tags = string_to_array(('a,b')::text, ',') WHERE name = 'q'"
        " AND tags = string_to_array(('c')::text, ',')",
        step,
    )


def test_retype_of_a_column_compared_through_a_cast_keeps_that_cast() -> None:
    step = ChangeType("t", "policy", "json", "jsonb")
    check(
        """SELECT count(*) FROM "t" WHERE "name" = 'q' AND "policy"::jsonb = '{"a": 1}'::jsonb;""",
        """SELECT count(*) FROM t WHERE name = 'q' AND policy::jsonb ="""
        """ ((('{"a": 1}'::jsonb)::json)::jsonb)::jsonb""",
        step,
    )
    check(
        """INSERT INTO "t" ("policy") VALUES ('{"b": 2}'::json);""",
        """INSERT INTO t (policy) VALUES ((('{"b": 2}'::json)::json)::jsonb)""",
        step,
    )


def test_retype_leaves_default_and_other_tables_alone() -> None:
    check("INSERT INTO t (a) VALUES (DEFAULT)", "INSERT INTO t (a) VALUES (DEFAULT)", RETYPE)
    sql = "UPDATE other SET a = '1' WHERE a = '2'"
    assert translate_statement(sql, [RETYPE]) is sql


# --- chains -----------------------------------------------------------------------------


def test_a_chain_renames_then_retypes_the_renamed_column() -> None:
    steps = [RENAME, ChangeType("t", "b", "varchar", "integer")]
    check(
        """UPDATE "t" SET "a" = '1' WHERE "name" = 'q' AND "a" = '2';""",
        f"UPDATE t SET b = {cast(chr(39) + '1' + chr(39))} WHERE name = 'q'"
        f" AND b = {cast(chr(39) + '2' + chr(39))}",
        *steps,
    )


def test_a_chain_drop_after_rename_uses_the_new_name() -> None:
    steps = [RENAME, DropColumn("t", "b")]
    check("INSERT INTO t (a, c) VALUES (1, 2)", "INSERT INTO t (c) VALUES (2)", *steps)
    # The old name is gone after the rename: a drop of it touches nothing.
    sql = "INSERT INTO t (c) VALUES (2)"
    assert translate_statement(sql, [RENAME, DropColumn("t", "a")]) is sql


def test_translate_script_maps_each_statement() -> None:
    script = [
        "INSERT INTO t (a, c) VALUES (1, 2);",
        "UPDATE t SET a = 3 WHERE name = 'q';",
        "SELECT 1;",
    ]
    assert translate_script(script, [DROP]) == [
        "INSERT INTO t (c) VALUES (2);",
        None,
        "SELECT 1;",
    ]


# --- SplitTable -------------------------------------------------------------------------

SPLIT = SplitTable(
    source="t",
    table=Table("t_policy", (Column("t_id", "integer"),), mapper=None, natural_key=("t_id",)),
    reference="t_id",
    columns=("policy", "tags"),
)


@pytest.mark.parametrize(
    "sql",
    [
        """INSERT INTO "t" ("name", "policy") VALUES ('q', '{}'::json);""",
        """UPDATE "t" SET "tags" = ARRAY['a']::text[] WHERE "name" = 'q';""",
        """SELECT count(*) FROM "t" WHERE "name" = 'q' AND "policy" IS NULL;""",
        "INSERT INTO child (tid) VALUES ((SELECT id FROM t WHERE tags IS NULL))",
    ],
)
def test_split_refuses_statements_on_moved_columns(sql: str) -> None:
    with pytest.raises(SchemaTranslationError, match="was split into table t_policy"):
        translate_statement(sql, [SPLIT])


def test_split_passes_statements_without_moved_columns() -> None:
    sql = """UPDATE "t" SET "name" = 'r' WHERE "name" = 'q' AND "region" = 'us-east-1';"""
    assert translate_statement(sql, [SPLIT]) is sql


# --- input errors -----------------------------------------------------------------------


@pytest.mark.parametrize("sql", ["UPDATE t SET a = 1; UPDATE t SET a = 2", "UPDATE t SET"])
def test_not_one_statement_is_refused(sql: str) -> None:
    with pytest.raises(SchemaTranslationError, match="cannot translate"):
        translate_statement(sql, [RENAME])


def test_a_string_with_a_backslash_reads_the_same_whatever_standard_conforming_strings() -> None:
    sql = """INSERT INTO "q" ("name", "p") VALUES ('a', E'x\\\\y''z');"""
    out = translate_statement(sql, [RenameColumn("q", "name", "n")])
    assert out == """INSERT INTO q (n, p) VALUES ('a', E'x\\\\y''z');"""
    value = parse_sql(out)[0].stmt.selectStmt.valuesLists[0][1].val.sval
    assert value == "x\\y'z"
