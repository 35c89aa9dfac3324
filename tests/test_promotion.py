"""Environment promotion: SQL generated from staging's audit log replays unchanged in prod
(another AWS account, other serial ids), and values round-trip exactly."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.audit import Change
from engine.sqlgen import SqlGenerator
from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from modules import available_modules
from modules.spec import Column, Table
from tests.support.cli import iasql
from tests.support.env import RunningServer, add_credentials, one, only_regions, rows
from tests.support.http_relay import RelayThread

MODULES = ("aws_cloudwatch", "aws_sqs", "aws_vpc", "aws_security_group")


URLS: dict[int, str] = {}  # id(connection) -> its environment's URL


def environment(iasql: RunningServer, alias: str, moto: MotoServer) -> psycopg.Connection:
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert row is not None
    conn = psycopg.connect(str(row[0]), autocommit=True)
    URLS[id(conn)] = str(row[0])
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn)
    conn.execute(f"SELECT * FROM iasql_install({', '.join(repr(m) for m in MODULES)})")
    return conn


@pytest.fixture
def staging_and_prod(
    iasql: RunningServer, moto_accounts: Any
) -> Iterator[tuple[psycopg.Connection, psycopg.Connection, MotoServer]]:
    staging_moto, prod_moto = moto_accounts(), moto_accounts()
    tag = secrets.token_hex(3)
    staging = environment(iasql, f"staging_{tag}", staging_moto)
    prod = environment(iasql, f"prod_{tag}", prod_moto)
    try:
        yield staging, prod, prod_moto
    finally:
        staging.close()
        prod.close()


def replay(conn: psycopg.Connection, statements: list[str]) -> None:
    for statement in statements:
        conn.execute(statement)


def test_seed_scenario_replays_in_prod_with_no_edits(staging_and_prod: Any) -> None:
    staging, prod, prod_moto = staging_and_prod
    # Unrelated rows in prod first, so that no serial id lines up with staging's.
    prod.execute("SELECT * FROM iasql_begin()")
    prod.execute("INSERT INTO vpc (cidr_block) VALUES ('10.50.0.0/16'), ('10.51.0.0/16')")
    prod.execute(
        "INSERT INTO security_group (group_name, description, vpc_id)"
        " SELECT 'other', 'unrelated', id FROM vpc WHERE cidr_block = '10.50.0.0/16'"
    )
    prod.execute("SELECT * FROM iasql_commit()")

    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute(
        "INSERT INTO vpc (cidr_block, tags) VALUES ('10.1.0.0/16', '{\"Name\": \"it''s\"}')"
    )
    staging.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
        " SELECT id, '10.1.1.0/24', 'us-east-1a' FROM vpc WHERE cidr_block = '10.1.0.0/16'"
    )
    assert len(rows(staging, "SELECT * FROM iasql_preview()")) == 2
    staging.execute(
        "INSERT INTO security_group (group_name, description, vpc_id)"
        " SELECT g, g || ' tier', id FROM vpc, (VALUES ('web'), ('app')) v(g)"
        " WHERE cidr_block = '10.1.0.0/16'"
    )
    staging.execute(
        "INSERT INTO security_group_rule (security_group_id, is_egress, ip_protocol, from_port,"
        " to_port, source_security_group) SELECT a.id, false, 'tcp', 8080, 8080, w.id"
        " FROM security_group a, security_group w WHERE a.group_name = 'app'"
        " AND w.group_name = 'web'"
    )
    staging.execute("INSERT INTO log_group (log_group_name) VALUES ('/app/$$quoted''\\\\')")
    staging.execute(
        "INSERT INTO queue (name, policy) VALUES ('jobs', '{\"Version\": \"2012-10-17\"}')"
    )
    assert len(rows(staging, "SELECT * FROM iasql_preview()")) == 7
    staging.execute("SELECT * FROM iasql_commit()")
    statements = [r[0] for r in rows(staging, "SELECT * FROM iasql_get_sql_for_transaction()")]
    assert len(statements) == 7
    text = "\n".join(statements)
    assert "vpc_id" not in text.split('INSERT INTO "vpc"')[1].split(";")[0]  # cloud-assigned
    assert '(SELECT "id" FROM "vpc" WHERE' in text  # references by natural key

    prod.execute("SELECT * FROM iasql_begin()")
    replay(prod, statements)
    planned = rows(prod, "SELECT action, table_name FROM iasql_preview() ORDER BY 2")
    assert planned == [
        ("create", "log_group"),
        ("create", "queue"),
        ("create", "security_group"),
        ("create", "security_group"),
        ("create", "security_group_rule"),
        ("create", "subnet"),
        ("create", "vpc"),
    ]
    prod.execute("SELECT * FROM iasql_commit()")

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=prod_moto.endpoint)
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.1.0.0/16"]}])["Vpcs"]
    assert {t["Key"]: t["Value"] for t in vpc["Tags"]}.get("Name") == "it's"
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    assert [s["CidrBlock"] for s in subnets["Subnets"]] == ["10.1.1.0/24"]
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    by_name = {g["GroupName"]: g for g in groups["SecurityGroups"]}
    [permission] = by_name["app"]["IpPermissions"]
    assert permission["UserIdGroupPairs"][0]["GroupId"] == by_name["web"]["GroupId"]
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=prod_moto.endpoint)
    names = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert names == ["/app/$$quoted'\\\\"]
    # Both databases hold the same rows, modulo ids and cloud-assigned values.
    same = "SELECT log_group_name, region FROM log_group ORDER BY 1"
    assert rows(staging, same) == rows(prod, same)

    # Updates and deletes replay by natural key; replaying them again changes nothing.
    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute("UPDATE queue SET visibility_timeout = 99 WHERE name = 'jobs'")
    staging.execute("DELETE FROM security_group_rule WHERE from_port = 8080")
    staging.execute("SELECT * FROM iasql_commit()")
    statements = [r[0] for r in rows(staging, "SELECT * FROM iasql_get_sql_for_transaction()")]
    assert [s.split(" ")[0] for s in statements] == ["UPDATE", "DELETE"]
    prod.execute("SELECT * FROM iasql_begin()")
    replay(prod, statements)
    assert sorted(r[0] for r in rows(prod, "SELECT action FROM iasql_preview()")) == [
        "delete",
        "update",
    ]
    prod.execute("SELECT * FROM iasql_commit()")
    prod.execute("SELECT * FROM iasql_begin()")
    replay(prod, statements)
    assert rows(prod, "SELECT * FROM iasql_preview()") == []
    prod.execute("SELECT * FROM iasql_rollback()")
    assert rows(prod, "SELECT visibility_timeout FROM queue") == [(99,)]


def test_secrets_never_leave_and_the_review(staging_and_prod: Any) -> None:
    staging, _prod, _moto = staging_and_prod
    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute("UPDATE aws_credentials SET secret_access_key = 'another-secret-value'")
    staging.execute("INSERT INTO log_group (log_group_name) VALUES ('/a|b')")
    everything = "\n".join(r[0] for r in rows(staging, "SELECT * FROM iasql_get_sql_since()"))
    assert "secret" not in everything and "aws_credentials" not in everything
    assert 'INSERT INTO "log_group"' in everything
    review = rows(staging, "SELECT * FROM iasql_create_review('Logs', 'adds a group')")[0][0]
    assert review.startswith("# Logs\n\nadds a group\n\n## Preview\n")
    assert "| create | log_group |" in review and "/a\\|b/us-east-1" in review
    assert '```sql\nINSERT INTO "log_group"' in review
    assert "secret" not in review
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        staging.execute("SELECT * FROM iasql_get_sql_for_transaction('no-such-id')")
    staging.execute("SELECT * FROM iasql_rollback()")


def test_every_table_declares_a_natural_key_of_its_own_columns() -> None:
    for module in available_modules().values():
        for table in module.tables:
            assert table.natural_key, f"{table.name} has no natural key"
            names = {c.name for c in table.columns}
            assert set(table.natural_key) <= names, table.name


def test_module_functions_have_distinct_parameter_and_column_names() -> None:
    """Each RPC is also a SQL function RETURNS TABLE in every database: Postgres refuses a
    parameter named like a result column, which would break every iasql_install."""
    for module in available_modules().values():
        for function in module.functions:
            params = {name for name, _type in function.params}
            columns = {name for name, _type in function.columns}
            assert not params & columns, f"{function.name}: {params & columns}"
            assert set(function.optional) <= params, function.name


# --- values round-trip exactly through generated SQL (property) --------------------------

ROUND_TRIP = Table(
    "round_trip",
    (
        Column("id", "serial"),
        Column("label", "text"),
        Column("doc", "jsonb"),
        Column("items", "text[]"),
    ),
    mapper=object(),  # type: ignore[arg-type]  # only replayable tables are emitted
    natural_key=("label",),
)

# Postgres text and jsonb hold no NUL, and no lone surrogates.
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def scratch(postgres: LocalPostgres) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE round_trip (id serial, label text, doc jsonb, items text[])"
        )
        yield conn


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(label=texts, doc=json_values, items=st.lists(texts, max_size=5))
def test_values_round_trip_through_generated_sql(
    scratch: psycopg.Connection, label: str, doc: Any, items: list[str]
) -> None:
    scratch.execute("TRUNCATE round_trip")
    image = scratch.execute(
        "SELECT to_jsonb(r) FROM (SELECT 1 AS id, %s::text AS label, %s::jsonb AS doc,"
        " %s::text[] AS items) r",
        (label, json.dumps(doc), items),
    ).fetchone()
    assert image is not None
    generator = SqlGenerator({"round_trip": ROUND_TRIP})
    statement = generator.statement(Change(1, "round_trip", "INSERT", {"change": image[0]}))
    assert statement is not None
    for conforming in ("on", "off"):
        scratch.execute(f"SET standard_conforming_strings = {conforming}")
        scratch.execute(statement)
        stored = scratch.execute(
            "SELECT label, doc, items FROM round_trip ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert stored is not None
        assert stored == (label, doc, items)
    scratch.execute("SET standard_conforming_strings = on")


# --- iasql promote ------------------------------------------------------------------------


def promote(*args: str) -> subprocess.CompletedProcess[str]:
    return iasql("promote", *args, timeout=120)


def test_iasql_promote_dry_run_commit_files_and_failure(
    staging_and_prod: Any, tmp_path: Path
) -> None:
    staging, prod, prod_moto = staging_and_prod
    source, target = URLS[id(staging)], URLS[id(prod)]
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=prod_moto.endpoint)
    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute("INSERT INTO log_group (log_group_name) VALUES ('/promoted')")
    staging.execute("SELECT * FROM iasql_commit()")

    dry = promote("--from", source, "--to", target)
    assert dry.returncode == 0, dry.stderr
    assert "create  log_group" in dry.stdout and "/promoted/us-east-1" in dry.stdout
    assert "dry run: rolled back" in dry.stdout
    assert logs.describe_log_groups()["logGroups"] == []
    assert rows(prod, "SELECT count(*) FROM log_group") == [(0,)]

    # The SQL goes to a file, a person edits it, the edited file is promoted.
    sql_file = tmp_path / "promotion.sql"
    written = promote("--from", source, "--sql-out", str(sql_file))
    assert written.returncode == 0 and "wrote 1 statements" in written.stdout
    sql_file.write_text(sql_file.read_text().replace("/promoted", "/edited"))
    applied = promote("--sql-in", str(sql_file), "--to", target, "--commit")
    assert applied.returncode == 0, applied.stderr
    assert [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]] == ["/edited"]

    # A failing statement stops the promotion and rolls the target back.
    sql_file.write_text(
        "INSERT INTO log_group (log_group_name) VALUES ('/half');\n"
        "INSERT INTO no_such_table VALUES (1);\n"
    )
    failed = promote("--sql-in", str(sql_file), "--to", target, "--commit")
    assert failed.returncode == 1
    assert "statement 2 of 2 failed" in failed.stderr
    assert "no_such_table" in failed.stderr and "does not exist" in failed.stderr
    assert rows(prod, "SELECT log_group_name FROM log_group") == [("/edited",)]
    assert rows(prod, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(0,)]

    committed = promote("--from", source, "--to", target, "--commit")
    assert committed.returncode == 0, committed.stderr
    names = sorted(g["logGroupName"] for g in logs.describe_log_groups()["logGroups"])
    assert names == ["/edited", "/promoted"]


def test_ledger_promotion_force_and_a_failing_statement(
    staging_and_prod: Any, tmp_path: Path
) -> None:
    """Ledger mode: a conflict stops with the review written, --force applies it anyway; a
    statement that fails in the target leaves prod and its ledger as they were."""
    staging, prod, prod_moto = staging_and_prod
    source, target = URLS[id(staging)], URLS[id(prod)]
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=prod_moto.endpoint)

    def delay() -> str:
        [url] = sqs.list_queues()["QueueUrls"]
        found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["DelaySeconds"])
        return str(found["Attributes"]["DelaySeconds"])

    for statement in (
        "INSERT INTO queue (name) VALUES ('app')",
        "UPDATE queue SET delay_seconds = 7 WHERE name = 'app'",
    ):
        staging.execute("SELECT * FROM iasql_begin()")
        staging.execute(statement)
        staging.execute("SELECT * FROM iasql_commit()")
    first = staging.execute(
        "SELECT transaction_id FROM iasql_transaction WHERE outcome = 'committed'"
        " ORDER BY closed_at LIMIT 1"
    ).fetchone()
    assert first is not None
    once = promote("--from", source, "--to", target, "--transaction", str(first[0]), "--commit")
    assert once.returncode == 0, once.stderr
    # By hand in prod, after the first transaction: the second one's check sees it.
    prod.execute("SELECT * FROM iasql_begin()")
    prod.execute("UPDATE queue SET delay_seconds = 30 WHERE name = 'app'")
    prod.execute("SELECT * FROM iasql_commit()")

    review = tmp_path / "review.md"
    stopped = promote("--from", source, "--to", target, "--commit", "--review", str(review))
    assert stopped.returncode == 1 and "stopped at a conflict" in stopped.stderr
    table = [line.split() for line in stopped.stdout.splitlines()]
    assert ["delay_seconds", "0", "7", "30"] in table, stopped.stdout
    assert "## Conflict" in review.read_text() and "delay_seconds" in review.read_text()
    assert delay() == "30"

    forced = promote("--from", source, "--to", target, "--commit", "--force")
    assert forced.returncode == 0, forced.stderr
    assert delay() == "7"
    assert rows(prod, "SELECT status FROM iasql_promotions() ORDER BY recorded_at") == [
        ("applied",),
        ("forced",),
    ]

    # A source transaction on a table prod does not have: it fails, nothing changes.
    staging.execute("SELECT * FROM iasql_install('aws_s3')")
    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute("INSERT INTO bucket (name) VALUES ('iasql-promotion-fails')")
    staging.execute("SELECT * FROM iasql_commit()")
    failed = promote("--from", source, "--to", target, "--commit")
    assert failed.returncode == 1
    assert "statement 1 of 1 failed" in failed.stderr and '"bucket"' in failed.stderr
    assert rows(prod, "SELECT count(*) FROM iasql_promotions()") == [(2,)]
    assert rows(prod, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(0,)]
    assert "1 pending" in promote("--from", source, "--to", target, "--status").stdout


@pytest.fixture
def relay(moto_accounts: Any) -> Iterator[RelayThread]:
    with RelayThread(moto_accounts().endpoint, 0) as relay:
        yield relay


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_failing_cloud_leaves_the_target_and_its_ledger_as_they_were(
    iasql: RunningServer, moto_accounts: Any, relay: RelayThread, fault: str
) -> None:
    staging = environment(iasql, f"stagingfault_{secrets.token_hex(3)}", moto_accounts())
    # Prod's AWS endpoint is the relay (anything with an `endpoint` will do).
    prod = environment(iasql, f"prodfault_{secrets.token_hex(3)}", relay)  # type: ignore[arg-type]
    try:
        staging.execute("SELECT * FROM iasql_begin()")
        staging.execute("INSERT INTO log_group (log_group_name) VALUES ('/orders')")
        staging.execute("SELECT * FROM iasql_commit()")
        source, target = URLS[id(staging)], URLS[id(prod)]

        relay.fault = fault
        failed = promote("--from", source, "--to", target, "--commit")
        relay.fault = None
        assert failed.returncode == 1, failed.stdout
        assert "internal error" not in failed.stderr and "XX000" not in failed.stderr
        assert failed.stderr.startswith("iasql: "), failed.stderr
        assert rows(prod, "SELECT count(*) FROM iasql_promotions()") == [(0,)]
        assert rows(prod, "SELECT count(*) FROM log_group WHERE log_group_name = '/orders'") == [
            (0,)
        ]
        assert rows(prod, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [
            (0,)
        ]

        # The cloud is back: the same transaction is promoted, once.
        again = promote("--from", source, "--to", target, "--commit")
        assert again.returncode == 0, again.stderr
        logs = boto3.client("logs", region_name="us-east-1", endpoint_url=relay.endpoint)
        names = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
        assert names == ["/orders"]
        assert rows(prod, "SELECT status FROM iasql_promotions()") == [("applied",)]
    finally:
        staging.close()
        prod.close()


def test_rows_made_by_triggers_are_made_again_by_the_target(staging_and_prod: Any) -> None:
    """A public NAT gateway's address row comes from a trigger: the promoted SQL writes the
    gateway alone, and prod's trigger makes the address, once."""
    staging, prod, prod_moto = staging_and_prod
    staging.execute("SELECT * FROM iasql_begin()")
    staging.execute("INSERT INTO vpc (cidr_block) VALUES ('10.44.0.0/16')")
    staging.execute(
        "INSERT INTO subnet (availability_zone, vpc_id, cidr_block) SELECT 'us-east-1a', id,"
        " '10.44.1.0/24' FROM vpc WHERE cidr_block = '10.44.0.0/16'"
    )
    staging.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id, tags) SELECT 'public', id,"
        " '{\"Name\": \"egress\"}' FROM subnet WHERE cidr_block = '10.44.1.0/24'"
    )
    staging.execute("SELECT * FROM iasql_commit()")
    sql = [s for (s,) in rows(staging, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert [s.split('"')[1] for s in sql] == ["vpc", "subnet", "nat_gateway"]

    done = promote("--from", URLS[id(staging)], "--to", URLS[id(prod)], "--commit")
    assert done.returncode == 0, done.stderr
    assert rows(
        prod,
        "SELECT count(*), count(e.allocation_id) FROM nat_gateway n"
        " JOIN elastic_ip e ON e.id = n.elastic_ip_id WHERE n.tags ->> 'Name' = 'egress'",
    ) == [(1, 1)]
    assert rows(prod, "SELECT count(*) FROM elastic_ip WHERE tags ->> 'Name' = 'egress'") == [(1,)]
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=prod_moto.endpoint)
    [gateway] = ec2.describe_nat_gateways()["NatGateways"]
    assert len(ec2.describe_addresses()["Addresses"]) == 1
    assert gateway["NatGatewayAddresses"][0]["AllocationId"] == one(
        prod, "SELECT allocation_id FROM elastic_ip WHERE tags ->> 'Name' = 'egress'"
    )
