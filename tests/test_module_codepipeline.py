"""aws_codepipeline (with aws_iam): pipelines made with boto3 and imported at install or by
iasql_sync(); create (an S3 source and a manual approval), update in place (stages, artifact
store, service role), a rename (a new pipeline; the old one goes), rollback, delete and a
refused create, through begin / preview / commit, each checked with boto3."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_codepipeline import MASKED, normalize_artifact_store, normalize_stages
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "codepipeline.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def source(bucket: str) -> dict[str, Any]:
    return {
        "name": "Source",
        "actions": [
            {
                "name": "Fetch",
                "actionTypeId": {
                    "category": "Source",
                    "owner": "AWS",
                    "provider": "S3",
                    "version": "1",
                },
                "configuration": {"S3Bucket": bucket, "S3ObjectKey": "app.zip"},
                "outputArtifacts": [{"name": "App"}],
            }
        ],
    }


def approval(*names: str) -> dict[str, Any]:
    return {
        "name": "Approve",
        "actions": [
            {
                "name": name,
                "actionTypeId": {
                    "category": "Approval",
                    "owner": "AWS",
                    "provider": "Manual",
                    "version": "1",
                },
                "runOrder": order,
            }
            for order, name in enumerate(names, start=1)
        ],
    }


def store(bucket: str) -> dict[str, str]:
    return {"type": "S3", "location": bucket}


def test_normalisation() -> None:
    read_back = {
        "name": "A",
        "actions": [
            {
                "name": "x",
                "actionTypeId": {"category": "Approval"},
                "runOrder": 1,
                "configuration": {},
                "inputArtifacts": [],
                "outputArtifacts": [],
            }
        ],
    }
    written = {"name": "A", "actions": [{"name": "x", "actionTypeId": {"category": "Approval"}}]}
    assert normalize_stages([read_back]) == normalize_stages(json.dumps([written]))
    assert normalize_stages([]) is None
    token = {"name": "A", "actions": [{"name": "x", "configuration": {"OAuthToken": "t0k"}}]}
    assert normalize_stages([token])[0]["actions"][0]["configuration"] == {"OAuthToken": MASKED}
    assert normalize_artifact_store('{"type": "S3", "location": "b", "encryptionKey": null}') == {
        "location": "b",
        "type": "S3",
    }


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.cp, self.iam = client("codepipeline"), client("iam")
        self.roles = {
            name: self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))[
                "Role"
            ]["Arn"]
            for name in ("pipe-role", "pipe-role-2")
        }
        # A role only Lambda may assume: CodePipeline refuses it.
        lambda_trust = json.loads(json.dumps(TRUST).replace("codepipeline", "lambda"))
        self.iam.create_role(
            RoleName="not-for-pipelines", AssumeRolePolicyDocument=json.dumps(lambda_trust)
        )

    def make(self, name: str) -> None:
        self.cp.create_pipeline(
            pipeline={
                "name": name,
                "roleArn": self.roles["pipe-role"],
                "artifactStore": store("artifacts"),
                "stages": [source("sources"), approval("Check")],
            }
        )

    def pipeline(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.cp.get_pipeline(name=name)["pipeline"]
        return answer

    def names(self) -> list[str]:
        return [p["name"] for p in self.cp.list_pipelines()["pipelines"]]


@pytest.fixture(scope="module")
def cp_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def cp_env(envdb: psycopg.Connection, cp_moto: MotoServer) -> tuple[psycopg.Connection, Aws]:
    cp_moto.reset()
    aws = Aws(cp_moto)
    aws.make("pre-pipe")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, cp_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # a dependency; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_codepipeline')")
    return envdb, aws


def preview(conn: psycopg.Connection) -> list[tuple[str, str, dict[str, Any]]]:
    return rows(
        conn,
        "SELECT action, description, changes FROM iasql_preview()"
        " WHERE table_name = 'pipeline_declaration' ORDER BY description, action",
    )


def test_codepipeline_life_cycle(cp_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = cp_env

    # Import at install: the role by name, the stages as AWS reads them back.
    [(name, artifact_store, stages, region, role)] = rows(
        conn,
        "SELECT name, artifact_store::jsonb, stages::jsonb, region, service_role_name"
        " FROM pipeline_declaration",
    )
    assert (name, artifact_store, region, role) == (
        "pre-pipe",
        store("artifacts"),
        REGION,
        "pipe-role",
    )
    assert normalize_stages(stages) == normalize_stages([source("sources"), approval("Check")])
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # One made outside iasql comes in with iasql_sync().
    aws.make("sync-pipe")
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT name FROM pipeline_declaration ORDER BY name") == [
        ("pre-pipe",),
        ("sync-pipe",),
    ]
    no_drift(conn)

    # Create: an S3 source and a manual approval.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO pipeline_declaration (name, artifact_store, stages, service_role_name)"
        " VALUES ('new-pipe', %s, %s, 'pipe-role')",
        (json.dumps(store("bucket-1")), json.dumps([source("src-1"), approval("Check")])),
    )
    [(action, _, changes)] = preview(conn)
    assert action == "create"
    assert changes["artifact_store"] == {"old": None, "new": store("bucket-1")}
    assert changes["service_role_name"] == {"old": None, "new": "pipe-role"}
    commit(conn)
    made = aws.pipeline("new-pipe")
    assert made["roleArn"] == aws.roles["pipe-role"]
    assert made["artifactStore"] == store("bucket-1")
    assert [s["name"] for s in made["stages"]] == ["Source", "Approve"]
    assert made["stages"][0]["actions"][0]["configuration"]["S3Bucket"] == "src-1"
    assert made["version"] == 1
    no_drift(conn)
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 1 and "'new-pipe'" in replay[0] and "'pipe-role'" in replay[0]
    assert "arn:aws" not in replay[0] and "123456789012" not in replay[0]

    # In place: stages, artifact store and role.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE pipeline_declaration SET stages = %s, artifact_store = %s,"
        " service_role_name = 'pipe-role-2' WHERE name = 'new-pipe'",
        (
            json.dumps([source("src-2"), approval("Check", "Sign-off")]),
            json.dumps(store("bucket-2")),
        ),
    )
    [(action, _, changes)] = preview(conn)
    assert action == "update"
    assert changes["service_role_name"] == {"old": "pipe-role", "new": "pipe-role-2"}
    assert changes["artifact_store"]["new"] == store("bucket-2")
    assert "stages" in changes and "forces_replace" not in json.dumps(changes)
    commit(conn)
    made = aws.pipeline("new-pipe")
    assert made["version"] == 2  # the same pipeline, updated
    assert made["roleArn"] == aws.roles["pipe-role-2"]
    assert made["artifactStore"] == store("bucket-2")
    assert [a["name"] for a in made["stages"][1]["actions"]] == ["Check", "Sign-off"]
    assert made["stages"][0]["actions"][0]["configuration"]["S3Bucket"] == "src-2"
    no_drift(conn)

    # Rollback of an uncommitted change.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE pipeline_declaration SET service_role_name = 'pipe-role' WHERE name = 'new-pipe'"
    )
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(
        conn, "SELECT service_role_name FROM pipeline_declaration WHERE name = 'new-pipe'"
    ) == [("pipe-role-2",)]
    assert aws.pipeline("new-pipe")["roleArn"] == aws.roles["pipe-role-2"]

    # The name is the pipeline's identity: a new name is a new pipeline (and the old one
    # goes). And a delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE pipeline_declaration SET name = 'renamed-pipe' WHERE name = 'new-pipe'")
    conn.execute("DELETE FROM pipeline_declaration WHERE name = 'sync-pipe'")
    planned = {(action, description): changes for action, description, changes in preview(conn)}
    assert sorted(planned) == [
        ("create", f"renamed-pipe/{REGION}"),
        ("delete", f"new-pipe/{REGION}"),
        ("delete", f"sync-pipe/{REGION}"),
    ]
    assert planned[("create", f"renamed-pipe/{REGION}")]["name"] == {
        "old": None,
        "new": "renamed-pipe",
    }
    commit(conn)
    assert sorted(aws.names()) == ["pre-pipe", "renamed-pipe"]
    renamed = aws.pipeline("renamed-pipe")
    assert renamed["version"] == 1 and renamed["roleArn"] == aws.roles["pipe-role-2"]
    no_drift(conn)

    # A refused create (a role CodePipeline may not assume): AWS's message, one line, 58000.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO pipeline_declaration (name, artifact_store, stages, service_role_name)"
        " VALUES ('bad-pipe', %s, %s, 'not-for-pipelines')",
        (json.dumps(store("bad-bucket")), json.dumps([source("src"), approval("Check")])),
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "InvalidStructureException" in message and "\n" not in message, message
    assert rows(conn, "SELECT count(*) FROM pipeline_declaration WHERE name = 'bad-pipe'") == [(0,)]
    assert "bad-pipe" not in aws.names()

    # Delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM pipeline_declaration")
    commit(conn)
    assert aws.names() == []
    no_drift(conn)


def test_install_reads_every_region_the_sandbox_lists(
    envdb: psycopg.Connection, moto_accounts: Callable[[], MotoServer]
) -> None:
    """With every region enabled (as `iasql serve --local-cloud` leaves them), install reads
    them all: moto's own region lists for CodePipeline and CodeBuild lack some the sandbox
    lists, which answered HTTP 500 until the sandbox let every service answer everywhere."""
    moto = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_codepipeline', 'aws_codebuild')")
    enabled = rows(envdb, "SELECT count(*) FROM aws_regions WHERE is_enabled")
    assert enabled[0][0] > 30
    for region in ("ca-west-1", "mx-central-1", "ap-east-2"):
        assert (region, True) in rows(envdb, "SELECT region, is_enabled FROM aws_regions")
    assert rows(envdb, "SELECT count(*) FROM pipeline_declaration") == [(0,)]
