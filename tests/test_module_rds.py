"""aws_rds (with aws_vpc and aws_security_group) against moto: a subnet group, a parameter
group and an instance made with boto3 are imported at install, another parameter group by
iasql_sync(); then create (a subnet group over two subnets, a parameter group with one
parameter, an instance with that parameter group and a security group, an instance without a
password, a Multi-AZ cluster in the subnet group), update in place (storage, class, backup
retention, a parameter, the subnet group's subnets, a password), rollback, replace (the
availability zone), delete and a cloud error, each checked with boto3. The master user
password is write-only: it reaches AWS and never the audit log, the journal, the preview or
generated SQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_rds import (
    ASSIGNED_GROUPS_TAG,
    PASSWORD_TAG,
    arn_like,
    name_of,
    normalize_parameters,
    user_tags,
    visible_groups,
)
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

PASSWORDS = ("Cr3ate-pw-7d1e", "Upd4te-pw-93ab")


def test_helpers() -> None:
    assert normalize_parameters(
        [
            {"ParameterName": "b", "ParameterValue": 2, "Description": "x"},
            {"ParameterName": "a", "ParameterValue": "1", "ApplyMethod": "immediate"},
            {"ParameterName": "unset"},
        ]
    ) == {"a": "1", "b": "2"}
    assert normalize_parameters('[{"ParameterName": "a", "ParameterValue": "1"}]') == {"a": "1"}
    assert normalize_parameters([]) is None and normalize_parameters(None) is None
    arn = "arn:aws:rds:us-east-1:123456789012:db:my-db"
    assert arn_like(arn, "pg", "my-pg") == "arn:aws:rds:us-east-1:123456789012:pg:my-pg"
    assert name_of(arn) == "my-db"
    assert user_tags({"a": "b", PASSWORD_TAG: "pending"}) == {"a": "b"}
    marker = [{"Key": ASSIGNED_GROUPS_TAG, "Value": "sg-1"}]
    assert visible_groups(["sg-1"], marker) == [] and visible_groups(["sg-1"], None) == ["sg-1"]


class Aws:
    """boto3 clients for one moto account, and what the test made there before install."""

    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.rds, self.ec2 = client("rds"), client("ec2")
        subnets = self.ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        by_zone = sorted(subnets, key=lambda s: s["AvailabilityZone"])
        self.subnets = [s["SubnetId"] for s in by_zone[:3]]
        self.group = self.ec2.create_security_group(
            GroupName="rds-sg", Description="rds", VpcId=subnets[0]["VpcId"]
        )["GroupId"]
        self.rds.create_db_subnet_group(
            DBSubnetGroupName="pre-sng",
            DBSubnetGroupDescription="made before install",
            SubnetIds=self.subnets[:2],
        )
        self.rds.create_db_parameter_group(
            DBParameterGroupName="pre-pg", DBParameterGroupFamily="postgres14", Description="pre"
        )
        self.rds.modify_db_parameter_group(
            DBParameterGroupName="pre-pg",
            Parameters=[
                {
                    "ParameterName": "rds.force_ssl",
                    "ParameterValue": "1",
                    "ApplyMethod": "immediate",
                }
            ],
        )
        self.rds.create_db_instance(
            DBInstanceIdentifier="pre-db",
            AllocatedStorage=20,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            EngineVersion="14.7",
            MasterUsername="admin1",
            MasterUserPassword="not-in-iasql-1",
            AvailabilityZone="us-east-1a",
            DBParameterGroupName="pre-pg",
            Tags=[{"Key": "team", "Value": "a"}],
        )

    def instance(self, name: str) -> dict[str, Any] | None:
        try:
            [db] = self.rds.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"]
        except self.rds.exceptions.DBInstanceNotFoundFault:
            return None
        return dict(db)

    def arn(self, name: str) -> str:
        db = self.instance(name)
        assert db is not None
        return str(db["DBInstanceArn"])

    def parameters(self, name: str) -> dict[str, str]:
        found = self.rds.describe_db_parameters(DBParameterGroupName=name)["Parameters"]
        return {p["ParameterName"]: p["ParameterValue"] for p in found}

    def subnet_group(self, name: str) -> list[str]:
        [group] = self.rds.describe_db_subnet_groups(DBSubnetGroupName=name)["DBSubnetGroups"]
        return sorted(s["SubnetIdentifier"] for s in group["Subnets"])

    def clusters(self) -> dict[str, dict[str, Any]]:
        found = self.rds.describe_db_clusters()["DBClusters"]
        return {c["DBClusterIdentifier"]: c for c in found}


@pytest.fixture(scope="module")
def rds_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def rds_env(envdb: psycopg.Connection, rds_moto: MotoServer) -> tuple[psycopg.Connection, Aws]:
    rds_moto.reset()
    aws = Aws(rds_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, rds_moto)
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_rds')")
    return envdb, aws


def no_passwords(conn: psycopg.Connection, *sources: str) -> None:
    for password in PASSWORDS:
        for source in sources:
            found = conn.execute(
                f"SELECT count(*) FROM {source} AS t WHERE t::text LIKE %s", (f"%{password}%",)
            ).fetchall()
            assert found == [(0,)], (source, password)


def test_rds_life_cycle(rds_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = rds_env
    s1, s2, s3 = aws.subnets

    # Import at install.
    assert rows(conn, "SELECT name, description, subnets FROM db_subnet_group") == [
        ("pre-sng", "made before install", sorted([s1, s2]))
    ]
    [(family, parameters)] = rows(
        conn, "SELECT family, parameters FROM parameter_group WHERE name = 'pre-pg'"
    )
    assert family == "postgres14"
    assert normalize_parameters(parameters) == {"rds.force_ssl": "1"}
    assert rows(
        conn,
        "SELECT r.allocated_storage, r.db_instance_class, r.engine, r.engine_version,"
        " r.master_username, r.master_user_password, r.availability_zone, p.name,"
        " r.tags::jsonb, r.arn, r.endpoint_port FROM rds r"
        " JOIN parameter_group p ON p.id = r.parameter_group_id"
        " WHERE r.db_instance_identifier = 'pre-db'",
    ) == [
        (
            20,
            "db.t3.micro",
            "postgres",
            "14.7",
            "admin1",
            None,
            "us-east-1a",
            "pre-pg",
            {"team": "a"},
            aws.arn("pre-db"),
            5432,
        )
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # A group made outside iasql comes in with iasql_sync().
    aws.rds.create_db_parameter_group(
        DBParameterGroupName="sync-pg", DBParameterGroupFamily="mysql8.0", Description="sync"
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT name, family FROM parameter_group ORDER BY name") == [
        ("pre-pg", "postgres14"),
        ("sync-pg", "mysql8.0"),
    ]

    # Create: a subnet group over two subnets, a parameter group with one parameter, an
    # instance with both a password and a security group, an instance without a password
    # (as promoted SQL has none), and a Multi-AZ cluster in the subnet group.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO db_subnet_group (name, description, subnets) VALUES ('app-sng', 'app', %s)",
        ([s1, s2],),
    )
    conn.execute(
        "INSERT INTO parameter_group (name, family, description, parameters) VALUES"
        """ ('app-pg', 'postgres14', 'app', '[{"ParameterName": "work_mem","""
        """ "ParameterValue": "4096", "ApplyMethod": "immediate"}]')"""
    )
    conn.execute(
        "INSERT INTO rds (db_instance_identifier, allocated_storage, db_instance_class, engine,"
        " master_username, master_user_password, availability_zone, parameter_group_id, tags)"
        " SELECT 'app-db', 20, 'db.t3.micro', 'postgres', 'admin1', %s, 'us-east-1a', id,"
        """ '{"app": "yes"}' FROM parameter_group WHERE name = 'app-pg'""",
        (PASSWORDS[0],),
    )
    conn.execute(
        "INSERT INTO rds_security_groups (rds_id, security_group_id)"
        " SELECT r.id, g.id FROM rds r, security_group g"
        " WHERE r.db_instance_identifier = 'app-db' AND g.group_name = 'rds-sg'"
    )
    conn.execute(
        "INSERT INTO rds (db_instance_identifier, allocated_storage, db_instance_class, engine,"
        " master_username, availability_zone)"
        " VALUES ('managed-db', 20, 'db.t3.micro', 'postgres', 'admin2', 'us-east-1b')"
    )
    conn.execute(
        "INSERT INTO db_cluster (db_cluster_identifier, allocated_storage, iops,"
        " db_cluster_instance_class, engine, master_username, subnet_group_id)"
        " SELECT 'app-cl', 100, 1000, 'db.m5d.large', 'postgres', 'admin3', id"
        " FROM db_subnet_group WHERE name = 'app-sng'"
    )
    conn.execute(
        "INSERT INTO db_cluster_security_groups (db_cluster_id, security_group_id)"
        " SELECT c.id, g.id FROM db_cluster c, security_group g"
        " WHERE c.db_cluster_identifier = 'app-cl' AND g.group_name = 'rds-sg'"
    )
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "db_subnet_group": ["create"],
        "parameter_group": ["create"],
        "rds": ["create", "create"],
        "rds_security_groups": ["create"],
        "db_cluster": ["create"],
        "db_cluster_security_groups": ["create"],
    }
    creates = {c["db_instance_identifier"]["new"]: c for _, c in planned["rds"]}
    assert creates["app-db"]["allocated_storage"] == {"old": None, "new": 20}
    assert "master_user_password" not in creates["app-db"]
    assert planned["db_subnet_group"][0][1]["subnets"] == {"old": None, "new": sorted([s1, s2])}
    no_passwords(conn, "iasql_preview()")
    commit(conn)
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    app = aws.instance("app-db")
    assert app is not None
    assert (app["AllocatedStorage"], app["DBInstanceClass"], app["AvailabilityZone"]) == (
        20,
        "db.t3.micro",
        "us-east-1a",
    )
    assert app["DBParameterGroups"][0]["DBParameterGroupName"] == "app-pg"
    assert [g["VpcSecurityGroupId"] for g in app["VpcSecurityGroups"]] == [aws.group]
    assert {"Key": "app", "Value": "yes"} in app["TagList"]
    assert "MasterUserSecret" not in app  # its own password
    managed = aws.instance("managed-db")
    assert managed is not None and managed["MasterUserSecret"]["SecretArn"]  # AWS's password
    assert aws.parameters("app-pg") == {"work_mem": "4096"}
    assert aws.subnet_group("app-sng") == sorted([s1, s2])
    cluster = aws.clusters()["app-cl"]
    assert (cluster["DBClusterInstanceClass"], cluster["Iops"], cluster["AllocatedStorage"]) == (
        "db.m5d.large",
        1000,
        100,
    )
    assert cluster["DBSubnetGroup"] == "app-sng"
    assert [g["VpcSecurityGroupId"] for g in cluster["VpcSecurityGroups"]] == [aws.group]
    assert "MasterUserSecret" in cluster  # no password given: AWS's own
    assert rows(
        conn,
        "SELECT arn, endpoint_addr, master_user_password FROM rds"
        " WHERE db_instance_identifier = 'app-db'",
    ) == [(app["DBInstanceArn"], app["Endpoint"]["Address"], None)]
    no_drift(conn)
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id, and
    # never carries the password.
    assert not any(x in sql for sql in replay for x in ("arn:aws", "subnet-", "sg-"))
    assert not any(p in sql for sql in replay for p in PASSWORDS)
    [link] = [sql for sql in replay if "rds_security_groups" in sql]
    assert "'app-db'" in link and "'rds-sg'" in link

    # In place: storage, class and backup retention; a parameter; the subnet group's subnets
    # and description; a new password for the instance whose password AWS made.
    app_id, created = app["DbiResourceId"], app["InstanceCreateTime"]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE rds SET allocated_storage = 30, db_instance_class = 'db.t3.small',"
        " backup_retention_period = 3 WHERE db_instance_identifier = 'app-db'"
    )
    conn.execute(
        "UPDATE rds SET master_user_password = %s WHERE db_instance_identifier = 'managed-db'",
        (PASSWORDS[1],),
    )
    conn.execute(
        "UPDATE parameter_group SET parameters ="
        """ '[{"ParameterName": "work_mem", "ParameterValue": "8192"}]' WHERE name = 'app-pg'"""
    )
    conn.execute(
        "UPDATE db_subnet_group SET subnets = %s, description = 'moved' WHERE name = 'app-sng'",
        ([s3, s1],),
    )
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "db_subnet_group": ["update"],
        "parameter_group": ["update"],
        "rds": ["update", "update"],
    }
    assert "forces_replace" not in json.dumps(planned)
    updates = {json.dumps(c, sort_keys=True): c for _, c in planned["rds"]}
    changes = [c for c in updates.values() if "allocated_storage" in c]
    assert changes[0]["allocated_storage"] == {"old": 20, "new": 30}
    assert changes[0]["db_instance_class"] == {"old": "db.t3.micro", "new": "db.t3.small"}
    # The password change shows as the pending mark on the tags, never as its value.
    [pending] = [c for c in updates.values() if "tags" in c]
    assert pending["tags"]["new"] == {PASSWORD_TAG: "pending"}
    no_passwords(conn, "iasql_preview()")
    commit(conn)
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert not any(p in sql for sql in replay for p in PASSWORDS)
    # Promoted, the change is the pending mark alone: the other environment keeps its own
    # password.
    [mark] = [sql for sql in replay if "managed-db" in sql]
    assert PASSWORD_TAG in mark, mark
    app = aws.instance("app-db")
    assert app is not None and app["DbiResourceId"] == app_id  # the same instance
    assert (app["AllocatedStorage"], app["DBInstanceClass"], app["BackupRetentionPeriod"]) == (
        30,
        "db.t3.small",
        3,
    )
    managed = aws.instance("managed-db")
    # The new password reached AWS: it is no longer the one AWS made and kept.
    assert managed is not None and "MasterUserSecret" not in managed
    assert rows(
        conn,
        "SELECT master_user_password, tags FROM rds WHERE db_instance_identifier = 'managed-db'",
    ) == [(None, None)]
    assert aws.parameters("app-pg") == {"work_mem": "8192"}
    assert aws.subnet_group("app-sng") == sorted([s1, s3])
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE rds SET allocated_storage = 50 WHERE db_instance_identifier = 'app-db'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(
        conn, "SELECT allocated_storage FROM rds WHERE db_instance_identifier = 'app-db'"
    ) == [(30,)]

    # Replace (the zone) and delete: the imported instance, the instance without a password
    # and the cluster.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE rds SET availability_zone = 'us-east-1b' WHERE db_instance_identifier = 'app-db'"
    )
    conn.execute("DELETE FROM rds WHERE db_instance_identifier IN ('pre-db', 'managed-db')")
    conn.execute("DELETE FROM db_cluster WHERE db_cluster_identifier = 'app-cl'")
    planned = preview(conn)
    by_action = {a: c for a, c in planned["rds"] if a == "replace"}
    assert by_action["replace"]["availability_zone"] == {
        "old": "us-east-1a",
        "new": "us-east-1b",
        "forces_replace": True,
    }
    assert [a for a, _ in planned["rds"]].count("delete") == 2
    assert [a for a, _ in planned["db_cluster"]] == ["delete"]
    commit(conn)
    app = aws.instance("app-db")
    assert app is not None and app["InstanceCreateTime"] != created
    assert app["AvailabilityZone"] == "us-east-1b"
    assert app["DBParameterGroups"][0]["DBParameterGroupName"] == "app-pg"
    assert [g["VpcSecurityGroupId"] for g in app["VpcSecurityGroups"]] == [aws.group]
    assert aws.instance("pre-db") is None and aws.instance("managed-db") is None
    assert "app-cl" not in aws.clusters()
    no_drift(conn)

    # A cloud error reaches the user as one line, with a 58000-class SQLSTATE.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO rds (db_instance_identifier, allocated_storage, db_instance_class, engine,"
        " master_username, availability_zone)"
        " VALUES ('bad-db', 20, 'db.t3.micro', 'no-such-engine', 'admin', 'us-east-1a')"
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "InvalidParameterValue" in message and "\n" not in message, message
    assert rows(conn, "SELECT count(*) FROM rds WHERE db_instance_identifier = 'bad-db'") == [(0,)]

    # Delete the rest.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM rds")
    conn.execute("DELETE FROM parameter_group WHERE name = 'app-pg'")
    conn.execute("DELETE FROM db_subnet_group WHERE name = 'app-sng'")
    commit(conn)
    assert aws.instance("app-db") is None
    assert "app-pg" not in {
        g["DBParameterGroupName"]
        for g in aws.rds.describe_db_parameter_groups()["DBParameterGroups"]
    }
    assert {
        g["DBSubnetGroupName"] for g in aws.rds.describe_db_subnet_groups()["DBSubnetGroups"]
    } == {"pre-sng"}
    no_drift(conn)

    # The passwords reached AWS only; the journal and the audit log have the steps without
    # them.
    no_passwords(conn, "iasql_audit_log", "iasql_commit_journal", "rds", "db_cluster")
    journaled = "SELECT count(*) > 0 FROM iasql_commit_journal WHERE table_name = 'rds'"
    assert rows(conn, journaled) == [(True,)]
    audited = "SELECT count(*) > 0 FROM iasql_audit_log WHERE table_name = 'rds'"
    assert rows(conn, audited) == [(True,)]
