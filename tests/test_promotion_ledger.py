"""Promotion from SQL, in the target: the rules table an environment's role writes (checked,
audited, never undone by a rollback), iasql_promotion_sql(), and the ledger."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from engine import promotion
from iasql.sandbox import MotoServer
from tests.support.env import add_credentials, one, only_regions, rows

RULE = "INSERT INTO iasql_promotion_rule (table_name, column_name, kind, match, replacement)"


@pytest.fixture
def target(envdb: psycopg.Connection, moto_accounts: object) -> Iterator[psycopg.Connection]:
    """An environment with its own account and the VPC module."""
    server: MotoServer = moto_accounts()  # type: ignore[operator]
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, server)
    only_regions(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_vpc')")
    yield envdb


@pytest.mark.parametrize(
    ("values", "sqlstate", "words"),
    [
        ("(NULL, NULL, 'values', 'a', 'b')", "23514", "kind is value, cidr"),
        ("(NULL, NULL, 'exclude', 'a', 'b')", "23514", "an exclude rule has no replacement"),
        ("(NULL, NULL, 'value', 'a', NULL)", "23514", "every other rule has one"),
        ("(NULL, NULL, 'pattern', 'a*b*c*d*', 'x')", "23514", "at most 3 *"),
        ("(NULL, NULL, 'pattern', 'a-*', 'b-*-*')", "23514", "no more than it"),
        ("(NULL, NULL, 'cidr', '10.1.0.0/16', '10.2.0.0/24')", "23514", "same size"),
        ("(NULL, NULL, 'cidr', '10.1.0.1/16', '10.2.0.0/16')", "22P02", "cidr"),
        ("(NULL, NULL, 'cidr', '10.1/16', '10.2.0.0/16')", "23514", "in full"),
    ],
)
def test_a_bad_rule_is_refused_when_written(
    envdb: psycopg.Connection, values: str, sqlstate: str, words: str
) -> None:
    envdb.execute("SELECT * FROM iasql_modules_installed()")  # the platform tables, on first use
    with pytest.raises(psycopg.Error) as caught:
        envdb.execute(f"{RULE} VALUES {values}")
    assert caught.value.sqlstate == sqlstate
    assert words in str(caught.value)


def test_rules_are_the_roles_own_audited_and_kept_by_a_rollback(
    target: psycopg.Connection,
) -> None:
    role = one(target, "SELECT current_user")
    target.execute("SELECT * FROM iasql_begin()")
    target.execute(f"{RULE} VALUES ('vpc', 'cidr_block', 'cidr', '10.1.0.0/16', '10.2.0.0/16')")
    target.execute("INSERT INTO vpc (cidr_block) VALUES ('10.9.0.0/16')")
    target.execute("SELECT * FROM iasql_rollback()")
    # The VPC row is undone; the rule, a setting of this environment, is not.
    assert rows(target, "SELECT count(*) FROM vpc WHERE cidr_block = '10.9.0.0/16'") == [(0,)]
    assert rows(target, "SELECT kind, match FROM iasql_promotion_rule") == [("cidr", "10.1.0.0/16")]
    target.execute("UPDATE iasql_promotion_rule SET replacement = '10.3.0.0/16'")
    logged = rows(
        target,
        "SELECT \"user\", change_type::text, change->'change'->>'replacement'"
        " FROM iasql_audit_log WHERE table_name = 'iasql_promotion_rule' ORDER BY id",
    )
    assert logged == [(role, "INSERT", "10.2.0.0/16"), (role, "UPDATE", "10.3.0.0/16")]
    # Pending rule changes are no module table's: a sync names no table left unsynced.
    notices: list[str] = []
    target.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    target.execute("SELECT * FROM iasql_sync()")
    assert not [n for n in notices if "not syncing" in n]


def test_promotion_sql_applies_the_rules(target: psycopg.Connection) -> None:
    target.execute(
        f"{RULE} VALUES (NULL, NULL, 'cidr', '10.1.0.0/16', '10.2.0.0/16'),"
        " ('vpc', 'tags', 'pattern', 'staging-*', 'prod-*'),"
        " ('subnet', 'availability_zone', 'exclude', '*-1c', NULL)"
    )
    target.execute(
        "INSERT INTO iasql_promotion_rule (source_environment, kind, match, replacement)"
        " VALUES ('elsewhere', 'value', 'us-east-1', 'ap-south-1')"
    )
    source = (
        'INSERT INTO "vpc" ("cidr_block", "tags") VALUES (\'10.1.0.0/16\','
        ' \'{"Name": "staging-app"}\'::json);\n'
        'INSERT INTO "subnet" ("cidr_block", "availability_zone", "vpc_id") VALUES'
        " ('10.1.3.0/24', 'us-east-1c', (SELECT \"id\" FROM \"vpc\" WHERE"
        " \"cidr_block\" = '10.1.0.0/16'));\n"
        'INSERT INTO "subnet" ("cidr_block", "availability_zone", "vpc_id") VALUES'
        " ('10.1.4.0/24', 'us-east-1a', (SELECT \"id\" FROM \"vpc\" WHERE"
        " \"cidr_block\" = '10.1.0.0/16'));"
    )
    found = target.execute(
        "SELECT position, sql, rewrites, excluded_by FROM iasql_promotion_sql(%s, 'staging')"
        " ORDER BY position",
        (source,),
    ).fetchall()
    assert [r[0] for r in found] == [1, 2, 3]
    assert found[0][1] == (
        'INSERT INTO "vpc" ("cidr_block", "tags") VALUES (\'10.2.0.0/16\','
        ' \'{"Name": "prod-app"}\'::json);'
    )
    assert [(r["column"], r["source"], r["target"]) for r in found[0][2]] == [
        ("cidr_block", "10.1.0.0/16", "10.2.0.0/16"),
        ("tags", "staging-app", "prod-app"),
    ]
    exclude_id = one(target, "SELECT id FROM iasql_promotion_rule WHERE kind = 'exclude'")
    assert found[1][1] is None and found[1][3] == exclude_id
    # The other source's region rule does not apply to staging's SQL.
    assert "us-east-1a" in found[2][1] and "'10.2.0.0/16'" in found[2][1]
    # Run as written, the promoted SQL makes the rows the rules describe.
    target.execute("SELECT * FROM iasql_begin()")
    for (sql,) in target.execute(
        "SELECT sql FROM iasql_promotion_sql(%s) WHERE sql IS NOT NULL", (source,)
    ).fetchall():
        target.execute(sql)
    assert rows(
        target,
        "SELECT s.cidr_block FROM subnet s JOIN vpc v ON v.id = s.vpc_id"
        " WHERE v.cidr_block = '10.2.0.0/16'",
    ) == [("10.2.4.0/24",)]
    target.execute("SELECT * FROM iasql_rollback()")

    with pytest.raises(psycopg.Error) as caught:
        target.execute("SELECT * FROM iasql_promotion_sql('INSERT INTO vpc VALUES (')")
    assert caught.value.sqlstate == "42601" and "does not parse" in str(caught.value)


def test_the_ledger_counts_committed_promotions_only(target: psycopg.Connection) -> None:
    def ledger() -> list[tuple[str, str, str]]:
        return rows(
            target,
            "SELECT source_environment, source_transaction_id, status FROM iasql_promotions()",
        )

    with pytest.raises(psycopg.Error) as caught:
        target.execute("SELECT * FROM iasql_record_promotion('staging', 'tx-1')")
    assert caught.value.sqlstate == "25P01"
    with pytest.raises(psycopg.Error) as caught:
        target.execute("SELECT * FROM iasql_record_promotion('staging', 'tx-1', 'done')")
    assert caught.value.sqlstate == "22023"
    with pytest.raises(psycopg.Error) as caught:
        target.execute(
            "INSERT INTO iasql_promotion (source_environment, source_transaction_id, status,"
            " recorded_by) VALUES ('staging', 'tx-9', 'applied', current_user)"
        )
    assert caught.value.sqlstate == "42501"

    target.execute("SELECT * FROM iasql_record_promotion('staging', 'tx-0', 'skipped')")
    # Applied in a transaction that is rolled back: not in the ledger.
    target.execute("SELECT * FROM iasql_begin()")
    target.execute("INSERT INTO vpc (cidr_block) VALUES ('10.7.0.0/16')")
    target.execute("SELECT * FROM iasql_record_promotion('staging', 'tx-1')")
    assert ledger() == [("staging", "tx-0", "skipped"), ("staging", "tx-1", "pending")]
    review = one(target, "SELECT markdown FROM iasql_create_review('Promote tx-1')")
    assert "Promotes staging transaction tx-1" in review
    target.execute("SELECT * FROM iasql_rollback()")
    assert ledger() == [("staging", "tx-0", "skipped")]

    # Applied in a transaction that commits: in the ledger, once.
    target.execute("SELECT * FROM iasql_begin()")
    target.execute("INSERT INTO vpc (cidr_block) VALUES ('10.7.0.0/16')")
    opened = one(target, "SELECT transaction_id FROM iasql_transaction WHERE closed_at IS NULL")
    recorded = target.execute("SELECT * FROM iasql_record_promotion('staging', 'tx-1')").fetchone()
    assert recorded == ("applied: staging transaction tx-1", opened)
    target.execute("SELECT * FROM iasql_commit()")
    assert ledger() == [("staging", "tx-0", "skipped"), ("staging", "tx-1", "applied")]
    for again in ("'tx-1'", "'tx-0', 'skipped'"):
        with pytest.raises(psycopg.Error) as caught:
            target.execute(f"SELECT * FROM iasql_record_promotion('staging', {again})")
        assert caught.value.sqlstate == "23505" and "in the ledger already" in str(caught.value)


def test_promotion_sql_refuses_a_text_too_big_to_parse_at_once(
    envdb: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit (4 MiB) is above what the test server lets a message carry (1 MiB): lowered
    # here, in the server's own process.
    monkeypatch.setattr(promotion, "MAX_SQL_BYTES", 1000)
    with pytest.raises(psycopg.Error) as caught:
        envdb.execute("SELECT * FROM iasql_promotion_sql(%s)", ("é" * 501,))
    assert caught.value.sqlstate == "54000" and "1002 bytes; at most 1000" in str(caught.value)
    # The session goes on.
    counted = envdb.execute("SELECT count(*) FROM iasql_promotion_sql(%s)", ("SELECT 1;" * 100,))
    assert counted.fetchall() == [(100,)]


def test_promotion_sql_parses_away_from_the_server(
    envdb: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse runs in a child process: a text nested too deeply is a clear error, one that
    takes too long ends the child, and sessions meanwhile are answered."""
    nested = "DELETE FROM t WHERE " + "NOT " * 5000 + "(a = 'x');"
    with pytest.raises(psycopg.Error) as caught:
        envdb.execute("SELECT * FROM iasql_promotion_sql(%s)", (nested,))
    assert caught.value.sqlstate in ("54001", "42601"), caught.value
    monkeypatch.setattr(promotion, "REWRITE_SECONDS", 0.0)
    with pytest.raises(psycopg.Error) as caught:
        envdb.execute("SELECT * FROM iasql_promotion_sql('SELECT 1;')")
    assert caught.value.sqlstate == "57014" and "took over 0 s" in str(caught.value)
    monkeypatch.setattr(promotion, "REWRITE_SECONDS", 30.0)
    counted = envdb.execute("SELECT count(*) FROM iasql_promotion_sql('SELECT 1; SELECT 2;')")
    assert counted.fetchall() == [(2,)]


def test_rows_a_users_own_trigger_writes_are_replayed(target: psycopg.Connection) -> None:
    """Promotion leaves out rows that iasql's own triggers and cascades write (the replayed
    statement writes them again), never rows a user's trigger writes."""
    target.execute("CREATE TABLE app.feed (cidr text)")
    target.execute(
        "CREATE FUNCTION app.feed_vpc() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO public.vpc (cidr_block) VALUES (NEW.cidr); RETURN NEW; END $$"
    )
    target.execute(
        "CREATE TRIGGER feed AFTER INSERT ON app.feed FOR EACH ROW EXECUTE FUNCTION app.feed_vpc()"
    )
    target.execute("SELECT * FROM iasql_begin()")
    target.execute("INSERT INTO app.feed VALUES ('10.8.0.0/16')")
    sql = [s for (s,) in rows(target, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(sql) == 1 and sql[0].startswith('INSERT INTO "vpc"') and "'10.8.0.0/16'" in sql[0]
    target.execute("SELECT * FROM iasql_rollback()")
