"""Promotion rules (engine/promotion.py), pure: how each kind of rule maps a value, which rule
wins, and how rewrite() edits the SQL another environment wrote, constant by constant. No
server, no database, no cloud."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pglast.parser import parse_sql_json

from engine.audit import Change
from engine.contract import EngineError
from engine.ddl import quote_literal
from engine.promotion import Rewritten, Rule, Rules, rewrite
from engine.sqlgen import SqlGenerator
from modules.spec import Column, Ref, Table


def mapped(rule: Rule, value: str, table: str = "t", column: str = "c") -> str:
    return Rules([rule]).map(table, column, value)[0]


def constants(sql: str) -> list[str]:
    """Every string constant of `sql` as Postgres (pglast) reads it, in document order."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            constant = node.get("A_Const")
            if isinstance(constant, dict) and "sval" in constant:
                found.append(constant["sval"].get("sval", ""))
                return
            for child in node.values():
                walk(child)

    walk(json.loads(parse_sql_json(sql)))
    return found


def only(text: str, rules: Rules) -> Rewritten:
    [result] = rewrite(text, rules)
    return result


# --- each kind of rule --------------------------------------------------------------------


def test_value_rule_maps_exactly_that_value() -> None:
    rule = Rule(1, "value", "prod-db", "production-db")
    assert mapped(rule, "prod-db") == "production-db"
    for other in ("prod-db ", " prod-db", "PROD-DB", "prod-db2", "prod", "", "xprod-db"):
        assert mapped(rule, other) == other
    # A value rule is no glob: its `*` is a character like any other.
    star = Rule(2, "value", "a*", "b")
    assert mapped(star, "a*") == "b"
    assert mapped(star, "abc") == "abc"


def test_pattern_rule_fills_the_stars_in_order() -> None:
    rule = Rule(1, "pattern", "staging-*-web-*", "prod-*-app-*")
    assert mapped(rule, "staging-eu-web-01") == "prod-eu-app-01"
    assert mapped(rule, "staging--web-") == "prod--app-"  # a star matches empty text too
    assert mapped(rule, "staging-a-web-b-web-c") == "prod-a-app-b-web-c"  # first star shortest
    for other in ("staging-eu-db-01", "prod-eu-web-01", "xstaging-eu-web-01", "staging-eu-web"):
        assert mapped(rule, other) == other
    # Only `*` is special: regex characters in the match are themselves.
    dots = Rule(2, "pattern", "a.b-*", "c.d-*")
    assert mapped(dots, "a.b-1") == "c.d-1"
    assert mapped(dots, "aXb-1") == "aXb-1"
    # A replacement may drop stars: the groups fill it left to right.
    fewer = Rule(3, "pattern", "*.*.example.com", "*.example.org")
    assert mapped(fewer, "www.eu.example.com") == "www.example.org"
    # The match spans lines (names with newlines are odd but strings).
    assert mapped(Rule(4, "pattern", "x-*", "y-*"), "x-a\nb") == "y-a\nb"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.3.0/24", "10.2.3.0/24"),
        ("10.1.0.0/16", "10.2.0.0/16"),
        ("10.1.255.240/28", "10.2.255.240/28"),
        ("10.1.2.3", "10.2.2.3"),
        ("10.1.2.3/32", "10.2.2.3/32"),
        ("10.1.255.255", "10.2.255.255"),
        # Outside the block, wider than it, not CIDR, or not strict: left alone.
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.10.0.0/16", "10.10.0.0/16"),
        ("10.10.3.0/24", "10.10.3.0/24"),
        ("10.2.3.0/24", "10.2.3.0/24"),
        ("10.1.3.5/24", "10.1.3.5/24"),
        ("10.1.3.0/33", "10.1.3.0/33"),
        ("10.1.3", "10.1.3"),
        ("vpc-10.1.3.0/24", "vpc-10.1.3.0/24"),
        ("2001:db8::/64", "2001:db8::/64"),
        ("", ""),
    ],
)
def test_cidr_rule_rebases_blocks_and_addresses(value: str, expected: str) -> None:
    assert mapped(Rule(1, "cidr", "10.1.0.0/16", "10.2.0.0/16"), value) == expected


def test_cidr_rule_ipv6() -> None:
    rule = Rule(1, "cidr", "2001:db8:1::/48", "2001:db8:9::/48")
    assert mapped(rule, "2001:db8:1:2::/64") == "2001:db8:9:2::/64"
    assert mapped(rule, "2001:db8:1::1") == "2001:db8:9::1"
    assert mapped(rule, "2001:db8:1:ffff:ffff:ffff:ffff:ffff") == (
        "2001:db8:9:ffff:ffff:ffff:ffff:ffff"
    )
    for other in ("2001:db8:2::/64", "::/0", "2001:db8::/32", "10.1.0.0/16", "::1"):
        assert mapped(rule, other) == other
    # An IPv4 rule leaves IPv6 values alone (and the other way round, above).
    assert mapped(Rule(2, "cidr", "0.0.0.0/0", "0.0.0.0/0"), "::/0") == "::/0"


def test_cidr_rule_into_a_low_ipv6_block_stays_ipv6() -> None:
    """The target's address is made from a number: one below 2**32 must still be IPv6."""
    rule = Rule(1, "cidr", "100::/64", "::/64")  # the discard prefix to the first /64
    assert mapped(rule, "100::1") == "::1"
    assert mapped(rule, "100::1:0/112") == "::1:0/112"
    assert mapped(rule, "100::/64") == "::/64"


def test_region_rule_maps_the_region_and_its_zones() -> None:
    rule = Rule(1, "region", "us-east-1", "eu-west-1")
    assert mapped(rule, "us-east-1") == "eu-west-1"
    assert mapped(rule, "us-east-1a") == "eu-west-1a"
    assert mapped(rule, "us-east-1b") == "eu-west-1b"
    assert mapped(rule, "us-east-1f") == "eu-west-1f"
    for other in (
        "us-east-10",
        "us-east-10a",
        "us-east-11",
        "us-east-1ab",
        "us-east-1A",
        "us-east-1-bos-1a",
        "us-east-2",
        "us-east-2a",
        "xus-east-1a",
        "us-east-",
        "eu-west-1a",
    ):
        assert mapped(rule, other) == other


# --- which rule wins ----------------------------------------------------------------------


def test_table_and_column_beats_column_beats_table_beats_any() -> None:
    anywhere = Rule(1, "value", "x", "any")
    table_only = Rule(2, "value", "x", "table", table_name="t")
    column_only = Rule(3, "value", "x", "column", column_name="c")
    both = Rule(4, "value", "x", "both", table_name="t", column_name="c")
    rules = Rules([anywhere, both, table_only, column_only])
    assert rules.map("t", "c", "x") == ("both", both)
    assert rules.map("u", "c", "x") == ("column", column_only)
    assert rules.map("t", "d", "x") == ("table", table_only)
    assert rules.map("u", "d", "x") == ("any", anywhere)
    assert rules.map("t", "c", "y") == ("y", None)
    # Whatever order they are given in.
    for order in ([both, column_only, table_only, anywhere], [column_only, anywhere]):
        assert Rules(order).map("u", "c", "x") == ("column", column_only)


def test_a_more_specific_rule_that_does_not_match_falls_through() -> None:
    narrow = Rule(1, "value", "other", "nope", table_name="t", column_name="c")
    broad = Rule(2, "cidr", "10.1.0.0/16", "10.2.0.0/16")
    rules = Rules([narrow, broad])
    assert rules.map("t", "c", "10.1.1.0/24") == ("10.2.1.0/24", broad)


def test_a_zone_override_beats_the_region_rule() -> None:
    region = Rule(1, "region", "us-east-1", "eu-west-1")
    zone = Rule(2, "value", "us-east-1b", "eu-west-1c")
    for rules in (Rules([region, zone]), Rules([zone, region])):
        assert rules.map("subnet", "availability_zone", "us-east-1b") == ("eu-west-1c", zone)
        assert rules.map("subnet", "availability_zone", "us-east-1a") == ("eu-west-1a", region)
        assert rules.map("subnet", "region", "us-east-1") == ("eu-west-1", region)
    # ...but a region rule scoped to the column beats an unscoped zone override.
    scoped = Rule(3, "region", "us-east-1", "ap-south-1", column_name="availability_zone")
    rules = Rules([region, zone, scoped])
    assert rules.map("subnet", "availability_zone", "us-east-1b") == ("ap-south-1b", scoped)


def test_kind_order_then_oldest_rule() -> None:
    pattern = Rule(1, "pattern", "10.1.*", "pattern-*")
    cidr = Rule(2, "cidr", "10.1.0.0/16", "10.2.0.0/16")
    value = Rule(3, "value", "10.1.0.0/24", "value")
    rules = Rules([pattern, cidr, value])
    assert rules.map("t", "c", "10.1.0.0/24") == ("value", value)
    assert rules.map("t", "c", "10.1.1.0/24") == ("10.2.1.0/24", cidr)
    assert rules.map("t", "c", "10.1.x") == ("pattern-x", pattern)
    region = Rule(4, "region", "10.1.0.0/16", "r")  # odd, but ranks between cidr and pattern
    assert Rules([pattern, region]).map("t", "c", "10.1.0.0/16") == ("r", region)
    newer = Rule(9, "value", "a", "newer")
    older = Rule(5, "value", "a", "older")
    assert Rules([newer, older]).map("t", "c", "a") == ("older", older)


def test_exclude_rules_map_nothing() -> None:
    value = Rule(2, "value", "a", "b")
    rules = Rules([Rule(1, "exclude", "*"), value])
    assert rules.map("t", "c", "a") == ("b", value)
    assert rules.map("t", "c", "z") == ("z", None)


# --- rewriting SQL ------------------------------------------------------------------------

NETWORK = Rules(
    [
        Rule(1, "cidr", "10.1.0.0/16", "10.2.0.0/16"),
        Rule(2, "region", "us-east-1", "eu-west-1"),
        Rule(3, "pattern", "staging-*", "prod-*"),
    ]
)


def test_rewrite_multi_statement_text() -> None:
    text = (
        """INSERT INTO "vpc" ("cidr_block", "region") VALUES ('10.1.0.0/16', 'us-east-1');\n"""
        """UPDATE "subnet" SET "availability_zone" = 'us-east-1c'"""
        """ WHERE "cidr_block" = '10.1.3.0/24' AND "region" = 'us-east-1';\n"""
        """DELETE FROM "log_group" WHERE "log_group_name" = 'staging-app';\n"""
        """SELECT count(*) FROM "subnet" WHERE "cidr_block" = '10.1.3.0/24'"""
        """ AND "availability_zone" IS NOT DISTINCT FROM 'us-east-1b';\n"""
        """INSERT INTO "log_group" ("log_group_name") VALUES ('other')"""
    )
    results = rewrite(text, NETWORK)
    assert [r.sql for r in results] == [
        """INSERT INTO "vpc" ("cidr_block", "region") VALUES ('10.2.0.0/16', 'eu-west-1');""",
        """UPDATE "subnet" SET "availability_zone" = 'eu-west-1c'"""
        """ WHERE "cidr_block" = '10.2.3.0/24' AND "region" = 'eu-west-1';""",
        """DELETE FROM "log_group" WHERE "log_group_name" = 'prod-app';""",
        """SELECT count(*) FROM "subnet" WHERE "cidr_block" = '10.2.3.0/24'"""
        """ AND "availability_zone" IS NOT DISTINCT FROM 'eu-west-1b';""",
        """INSERT INTO "log_group" ("log_group_name") VALUES ('other');""",
    ]
    assert [r.source_sql for r in results] == [s.strip() + ";" for s in text.split(";\n")]
    assert all(r.excluded_by is None for r in results)
    assert results[0].rewrites == [
        {
            "table": "vpc",
            "column": "cidr_block",
            "source": "10.1.0.0/16",
            "target": "10.2.0.0/16",
            "rule": 1,
        },
        {
            "table": "vpc",
            "column": "region",
            "source": "us-east-1",
            "target": "eu-west-1",
            "rule": 2,
        },
    ]
    assert [(r["column"], r["rule"]) for r in results[1].rewrites] == [
        ("availability_zone", 2),
        ("cidr_block", 1),
        ("region", 2),
    ]
    assert results[2].rewrites[0]["table"] == "log_group"
    assert results[4].rewrites == []


def test_a_statement_no_rule_touches_is_returned_unchanged() -> None:
    text = (
        "insert   into vpc(cidr_block,tags)values('192.168.0.0/16' , '{\"a\":  \"b\"}'::json)"
        " /* a comment 'us-east-1' */  ;  SELECT   'us-east-1' ;"
    )
    results = rewrite(text, NETWORK)
    assert [r.sql for r in results] == [r.source_sql for r in results]
    assert results[0].sql == (
        "insert   into vpc(cidr_block,tags)values('192.168.0.0/16' , '{\"a\":  \"b\"}'::json)"
        " /* a comment 'us-east-1' */;"
    )
    assert results[1].sql == "SELECT   'us-east-1';"  # a constant compared with no column
    assert all(r.rewrites == [] for r in results)
    assert rewrite("", NETWORK) == []


def test_escape_strings_with_backslashes_and_quotes() -> None:
    rules = Rules([Rule(1, "value", "a\\b'c", "x\\y'z"), Rule(2, "value", "it's", "it''s\\")])
    text = "INSERT INTO \"t\" (\"c\", \"d\", \"e\") VALUES (E'a\\\\b''c', 'it''s', e'a\\\\b\\'c')"
    result = only(text, rules)
    assert result.sql is not None
    assert constants(text) == ["a\\b'c", "it's", "a\\b'c"]
    assert constants(result.sql) == ["x\\y'z", "it''s\\", "x\\y'z"]
    assert result.sql == (
        'INSERT INTO "t" ("c", "d", "e") VALUES'
        " (E'x\\\\y''z', E'it''''s\\\\', E'x\\\\y''z');"
    )
    # A plain string's backslash is just a character (standard_conforming_strings).
    plain = only("INSERT INTO t (c, d) VALUES ('a\\b''c', 'a\\\\b''c')", rules)
    assert plain.sql == "INSERT INTO t (c, d) VALUES (E'x\\\\y''z', 'a\\\\b''c');"
    assert only("INSERT INTO t (c) VALUES ('a\\')", Rules([Rule(1, "value", "a\\", "b")])).sql == (
        "INSERT INTO t (c) VALUES ('b');"
    )


def test_multibyte_text_before_the_constants() -> None:
    text = (
        "SELECT 'é€😀';\n"
        'INSERT INTO "vpc" ("name", "cidr_block", "region")'
        " VALUES ('名前 ünïcødé 😀', '10.1.3.0/24', 'us-east-1');\n"
        'UPDATE "vpc" SET "name" = \'ß\' WHERE "name" = \'😀😀\' AND "cidr_block" = \'10.1.0.0/16\''
    )
    results = rewrite(text, NETWORK)
    assert results[0].sql == "SELECT 'é€😀';"
    assert results[1].sql == (
        'INSERT INTO "vpc" ("name", "cidr_block", "region")'
        " VALUES ('名前 ünïcødé 😀', '10.2.3.0/24', 'eu-west-1');"
    )
    assert results[2].sql == (
        'UPDATE "vpc" SET "name" = \'ß\' WHERE "name" = \'😀😀\' AND "cidr_block" = \'10.2.0.0/16\';'
    )
    # A multibyte constant itself mapped to another of another length.
    rules = Rules([Rule(1, "value", "😀😀", "ü"), Rule(2, "value", "ß", "€€€")])
    assert rewrite(text, rules)[2].sql == (
        'UPDATE "vpc" SET "name" = \'€€€\' WHERE "name" = \'ü\' AND "cidr_block" = \'10.1.0.0/16\';'
    )


def test_json_string_leaves_are_mapped_but_not_keys() -> None:
    rules = Rules(
        [
            Rule(1, "value", "staging", "prod"),
            Rule(2, "cidr", "10.1.0.0/16", "10.2.0.0/16", column_name="tags"),
        ]
    )
    document = {
        "staging": "staging",
        "Env": "staging",
        "nested": {"list": ["staging", "10.1.1.0/24", 1, True, None], "staging": 2.5},
        "Name": "it's \\ é",
    }
    text = f'INSERT INTO "vpc" ("tags") VALUES ({quote_literal(json.dumps(document))}::jsonb)'
    result = only(text, rules)
    assert result.sql is not None
    [written] = constants(result.sql)
    assert json.loads(written) == {
        "staging": "prod",
        "Env": "prod",
        "nested": {"list": ["prod", "10.2.1.0/24", 1, True, None], "staging": 2.5},
        "Name": "it's \\ é",
    }
    assert [r["source"] for r in result.rewrites] == ["staging"] * 3 + ["10.1.1.0/24"]
    # The JSON compared in a WHERE (sqlgen's `"tags"::jsonb = '...'::jsonb`) too.
    where = f'DELETE FROM "vpc" WHERE "tags"::jsonb = {quote_literal(json.dumps(document))}::jsonb'
    deleted = only(where, rules)
    assert deleted.sql is not None
    assert json.loads(constants(deleted.sql)[0])["Env"] == "prod"
    # Untouched JSON keeps its exact text; JSON that is no JSON is left alone.
    same = 'INSERT INTO "vpc" ("tags") VALUES (\'{"a":"b",  "c":[1,2]}\'::json)'
    assert only(same, rules).sql == same + ";"
    broken = "INSERT INTO vpc (tags, name) VALUES ('{staging'::json, 'staging'::text)"
    assert only(broken, rules).sql == (
        "INSERT INTO vpc (tags, name) VALUES ('{staging'::json, 'prod'::text);"
    )


def test_array_items_are_mapped() -> None:
    text = (
        'INSERT INTO "lb" ("zones", "names") VALUES'
        " (ARRAY['us-east-1a', 'us-east-2a', E'staging-\\\\x']::text[], ARRAY[]::text[])"
    )
    result = only(text, NETWORK)
    assert result.sql is not None
    assert constants(result.sql) == ["eu-west-1a", "us-east-2a", "prod-\\x"]
    assert [r["column"] for r in result.rewrites] == ["zones", "zones"]
    plain_array = only("INSERT INTO t (c) VALUES (ARRAY['staging-a'])", NETWORK)
    assert plain_array.sql == "INSERT INTO t (c) VALUES (ARRAY['prod-a']);"


def test_sub_selects_use_their_own_tables_rules() -> None:
    rules = Rules(
        [
            Rule(1, "cidr", "10.1.0.0/16", "10.2.0.0/16", table_name="vpc"),
            Rule(2, "value", "web", "web-prod", table_name="security_group"),
            Rule(3, "value", "web", "WRONG", table_name="rule"),
        ]
    )
    text = (
        'INSERT INTO "subnet" ("vpc_id", "cidr_block") VALUES ('
        """(SELECT "id" FROM "vpc" WHERE "cidr_block" = '10.1.0.0/16'), '10.1.3.0/24');\n"""
        'INSERT INTO "rule" ("group_id", "description") VALUES ('
        """(SELECT "id" FROM "security_group" WHERE "group_name" = 'web' AND "vpc_id" ="""
        """ (SELECT "id" FROM "vpc" WHERE "cidr_block" = '10.1.0.0/16')), 'web');\n"""
        """UPDATE "subnet" SET "vpc_id" = (SELECT "id" FROM "vpc" WHERE "cidr_block" ="""
        """ '10.1.0.0/16') WHERE "cidr_block" = '10.1.0.0/16'"""
    )
    first, second, third = rewrite(text, rules)
    assert first.sql == (
        'INSERT INTO "subnet" ("vpc_id", "cidr_block") VALUES ('
        """(SELECT "id" FROM "vpc" WHERE "cidr_block" = '10.2.0.0/16'), '10.1.3.0/24');"""
    )
    assert first.rewrites == [
        {
            "table": "vpc",
            "column": "cidr_block",
            "source": "10.1.0.0/16",
            "target": "10.2.0.0/16",
            "rule": 1,
        }
    ]
    assert second.sql is not None
    assert constants(second.sql) == ["web-prod", "10.2.0.0/16", "WRONG"]
    assert third.sql is not None
    assert constants(third.sql) == ["10.2.0.0/16", "10.1.0.0/16"]


def test_generated_sql_is_rewritten_as_a_whole() -> None:
    """The shapes engine/sqlgen.py writes: an INSERT with JSON, a sub-select for a foreign key,
    an array; an UPDATE and a DELETE by natural key; and their promotion checks."""
    vpc_table = Table(
        "vpc",
        (Column("cidr_block", "cidr"), Column("region", "text"), Column("tags", "json")),
        mapper=object(),  # type: ignore[arg-type]  # only replayable tables are emitted
        natural_key=("cidr_block", "region"),
    )
    subnet_table = Table(
        "subnet",
        (
            Column("vpc_id", "integer", ref=Ref("vpc")),
            Column("cidr_block", "cidr"),
            Column("availability_zone", "text"),
            Column("region", "text"),
            Column("names", "text[]"),
        ),
        mapper=object(),  # type: ignore[arg-type]
        natural_key=("cidr_block", "region"),
    )
    generator = SqlGenerator({"vpc": vpc_table, "subnet": subnet_table})
    vpc = {"id": 1, "cidr_block": "10.1.0.0/16", "region": "us-east-1", "tags": {"Name": "it's"}}
    subnet = {
        "id": 7,
        "vpc_id": 1,
        "cidr_block": "10.1.3.0/24",
        "availability_zone": "us-east-1b",
        "region": "us-east-1",
        "names": ["staging-a", "b\\c"],
    }
    changes = [
        Change(1, "vpc", "INSERT", {"change": vpc}),
        Change(2, "subnet", "INSERT", {"change": subnet}),
        Change(3, "subnet", "UPDATE", {"original": subnet, "change": {**subnet, "names": []}}),
        Change(4, "subnet", "DELETE", {"original": subnet}),
    ]
    texts = []
    for change in changes:
        generator.remember(change)
        statement, check = generator.statement(change), generator.check(change)
        assert statement is not None and check is not None
        texts += [statement, check.sql]
    rules = Rules([*NETWORK.rules, Rule(4, "value", "us-east-1b", "eu-west-1c")])
    results = rewrite("\n".join(texts), rules)
    assert [r.source_sql for r in results] == texts
    outputs = [r.sql for r in results]
    assert all(s is not None for s in outputs)
    joined = "\n".join(str(s) for s in outputs)
    assert "10.1." not in joined and "us-east-1" not in joined and "staging" not in joined
    assert constants(str(outputs[2])) == [
        "10.2.0.0/16",
        "eu-west-1",
        "10.2.3.0/24",
        "eu-west-1c",
        "eu-west-1",
        "prod-a",
        "b\\c",
    ]
    assert json.loads(constants(str(outputs[0]))[2]) == {"Name": "it's"}
    # Replacing the mapped values back gives the source text again, byte for byte.
    back = Rules(
        [
            Rule(1, "cidr", "10.2.0.0/16", "10.1.0.0/16"),
            Rule(2, "region", "eu-west-1", "us-east-1"),
            Rule(3, "pattern", "prod-*", "staging-*"),
            Rule(4, "value", "eu-west-1c", "us-east-1b"),
        ]
    )
    assert [r.sql for r in rewrite(joined, back)] == texts


def test_exclude_rules_keep_statements_out() -> None:
    rules = Rules(
        [
            Rule(7, "exclude", "10.1.*", column_name="cidr_block"),
            Rule(8, "exclude", "*", table_name="flow_log"),
            Rule(9, "exclude", "debug-*", table_name="log_group", column_name="name"),
            Rule(1, "cidr", "10.1.0.0/16", "10.2.0.0/16"),
        ]
    )
    text = (
        """INSERT INTO "vpc" ("cidr_block") VALUES ('10.1.0.0/16');\n"""
        """INSERT INTO "subnet" ("vpc_id", "cidr_block") VALUES ((SELECT "id" FROM "vpc" WHERE"""
        """ "cidr_block" = '10.1.0.0/16'), '10.9.1.0/24');\n"""
        """DELETE FROM "subnet" WHERE "cidr_block" = '10.1.5.0/24';\n"""
        """UPDATE "subnet" SET "cidr_block" = '10.1.6.0/24' WHERE "cidr_block" = '10.9.6.0/24';\n"""
        """SELECT count(*) FROM "vpc" WHERE "cidr_block" = '10.1.0.0/16';\n"""
        """INSERT INTO "flow_log" ("name") VALUES ('anything');\n"""
        """INSERT INTO "log_group" ("name") VALUES ('debug-x');\n"""
        """INSERT INTO "log_group" ("name") VALUES ('app-x');\n"""
        """INSERT INTO "queue" ("name") VALUES ('debug-x');\n"""
        """INSERT INTO "queue" ("name") VALUES ((SELECT "name" FROM "flow_log" WHERE "x" = 'y'))"""
    )
    results = rewrite(text, rules)
    assert [(r.sql is None, r.excluded_by) for r in results] == [
        (True, 7),
        (True, 7),  # its parent is left out, so is it: it could not be made
        (True, 7),
        (True, 7),
        (True, 7),
        (True, 8),
        (True, 9),
        (False, None),
        (False, None),  # rule 9 is for log_group only
        (True, 8),  # flow_log in a sub-select: the value comes from a row left out
    ]
    assert results[0].source_sql == """INSERT INTO "vpc" ("cidr_block") VALUES ('10.1.0.0/16');"""


def test_dollar_quoted_and_other_constant_forms_are_left_alone() -> None:
    rules = Rules([Rule(1, "value", "x", "y")])
    for text in (
        'INSERT INTO "t" ("c") VALUES ($$x$$)',
        'INSERT INTO "t" ("c") VALUES ($tag$x$tag$)',
        'INSERT INTO "t" ("c") VALUES (U&\'x\')',
        'UPDATE "t" SET "d" = 1 WHERE "c" = $q$x$q$',
    ):
        assert only(text, rules).sql == text + ";"


def test_constants_left_alone_are_not_reported_as_rewritten() -> None:
    """`rewrites` lists each value a rule changed: a constant the text keeps as it is (a
    dollar-quoted one) was not changed, and reporting it would tell the person promoting that
    the target gets a value it does not."""
    rules = Rules([Rule(1, "value", "x", "y")])
    result = only('INSERT INTO "t" ("c") VALUES ($$x$$)', rules)
    assert result.sql == 'INSERT INTO "t" ("c") VALUES ($$x$$);'
    assert result.rewrites == []


def test_a_constant_written_as_adjacent_strings_is_replaced_whole() -> None:
    """SQL joins string constants separated by a newline ('a'\\n'b' is 'ab'): the rewrite
    must replace all of it, or the target gets a value no rule wrote."""
    rules = Rules([Rule(1, "value", "ab", "z")])
    result = only("INSERT INTO t (c) VALUES ('a'\n'b')", rules)
    assert result.sql is not None
    assert constants(result.sql) == ["z"]


@pytest.mark.parametrize(
    "text",
    [
        "INSERT INTO",
        "SELECT 'unterminated",
        "INSERT INTO t (c) VALUES ('a'); UPDATE SET",
        "DELETE FROM t WHERE c = $$x",
    ],
)
def test_unparseable_sql_is_a_syntax_error(text: str) -> None:
    with pytest.raises(EngineError) as raised:
        rewrite(text, NETWORK)
    assert raised.value.sqlstate == "42601"
    assert "does not parse" in raised.value.message


# --- properties ---------------------------------------------------------------------------

# Postgres text holds no NUL, and UTF-8 no lone surrogates.
texts = st.text(st.characters(exclude_characters="\x00", codec="utf-8"))


def inverse(rule: Rule) -> Rule:
    assert rule.replacement is not None
    return Rule(rule.id, rule.kind, rule.replacement, rule.match, rule.table_name)


def round_trips(rule: Rule, value: str) -> str:
    there = mapped(rule, value)
    return mapped(inverse(rule), there)


@st.composite
def networks(draw: st.DrawFn) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Two distinct blocks of one size and family."""
    version = draw(st.sampled_from((4, 6)))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(4 if version == 4 else 8, bits))
    blocks = 2**prefix
    first, second = draw(st.lists(st.integers(0, blocks - 1), min_size=2, max_size=2, unique=True))
    kind = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    size = 2 ** (bits - prefix)
    return (kind((first * size, prefix)), kind((second * size, prefix)))


@st.composite
def inside(draw: st.DrawFn, block: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """An address of `block`, or a block inside it, as AWS writes them."""
    bits = block.max_prefixlen
    prefix = draw(st.integers(block.prefixlen, bits))
    size = 2 ** (bits - prefix)
    offset = draw(st.integers(0, block.num_addresses // size - 1)) * size
    start = int(block.network_address) + offset
    if prefix == bits and draw(st.booleans()):
        return str(type(block.network_address)(start))
    return str(type(block)((start, prefix)))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), blocks=networks())
def test_cidr_rules_round_trip(data: st.DataObject, blocks: tuple[Any, ...]) -> None:
    source, target = blocks
    rule = Rule(1, "cidr", str(source), str(target))
    value = data.draw(inside(source))
    there = mapped(rule, value)
    assert there != value
    found = ipaddress.ip_network(there)
    assert found.subnet_of(target) and found.prefixlen == ipaddress.ip_network(value).prefixlen
    assert ("/" in there) == ("/" in value)
    assert round_trips(rule, value) == value
    # A value of neither block (of this family or the other, or no address) stays.
    other = data.draw(
        inside(ipaddress.ip_network("0.0.0.0/0")) | inside(ipaddress.ip_network("::/0")) | texts
    )
    try:
        network = ipaddress.ip_network(other)
    except ValueError:
        network = None
    assume(
        network is None
        or network.version != source.version
        or not (network.subnet_of(source) or network.subnet_of(target))
    )
    assert mapped(rule, other) == other
    assert round_trips(rule, other) == other


suffixes = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(suffix=suffixes, other=texts)
def test_pattern_rules_round_trip(suffix: str, other: str) -> None:
    rule = Rule(1, "pattern", "prefix-*", "other-*")
    assert mapped(rule, "prefix-" + suffix) == "other-" + suffix
    assert round_trips(rule, "prefix-" + suffix) == "prefix-" + suffix
    assume(not other.startswith(("prefix-", "other-")))
    assert mapped(rule, other) == other
    assert round_trips(rule, other) == other


regions = st.from_regex(r"\A[a-z]{2}-[a-z]{4,9}-[1-9]\Z")


@settings(max_examples=200, deadline=None)
@given(source=regions, target=regions, zone=st.sampled_from("abcdefz"), other=texts)
def test_region_rules_round_trip(source: str, target: str, zone: str, other: str) -> None:
    assume(source != target)
    rule = Rule(1, "region", source, target)
    assert mapped(rule, source) == target
    assert mapped(rule, source + zone) == target + zone
    for value in (source, source + zone):
        assert round_trips(rule, value) == value
    # Another region with the same start (us-east-1 and us-east-10) is another region.
    assert mapped(rule, source + "0") == source + "0"
    assert mapped(rule, source + zone + zone) == source + zone + zone
    assume(
        all(
            other not in (r, *(r + z for z in "abcdefghijklmnopqrstuvwxyz"))
            for r in (source, target)
        )
    )
    assert round_trips(rule, other) == other


@settings(max_examples=200, deadline=None)
@given(match=texts, replacement=texts, other=texts)
def test_value_rules_round_trip(match: str, replacement: str, other: str) -> None:
    assume(match != replacement)
    rule = Rule(1, "value", match, replacement)
    assert mapped(rule, match) == replacement
    assert round_trips(rule, match) == match
    assume(other not in (match, replacement))
    assert mapped(rule, other) == other
    assert round_trips(rule, other) == other


@settings(max_examples=200, deadline=None)
@given(prefix=texts, value=texts, replacement=texts, unrelated=texts)
def test_any_string_constant_is_rewritten_exactly(
    prefix: str, value: str, replacement: str, unrelated: str
) -> None:
    """Whatever the string (quotes, backslashes, any script), and whatever multibyte text
    comes before it, quote_literal's SQL rewritten by a value rule holds the replacement."""
    text = f'SELECT {quote_literal(prefix)}; INSERT INTO "t" ("c") VALUES ({quote_literal(value)});'
    head, statement = rewrite(text, Rules([Rule(1, "value", value, replacement)]))
    assert head.sql == f"SELECT {quote_literal(prefix)};"
    assert statement.source_sql == f'INSERT INTO "t" ("c") VALUES ({quote_literal(value)});'
    assert statement.sql is not None
    assert constants(statement.sql) == [replacement]
    if value != replacement:
        assert statement.rewrites == [
            {"table": "t", "column": "c", "source": value, "target": replacement, "rule": 1}
        ]
    assume(unrelated != value)
    untouched = rewrite(text, Rules([Rule(1, "value", unrelated, replacement)]))
    assert [r.sql for r in untouched] == [head.sql, statement.source_sql]
    assert all(r.rewrites == [] for r in untouched)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def replace_leaves(document: Any, match: str, replacement: str) -> Any:
    if isinstance(document, str):
        return replacement if document == match else document
    if isinstance(document, list):
        return [replace_leaves(item, match, replacement) for item in document]
    if isinstance(document, dict):
        return {k: replace_leaves(v, match, replacement) for k, v in document.items()}
    return document


@settings(max_examples=150, deadline=None)
@given(document=json_values, match=texts, replacement=texts)
def test_json_constants_map_every_leaf(document: Any, match: str, replacement: str) -> None:
    literal = f"{quote_literal(json.dumps(document, ensure_ascii=False))}::jsonb"
    text = f'INSERT INTO "t" ("doc") VALUES ({literal});'
    result = only(text, Rules([Rule(1, "value", match, replacement)]))
    assert result.sql is not None
    expected = replace_leaves(document, match, replacement)
    assert json.loads(constants(result.sql)[0]) == expected
    if expected == document:
        assert result.sql == text


def test_in_lists_reversed_comparisons_and_insert_select_are_mapped() -> None:
    rules = Rules(
        [Rule(1, "pattern", "staging-*", "prod-*"), Rule(2, "region", "us-east-1", "eu-west-1")]
    )
    text = (
        """SELECT count(*) FROM "queue" WHERE "name" IN ('staging-a', 'other');\n"""
        """DELETE FROM "queue" WHERE 'staging-b' = "name";\n"""
        """INSERT INTO "queue" ("name", "region") SELECT 'staging-c', 'us-east-1';\n"""
        """INSERT INTO "endpoint_gateway" ("service") VALUES ('com.amazonaws.us-east-1.s3');"""
    )
    assert [r.sql for r in rewrite(text, rules)] == [
        """SELECT count(*) FROM "queue" WHERE "name" IN ('prod-a', 'other');""",
        """DELETE FROM "queue" WHERE 'prod-b' = "name";""",
        """INSERT INTO "queue" ("name", "region") SELECT 'prod-c', 'eu-west-1';""",
        """INSERT INTO "endpoint_gateway" ("service") VALUES ('com.amazonaws.eu-west-1.s3');""",
    ]


def test_a_constant_continued_after_a_comment_is_left_as_written() -> None:
    rules = Rules([Rule(1, "pattern", "staging-*", "prod-*")])
    text = "INSERT INTO \"queue\" (\"name\") VALUES ('staging-'\n-- note\n'x');"
    [result] = rewrite(text, rules)
    assert result.sql == text and result.rewrites == []
    spaced = 'INSERT INTO "queue" ("name") VALUES (\'staging-a\' /* c */);'
    assert rewrite(spaced, rules)[0].sql == spaced.replace("staging-a", "prod-a")


def test_a_last_statement_ending_in_a_comment_keeps_its_semicolon_out_of_it() -> None:
    [result] = rewrite('DELETE FROM "queue" WHERE "name" = \'a\' -- why', Rules([]))
    assert result.sql == 'DELETE FROM "queue" WHERE "name" = \'a\' -- why\n;'


def test_two_dashes_inside_a_constant_are_no_comment() -> None:
    text = """INSERT INTO "t" ("c") VALUES ('{"--": null}'::jsonb);"""
    assert rewrite(text, Rules([]))[0].sql == text
