"""aws_codebuild (with aws_iam): projects made with boto3 and imported at install or by
iasql_sync(); create (GITHUB and NO_SOURCE), update in place, replace (a new name), rollback and
delete through begin / preview / commit, each checked with boto3; start_build and the build
rows it brings (deleting one deletes the build); import_source_credential and its row (the
token reaches AWS only), deleting the credential; a cloud error as one 58000 line."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from modules.aws_codebuild import normalize_environment_variables, role_name_of
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "codebuild.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
REPO = "https://github.com/iasql/iasql"


def test_normalisation() -> None:
    plain = '[{"name": "B", "value": "2"}, {"name": "A", "value": "1", "type": "PLAINTEXT"}]'
    aws = [
        {"name": "A", "value": "1", "type": "PLAINTEXT"},
        {"name": "B", "value": "2", "type": "PLAINTEXT"},
    ]
    assert normalize_environment_variables(plain) == normalize_environment_variables(aws)
    assert normalize_environment_variables("[]") is None
    assert normalize_environment_variables(None) is None
    assert normalize_environment_variables("nope") == "nope"
    assert role_name_of("arn:aws:iam::123456789012:role/service-role/r1") == "r1"


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.cb, self.iam = client("codebuild"), client("iam")
        self.roles = {
            name: self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))[
                "Role"
            ]["Arn"]
            for name in ("cb-role", "cb-role-2")
        }

    def make(self, name: str, source: dict[str, Any], **extra: Any) -> None:
        self.cb.create_project(
            name=name,
            source=source,
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/standard:5.0",
                "computeType": "BUILD_GENERAL1_SMALL",
                "privilegedMode": False,
                **extra.pop("environment", {}),
            },
            serviceRole=self.roles["cb-role"],
            **extra,
        )

    def project(self, name: str) -> dict[str, Any] | None:
        found = self.cb.batch_get_projects(names=[name])["projects"]
        return found[0] if found else None


@pytest.fixture(scope="module")
def cb_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def cb_env(envdb: psycopg.Connection, cb_moto: MotoServer) -> tuple[psycopg.Connection, Aws]:
    cb_moto.reset()
    aws = Aws(cb_moto)
    aws.make(
        "pre-proj",
        {"type": "GITHUB", "location": REPO},
        sourceVersion="main",
        environment={"environmentVariables": [{"name": "A", "value": "1", "type": "PLAINTEXT"}]},
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, cb_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_codebuild')")
    return envdb, aws


PROJECT_COLUMNS = (
    "SELECT project_name, arn, build_spec, source_location, image, compute_type,"
    " environment_type, source_version, source_type, environment_variables::jsonb,"
    " privileged_mode, region, service_role_name FROM codebuild_project"
)


def test_codebuild_life_cycle(
    cb_env: tuple[psycopg.Connection, Aws],
    cb_moto: MotoServer,
    postgres: LocalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn, aws = cb_env
    caplog.set_level(logging.DEBUG)
    for talkative in ("botocore", "aiobotocore", "boto3", "urllib3", "aiohttp"):
        caplog.set_level(logging.INFO, logger=talkative)
    postgres_log_start = postgres.log_path.stat().st_size if postgres.log_path.exists() else 0
    account = boto3.client("sts", region_name=REGION, endpoint_url=cb_moto.endpoint)
    account_id = account.get_caller_identity()["Account"]

    # Import at install, the role by name.
    pre = aws.project("pre-proj")
    assert pre is not None
    assert rows(conn, PROJECT_COLUMNS) == [
        (
            "pre-proj",
            pre["arn"],
            None,
            REPO,
            "aws/codebuild/standard:5.0",
            "BUILD_GENERAL1_SMALL",
            "LINUX_CONTAINER",
            "main",
            "GITHUB",
            [{"name": "A", "value": "1", "type": "PLAINTEXT"}],
            False,
            REGION,
            "cb-role",
        )
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # A project made outside iasql comes in with iasql_sync() (NO_SOURCE: no location).
    aws.make("sync-proj", {"type": "NO_SOURCE", "buildspec": "version: 0.2"})
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn,
        "SELECT project_name, source_type, source_location, build_spec FROM codebuild_project"
        " ORDER BY project_name",
    ) == [("pre-proj", "GITHUB", REPO, None), ("sync-proj", "NO_SOURCE", None, "version: 0.2")]
    no_drift(conn)

    # Create a GITHUB and a NO_SOURCE project.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO codebuild_project (project_name, source_type, source_location,"
        " service_role_name, environment_variables) VALUES ('gh-proj', 'GITHUB', %s,"
        """ 'cb-role', '[{"name": "STAGE", "value": "one"}]')""",
        (REPO,),
    )
    conn.execute(
        "INSERT INTO codebuild_project (project_name, source_type, build_spec, service_role_name)"
        " VALUES ('ns-proj', 'NO_SOURCE', 'version: 0.2', 'cb-role')"
    )
    planned = preview(conn)
    assert [a for a, _ in planned["codebuild_project"]] == ["create", "create"]
    changes = {c["source_type"]["new"]: c for _, c in planned["codebuild_project"]}
    assert changes["GITHUB"]["source_location"] == {"old": None, "new": REPO}
    assert changes["NO_SOURCE"]["image"] == {"old": None, "new": "aws/codebuild/standard:6.0"}
    commit(conn)
    gh, ns = aws.project("gh-proj"), aws.project("ns-proj")
    assert gh is not None and ns is not None
    assert gh["source"] == {"type": "GITHUB", "location": REPO}
    assert gh["environment"]["environmentVariables"] == [
        {"name": "STAGE", "value": "one", "type": "PLAINTEXT"}
    ]
    assert gh["environment"]["privilegedMode"] is True
    assert gh["environment"]["computeType"] == "BUILD_GENERAL1_SMALL"
    assert gh["serviceRole"] == aws.roles["cb-role"]
    assert ns["source"] == {"type": "NO_SOURCE", "buildspec": "version: 0.2"}  # no location
    assert ns["artifacts"] == {"type": "NO_ARTIFACTS"}
    assert rows(conn, "SELECT arn FROM codebuild_project WHERE project_name = 'gh-proj'") == [
        (gh["arn"],)
    ]
    no_drift(conn)
    # The SQL that replays this elsewhere holds no cloud id, and names the role by name.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 2, replay
    assert not any(x in sql for sql in replay for x in ("arn:aws", account_id)), replay
    assert all("'cb-role'" in sql for sql in replay), replay

    # In place: image, compute type, variables, version, role, privileged mode, buildspec.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE codebuild_project SET image = 'aws/codebuild/standard:7.0',"
        " compute_type = 'BUILD_GENERAL1_MEDIUM', source_version = 'dev',"
        """ environment_variables = '[{"name": "STAGE", "value": "two", "type": "PLAINTEXT"}]',"""
        " service_role_name = 'cb-role-2', privileged_mode = false,"
        " build_spec = 'version: 0.2' WHERE project_name = 'gh-proj'"
    )
    conn.execute(
        "UPDATE codebuild_project SET source_version = NULL WHERE project_name = 'pre-proj'"
    )
    planned = preview(conn)
    by_name = {
        c.get("image", {}).get("new", "pre"): (a, c) for a, c in planned["codebuild_project"]
    }
    action, changes = by_name["aws/codebuild/standard:7.0"]
    assert action == "update"
    assert changes["compute_type"] == {
        "old": "BUILD_GENERAL1_SMALL",
        "new": "BUILD_GENERAL1_MEDIUM",
    }
    assert changes["service_role_name"] == {"old": "cb-role", "new": "cb-role-2"}
    assert "forces_replace" not in json.dumps(planned)
    commit(conn)
    after = aws.project("gh-proj")
    assert after is not None
    assert after["arn"] == gh["arn"] and after["created"] == gh["created"]  # the same project
    environment = after["environment"]
    assert (environment["image"], environment["computeType"], environment["privilegedMode"]) == (
        "aws/codebuild/standard:7.0",
        "BUILD_GENERAL1_MEDIUM",
        False,
    )
    assert environment["environmentVariables"] == [
        {"name": "STAGE", "value": "two", "type": "PLAINTEXT"}
    ]
    assert after["sourceVersion"] == "dev"
    assert after["source"]["buildspec"] == "version: 0.2"
    assert after["serviceRole"] == aws.roles["cb-role-2"]
    pre_after = aws.project("pre-proj")
    assert pre_after is not None and "sourceVersion" not in pre_after
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE codebuild_project SET image = 'other' WHERE project_name = 'ns-proj'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT image FROM codebuild_project WHERE project_name = 'ns-proj'") == [
        ("aws/codebuild/standard:6.0",)
    ]
    ns_now = aws.project("ns-proj")
    assert ns_now is not None and ns_now["environment"]["image"] == "aws/codebuild/standard:6.0"

    # Replace: a new name; and delete the imported project.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE codebuild_project SET project_name = 'ns-proj-2' WHERE project_name = 'ns-proj'"
    )
    conn.execute("DELETE FROM codebuild_project WHERE project_name = 'pre-proj'")
    planned = preview(conn)
    actions = sorted(a for a, _ in planned["codebuild_project"])
    # The name is the project's identity: the renamed row is a new project, the old one goes.
    assert actions == ["create", "delete", "delete"], planned
    commit(conn)
    assert aws.project("ns-proj") is None and aws.project("pre-proj") is None
    made = aws.project("ns-proj-2")
    assert made is not None and made["source"]["type"] == "NO_SOURCE"
    no_drift(conn)

    # start_build: a build, and its row; an INSERT is refused, naming the RPC.
    assert rows(conn, f"SELECT * FROM start_build('gh-proj', '{REGION}')") == [
        ("gh-proj", "OK", "")
    ]
    [build_id] = aws.cb.list_builds_for_project(projectName="gh-proj")["ids"]
    assert rows(
        conn,
        "SELECT aws_id, project_name, build_number, build_status, region, start_time IS NOT NULL"
        " FROM codebuild_build_list",
    ) == [(build_id, "gh-proj", 1, "SUCCEEDED", REGION, True)]
    no_drift(conn)
    with pytest.raises(psycopg.Error, match="ResourceNotFoundException") as missing:
        conn.execute("SELECT * FROM start_build('no-such-proj')")
    assert missing.value.sqlstate == "58000"
    with pytest.raises(psycopg.Error, match="project") as empty:
        conn.execute("SELECT * FROM start_build('')")
    assert empty.value.sqlstate == "22023"
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        conn.execute(
            "INSERT INTO codebuild_build_list (aws_id, build_status) VALUES ('x:y', 'SUCCEEDED')"
        )
    assert "start_build(" in (refused.value.diag.message_hint or "")
    conn.execute("DELETE FROM codebuild_build_list WHERE project_name = 'gh-proj'")
    [(action, _)] = preview(conn)["codebuild_build_list"]
    assert action == "delete"
    commit(conn)
    assert aws.cb.list_builds()["ids"] == []
    assert aws.cb.batch_get_builds(ids=[build_id])["builds"] == []
    assert rows(conn, "SELECT count(*) FROM codebuild_build_list") == [(0,)]
    no_drift(conn)

    # import_source_credential: the credential and its row; the token reaches AWS only.
    token = f"ghp_{secrets.token_hex(12)}"
    arn = f"arn:aws:codebuild:{REGION}:{account_id}:token/github"
    imported = rows(
        conn,
        f"SELECT * FROM import_source_credential('{REGION}', '{token}', 'GITHUB',"
        " 'PERSONAL_ACCESS_TOKEN')",
    )
    assert imported == [(arn, "SUCCESS", "")]
    assert rows(conn, "SELECT * FROM source_credentials_list") == [
        (arn, "GITHUB", "PERSONAL_ACCESS_TOKEN", REGION)
    ]
    assert aws.cb.list_source_credentials()["sourceCredentialsInfos"] == [
        {"arn": arn, "serverType": "GITHUB", "authType": "PERSONAL_ACCESS_TOKEN"}
    ]
    with pytest.raises(psycopg.Error, match="server_type") as bad:
        conn.execute(f"SELECT * FROM import_source_credential('{REGION}', 'x', 'GITLAB')")
    assert bad.value.sqlstate == "22023"
    no_drift(conn)
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        conn.execute(
            "INSERT INTO source_credentials_list (arn, source_type, auth_type)"
            " VALUES ('arn:x', 'GITHUB', 'OAUTH')"
        )
    assert "import_source_credential(" in (refused.value.diag.message_hint or "")
    conn.execute("DELETE FROM source_credentials_list WHERE source_type = 'GITHUB'")
    [(action, _)] = preview(conn)["source_credentials_list"]
    assert action == "delete"
    commit(conn)
    assert aws.cb.list_source_credentials()["sourceCredentialsInfos"] == []
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert replay and not any("arn:aws" in sql for sql in replay), replay
    no_drift(conn)
    for source in (
        "iasql_audit_log",
        "iasql_commit_journal",
        "iasql_get_sql_since()",
        "iasql_get_sql_for_transaction()",
        "source_credentials_list",
    ):
        found = conn.execute(
            f"SELECT count(*) FROM {source} AS t WHERE t::text LIKE %s", (f"%{token}%",)
        ).fetchall()
        assert found == [(0,)], source
    assert not [r for r in caplog.records if token in r.getMessage()]
    with postgres.log_path.open("rb") as log:
        log.seek(postgres_log_start)
        assert token not in log.read().decode(errors="replace")

    # A cloud error (a GITHUB source needs a location) reaches the user as one clear line.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO codebuild_project (project_name, source_type, service_role_name)"
        " VALUES ('bad-proj', 'GITHUB', 'cb-role')"
    )
    with pytest.raises(psycopg.Error, match="source location is required") as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate == "58000"
    assert "\n" not in str(failed.value.diag.message_primary)
    # The failed commit undid itself: the row is gone, nothing was made.
    assert rows(conn, "SELECT count(*) FROM codebuild_project WHERE project_name = 'bad-proj'") == [
        (0,)
    ]
    assert aws.project("bad-proj") is None
    no_drift(conn)
