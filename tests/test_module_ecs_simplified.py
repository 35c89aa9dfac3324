"""aws_ecs_simplified: one row is a whole Fargate app (repository, log group, role, security
group, target group, load balancer and listener, cluster, task definition, service), made,
changed and deleted through the other modules' mappers and checked with boto3; an app made
by one environment is imported by another that installs the module on the same account."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_ecs_simplified.app import (
    cpu_and_memory,
    cpu_mem_of,
    normalize_env,
    split_image,
)
from tests.support.aws import REGION
from tests.support.env import RunningServer, add_credentials, one, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

APP = "quickapp"
PORT = 8088


def test_forms() -> None:
    assert cpu_and_memory("vCPU2-8GB") == ("2048", "8192")
    assert cpu_and_memory("vCPU0.25-0.5GB") == ("256", "512")
    assert cpu_mem_of("512", "1024") == "vCPU0.5-1GB"
    assert cpu_mem_of("4096", "30720") == "vCPU4-30GB"
    assert cpu_mem_of("100", "100") is None  # no Fargate pair: no app
    assert split_image("1.dkr.ecr.r.amazonaws.com/a-repository:v1") == (
        "1.dkr.ecr.r.amazonaws.com/a-repository",
        "v1",
        None,
    )
    assert split_image("host:5000/img@sha256:ab") == ("host:5000/img", None, "sha256:ab")
    assert split_image("host:5000/img") == ("host:5000/img", None, None)
    assert normalize_env('{"b": 1, "a": "x"}') == {"a": "x", "b": "1"}
    assert normalize_env("{}") is None and normalize_env(None) is None


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.ecs, self.ecr, self.elb = client("ecs"), client("ecr"), client("elbv2")
        self.ec2, self.logs, self.iam = client("ec2"), client("logs"), client("iam")

    def service(self) -> dict[str, Any] | None:
        found = self.ecs.describe_services(cluster=f"{APP}-cluster", services=[f"{APP}-service"])
        live = [s for s in found["services"] if s["status"] == "ACTIVE"]
        return live[0] if live else None

    def task(self, arn: str) -> dict[str, Any]:
        return dict(self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"])

    def parts(self) -> dict[str, bool]:
        """Which of the app's resources exist."""
        repos = self.ecr.describe_repositories()["repositories"]
        groups = self.ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [f"{APP}-security-group"]}]
        )["SecurityGroups"]
        target_groups = self.elb.describe_target_groups()["TargetGroups"]
        balancers = self.elb.describe_load_balancers()["LoadBalancers"]
        roles = [r["RoleName"] for r in self.iam.list_roles()["Roles"]]
        clusters = self.ecs.describe_clusters(clusters=[f"{APP}-cluster"])["clusters"]
        revisions = self.ecs.list_task_definitions(familyPrefix=f"{APP}-td", status="ACTIVE")
        log_groups = self.logs.describe_log_groups(logGroupNamePrefix=APP)["logGroups"]
        return {
            "repository": any(r["repositoryName"] == f"{APP}-repository" for r in repos),
            "log_group": any(g["logGroupName"] == f"{APP}-log-group" for g in log_groups),
            "role": f"{APP}-ecs-task-exec-role" in roles,
            "security_group": bool(groups),
            "target_group": any(t["TargetGroupName"] == f"{APP}-target" for t in target_groups),
            "load_balancer": any(
                b["LoadBalancerName"] == f"{APP}-load-balancer" for b in balancers
            ),
            "cluster": any(c["status"] == "ACTIVE" for c in clusters),
            "task_definition": bool(revisions["taskDefinitionArns"]),
            "service": self.service() is not None,
        }


@pytest.fixture
def ecs_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any]:
    moto: MotoServer = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_ecs_simplified')")
    return envdb, moto


def preview(conn: psycopg.Connection) -> list[tuple[str, str, dict[str, Any]]]:
    return rows(conn, "SELECT table_name, action, changes FROM iasql_preview() ORDER BY 1, 2")


def app_drift(conn: psycopg.Connection) -> int:
    """Drift of this table alone: the commit re-reads it, not the other modules' tables."""
    return int(one(conn, "SELECT count(*) FROM iasql_drift() WHERE table_name = 'ecs_simplified'"))


def test_ecs_simplified_life_cycle(ecs_env: Any, iasql: RunningServer) -> None:
    conn, moto = ecs_env
    aws = Aws(moto)
    assert rows(conn, "SELECT count(*) FROM ecs_simplified") == [(0,)]

    # Create: one row, previewed, then every resource of the app.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO ecs_simplified (app_name, app_port, cpu_mem, image_tag, env_variables)"
        f""" VALUES ('{APP}', {PORT}, 'vCPU0.5-1GB', 'v1', '{{"STAGE": "one"}}')"""
    )
    [(table, action, changes)] = preview(conn)
    assert (table, action) == ("ecs_simplified", "create")
    assert changes["app_port"] == {"old": None, "new": PORT}
    assert changes["desired_count"] == {"old": None, "new": 1}
    conn.execute("SELECT * FROM iasql_commit()")
    assert aws.parts() == dict.fromkeys(aws.parts(), True)
    service = aws.service()
    assert service is not None and service["desiredCount"] == 1
    assert service["launchType"] == "FARGATE"
    [group] = service["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"]
    [balancer_of_service] = service["loadBalancers"]
    assert balancer_of_service["containerPort"] == PORT
    task = aws.task(service["taskDefinition"])
    assert (task["family"], task["revision"], task["cpu"], task["memory"]) == (
        f"{APP}-td",
        1,
        "512",
        "1024",
    )
    [container] = task["containerDefinitions"]
    repo = aws.ecr.describe_repositories(repositoryNames=[f"{APP}-repository"])["repositories"][0]
    assert container["image"] == f"{repo['repositoryUri']}:v1"
    assert container["environment"] == [{"name": "STAGE", "value": "one"}]
    assert container["portMappings"][0]["containerPort"] == PORT
    rules = aws.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])
    ingress = [r for r in rules["SecurityGroupRules"] if not r["IsEgress"]]
    assert [(r["FromPort"], r["ToPort"], r["CidrIpv4"]) for r in ingress] == [
        (PORT, PORT, "0.0.0.0/0")
    ]
    [balancer] = aws.elb.describe_load_balancers(Names=[f"{APP}-load-balancer"])["LoadBalancers"]
    assert balancer["SecurityGroups"] == [group]
    [listener] = aws.elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])[
        "Listeners"
    ]
    assert listener["Port"] == PORT
    assert listener["DefaultActions"][0]["TargetGroupArn"] == balancer_of_service["targetGroupArn"]
    attached = aws.iam.list_attached_role_policies(RoleName=f"{APP}-ecs-task-exec-role")
    assert [p["PolicyName"] for p in attached["AttachedPolicies"]] == [
        "AmazonECSTaskExecutionRolePolicy"
    ]
    # The cloud's values come back: the DNS name and the app's own repository.
    assert rows(
        conn, "SELECT load_balancer_dns, repository_uri, desired_count FROM ecs_simplified"
    ) == [(balancer["DNSName"], repo["repositoryUri"], 1)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert app_drift(conn) == 0
    # The SQL to replay it names no cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert replay and all(APP in sql for sql in replay), replay
    assert not any(x in sql for sql in replay for x in ("arn:aws", "sg-", "amazonaws.com"))
    # Update in place: the count, the image (a new revision of the task definition).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE ecs_simplified SET desired_count = 2, image_tag = 'v2' WHERE app_name = '{APP}'"
    )
    [(table, action, changes)] = preview(conn)
    assert (table, action) == ("ecs_simplified", "update")
    assert changes == {
        "desired_count": {"old": 1, "new": 2},
        "image_tag": {"old": "v1", "new": "v2"},
    }
    conn.execute("SELECT * FROM iasql_commit()")
    service = aws.service()
    assert service is not None and service["desiredCount"] == 2
    task = aws.task(service["taskDefinition"])
    assert task["revision"] == 2
    assert task["containerDefinitions"][0]["image"] == f"{repo['repositoryUri']}:v2"
    assert [b["LoadBalancerArn"] for b in aws.elb.describe_load_balancers()["LoadBalancers"]] == [
        balancer["LoadBalancerArn"]
    ]  # the same load balancer
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert app_drift(conn) == 0

    # Rollback of an uncommitted change.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE ecs_simplified SET desired_count = 5 WHERE app_name = '{APP}'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT desired_count FROM ecs_simplified") == [(2,)]
    assert aws.service()["desiredCount"] == 2  # type: ignore[index]

    # The other modules' tables show the app's resources: the commits re-read them.
    assert one(
        conn, f"SELECT count(*) FROM security_group WHERE group_name = '{APP}-security-group'"
    )
    assert one(
        conn, f"SELECT count(*) FROM load_balancer WHERE load_balancer_name = '{APP}-load-balancer'"
    )
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # Import: another environment on the same account installs the module and finds the app.
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('ecs_simplified_2')").fetchall()
    try:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT * FROM iasql_install('aws_account')")
            add_credentials(other, moto)
            only_regions(other)
            other.execute("SELECT * FROM iasql_install('aws_ecs_simplified')")
            assert rows(
                other,
                "SELECT app_name, desired_count, app_port, cpu_mem, image_tag, public_ip,"
                " env_variables::jsonb, load_balancer_dns, region FROM ecs_simplified",
            ) == [
                (
                    APP,
                    2,
                    PORT,
                    "vCPU0.5-1GB",
                    "v2",
                    False,
                    {"STAGE": "one"},
                    balancer["DNSName"],
                    REGION,
                )
            ]
    finally:
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            admin.execute("SELECT * FROM iasql_disconnect('ecs_simplified_2')")
    # A change made outside iasql arrives with iasql_sync().
    aws.ecs.update_service(cluster=f"{APP}-cluster", service=f"{APP}-service", desiredCount=3)
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT desired_count FROM ecs_simplified") == [(3,)]

    # A cloud error: a name AWS refuses for the target group. One line, SQLSTATE 58000, and
    # what the create made before it is removed again.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO ecs_simplified (app_name, app_port) VALUES ('bad_app', 80)")
    with pytest.raises(psycopg.Error, match="bad_app-target") as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate == "58000"
    assert "\n" not in str(failed.value.diag.message_primary)
    assert not aws.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["bad_app-security-group"]}]
    )["SecurityGroups"]
    assert rows(conn, "SELECT app_name FROM ecs_simplified") == [(APP,)]

    # Replace: a new port is a new set of resources, with the row's other values. (Last: the
    # other modules' tables still hold the old target group, and iasql_sync() inserts the new
    # one, of the same name, before it deletes the old row: target_group's unique name
    # refuses that. After the delete below there is nothing to insert.)
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE ecs_simplified SET app_port = {PORT + 1} WHERE app_name = '{APP}'")
    [(table, action, changes)] = preview(conn)
    assert (table, action) == ("ecs_simplified", "replace")
    assert changes["app_port"] == {"old": PORT, "new": PORT + 1, "forces_replace": True}
    conn.execute("SELECT * FROM iasql_commit()")
    [balancer] = aws.elb.describe_load_balancers(Names=[f"{APP}-load-balancer"])["LoadBalancers"]
    [listener] = aws.elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])[
        "Listeners"
    ]
    assert listener["Port"] == PORT + 1
    service = aws.service()
    assert service is not None and service["loadBalancers"][0]["containerPort"] == PORT + 1
    assert service["desiredCount"] == 3
    task = aws.task(service["taskDefinition"])
    assert task["containerDefinitions"][0]["image"] == f"{repo['repositoryUri']}:v2"
    assert rows(conn, "SELECT app_port, load_balancer_dns FROM ecs_simplified") == [
        (PORT + 1, balancer["DNSName"])
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # Delete: everything goes.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM ecs_simplified WHERE app_name = '{APP}'")
    [(table, action, changes)] = preview(conn)
    assert (table, action) == ("ecs_simplified", "delete")
    conn.execute("SELECT * FROM iasql_commit()")
    assert aws.parts() == dict.fromkeys(aws.parts(), False)
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    assert rows(conn, f"SELECT count(*) FROM service WHERE name = '{APP}-service'") == [(0,)]
