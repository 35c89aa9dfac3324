"""aws_memory_db (with aws_vpc and aws_security_group): a subnet group and a cluster made with
boto3 and imported at install, another group by iasql_sync(); create, update in place (subnet
group description and subnets; cluster description, node type, tags, security groups),
replace (port), rollback and delete through begin / preview / commit, each checked with boto3;
the protected default subnet group; and AWS refusing a subnet that does not exist. moto has no
UpdateSubnetGroup and keeps a cluster's first security groups after UpdateCluster: the add-on
iasql.moto_addons.memorydb fills both in."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.aws import REGION
from tests.support.env import add_credentials, commit, no_drift, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

GROUPS = "SELECT subnet_group_name, description, subnets FROM subnet_group ORDER BY 1"
CLUSTERS = (
    "SELECT c.cluster_name, c.description, c.port, c.node_type, c.arn, c.status,"
    " c.tags::jsonb, c.region, g.subnet_group_name FROM memory_db_cluster c"
    " JOIN subnet_group g ON g.id = c.subnet_group_id ORDER BY 1"
)
LINKS = (
    "SELECT c.cluster_name, s.group_name, j.region FROM memory_db_cluster_security_groups j"
    " JOIN memory_db_cluster c ON c.id = j.memory_db_cluster_id"
    " JOIN security_group s ON s.id = j.security_group_id ORDER BY 1, 2"
)


@pytest.fixture(scope="module")
def memory_db_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


class Aws:
    """boto3 clients for one moto account, and what the test made there before install."""

    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.md, self.ec2 = client("memorydb"), client("ec2")
        subnets = self.ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        by_zone = sorted(subnets, key=lambda s: s["AvailabilityZone"])
        self.subnets = [s["SubnetId"] for s in by_zone[:3]]
        vpc = subnets[0]["VpcId"]
        self.groups = {
            name: self.ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)[
                "GroupId"
            ]
            for name in ("md-a", "md-b")
        }

    def cluster(self, name: str) -> dict[str, Any]:
        [cluster] = self.md.describe_clusters(ClusterName=name)["Clusters"]
        return dict(cluster)

    def group_ids(self, name: str) -> list[str]:
        return sorted(g["SecurityGroupId"] for g in self.cluster(name).get("SecurityGroups", []))

    def tags(self, arn: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.md.list_tags(ResourceArn=arn)["TagList"]}

    def subnet_groups(self) -> dict[str, tuple[str | None, list[str]]]:
        return {
            g["Name"]: (g.get("Description"), sorted(s["Identifier"] for s in g["Subnets"]))
            for g in self.md.describe_subnet_groups()["SubnetGroups"]
        }

    def cluster_names(self) -> set[str]:
        return {c["Name"] for c in self.md.describe_clusters()["Clusters"]}


def plan(conn: psycopg.Connection) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (table, action, changes)
        for action, table, changes in rows(
            conn, "SELECT action, table_name, changes FROM iasql_preview() ORDER BY 2, 1"
        )
    ]


def test_memory_db_life_cycle(envdb: psycopg.Connection, memory_db_moto: MotoServer) -> None:
    moto = memory_db_moto
    moto.reset()
    aws = Aws(moto)
    s1, s2, s3 = aws.subnets
    a, b = aws.groups["md-a"], aws.groups["md-b"]
    aws.md.create_subnet_group(SubnetGroupName="pre-sg", Description="pre", SubnetIds=[s1])
    pre = aws.md.create_cluster(
        ClusterName="pre-cluster",
        NodeType="db.t4g.small",
        ACLName="open-access",
        SubnetGroupName="pre-sg",
        SecurityGroupIds=[a],
        Tags=[{"Key": "team", "Value": "a"}],
    )["Cluster"]
    conn = envdb
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn)
    conn.execute("SELECT * FROM iasql_install('aws_memory_db')")

    # Import at install: AWS's default group, and what boto3 made.
    default = aws.subnet_groups()["default"]
    assert rows(conn, GROUPS) == [
        ("default", default[0], default[1]),
        ("pre-sg", "pre", [s1]),
    ]
    assert rows(conn, CLUSTERS) == [
        (
            "pre-cluster",
            None,
            6379,
            "db.t4g.small",
            pre["ARN"],
            "available",
            {"team": "a"},
            REGION,
            "pre-sg",
        )
    ]
    assert rows(conn, LINKS) == [("pre-cluster", "md-a", REGION)]
    no_drift(conn)

    # A subnet group made outside iasql comes in with iasql_sync().
    aws.md.create_subnet_group(SubnetGroupName="sync-sg", SubnetIds=[s3, s2])
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, GROUPS)[2] == ("sync-sg", None, sorted([s2, s3]))
    no_drift(conn)

    # Create: a subnet group, a cluster in it with two security groups.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO subnet_group (subnet_group_name, description, subnets)"
        " VALUES ('new-sg', 'first', %s)",
        ([s2, s1],),
    )
    conn.execute(
        "INSERT INTO memory_db_cluster (cluster_name, description, node_type, tags,"
        """ subnet_group_id) SELECT 'new-cluster', 'one', 'db.t4g.small', '{"owner": "me"}',"""
        " id FROM subnet_group WHERE subnet_group_name = 'new-sg'"
    )
    conn.execute(
        "INSERT INTO memory_db_cluster_security_groups (memory_db_cluster_id, security_group_id)"
        " SELECT c.id, s.id FROM memory_db_cluster c, security_group s"
        " WHERE c.cluster_name = 'new-cluster' AND s.group_name IN ('md-a', 'md-b')"
    )
    planned = plan(conn)
    assert [(t, act) for t, act, _ in planned] == [
        ("memory_db_cluster", "create"),
        ("memory_db_cluster_security_groups", "create"),
        ("memory_db_cluster_security_groups", "create"),
        ("subnet_group", "create"),
    ]
    assert planned[0][2]["node_type"] == {"old": None, "new": "db.t4g.small"}
    assert planned[0][2]["port"] == {"old": None, "new": 6379}
    assert sorted(planned[3][2]["subnets"]["new"]) == sorted([s1, s2])  # as written
    commit(conn)
    assert aws.subnet_groups()["new-sg"] == ("first", sorted([s1, s2]))
    made = aws.cluster("new-cluster")
    assert (made["Description"], made["NodeType"], made["SubnetGroupName"]) == (
        "one",
        "db.t4g.small",
        "new-sg",
    )
    assert aws.group_ids("new-cluster") == sorted([a, b])
    assert aws.tags(made["ARN"]) == {"owner": "me"}
    arn = made["ARN"]
    assert rows(
        conn, "SELECT arn, address FROM memory_db_cluster WHERE cluster_name = 'new-cluster'"
    ) == [(arn, made["ClusterEndpoint"]["Address"])]
    no_drift(conn)
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 4, replay
    assert not any(x in sql for sql in replay for x in ("arn:aws", "subnet-", "sg-", "vpc-"))
    links = [sql for sql in replay if "memory_db_cluster_security_groups" in sql]
    assert len(links) == 2 and all("'new-cluster'" in sql for sql in links)

    # In place: the subnet group's description and subnets; the cluster's description,
    # node type and tags; one of its security groups goes.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE subnet_group SET description = 'second', subnets = %s"
        " WHERE subnet_group_name = 'new-sg'",
        ([s3],),
    )
    conn.execute(
        "UPDATE memory_db_cluster SET description = 'two', node_type = 'db.t4g.medium',"
        """ tags = '{"owner": "you", "env": "test"}' WHERE cluster_name = 'new-cluster'"""
    )
    conn.execute(
        "DELETE FROM memory_db_cluster_security_groups WHERE security_group_id ="
        " (SELECT id FROM security_group WHERE group_name = 'md-a') AND memory_db_cluster_id ="
        " (SELECT id FROM memory_db_cluster WHERE cluster_name = 'new-cluster')"
    )
    planned = plan(conn)
    assert [(t, act) for t, act, _ in planned] == [
        ("memory_db_cluster", "update"),
        ("memory_db_cluster_security_groups", "delete"),
        ("subnet_group", "update"),
    ]
    assert planned[0][2]["node_type"] == {"old": "db.t4g.small", "new": "db.t4g.medium"}
    assert planned[2][2]["subnets"] == {"old": sorted([s1, s2]), "new": [s3]}
    assert "forces_replace" not in json.dumps(planned)
    commit(conn)
    assert aws.subnet_groups()["new-sg"] == ("second", [s3])
    made = aws.cluster("new-cluster")
    assert made["ARN"] == arn  # the same cluster
    assert (made["Description"], made["NodeType"]) == ("two", "db.t4g.medium")
    assert aws.group_ids("new-cluster") == [b]
    assert aws.tags(arn) == {"owner": "you", "env": "test"}
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE memory_db_cluster SET description = 'nope' WHERE cluster_name = 'new-cluster'"
    )
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(
        conn, "SELECT description FROM memory_db_cluster WHERE cluster_name = 'new-cluster'"
    ) == [("two",)]
    assert aws.cluster("new-cluster")["Description"] == "two"

    # Replace: the port. The cluster is made again, with its security group.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE memory_db_cluster SET port = 6380 WHERE cluster_name = 'new-cluster'")
    planned = plan(conn)
    replaced = [c for t, act, c in planned if (t, act) == ("memory_db_cluster", "replace")]
    assert [c["port"] for c in replaced] == [{"old": 6379, "new": 6380, "forces_replace": True}]
    commit(conn)
    made = aws.cluster("new-cluster")
    assert made["ClusterEndpoint"]["Port"] == 6380
    assert (made["Description"], made["NodeType"]) == ("two", "db.t4g.medium")
    assert aws.group_ids("new-cluster") == [b]
    assert rows(conn, LINKS) == [("new-cluster", "md-b", REGION), ("pre-cluster", "md-a", REGION)]
    no_drift(conn)

    # A cloud error: AWS has no such subnet. The commit says so in one line, and is undone.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO subnet_group (subnet_group_name, subnets)"
        " VALUES ('bad-sg', ARRAY['subnet-0000000000000000'])"
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "InvalidSubnet" in message and "\n" not in message, message
    assert rows(conn, "SELECT count(*) FROM subnet_group WHERE subnet_group_name = 'bad-sg'") == [
        (0,)
    ]
    assert "bad-sg" not in aws.subnet_groups()

    # Delete every cluster and group; AWS's default group is kept.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM memory_db_cluster")
    conn.execute("DELETE FROM subnet_group")
    assert sorted({(t, act) for t, act, _ in plan(conn)}) == [
        ("memory_db_cluster", "delete"),
        ("memory_db_cluster_security_groups", "delete"),
        ("subnet_group", "delete"),
    ]
    commit(conn)
    assert aws.cluster_names() == set()
    assert set(aws.subnet_groups()) == {"default"}
    assert [r[0] for r in rows(conn, GROUPS)] == ["default"]
    no_drift(conn)
