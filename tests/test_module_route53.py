"""aws_route53 (with aws_elb): a hosted zone with A and alias records made with boto3 and
imported at install, a zone imported by iasql_sync(); then, through begin / preview / commit,
a zone with A, CNAME and alias A records made, changed in place (UPSERT), renamed (delete and
create), the zone's domain replaced, a protected SOA kept, a rollback, and the zone deleted
with the records in it. Every cloud effect is read back with boto3."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_route53 import (
    RESOURCE_RECORD_SET,
    _record_set_record,
    alias_key,
    dns_name,
    parse_alias_key,
    record_values,
)
from modules.spec import CloudError
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/1"


def test_forms() -> None:
    assert dns_name("WWW.Example.com") == "www.example.com."
    assert dns_name("\\052.example.com.") == "*.example.com."
    assert dns_name(None) is None
    assert record_values("b\n a\n\n") == record_values("a\nb") == ("a", "b")
    assert record_values(None) is None
    assert parse_alias_key(alias_key(ARN, False)) == (ARN, False)
    with pytest.raises(CloudError):
        parse_alias_key("web-lb")
    protected = RESOURCE_RECORD_SET.protected
    assert protected is not None
    assert protected({"record_type": "SOA", "apex": True})
    assert protected({"record_type": "NS", "apex": True})
    assert not protected({"record_type": "NS", "apex": False})  # a delegation: the user's
    assert not protected({"record_type": "A", "apex": True})


def test_record_forms() -> None:
    zone = {"Id": "/hostedzone/Z1", "Name": "example.com."}
    simple = {"Name": "WWW.example.com.", "Type": "A", "TTL": 60, "ResourceRecords": []}
    simple["ResourceRecords"] = [{"Value": "10.0.0.1"}, {"Value": "10.0.0.2"}]
    assert _record_set_record(zone, simple, {}) == {
        "name": "www.example.com.",
        "record_type": "A",
        "record": "10.0.0.1\n10.0.0.2",
        "ttl": 60,
        "parent_hosted_zone_id": "/hostedzone/Z1",
        "alias_target_id": None,
        "apex": False,
    }
    alias = {
        "Name": "example.com.",
        "Type": "A",
        "AliasTarget": {
            "HostedZoneId": "Z35SXDOTRQ7X7K",
            "DNSName": "dualstack.web-1.us-east-1.elb.amazonaws.com.",
            "EvaluateTargetHealth": False,
        },
    }
    balancers = {"web-1.us-east-1.elb.amazonaws.com": ARN}
    record = _record_set_record(zone, alias, balancers)
    assert record is not None
    assert record["alias_target_id"] == f"{ARN}|false" and record["record"] is None
    assert record["apex"] and record["ttl"] is None
    # What no row can stand for is left out: an alias of something else, a routing policy.
    assert _record_set_record(zone, alias, {}) is None
    assert _record_set_record(zone, {**simple, "SetIdentifier": "a", "Weight": 1}, {}) is None


# --- against moto --------------------------------------------------------------------------


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        options = {"region_name": REGION, "endpoint_url": moto.endpoint}
        self.moto = moto
        self.ec2 = boto3.client("ec2", **options)
        self.elb = boto3.client("elbv2", **options)
        self.r53 = boto3.client("route53", **options)

    def zone(self, name: str) -> dict[str, Any] | None:
        zones = self.r53.list_hosted_zones()["HostedZones"]
        found = [z for z in zones if z["Name"] == dns_name(name)]
        return found[0] if found else None

    def records(self, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        zone = self.zone(name)
        assert zone is not None
        found = self.r53.list_resource_record_sets(HostedZoneId=zone["Id"])
        return {(r["Name"], r["Type"]): r for r in found["ResourceRecordSets"]}


def change(aws: Aws, zone_id: str, *sets: dict[str, Any]) -> None:
    aws.r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": s} for s in sets]},
    )


@pytest.fixture
def route53_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Aws]:
    """An environment on its own moto account where boto3 made a load balancer and a zone
    with an A record and an alias A record to it before aws_route53 was installed."""
    aws = Aws(moto_accounts())
    subnets = aws.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
    lb = aws.elb.create_load_balancer(
        Name="web-lb", Subnets=sorted(s["SubnetId"] for s in subnets["Subnets"])[:2]
    )["LoadBalancers"][0]
    zone = aws.r53.create_hosted_zone(Name="pre.example.com", CallerReference="pre")
    alias = {
        "HostedZoneId": lb["CanonicalHostedZoneId"],
        "DNSName": "dualstack." + lb["DNSName"],
        "EvaluateTargetHealth": False,
    }
    change(
        aws,
        zone["HostedZone"]["Id"],
        {
            "Name": "www.pre.example.com",
            "Type": "A",
            "TTL": 300,
            "ResourceRecords": [{"Value": "10.0.0.9"}],
        },
        {"Name": "lb.pre.example.com", "Type": "A", "AliasTarget": alias},
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, aws.moto)
    envdb.execute("SELECT * FROM iasql_install('aws_acm')")  # cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_route53')")
    return envdb, aws


def preview(conn: psycopg.Connection) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """The preview by table: (action, description, changes)."""
    planned: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for table, action, description, changes in rows(
        conn,
        "SELECT table_name, action, description, changes FROM iasql_preview()"
        " ORDER BY table_name, action, description",
    ):
        planned.setdefault(table, []).append((action, description, changes))
    return planned


def record_rows(conn: psycopg.Connection, zone: str) -> list[tuple[Any, ...]]:
    return rows(
        conn,
        "SELECT r.name, r.record_type, r.record, r.ttl, b.load_balancer_name,"
        " a.evaluate_target_health FROM resource_record_set r"
        " JOIN hosted_zone z ON z.id = r.parent_hosted_zone_id"
        " LEFT JOIN alias_target a ON a.id = r.alias_target_id"
        " LEFT JOIN load_balancer b ON b.id = a.load_balancer_id"
        f" WHERE z.domain_name IN ('{zone}', '{zone}.') AND r.record_type NOT IN ('NS', 'SOA')"
        " ORDER BY r.name, r.record_type",
    )


CREATE = """
INSERT INTO hosted_zone (domain_name) VALUES ('new.example.com');
INSERT INTO resource_record_set (name, record_type, record, ttl, parent_hosted_zone_id)
    SELECT 'a.new.example.com', 'A', '10.0.0.1', 300, id FROM hosted_zone
    WHERE domain_name = 'new.example.com';
INSERT INTO resource_record_set (name, record_type, record, ttl, parent_hosted_zone_id)
    SELECT 'c.new.example.com', 'CNAME', 'example.com.', 300, id FROM hosted_zone
    WHERE domain_name = 'new.example.com';
INSERT INTO alias_target (load_balancer_id)
    VALUES ((SELECT id FROM load_balancer WHERE load_balancer_name = 'web-lb'));
INSERT INTO resource_record_set (name, record_type, parent_hosted_zone_id, alias_target_id)
    SELECT 'lb.new.example.com', 'A', z.id, a.id FROM hosted_zone z, alias_target a
    WHERE z.domain_name = 'new.example.com' AND a.evaluate_target_health
"""


def test_route53_life_cycle(route53_env: Any) -> None:
    conn, aws = route53_env
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    lb = aws.elb.describe_load_balancers(Names=["web-lb"])["LoadBalancers"][0]

    # Import at install: the zone, its records (AWS's NS and SOA too), the alias target.
    pre = aws.zone("pre.example.com")
    assert pre is not None
    assert rows(conn, "SELECT hosted_zone_id, domain_name FROM hosted_zone") == [
        (pre["Id"], "pre.example.com.")
    ]
    assert record_rows(conn, "pre.example.com") == [
        ("lb.pre.example.com.", "A", None, None, "web-lb", False),
        ("www.pre.example.com.", "A", "10.0.0.9", 300, None, None),
    ]
    assert sorted(
        rows(conn, "SELECT record_type FROM resource_record_set WHERE name = 'pre.example.com.'")
    ) == [("NS",), ("SOA",)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # A zone made after the install comes in with iasql_sync().
    aws.r53.create_hosted_zone(Name="sync.example.com", CallerReference="sync")
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT count(*) FROM hosted_zone WHERE domain_name = 'sync.example.com.'")
    assert rows(
        conn,
        "SELECT count(*) FROM resource_record_set r JOIN hosted_zone z"
        " ON z.id = r.parent_hosted_zone_id WHERE z.domain_name = 'sync.example.com.'",
    ) == [(2,)]

    # Create: a zone with an A, a CNAME and an alias A record to the load balancer.
    conn.execute("SELECT * FROM iasql_begin()")
    for statement in CREATE.split(";"):
        conn.execute(statement)
    planned = preview(conn)
    assert {t: [a for a, _, _ in ops] for t, ops in planned.items()} == {
        "alias_target": ["create"],
        "hosted_zone": ["create"],
        "resource_record_set": ["create"] * 3,
    }
    assert planned["hosted_zone"][0][2]["domain_name"] == {"old": None, "new": "new.example.com"}
    by_name = {d: c for _, d, c in planned["resource_record_set"]}
    assert any(c.get("name", {}).get("new") == "a.new.example.com." for c in by_name.values())
    commit(conn)
    no_drift(conn)
    new = aws.records("new.example.com")
    assert new[("a.new.example.com.", "A")]["ResourceRecords"] == [{"Value": "10.0.0.1"}]
    assert new[("a.new.example.com.", "A")]["TTL"] == 300
    assert new[("c.new.example.com.", "CNAME")]["ResourceRecords"] == [{"Value": "example.com."}]
    assert new[("lb.new.example.com.", "A")]["AliasTarget"] == {
        "HostedZoneId": lb["CanonicalHostedZoneId"],
        "DNSName": "dualstack." + lb["DNSName"],
        "EvaluateTargetHealth": True,
    }
    made = aws.zone("new.example.com")
    assert made is not None
    zone_id = made["Id"]
    assert rows(
        conn, "SELECT hosted_zone_id FROM hosted_zone WHERE domain_name = 'new.example.com'"
    ) == [(zone_id,)]
    # The commit read back the NS and SOA AWS made with the zone.
    assert sorted(
        rows(
            conn,
            "SELECT r.record_type FROM resource_record_set r JOIN hosted_zone z"
            " ON z.id = r.parent_hosted_zone_id WHERE z.domain_name = 'new.example.com'"
            " AND r.name = 'new.example.com.'",
        )
    ) == [("NS",), ("SOA",)]
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 5
    for sql in replay:
        assert "arn:aws" not in sql and "hostedzone" not in sql and zone_id not in sql
        assert "|" not in sql  # no alias key
    [alias_sql] = [s for s in replay if "'lb.new.example.com.'" in s]
    assert "\"domain_name\" = 'new.example.com'" in alias_sql
    assert "\"load_balancer_name\" = 'web-lb'" in alias_sql

    # Rollback of an uncommitted change.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE resource_record_set SET ttl = 900 WHERE name = 'a.new.example.com.'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT ttl FROM resource_record_set WHERE name = 'a.new.example.com.'") == [
        (300,)
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # In place (UPSERT): ttl and values, an alias switched to the other alias target. A rename
    # (delete and create), a zone's new domain (replace), a delete, and a protected SOA.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE resource_record_set SET ttl = 600, record = '10.0.0.2' || chr(10) || '10.0.0.3'"
        " WHERE name = 'a.new.example.com.'"
    )
    conn.execute(
        "UPDATE resource_record_set SET name = 'c2.new.example.com' WHERE name = 'c.new.example.com.'"
    )
    conn.execute(
        "UPDATE resource_record_set SET alias_target_id ="
        " (SELECT id FROM alias_target WHERE NOT evaluate_target_health)"
        " WHERE name = 'lb.new.example.com.'"
    )
    conn.execute("DELETE FROM alias_target WHERE evaluate_target_health")
    conn.execute(
        "UPDATE hosted_zone SET domain_name = 'sync2.example.com' WHERE domain_name ="
        " 'sync.example.com.'"
    )
    conn.execute("DELETE FROM resource_record_set WHERE name = 'www.pre.example.com.'")
    conn.execute(
        "DELETE FROM resource_record_set WHERE record_type = 'SOA' AND name = 'new.example.com.'"
    )
    planned = preview(conn)
    assert [a for a, _, _ in planned["hosted_zone"]] == ["replace"]
    assert planned["hosted_zone"][0][2]["domain_name"] == {
        "old": "sync.example.com.",
        "new": "sync2.example.com",
        "forces_replace": True,
    }
    records = sorted(((a, c) for a, _, c in planned["resource_record_set"]), key=lambda p: p[0])
    actions = [a for a, _ in records]
    assert actions == ["create", "delete", "delete", "update", "update"]
    updates = [c for a, c in records if a == "update"]
    assert {
        "ttl": {"old": 300, "new": 600},
        "record": {"old": "10.0.0.1", "new": "10.0.0.2\n10.0.0.3"},
    } in updates
    assert any("alias_target_id" in c and len(c) == 1 for c in updates)
    assert [a for a, _, _ in planned["alias_target"]] == ["delete"]
    commit(conn)
    assert any("SOA" in n and "restored" in n for n in notices)
    no_drift(conn)
    new = aws.records("new.example.com")
    assert new[("a.new.example.com.", "A")]["TTL"] == 600
    assert sorted(v["Value"] for v in new[("a.new.example.com.", "A")]["ResourceRecords"]) == [
        "10.0.0.2",
        "10.0.0.3",
    ]
    assert ("c.new.example.com.", "CNAME") not in new
    assert new[("c2.new.example.com.", "CNAME")]["ResourceRecords"] == [{"Value": "example.com."}]
    assert new[("lb.new.example.com.", "A")]["AliasTarget"]["EvaluateTargetHealth"] is False
    assert ("new.example.com.", "SOA") in new  # not deleted in the cloud, and its row is back
    assert rows(
        conn,
        "SELECT count(*) FROM resource_record_set WHERE record_type = 'SOA'"
        " AND name = 'new.example.com.'",
    ) == [(1,)]
    assert aws.zone("sync.example.com") is None and aws.zone("sync2.example.com") is not None
    assert ("www.pre.example.com.", "A") not in aws.records("pre.example.com")
    assert record_rows(conn, "new.example.com") == [
        ("a.new.example.com.", "A", "10.0.0.2\n10.0.0.3", 600, None, None),
        ("c2.new.example.com.", "CNAME", "example.com.", 300, None, None),
        ("lb.new.example.com.", "A", None, None, "web-lb", False),
    ]

    # A record set no row can stand for (a weighted one) is left alone: no row, no drift.
    change(
        aws,
        zone_id,
        {
            "Name": "w.new.example.com",
            "Type": "TXT",
            "TTL": 60,
            "SetIdentifier": "one",
            "Weight": 1,
            "ResourceRecords": [{"Value": '"weighted"'}],
        },
    )
    no_drift(conn)
    assert rows(conn, "SELECT count(*) FROM resource_record_set WHERE name LIKE 'w.%'") == [(0,)]

    # Delete: the zone goes with the records in it (its rows first, then what no row stands
    # for, then the zone). And the alias target's health check setting is replaced, which
    # replaces the record set that names it (DELETE, then CREATE).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM hosted_zone WHERE domain_name = 'new.example.com'")
    conn.execute("UPDATE alias_target SET evaluate_target_health = true")
    planned = preview(conn)
    assert [a for a, _, _ in planned["hosted_zone"]] == ["delete"]
    assert [a for a, _, _ in planned["alias_target"]] == ["replace"]
    assert planned["alias_target"][0][2]["evaluate_target_health"] == {
        "old": False,
        "new": True,
        "forces_replace": True,
    }
    assert sorted(a for a, _, _ in planned["resource_record_set"]) == ["delete"] * 3 + ["replace"]
    commit(conn)
    no_drift(conn)
    assert aws.zone("new.example.com") is None
    assert rows(conn, "SELECT count(*) FROM hosted_zone WHERE domain_name = 'new.example.com'") == [
        (0,)
    ]
    assert rows(conn, "SELECT evaluate_target_health FROM alias_target") == [(True,)]
    alias = aws.records("pre.example.com")[("lb.pre.example.com.", "A")]["AliasTarget"]
    assert alias["EvaluateTargetHealth"] is True
    assert record_rows(conn, "pre.example.com") == [
        ("lb.pre.example.com.", "A", None, None, "web-lb", True)
    ]
