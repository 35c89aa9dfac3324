"""Constants written as SQL text (engine.ddl.quote_literal, and sqlgen's typed_literal for JSON
and arrays): what they look like, and that a real Postgres reads them back as the value they
were written for, whatever `standard_conforming_strings` is."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import psycopg
import pytest

from engine.ddl import quote_literal
from engine.sqlgen import typed_literal
from iasql.postgres import LocalPostgres
from modules.spec import Column


class Size(enum.IntEnum):
    SMALL = 1


@pytest.mark.parametrize(
    ("value", "sql"),
    [
        (None, "NULL"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-42, "-42"),
        (10**30, "1" + "0" * 30),
        (Size.SMALL, "1"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-2.5e-07, "-2.5e-07"),
        (1e300, "1e+300"),
        (math.nan, "'NaN'::float8"),
        (math.inf, "'Infinity'::float8"),
        (-math.inf, "'-Infinity'::float8"),
        ("", "''"),
        ("plain", "'plain'"),
        ("it's", "'it''s'"),
        ("C:\\temp", "E'C:\\\\temp'"),
        ("\\'", "E'\\\\'''"),
        ("ends with \\", "E'ends with \\\\'"),
        ("naïve ☃", "'naïve ☃'"),
    ],
)
def test_quote_literal(value: object, sql: str) -> None:
    assert quote_literal(value) == sql


def test_json_is_its_text_cast_to_the_column_type() -> None:
    value = {"path": "C:\\temp", "name": "it's", "n": 1.5, "ok": True, "none": None}
    sql = typed_literal(Column("doc", "jsonb"), value)
    text = json.dumps(value, ensure_ascii=False).replace("\\", "\\\\").replace("'", "''")
    assert sql == f"E'{text}'::jsonb"
    assert typed_literal(Column("doc", "json"), ["a"]) == """'["a"]'::json"""
    assert typed_literal(Column("doc", "jsonb"), None) == "NULL"


def test_arrays_are_array_constructors_of_their_items() -> None:
    assert typed_literal(Column("tags", "text[]"), ["a", "it's", "b\\c"]) == (
        "ARRAY['a', 'it''s', E'b\\\\c']::text[]"
    )
    assert typed_literal(Column("ports", "integer[]"), [80, 443]) == "ARRAY[80, 443]::integer[]"


ROUND_TRIP: list[tuple[Any, str]] = [
    ("plain", "text"),
    ("it's", "text"),
    ("C:\\temp\\new", "text"),
    ("\\'; SELECT 1; --", "text"),
    ("\\", "text"),
    ("naïve ☃", "text"),
    (0.1, "float8"),
    (-2.5e-07, "float8"),
    (1e300, "float8"),
    (math.inf, "float8"),
    (-math.inf, "float8"),
    (-42, "bigint"),
    (True, "boolean"),
    (None, "text"),
]


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_literals_read_back_the_same_in_postgres(postgres: LocalPostgres, conforming: str) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"SET standard_conforming_strings = {conforming}")
        conn.execute("SET escape_string_warning = off")
        for value, kind in ROUND_TRIP:
            row = conn.execute(f"SELECT ({quote_literal(value)})::{kind}").fetchone()
            assert row is not None
            assert row[0] == value, (value, conforming)
        nan = conn.execute(f"SELECT {quote_literal(math.nan)}").fetchone()
        assert nan is not None and math.isnan(nan[0])
        doc = {"path": "C:\\temp", "quote": "it's", "n": [1.5, None, True], "u": "☃"}
        row = conn.execute(f"SELECT {typed_literal(Column('d', 'jsonb'), doc)}").fetchone()
        assert row is not None and row[0] == doc
        items = ["a", "it's", "b\\c"]
        row = conn.execute(f"SELECT {typed_literal(Column('t', 'text[]'), items)}").fetchone()
        assert row is not None and row[0] == items
