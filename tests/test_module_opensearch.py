"""aws_opensearch (with aws_vpc, aws_security_group and aws_acm): domains made with boto3 and
imported at install or by iasql_sync() (with their VPC subnets and security groups as join
rows); create (EBS, fine-grained access control with a master user, a custom endpoint and its
certificate, a subnet and a security group), update in place (cluster, EBS, access policy,
Auto-Tune, the join rows), replace (version), rollback, delete and a refused create, through
begin / preview / commit, each checked with boto3; the master password reaches AWS only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_opensearch import (
    normalize_access_policy,
    normalize_ebs,
    region_of_endpoint,
    write_only,
)
from tests.support.aws import REGION, make_certificate, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

PASSWORD = "Sup3r-secret-pw-7c1d"


def policy(action: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": action,
                "Resource": "*",
            }
        ],
    }


def test_normalisation() -> None:
    assert normalize_ebs({"EBSEnabled": False}) is None
    assert normalize_ebs('{"VolumeSize": 10, "EBSEnabled": true}') == {
        "EBSEnabled": True,
        "VolumeSize": 10,
    }
    assert normalize_access_policy({}) is None and normalize_access_policy("") is None
    assert normalize_access_policy(json.dumps(policy("es:*"))) == normalize_access_policy(
        {**policy("es:*"), "Statement": policy("es:*")["Statement"][0]}
    )
    assert write_only("admin") is None
    assert region_of_endpoint("search-my-dom-abc123.eu-west-2.es.amazonaws.com") == "eu-west-2"
    assert region_of_endpoint("my-dom.us-east-1.es.amazonaws.com") == "us-east-1"


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.os, self.ec2, self.acm = client("opensearch"), client("ec2"), client("acm")
        subnets = self.ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        by_zone = sorted(subnets, key=lambda s: s["AvailabilityZone"])
        self.subnets = [s["SubnetId"] for s in by_zone[:2]]
        vpc = subnets[0]["VpcId"]
        self.groups = [
            self.ec2.create_security_group(GroupName=name, Description="search", VpcId=vpc)[
                "GroupId"
            ]
            for name in ("search-sg", "search-sg-2")
        ]
        pem, key = make_certificate("search.example.com")
        self.certificate = self.acm.import_certificate(Certificate=pem, PrivateKey=key)[
            "CertificateArn"
        ]

    def make(self, name: str, **extra: Any) -> None:
        self.os.create_domain(
            DomainName=name,
            EngineVersion="OpenSearch_2.5",
            ClusterConfig={"InstanceType": "r6g.large.search", "InstanceCount": 1},
            AccessPolicies=json.dumps(policy("es:ESHttpGet")),
            **extra,
        )

    def domain(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.os.describe_domain(DomainName=name)["DomainStatus"]
        return answer

    def names(self) -> list[str]:
        return sorted(d["DomainName"] for d in self.os.list_domain_names()["DomainNames"])


@pytest.fixture(scope="module")
def os_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def os_env(envdb: psycopg.Connection, os_moto: MotoServer) -> tuple[psycopg.Connection, Aws]:
    os_moto.reset()
    aws = Aws(os_moto)
    aws.make("pre-domain")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, os_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # global, cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_opensearch')")
    return envdb, aws


def joined(conn: psycopg.Connection, table: str, column: str, target: str, key: str) -> list:
    return rows(
        conn,
        f"SELECT d.domain_name, t.{key} FROM {table} j JOIN domain d ON d.id = j.domain_id"
        f" JOIN {target} t ON t.id = j.{column} ORDER BY 1, 2",
    )


def test_opensearch_life_cycle(os_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = os_env
    s1, s2 = aws.subnets
    g1, g2 = aws.groups

    # Import at install.
    assert rows(
        conn,
        "SELECT domain_name, version, availability_zone_count, instance_type, instance_count,"
        " ebs_options, cold_storage, auto_tune, enable_fine_grained_access_control,"
        " access_policy, endpoint, region FROM domain",
    ) == [
        (
            "pre-domain",
            "OpenSearch_2.5",
            1,
            "r6g.large.search",
            1,
            None,
            False,
            True,
            False,
            policy("es:ESHttpGet"),
            aws.domain("pre-domain")["Endpoint"],
            REGION,
        )
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # A domain made outside iasql, in a VPC, comes in with iasql_sync().
    aws.make("sync-domain", VPCOptions={"SubnetIds": [s2], "SecurityGroupIds": [g2]})
    conn.execute("SELECT * FROM iasql_sync()")
    assert joined(conn, "domain_subnets", "subnet_id", "subnet", "subnet_id") == [
        ("sync-domain", s2)
    ]
    assert joined(
        conn, "domain_security_groups", "security_group_id", "security_group", "group_id"
    ) == [("sync-domain", g2)]
    no_drift(conn)

    # Create: EBS, a master user, a custom endpoint with its certificate, a subnet and a group.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO domain (domain_name, version, availability_zone_count, instance_type,"
        " instance_count, ebs_options, enable_fine_grained_access_control,"
        " fine_grained_access_control_master_username,"
        " fine_grained_access_control_master_password, access_policy, custom_endpoint,"
        " endpoint_certificate_id) SELECT 'new-domain', 'OpenSearch_2.5', 2, 'r6g.large.search',"
        """ 2, '{"EBSEnabled": true, "VolumeType": "gp3", "VolumeSize": 10}', true, 'admin',"""
        " %s, %s, 'search.example.com', id FROM certificate"
        " WHERE domain_name = 'search.example.com'",
        (PASSWORD, json.dumps(policy("es:*"))),
    )
    conn.execute(
        "INSERT INTO domain_subnets (domain_id, subnet_id) SELECT d.id, s.id"
        " FROM domain d, subnet s WHERE d.domain_name = 'new-domain' AND s.subnet_id = %s",
        (s1,),
    )
    conn.execute(
        "INSERT INTO domain_security_groups (domain_id, security_group_id) SELECT d.id, g.id"
        " FROM domain d, security_group g WHERE d.domain_name = 'new-domain'"
        " AND g.group_name = 'search-sg'"
    )
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "domain": ["create"],
        "domain_subnets": ["create"],
        "domain_security_groups": ["create"],
    }
    changes = planned["domain"][0][1]
    assert changes["instance_count"] == {"old": None, "new": 2}
    assert changes["ebs_options"]["new"]["VolumeSize"] == 10
    assert "fine_grained_access_control_master_password" not in changes
    commit(conn)
    made = aws.domain("new-domain")
    cluster = made["ClusterConfig"]
    assert (cluster["InstanceType"], cluster["InstanceCount"]) == ("r6g.large.search", 2)
    assert cluster["ZoneAwarenessConfig"] == {"AvailabilityZoneCount": 2}
    assert made["EBSOptions"] == {"EBSEnabled": True, "VolumeType": "gp3", "VolumeSize": 10}
    assert made["AdvancedSecurityOptions"]["Enabled"] is True
    assert made["DomainEndpointOptions"]["CustomEndpoint"] == "search.example.com"
    assert made["DomainEndpointOptions"]["CustomEndpointCertificateArn"] == aws.certificate
    assert made["VPCOptions"] == {"SubnetIds": [s1], "SecurityGroupIds": [g1]}
    assert json.loads(made["AccessPolicies"]) == policy("es:*")
    endpoint = made["Endpoints"]["vpc"]  # a domain in a VPC has no public Endpoint
    # The endpoint is the cloud's; the password stays as written (it is never read back).
    assert rows(
        conn,
        "SELECT endpoint, fine_grained_access_control_master_password FROM domain"
        " WHERE domain_name = 'new-domain'",
    ) == [(endpoint, PASSWORD)]
    no_drift(conn)
    # Replayable SQL: natural keys and sub-selects only, and never the password.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3, replay
    text = "\n".join(replay)
    for cloud_id in ("arn:aws", "subnet-", "sg-", endpoint, PASSWORD):
        assert cloud_id not in text, (cloud_id, text)
    assert "'search.example.com'" in text and "'search-sg'" in text
    # A tag, to tell the same domain from a new one after the update.
    aws.os.add_tags(ARN=made["ARN"], TagList=[{"Key": "kept", "Value": "yes"}])

    # In place: cluster, EBS, access policy, Auto-Tune; one group goes, a subnet comes.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE domain SET instance_count = 4, instance_type = 'r6g.xlarge.search',"
        """ ebs_options = '{"EBSEnabled": true, "VolumeType": "gp3", "VolumeSize": 20}',"""
        " access_policy = %s, auto_tune = false WHERE domain_name = 'new-domain'",
        (json.dumps(policy("es:ESHttpGet")),),
    )
    conn.execute("DELETE FROM domain_security_groups")
    conn.execute(
        "INSERT INTO domain_subnets (domain_id, subnet_id) SELECT d.id, s.id"
        " FROM domain d, subnet s WHERE d.domain_name = 'new-domain' AND s.subnet_id = %s",
        (s2,),
    )
    planned = preview(conn)
    [(action, changes)] = planned["domain"]
    assert action == "update"
    assert changes["instance_count"] == {"old": 2, "new": 4}
    assert changes["auto_tune"] == {"old": True, "new": False}
    assert "forces_replace" not in json.dumps(changes)
    assert [a for a, _ in planned["domain_security_groups"]] == ["delete", "delete"]
    assert [a for a, _ in planned["domain_subnets"]] == ["create"]
    commit(conn)
    made = aws.domain("new-domain")
    assert aws.os.list_tags(ARN=made["ARN"])["TagList"] == [{"Key": "kept", "Value": "yes"}]
    assert (made["ClusterConfig"]["InstanceType"], made["ClusterConfig"]["InstanceCount"]) == (
        "r6g.xlarge.search",
        4,
    )
    assert made["EBSOptions"]["VolumeSize"] == 20
    assert json.loads(made["AccessPolicies"]) == policy("es:ESHttpGet")
    assert made["VPCOptions"] == {"SubnetIds": [s1, s2], "SecurityGroupIds": []}
    assert aws.domain("sync-domain")["VPCOptions"]["SecurityGroupIds"] == []
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE domain SET instance_count = 6 WHERE domain_name = 'new-domain'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT instance_count FROM domain WHERE domain_name = 'new-domain'") == [
        (4,)
    ]
    assert aws.domain("new-domain")["ClusterConfig"]["InstanceCount"] == 4

    # Replace (the version) and delete (a domain with join rows).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE domain SET version = 'OpenSearch_2.7' WHERE domain_name = 'pre-domain'")
    conn.execute("DELETE FROM domain WHERE domain_name = 'sync-domain'")
    planned = preview(conn)
    by_action = dict(planned["domain"])
    assert by_action["replace"]["version"] == {
        "old": "OpenSearch_2.5",
        "new": "OpenSearch_2.7",
        "forces_replace": True,
    }
    assert "delete" in by_action
    commit(conn)
    assert aws.domain("pre-domain")["EngineVersion"] == "OpenSearch_2.7"
    assert aws.names() == ["new-domain", "pre-domain"]
    no_drift(conn)

    # A refused create: AWS's own message, as one line with a 58000-class SQLSTATE.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO domain (domain_name, version, availability_zone_count, instance_type,"
        " instance_count, access_policy) VALUES ('Bad_Name', 'OpenSearch_2.5', 1,"
        " 'r6g.large.search', 1, '{}')"
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "ValidationException" in message and "\n" not in message, message
    assert rows(conn, "SELECT count(*) FROM domain WHERE domain_name = 'Bad_Name'") == [(0,)]
    # One botocore refuses before sending (a name too short): its message spans lines, and
    # what is wrong is on the second; the client's one line holds it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO domain (domain_name, version, availability_zone_count, instance_type,"
        " instance_count, access_policy) VALUES ('ab', 'OpenSearch_2.5', 1,"
        " 'r6g.large.search', 1, '{}')"
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate == "58000"
    message = failed.value.diag.message_primary or ""
    assert "Invalid length for parameter DomainName" in message and "\n" not in message, message

    # Delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM domain")
    commit(conn)
    assert aws.names() == []
    assert rows(conn, "SELECT count(*) FROM domain_subnets") == [(0,)]
    no_drift(conn)

    # The master password reached AWS only.
    for source in (
        "iasql_audit_log",
        "iasql_commit_journal",
        "iasql_get_sql_since()",
        "iasql_preview()",
    ):
        found = conn.execute(
            f"SELECT count(*) FROM {source} AS t WHERE t::text LIKE %s", (f"%{PASSWORD}%",)
        ).fetchall()
        assert found == [(0,)], source
    audited = "SELECT count(*) > 0 FROM iasql_audit_log WHERE table_name = 'domain'"
    assert rows(conn, audited) == [(True,)]
    journaled = "SELECT count(*) > 0 FROM iasql_commit_journal WHERE table_name = 'domain'"
    assert rows(conn, journaled) == [(True,)]
