"""aws_codedeploy (with aws_iam): an application and a deployment group made with boto3 and
imported at install, another application by iasql_sync(); create, update in place of a group
(configuration, style, tag filters, role), replace (a group's name, an application's compute
platform), rollback and delete of an application with its groups, through begin / preview /
commit, each checked with boto3; start_deploy, whose deployment (moto's, finished by the
iasql.moto_addons.codedeploy add-on) comes back as a Succeeded row; refused INSERTs and a cloud
error as one clear line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_codedeploy import (
    SERVER_STYLE,
    normalize_style,
    normalize_tag_filters,
    role_name_of,
)
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "codedeploy.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
FILTER_A = [{"Key": "app", "Type": "KEY_AND_VALUE", "Value": "a"}]
FILTER_B = [
    {"Key": "tier", "Type": "KEY_ONLY"},
    {"Key": "app", "Type": "KEY_AND_VALUE", "Value": "b"},
]
BLUE_GREEN = {"deploymentOption": "WITH_TRAFFIC_CONTROL", "deploymentType": "BLUE_GREEN"}
REVISION = {
    "revisionType": "GitHub",
    "gitHubLocation": {"repository": "iasql/iasql-codedeploy-example", "commitId": "cf6aa63c"},
}


def test_normalisation() -> None:
    assert normalize_style(None) == SERVER_STYLE == normalize_style({})
    assert normalize_style('{"deploymentType": "IN_PLACE"}') == SERVER_STYLE
    assert normalize_style(BLUE_GREEN) == BLUE_GREEN
    assert normalize_tag_filters([]) is None and normalize_tag_filters(None) is None
    assert normalize_tag_filters([{"Key": "k", "Type": "KEY_ONLY", "Value": ""}]) == [
        {"Key": "k", "Type": "KEY_ONLY"}
    ]
    assert normalize_tag_filters(FILTER_B) == normalize_tag_filters(list(reversed(FILTER_B)))
    assert role_name_of("arn:aws:iam::123456789012:role/path/r1") == "r1"


class Aws:
    """boto3 clients for one moto account, and what the test made there before install."""

    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.cd, self.iam = client("codedeploy"), client("iam")
        self.roles = {
            name: self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))[
                "Role"
            ]["Arn"]
            for name in ("cd-role", "cd-role-2")
        }

    def app(self, name: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self.cd.get_application(applicationName=name)["application"]
        except self.cd.exceptions.ApplicationDoesNotExistException:
            return None
        return answer

    def group(self, app: str, name: str) -> dict[str, Any] | None:
        try:
            answer = self.cd.get_deployment_group(applicationName=app, deploymentGroupName=name)
        except (
            self.cd.exceptions.DeploymentGroupDoesNotExistException,
            self.cd.exceptions.ApplicationDoesNotExistException,
        ):
            return None
        info: dict[str, Any] = answer["deploymentGroupInfo"]
        return info


@pytest.fixture(scope="module")
def codedeploy_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def codedeploy_env(
    envdb: psycopg.Connection, codedeploy_moto: MotoServer
) -> tuple[psycopg.Connection, Aws]:
    codedeploy_moto.reset()
    aws = Aws(codedeploy_moto)
    aws.cd.create_application(applicationName="pre-app", computePlatform="Server")
    aws.cd.create_deployment_group(
        applicationName="pre-app",
        deploymentGroupName="pre-group",
        serviceRoleArn=aws.roles["cd-role"],
        deploymentConfigName="CodeDeployDefault.HalfAtATime",
        ec2TagFilters=FILTER_A,
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, codedeploy_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_codedeploy')")
    return envdb, aws


GROUPS = (
    "SELECT a.name, g.name, g.deployment_config_name, g.deployment_style::jsonb,"
    " g.ec2_tag_filters::jsonb, g.role_name FROM codedeploy_deployment_group g"
    " JOIN codedeploy_application a ON a.id = g.application_id ORDER BY a.name, g.name"
)


def test_codedeploy_life_cycle(codedeploy_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = codedeploy_env

    # Import at install: the application, and its group with its role by name.
    pre_app = aws.app("pre-app")
    assert pre_app is not None
    assert rows(
        conn, "SELECT name, application_id, compute_platform, region FROM codedeploy_application"
    ) == [("pre-app", pre_app["applicationId"], "Server", REGION)]
    assert rows(conn, GROUPS) == [
        ("pre-app", "pre-group", "CodeDeployDefault.HalfAtATime", None, FILTER_A, "cd-role")
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # An application made outside iasql comes in with iasql_sync().
    aws.cd.create_application(applicationName="sync-app", computePlatform="Lambda")
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT name, compute_platform FROM codedeploy_application ORDER BY 1") == [
        ("pre-app", "Server"),
        ("sync-app", "Lambda"),
    ]
    no_drift(conn)

    # Create an application and a group in it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO codedeploy_application (name) VALUES ('new-app')")
    conn.execute(
        "INSERT INTO codedeploy_deployment_group (application_id, name, role_name,"
        " ec2_tag_filters) SELECT id, 'new-group', 'cd-role', %s FROM codedeploy_application"
        " WHERE name = 'new-app'",
        (json.dumps(FILTER_A),),
    )
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "codedeploy_application": ["create"],
        "codedeploy_deployment_group": ["create"],
    }
    assert planned["codedeploy_application"][0][1]["compute_platform"] == {
        "old": None,
        "new": "Server",
    }
    group_changes = planned["codedeploy_deployment_group"][0][1]
    assert group_changes["deployment_config_name"] == {
        "old": None,
        "new": "CodeDeployDefault.OneAtATime",
    }
    assert group_changes["role_name"] == {"old": None, "new": "cd-role"}
    commit(conn)
    app = aws.app("new-app")
    group = aws.group("new-app", "new-group")
    assert app is not None and group is not None
    assert app["computePlatform"] == "Server"
    assert group["serviceRoleArn"] == aws.roles["cd-role"]
    assert group["deploymentConfigName"] == "CodeDeployDefault.OneAtATime"
    assert group["ec2TagFilters"] == FILTER_A
    assert rows(
        conn,
        "SELECT a.application_id, g.deployment_group_id FROM codedeploy_deployment_group g"
        " JOIN codedeploy_application a ON a.id = g.application_id WHERE g.name = 'new-group'",
    ) == [(app["applicationId"], group["deploymentGroupId"])]
    no_drift(conn)
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 2, replay
    cloud_ids = ("arn:aws", app["applicationId"], group["deploymentGroupId"])
    assert not any(x in sql for sql in replay for x in cloud_ids), replay
    assert any("'new-app'" in sql and "codedeploy_deployment_group" in sql for sql in replay)

    # In place: configuration, style, tag filters and role; the group keeps its id.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE codedeploy_deployment_group SET deployment_config_name ="
        " 'CodeDeployDefault.AllAtOnce', deployment_style = %s, ec2_tag_filters = %s,"
        " role_name = 'cd-role-2' WHERE name = 'new-group'",
        (json.dumps(BLUE_GREEN), json.dumps(FILTER_B)),
    )
    [(action, changes)] = preview(conn)["codedeploy_deployment_group"]
    assert action == "update"
    assert changes["role_name"] == {"old": "cd-role", "new": "cd-role-2"}
    assert changes["deployment_config_name"]["new"] == "CodeDeployDefault.AllAtOnce"
    assert "forces_replace" not in json.dumps(changes)
    commit(conn)
    updated = aws.group("new-app", "new-group")
    assert updated is not None
    assert updated["deploymentGroupId"] == group["deploymentGroupId"]
    assert updated["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert updated["deploymentStyle"] == BLUE_GREEN
    assert normalize_tag_filters(updated["ec2TagFilters"]) == normalize_tag_filters(FILTER_B)
    assert updated["serviceRoleArn"] == aws.roles["cd-role-2"]
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE codedeploy_deployment_group SET deployment_config_name ="
        " 'CodeDeployDefault.OneAtATime' WHERE name = 'new-group'"
    )
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(
        conn,
        "SELECT deployment_config_name FROM codedeploy_deployment_group WHERE name = 'new-group'",
    ) == [("CodeDeployDefault.AllAtOnce",)]
    assert aws.group("new-app", "new-group")["deploymentConfigName"] == (  # type: ignore[index]
        "CodeDeployDefault.AllAtOnce"
    )

    # Replace: a group's name, and an application's compute platform.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE codedeploy_deployment_group SET name = 'web-group' WHERE name = 'new-group'"
    )
    conn.execute(
        "UPDATE codedeploy_application SET compute_platform = 'Server' WHERE name = 'sync-app'"
    )
    planned = preview(conn)
    [(action, changes)] = planned["codedeploy_deployment_group"]
    assert (action, changes["name"]) == (
        "replace",
        {"old": "new-group", "new": "web-group", "forces_replace": True},
    )
    [(action, changes)] = planned["codedeploy_application"]
    assert (action, changes["compute_platform"]) == (
        "replace",
        {"old": "Lambda", "new": "Server", "forces_replace": True},
    )
    commit(conn)
    assert aws.group("new-app", "new-group") is None
    web = aws.group("new-app", "web-group")
    assert web is not None and web["deploymentGroupId"] != group["deploymentGroupId"]
    assert web["serviceRoleArn"] == aws.roles["cd-role-2"]
    assert aws.app("sync-app")["computePlatform"] == "Server"  # type: ignore[index]
    no_drift(conn)

    # start_deploy: the deployment succeeds (the add-on finishes it) and comes back as a row.
    [(deployment, status, message)] = rows(
        conn,
        f"SELECT * FROM start_deploy('new-app', 'web-group', '{json.dumps(REVISION)}')",
    )
    assert (status, message) == ("OK", "")
    info = aws.cd.get_deployment(deploymentId=deployment)["deploymentInfo"]
    assert (info["status"], info["deploymentGroupName"]) == ("Succeeded", "web-group")
    assert rows(
        conn,
        "SELECT d.status, d.location::jsonb, g.name, a.name FROM codedeploy_deployment d"
        " JOIN codedeploy_deployment_group g ON g.id = d.deployment_group_id"
        " JOIN codedeploy_application a ON a.id = d.application_id"
        f" WHERE d.deployment_id = '{deployment}'",
    ) == [
        (
            "Succeeded",
            {"revisionType": "GitHub", "githubLocation": REVISION["gitHubLocation"]},
            "web-group",
            "new-app",
        )
    ]
    no_drift(conn)

    # A deployment is AWS's record: a deleted row comes back, and the deployment stays.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM codedeploy_deployment WHERE deployment_id = '{deployment}'")
    commit(conn)
    assert rows(conn, "SELECT deployment_id, status FROM codedeploy_deployment") == [
        (deployment, "Succeeded")
    ]
    no_drift(conn)

    # A deployment is AWS's record: an INSERT is refused, naming the RPC.
    with pytest.raises(psycopg.Error, match="cannot be made by INSERT") as refused:
        conn.execute(
            "INSERT INTO codedeploy_deployment (application_id, deployment_group_id)"
            " SELECT application_id, id FROM codedeploy_deployment_group"
            " WHERE name = 'web-group'"
        )
    assert refused.value.sqlstate == "0A000"
    assert "start_deploy" in (refused.value.diag.message_hint or "")

    # A cloud error is one clear line: no such deployment group.
    with pytest.raises(psycopg.Error, match="DeploymentGroupDoesNotExist") as failed:
        conn.execute(
            f"SELECT * FROM start_deploy('new-app', 'no-such-group', '{json.dumps(REVISION)}')"
        )
    assert failed.value.sqlstate == "58000"
    assert "\n" not in str(failed.value.diag.message_primary)
    with pytest.raises(psycopg.Error, match="revisionType") as bad:
        conn.execute("SELECT * FROM start_deploy('new-app', 'web-group', '{}')")
    assert bad.value.sqlstate == "22023"

    # Delete applications with their groups (the deployment's row goes with its group).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM codedeploy_deployment_group WHERE application_id IN"
        " (SELECT id FROM codedeploy_application WHERE name IN ('new-app', 'pre-app'))"
    )
    conn.execute("DELETE FROM codedeploy_application WHERE name IN ('new-app', 'pre-app')")
    planned = preview(conn)
    assert sorted(a for a, _ in planned["codedeploy_application"]) == ["delete", "delete"]
    assert sorted(a for a, _ in planned["codedeploy_deployment_group"]) == ["delete", "delete"]
    commit(conn)
    assert aws.app("new-app") is None and aws.app("pre-app") is None
    assert aws.group("pre-app", "pre-group") is None
    assert aws.cd.list_applications()["applications"] == ["sync-app"]
    assert rows(conn, "SELECT count(*) FROM codedeploy_deployment") == [(0,)]
    assert rows(conn, "SELECT name FROM codedeploy_application") == [("sync-app",)]
    no_drift(conn)
