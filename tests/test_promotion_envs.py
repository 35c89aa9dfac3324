"""`iasql promote` across three environments that differ (dev → staging → prod), each with
its own AWS account (moto server): the target's promotion rules map instance types, names,
CIDR blocks, the region and bucket names; every cloud effect is read back with boto3.

Also: a second promotion does nothing, `--status`, a hand edit in prod stops the promotion
at a three-way conflict table without touching the cloud, `--skip` records it, and a
transaction whose only statement an exclude rule keeps out is recorded as skipped."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.cli import iasql
from tests.support.env import RunningServer, add_credentials, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

MODULES = ("aws_vpc", "aws_security_group", "aws_ec2", "aws_s3")
AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"

# (table_name, column_name, kind, match, replacement): source values → this environment's.
STAGING_RULES = [
    (None, None, "pattern", "dev-*", "staging-*"),
    (None, None, "cidr", "10.0.0.0/16", "10.1.0.0/16"),
    ("bucket", "name", "pattern", "*.dev.example.com", "*.staging.example.com"),
]
PROD_RULES = [
    ("instance", "instance_type", "value", "t3.micro", "m5.large"),
    (None, None, "pattern", "staging-*", "prod-*"),
    (None, None, "cidr", "10.1.0.0/16", "10.2.0.0/16"),
    (None, None, "region", "us-east-1", "eu-west-1"),
    ("bucket", "name", "pattern", "*.staging.example.com", "*.example.com"),
]


@dataclass
class Env:
    """One environment database, its own AWS account and the region it works in."""

    conn: psycopg.Connection
    url: str
    moto: MotoServer
    region: str
    name: str  # current_database(): the source's name in a target's ledger

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    def client(self, service: str, region: str | None = None) -> Any:
        return boto3.client(
            service, region_name=region or self.region, endpoint_url=self.moto.endpoint
        )


def make_env(
    iasql: RunningServer, alias: str, moto: MotoServer, region: str, rules: list[Any]
) -> Env:
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert row is not None
    url = str(row[0])
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn, region)
    conn.execute("UPDATE aws_regions SET is_default = true WHERE region = %s", (region,))
    conn.execute(f"SELECT * FROM iasql_install({', '.join(repr(m) for m in MODULES)})")
    assert rows(conn, "SELECT default_aws_region()") == [(region,)]
    for table, column, kind, match, replacement in rules:
        add_rule(conn, table, column, kind, match, replacement)
    [(name,)] = rows(conn, "SELECT current_database()")
    return Env(conn, url, moto, region, str(name))


def add_rule(
    conn: psycopg.Connection,
    table: str | None,
    column: str | None,
    kind: str,
    match: str,
    replacement: str | None,
) -> None:
    conn.execute(
        "INSERT INTO iasql_promotion_rule (table_name, column_name, kind, match, replacement)"
        " VALUES (%s, %s, %s, %s, %s)",
        (table, column, kind, match, replacement),
    )


@pytest.fixture
def envs(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[Env, Env, Env]]:
    tag = secrets.token_hex(3)
    dev = make_env(iasql, f"pdev_{tag}", moto_accounts(), "us-east-1", [])
    staging = make_env(iasql, f"pstaging_{tag}", moto_accounts(), "us-east-1", STAGING_RULES)
    prod = make_env(iasql, f"pprod_{tag}", moto_accounts(), "eu-west-1", PROD_RULES)
    try:
        yield dev, staging, prod
    finally:
        for env in (dev, staging, prod):
            env.conn.close()


# --- helpers --------------------------------------------------------------------------------


def transaction(env: Env, *statements: str) -> str:
    """One infrastructure transaction, committed; its id."""
    env.conn.execute("SELECT * FROM iasql_begin()")
    for statement in statements:
        env.conn.execute(statement)
    env.conn.execute("SELECT * FROM iasql_commit()")
    assert env.sql("SELECT count(*) FROM iasql_preview()") == [(0,)]
    [(latest, outcome)] = env.sql(
        "SELECT transaction_id, outcome FROM iasql_transaction ORDER BY opened_at DESC LIMIT 1"
    )
    assert outcome == "committed"
    return str(latest)


def promote(*args: str) -> subprocess.CompletedProcess[str]:
    return iasql("promote", *args, timeout=300)


def promoted(source: Env, target: Env, *args: str) -> str:
    """`iasql promote --from source --to target ARGS`, which must succeed; its stdout."""
    done = promote("--from", source.url, "--to", target.url, *args)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def ledger(env: Env) -> list[tuple[str, str, str]]:
    return [
        (str(s), str(t), str(st))
        for s, t, st in env.sql(
            "SELECT source_environment, source_transaction_id, status FROM iasql_promotions()"
            " ORDER BY recorded_at"
        )
    ]


def transactions(env: Env) -> list[tuple[str, str]]:
    return [
        (str(t), str(o))
        for t, o in env.sql("SELECT transaction_id, outcome FROM iasql_transaction")
    ]


def assert_rewrites(output: str, *pairs: tuple[str, str]) -> None:
    """The rewrite table of a promotion's output holds each source value → target value."""
    table = [line.split() for line in output.splitlines()]
    for source, target in pairs:
        assert any(cells[2:] == [source, target] for cells in table if len(cells) == 4), (
            f"no rewrite {source} -> {target} in:\n{output}"
        )


def committed(env: Env) -> list[str]:
    return [
        str(t)
        for (t,) in env.sql(
            "SELECT transaction_id FROM iasql_transaction WHERE outcome = 'committed' ORDER BY 1"
        )
    ]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    """The user's tags (iasql keeps its own, iasql:*, on instances)."""
    found = {t["Key"]: t["Value"] for t in resource.get("Tags", [])}
    return {k: v for k, v in found.items() if not k.startswith("iasql:")}


def cloud(env: Env, region: str | None = None) -> dict[str, Any]:
    """What the account holds in a region (the environment's own by default), as plain
    values: the user's VPCs, subnets, groups with their ingress, instances and buckets."""
    ec2 = env.client("ec2", region)
    vpcs = [v for v in ec2.describe_vpcs()["Vpcs"] if not v["IsDefault"]]
    vpc_ids = [v["VpcId"] for v in vpcs]
    subnets = (
        ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": vpc_ids}])["Subnets"]
        if vpc_ids
        else []
    )
    groups = [
        g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"
    ]
    instances = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    s3 = env.client("s3", region)
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    subnet_cidr = {s["SubnetId"]: s["CidrBlock"] for s in subnets}
    group_name = {g["GroupId"]: g["GroupName"] for g in groups}
    return {
        "vpcs": sorted((v["CidrBlock"], tags(v).get("Name")) for v in vpcs),
        "subnets": sorted((s["CidrBlock"], s["AvailabilityZone"]) for s in subnets),
        "groups": sorted(
            (
                g["GroupName"],
                g["Description"],
                sorted(
                    (
                        p.get("IpProtocol"),
                        p.get("FromPort"),
                        p.get("ToPort"),
                        r["CidrIp"],
                        r.get("Description"),
                    )
                    for p in g["IpPermissions"]
                    for r in p.get("IpRanges", [])
                ),
            )
            for g in groups
        ),
        "instances": sorted(
            (
                i["InstanceType"],
                json.dumps(tags(i), sort_keys=True),
                subnet_cidr.get(i.get("SubnetId", ""), i.get("SubnetId")),
                sorted(group_name.get(g["GroupId"], g["GroupName"]) for g in i["SecurityGroups"]),
            )
            for i in instances
        ),
        "buckets": buckets,
        "bucket_regions": {
            b: s3.get_bucket_location(Bucket=b).get("LocationConstraint") or "us-east-1"
            for b in buckets
        },
    }


def expected_cloud(prefix: str, net: int, zone: str, instance_type: str, *buckets: str) -> Any:
    """An environment after dev's five transactions, in its own names and network."""
    return {
        "vpcs": [(f"10.{net}.0.0/16", f"{prefix}-web")],
        "subnets": [(f"10.{net}.1.0/24", zone)],
        "groups": [
            (f"{prefix}-web", "web tier", [("tcp", 443, 443, f"10.{net}.1.0/24", None)]),
        ],
        "instances": [
            (
                instance_type,
                json.dumps({"Name": f"{prefix}-web", "Tier": f"{prefix}-frontend"}, sort_keys=True),
                f"10.{net}.1.0/24",
                [f"{prefix}-web"],
            )
        ],
        "buckets": list(buckets),
        "bucket_regions": {b: zone[:-1] for b in buckets},
    }


# --- dev's five transactions ----------------------------------------------------------------

CREATE = (
    """INSERT INTO vpc (cidr_block, tags) VALUES ('10.0.0.0/16', '{"Name": "dev-web"}')""",
    "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
    " SELECT id, '10.0.1.0/24', 'us-east-1a' FROM vpc WHERE cidr_block = '10.0.0.0/16'",
    "INSERT INTO security_group (group_name, description, vpc_id)"
    " SELECT 'dev-web', 'web tier', id FROM vpc WHERE cidr_block = '10.0.0.0/16'",
    "INSERT INTO security_group_rule (security_group_id, is_egress, ip_protocol, from_port,"
    " to_port, cidr_ipv4) SELECT id, false, 'tcp', 80, 80, '10.0.0.0/16'"
    " FROM security_group WHERE group_name = 'dev-web'",
    f"""INSERT INTO instance (ami, instance_type, tags, subnet_id)
        SELECT '{AMI}', 't3.micro', '{{"Name": "dev-web"}}', id FROM subnet
        WHERE cidr_block = '10.0.1.0/24'""",
    "INSERT INTO instance_security_groups (instance_id, security_group_id)"
    " SELECT i.id, g.id FROM instance i, security_group g WHERE g.group_name = 'dev-web'",
    "INSERT INTO bucket (name) VALUES ('assets.dev.example.com'), ('logs.dev.example.com')",
)
IN_PLACE = ("UPDATE security_group_rule SET from_port = 443, to_port = 443 WHERE from_port = 80",)
REPLACE = (  # cidr_ipv4 replaces the rule
    "UPDATE security_group_rule SET cidr_ipv4 = '10.0.1.0/24' WHERE from_port = 443",
)
DELETE = ("DELETE FROM bucket WHERE name = 'logs.dev.example.com'",)
MAPPED = (  # a new value the name patterns map, in the instance's tags
    """UPDATE instance SET tags = '{"Name": "dev-web", "Tier": "dev-frontend"}'"""
    " WHERE instance_type = 't3.micro'",
)


def test_dev_to_staging_to_prod(envs: tuple[Env, Env, Env]) -> None:
    dev, staging, prod = envs
    dev_ids = [transaction(dev, *t) for t in (CREATE, IN_PLACE, REPLACE, DELETE, MAPPED)]
    assert cloud(dev) == expected_cloud(
        "dev", 0, "us-east-1a", "t3.micro", "assets.dev.example.com"
    )
    # What the conflict table shows of a deleted row: its values, a region as its name.
    [(before, after)] = dev.sql(
        "SELECT source_before, source_after FROM iasql_get_promotion_sql(%s)", (dev_ids[3],)
    )
    assert before["name"] == "logs.dev.example.com" and after is None
    assert before.get("region") == "us-east-1", before  # a natural-value reference as it is
    empty: dict[str, Any] = {
        "vpcs": [],
        "subnets": [],
        "groups": [],
        "instances": [],
        "buckets": [],
        "bucket_regions": {},
    }

    # A dry run shows the values the rules change and the plan, and changes nothing.
    committed_before = committed(staging)
    dry = promoted(dev, staging)
    assert_rewrites(
        dry,
        ("10.0.0.0/16", "10.1.0.0/16"),
        ("10.0.1.0/24", "10.1.1.0/24"),
        ("dev-web", "staging-web"),
        ("assets.dev.example.com", "assets.staging.example.com"),
        ("dev-frontend", "staging-frontend"),
    )
    assert "source value" in dry and "target value" in dry
    assert f"{dev.name} transaction {dev_ids[0]} (1 of 5)" in dry
    assert "dry run: rolled back" in dry
    assert cloud(staging) == empty
    assert committed(staging) == committed_before
    assert ledger(staging) == []

    # dev → staging, then staging → prod, with no hand edits.
    out = promoted(dev, staging, "--commit")
    assert out.count("committed ") == 5, out
    assert cloud(staging) == expected_cloud(
        "staging", 1, "us-east-1a", "t3.micro", "assets.staging.example.com"
    )
    assert ledger(staging) == [(dev.name, t, "applied") for t in dev_ids]
    staging_ids = promoted_transactions(staging)
    assert len(staging_ids) == 5

    dry = promoted(staging, prod)
    assert_rewrites(
        dry,
        ("t3.micro", "m5.large"),
        ("staging-web", "prod-web"),
        ("staging-frontend", "prod-frontend"),
        ("10.1.0.0/16", "10.2.0.0/16"),
        ("10.1.1.0/24", "10.2.1.0/24"),
        ("us-east-1", "eu-west-1"),
        ("us-east-1a", "eu-west-1a"),
        ("assets.staging.example.com", "assets.example.com"),
    )
    assert "create  vpc" in dry and "10.2.0.0/16/False/eu-west-1" in dry, dry
    assert "dry run: rolled back" in dry
    assert cloud(prod) == empty and cloud(prod, "us-east-1")["vpcs"] == []
    assert ledger(prod) == []

    out = promoted(staging, prod, "--commit")
    assert out.count("committed ") == 5, out
    assert cloud(prod) == expected_cloud("prod", 2, "eu-west-1a", "m5.large", "assets.example.com")
    east = cloud(prod, "us-east-1")  # all of it went to prod's region (S3 lists every one)
    assert {k: v for k, v in east.items() if k not in ("buckets", "bucket_regions")} == {
        k: v for k, v in empty.items() if k not in ("buckets", "bucket_regions")
    }
    assert ledger(prod) == [(staging.name, t, "applied") for t in staging_ids]
    assert prod.sql(
        "SELECT instance_type, region FROM instance WHERE tags ->> 'Name' = 'prod-web'"
    ) == [("m5.large", "eu-west-1")]

    # A second promotion finds nothing to do: no target transaction, the ledger unchanged.
    for src, tgt in ((dev, staging), (staging, prod)):
        transactions_before, ledger_before = transactions(tgt), ledger(tgt)
        again = promoted(src, tgt, "--commit")
        assert "nothing to promote" in again, again
        assert transactions(tgt) == transactions_before  # not even a rolled-back one
        assert ledger(tgt) == ledger_before
        assert "0 pending" in promoted(src, tgt, "--status")
        assert "nothing to promote" in promoted(src, tgt)  # the dry run (it rolls back)
        assert committed(tgt) == sorted(t for t, o in transactions_before if o == "committed")
        assert ledger(tgt) == ledger_before
    status = promoted(staging, prod, "--status")
    assert status.splitlines()[0] == f"from {staging.name}: 5 applied; 0 pending", status

    conflict_and_skip(dev, staging, prod)
    exclude_rule(dev, staging, prod)
    mapped_conflict(dev, staging, prod)


def promoted_transactions(env: Env) -> list[str]:
    """The target's own transactions that applied a promotion, oldest first."""
    found = env.sql(
        "SELECT t.transaction_id FROM iasql_transaction t"
        " JOIN iasql_promotions() p ON p.target_transaction_id = t.transaction_id"
        " ORDER BY t.opened_at"
    )
    return [str(t) for (t,) in found]


def rule_description(env: Env) -> list[Any]:
    ec2 = env.client("ec2")
    return sorted(
        (g["GroupName"], r.get("Description"))
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"] != "default"
        for p in g["IpPermissions"]
        for r in p.get("IpRanges", [])
    )


def conflict_and_skip(dev: Env, staging: Env, prod: Env) -> None:
    """A hand edit in prod, then dev changes the same row: staging takes it, prod stops."""
    transaction(
        prod, "UPDATE security_group_rule SET description = 'by hand' WHERE from_port = 443"
    )
    assert rule_description(prod) == [("prod-web", "by hand")]
    dev_id = transaction(
        dev, "UPDATE security_group_rule SET description = 'https' WHERE from_port = 443"
    )
    promoted(dev, staging, "--commit")
    assert rule_description(staging) == [("staging-web", "https")]
    staging_id = promoted_transactions(staging)[-1]
    assert ledger(staging)[-1] == (dev.name, dev_id, "applied")

    ledger_before, prod_before = ledger(prod), cloud(prod)
    status = promoted(staging, prod, "--status")
    assert status.splitlines()[0] == f"from {staging.name}: 5 applied; 1 pending", status
    assert f"  {staging_id}  committed " in status and "1 of 1 statements" in status
    dry = promote("--from", staging.url, "--to", prod.url)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert ["description", "NULL", "https", "by", "hand"] in [
        x.split() for x in dry.stdout.splitlines()
    ]
    stopped = promote("--from", staging.url, "--to", prod.url, "--commit")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    text = stopped.stdout
    assert "conflict" in text
    [header] = [line for line in text.splitlines() if "source before" in line]
    assert header.split() == ["column", "source", "before", "source", "after", "target", "now"]
    [line] = [line for line in text.splitlines() if line.strip().startswith("description")]
    assert line.split() == ["description", "NULL", "https", "by", "hand"], text
    assert "stopped at a conflict" in stopped.stderr + stopped.stdout
    assert rule_description(prod) == [("prod-web", "by hand")]
    assert cloud(prod) == prod_before
    assert ledger(prod) == ledger_before
    assert prod.sql("SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(0,)]

    skipped = promoted(staging, prod, "--commit", "--skip")
    assert "conflict" in skipped
    assert ledger(prod) == [*ledger_before, (staging.name, staging_id, "skipped")]
    assert prod.sql(
        "SELECT status, target_transaction_id FROM iasql_promotions()"
        " WHERE source_transaction_id = %s",
        (staging_id,),
    ) == [("skipped", None)]
    assert rule_description(prod) == [("prod-web", "by hand")]
    status = promoted(staging, prod, "--status")
    assert status.splitlines()[0] == f"from {staging.name}: 5 applied, 1 skipped; 0 pending"


def exclude_rule(dev: Env, staging: Env, prod: Env) -> None:
    """Prod keeps scratch buckets out: the transaction that only makes one is skipped."""
    add_rule(prod.conn, "bucket", "name", "exclude", "scratch.*", None)
    dev_id = transaction(dev, "INSERT INTO bucket (name) VALUES ('scratch.dev.example.com')")
    promoted(dev, staging, "--commit")
    assert "scratch.staging.example.com" in cloud(staging)["buckets"]
    assert ledger(staging)[-1] == (dev.name, dev_id, "applied")
    staging_id = promoted_transactions(staging)[-1]

    prod_before, ledger_before = cloud(prod), ledger(prod)
    dry = promoted(staging, prod)
    assert "  skipped" in dry.splitlines() and "dry run: rolled back" in dry, dry
    out = promoted(staging, prod, "--commit")
    assert "skipped: exclude rules keep every statement out" in out, out
    assert ledger(prod) == [*ledger_before, (staging.name, staging_id, "skipped")]
    assert cloud(prod) == prod_before
    assert prod.sql("SELECT count(*) FROM bucket WHERE name LIKE 'scratch%'") == [(0,)]


def mapped_conflict(dev: Env, staging: Env, prod: Env) -> None:
    """README's example: prod's instance type changed by hand, then dev changes it; the
    conflict table shows the source's values as prod's rules make them."""
    transaction(prod, "UPDATE instance SET instance_type = 'c5.large'")
    assert [i[0] for i in cloud(prod)["instances"]] == ["c5.large"]
    dev_id = transaction(dev, "UPDATE instance SET instance_type = 't3.small'")
    first = promote("--from", dev.url, "--to", staging.url, "--commit")
    # The type change replaces the instance; dev's trigger deletes its root volume row and
    # the mapping row follows by cascade. Those deletes are not replayed: staging's own
    # trigger and cascade make them, so there is no conflict and no --force.
    assert first.returncode == 0, first.stdout + first.stderr
    assert "conflict" not in first.stdout
    assert ledger(staging)[-1] == (dev.name, dev_id, "applied")
    assert [i[0] for i in cloud(staging)["instances"]] == ["t3.small"]

    ledger_before = ledger(prod)
    stopped = promote("--from", staging.url, "--to", prod.url, "--commit")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    lines = [line.split() for line in stopped.stdout.splitlines()]
    assert ["instance_type", "m5.large", "t3.small", "c5.large"] in lines, stopped.stdout
    assert ledger(prod) == ledger_before
    assert [i[0] for i in cloud(prod)["instances"]] == ["c5.large"]
    assert prod.sql("SELECT instance_type FROM instance") == [("c5.large",)]

    # The same check by hand, with the builtins iasql promote uses.
    staging_id = promoted_transactions(staging)[-1]
    [(sql, check_sql, expected, now_sql)] = [
        r
        for r in staging.sql(
            "SELECT sql, check_sql, expected_rows, now_sql FROM iasql_get_promotion_sql(%s)",
            (staging_id,),
        )
        if r[0].startswith('UPDATE "instance"')
    ]
    assert "'t3.small'" in sql and expected == 1
    mapped = [
        r[0]
        for r in prod.sql(
            "SELECT sql FROM iasql_promotion_sql(%s, %s) ORDER BY position",
            ("\n".join([sql, check_sql, now_sql]), staging.name),
        )
    ]
    assert (
        "'m5.large'" in mapped[0] and "'eu-west-1'" in mapped[0] and "'t3.micro'" not in mapped[0]
    )
    assert prod.sql(mapped[1]) == [(0,)]  # the hand edit is seen
    [(now,)] = prod.sql(mapped[2]) or [(None,)]
    # The target's row is shown by its natural key less the columns the change changes,
    # so a hand edit of one of those (instance_type is in the instance's key) still shows.
    assert now is not None and now.get("instance_type") == "c5.large", mapped[2]
