"""aws_lambda (with aws_iam, aws_vpc and aws_security_group): functions made with boto3 and
imported at install or by iasql_sync(); create (with a subnet and a security group), update in
place (configuration, role, code, tags, groups), replace (architecture), rollback and delete
through begin / preview / commit, each checked with boto3; invoke_lambda, which moto cannot run
without Docker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_lambda import (
    ASSIGNED_GROUPS_TAG,
    DIGEST_PREFIX,
    code_digest,
    invoke_lambda,
    name_of,
    normalize_environment,
    normalize_subnets,
    region_of,
    role_name_of,
    visible_groups,
)
from modules.spec import ArgumentError
from tests.support.aws import REGION, only_one_region
from tests.support.env import RunningServer, add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def package(answer: str) -> str:
    """A tiny zip package (base64) whose handler returns `answer`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # A fixed date: the same answer is the same package, byte for byte.
        entry = zipfile.ZipInfo("index.py", date_time=(2024, 1, 1, 0, 0, 0))
        archive.writestr(entry, f"def handler(event, context):\n    return {answer!r}\n")
    return base64.b64encode(buffer.getvalue()).decode()


def sha(b64: str) -> str:
    return base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode()


# --- helpers -------------------------------------------------------------------------------


def test_normalisation() -> None:
    code = package("x")
    assert code_digest(code) == DIGEST_PREFIX + sha(code)
    assert code_digest(DIGEST_PREFIX + "abc") == DIGEST_PREFIX + "abc"
    assert code_digest("not base64!") == "not base64!" and code_digest(None) is None
    assert normalize_environment('{"b": 1, "a": "x"}') == {"a": "x", "b": "1"}
    assert normalize_environment({}) is None and normalize_environment(None) is None
    assert normalize_subnets(["subnet-b", "subnet-a"]) == ["subnet-a", "subnet-b"]
    assert normalize_subnets([]) is None
    arn = "arn:aws:lambda:eu-west-2:123456789012:function:my-fn"
    assert (region_of(arn), name_of(arn)) == ("eu-west-2", "my-fn")
    assert role_name_of("arn:aws:iam::123456789012:role/some/path/r1") == "r1"
    marker = {ASSIGNED_GROUPS_TAG: "sg-default"}
    assert visible_groups(["sg-default"], marker) == []  # iasql's choice: no rows
    assert visible_groups(["sg-default"], None) == ["sg-default"]  # imported: shown
    assert visible_groups(["sg-a", "sg-default"], marker) == ["sg-a", "sg-default"]
    assert visible_groups(None, None) == []


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self) -> bytes:
        return self.data


class _FakeLambda:
    """What AWS's Invoke answers: moto cannot run function code here (it needs Docker)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    async def __aenter__(self) -> _FakeLambda:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def invoke(self, **arguments: Any) -> dict[str, Any]:
        self.calls.append(arguments)
        return self.answer


class _FakeCloud:
    def __init__(self, client: _FakeLambda) -> None:
        self.lambda_client = client

    def client(self, service: str, region: str | None) -> _FakeLambda:
        assert (service, region) == ("lambda", REGION)
        return self.lambda_client


def test_invoke_lambda_result_rows() -> None:
    """The result row as IaSQL's RPC gives it, from AWS's answer (invoking is not testable
    against moto without Docker)."""
    ok = _FakeLambda({"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": _Body(b'"hi"')})
    [row] = asyncio.run(invoke_lambda(_FakeCloud(ok), "fn", '{"a": 1}', REGION))
    assert row == {
        "function_name": "fn",
        "version": "$LATEST",
        "status": "200",
        "payload": '"hi"',
        "error": None,
    }
    assert ok.calls == [{"FunctionName": "fn", "Payload": b'{"a": 1}'}]
    # A payload given as parsed JSON, and none at all.
    asyncio.run(invoke_lambda(_FakeCloud(ok), "fn", {"b": [1]}, REGION))
    asyncio.run(invoke_lambda(_FakeCloud(ok), "fn", None, REGION))
    assert [c["Payload"] for c in ok.calls[1:]] == [b'{"b": [1]}', b"{}"]
    # The function's own failure is a result row, as in IaSQL.
    failed = _FakeLambda(
        {
            "StatusCode": 200,
            "ExecutedVersion": "$LATEST",
            "FunctionError": "Unhandled",
            "Payload": _Body(b'{"errorMessage": "boom"}'),
        }
    )
    [row] = asyncio.run(invoke_lambda(_FakeCloud(failed), "fn", "{}", REGION))
    assert (row["error"], row["payload"]) == ("Unhandled", '{"errorMessage": "boom"}')
    with pytest.raises(ArgumentError, match="valid JSON"):
        asyncio.run(invoke_lambda(_FakeCloud(ok), "fn", "{nope", REGION))


# --- against moto --------------------------------------------------------------------------


class Aws:
    """boto3 clients for one moto account, and what the test made there before install."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto

        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.aws, self.iam, self.ec2 = client("lambda"), client("iam"), client("ec2")
        self.roles = {
            name: self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))[
                "Role"
            ]["Arn"]
            for name in ("fn-role", "fn-role-2")
        }
        subnets = self.ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        # By zone: the same subnets, by natural key, in every account.
        by_zone = sorted(subnets, key=lambda s: s["AvailabilityZone"])
        self.subnets = [s["SubnetId"] for s in by_zone[:2]]
        self.vpc = subnets[0]["VpcId"]
        self.group = self.ec2.create_security_group(
            GroupName="fn-sg", Description="lambda", VpcId=self.vpc
        )["GroupId"]

    def make(self, name: str, **extra: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.aws.create_function(
            FunctionName=name,
            Runtime="python3.9",
            Role=self.roles["fn-role"],
            Handler="index.handler",
            Code={"ZipFile": base64.b64decode(package(name))},
            **extra,
        )
        return answer

    def config(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.aws.get_function(FunctionName=name)
        return answer

    def exists(self, name: str) -> bool:
        try:
            self.aws.get_function(FunctionName=name)
        except self.aws.exceptions.ResourceNotFoundException:
            return False
        return True


@pytest.fixture(scope="module")
def lambda_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def lambda_env(envdb: psycopg.Connection, lambda_moto: MotoServer) -> tuple[Any, Aws]:
    lambda_moto.reset()
    aws = Aws(lambda_moto)
    aws.make(
        "pre-fn",
        MemorySize=256,
        Description="made before install",
        Environment={"Variables": {"STAGE": "pre"}},
        Tags={"team": "a"},
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, lambda_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_lambda')")
    return envdb, aws


def replay_elsewhere(iasql: RunningServer, moto: MotoServer, replay: list[str], code: str) -> None:
    """The create's SQL, run in an environment of another account that has a role and a
    security group of the same names: the same function there, in that account's subnet."""
    other = Aws(moto)
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('lambda_replay')").fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(conn, moto)
        conn.execute("SELECT * FROM iasql_install('aws_iam')")
        only_one_region(conn)
        conn.execute("SELECT * FROM iasql_install('aws_lambda')")
        conn.execute("SELECT * FROM iasql_begin()")
        for statement in replay:
            conn.execute(statement)
        commit(conn)
        no_drift(conn)
    made = other.config("new-fn")
    config = made["Configuration"]
    assert config["Role"] == other.roles["fn-role"]
    assert config["CodeSha256"] == sha(code)
    assert config["VpcConfig"]["SubnetIds"] == other.subnets[:1]
    assert config["VpcConfig"]["SecurityGroupIds"] == [other.group]
    assert made["Tags"] == {"owner": "me"}


def test_lambda_life_cycle(
    lambda_env: tuple[psycopg.Connection, Aws],
    iasql: RunningServer,
    moto_accounts: Callable[[], MotoServer],
) -> None:
    conn, aws = lambda_env
    s1, s2 = aws.subnets

    # Import at install: the code reads back as its digest, the role by name.
    pre = aws.config("pre-fn")["Configuration"]
    assert rows(
        conn,
        "SELECT arn, version, description, zip_b64, handler, runtime, package_type,"
        " architecture, memory_size, environment::jsonb, tags::jsonb, subnets, region, role_name"
        " FROM lambda_function",
    ) == [
        (
            pre["FunctionArn"],
            "$LATEST",
            "made before install",
            DIGEST_PREFIX + pre["CodeSha256"],
            "index.handler",
            "python3.9",
            "Zip",
            "x86_64",
            256,
            {"STAGE": "pre"},
            {"team": "a"},
            None,
            REGION,
            "fn-role",
        )
    ]
    assert pre["CodeSha256"] == sha(package("pre-fn"))
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)

    # A function made outside iasql comes in with iasql_sync().
    # Its VPC configuration: the subnet ids, and a lambda_function_security_groups row.
    aws.make("sync-fn", VpcConfig={"SubnetIds": [s2], "SecurityGroupIds": [aws.group]})
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT name, subnets FROM lambda_function ORDER BY name") == [
        ("pre-fn", None),
        ("sync-fn", [s2]),
    ]
    assert rows(
        conn,
        "SELECT f.name, g.group_id FROM lambda_function_security_groups j"
        " JOIN lambda_function f ON f.id = j.lambda_function_id"
        " JOIN security_group g ON g.id = j.security_group_id",
    ) == [("sync-fn", aws.group)]
    no_drift(conn)

    # Create, in a subnet with a security group.
    code = package("v1")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO lambda_function (name, zip_b64, handler, runtime, role_name, environment,"
        " tags, subnets) VALUES ('new-fn', %s, 'index.handler', 'python3.9', 'fn-role',"
        """ '{"MODE": "one"}', '{"owner": "me"}', %s)""",
        (code, [s1]),
    )
    conn.execute(
        "INSERT INTO lambda_function_security_groups (lambda_function_id, security_group_id)"
        " SELECT f.id, g.id FROM lambda_function f, security_group g"
        " WHERE f.name = 'new-fn' AND g.group_name = 'fn-sg'"
    )
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "lambda_function": ["create"],
        "lambda_function_security_groups": ["create"],
    }
    assert planned["lambda_function"][0][1]["memory_size"] == {"old": None, "new": 128}
    assert planned["lambda_function"][0][1]["subnets"] == {"old": None, "new": [s1]}
    commit(conn)
    made = aws.config("new-fn")
    config = made["Configuration"]
    assert config["Role"] == aws.roles["fn-role"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"]) == (
        "python3.9",
        "index.handler",
        128,
    )
    assert config["Environment"]["Variables"] == {"MODE": "one"}
    assert config["CodeSha256"] == sha(code)
    assert config["VpcConfig"]["SubnetIds"] == [s1]
    assert config["VpcConfig"]["SecurityGroupIds"] == [aws.group]
    assert made["Tags"] == {"owner": "me"}
    arn = config["FunctionArn"]
    assert rows(conn, "SELECT arn, version FROM lambda_function WHERE name = 'new-fn'") == [
        (arn, "$LATEST")
    ]
    no_drift(conn)
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 2, replay
    assert not any(x in sql for sql in replay for x in ("arn:aws", "subnet-", "sg-"))
    [link] = [sql for sql in replay if "lambda_function_security_groups" in sql]
    assert "'new-fn'" in link and "'fn-sg'" in link
    replay_elsewhere(iasql, moto_accounts(), replay, code)

    # In place: configuration, role, code, tags, subnets, and the security group goes.
    code2 = package("v2")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE lambda_function SET memory_size = 512, description = 'second',"
        """ environment = '{"MODE": "two"}', handler = 'index.other', runtime = 'python3.8',"""
        """ role_name = 'fn-role-2', zip_b64 = %s, tags = '{"owner": "you"}', subnets = %s"""
        " WHERE name = 'new-fn'",
        (code2, [s1, s2]),
    )
    conn.execute(
        "DELETE FROM lambda_function_security_groups WHERE lambda_function_id ="
        " (SELECT id FROM lambda_function WHERE name = 'new-fn')"
    )
    planned = preview(conn)
    [(action, changes)] = planned["lambda_function"]
    assert action == "update"
    assert changes["memory_size"] == {"old": 128, "new": 512}
    assert changes["role_name"] == {"old": "fn-role", "new": "fn-role-2"}
    assert "forces_replace" not in json.dumps(changes)
    assert [a for a, _ in planned["lambda_function_security_groups"]] == ["delete"]
    commit(conn)
    made = aws.config("new-fn")
    config = made["Configuration"]
    assert config["FunctionArn"] == arn  # the same function
    assert (config["MemorySize"], config["Description"], config["Handler"]) == (
        512,
        "second",
        "index.other",
    )
    assert config["Runtime"] == "python3.8"
    assert config["Environment"]["Variables"] == {"MODE": "two"}
    assert config["Role"] == aws.roles["fn-role-2"]
    assert config["CodeSha256"] == sha(code2)
    assert sorted(config["VpcConfig"]["SubnetIds"]) == sorted([s1, s2])
    # With no group left, AWS still wants one: the VPC's default group, marked as no row's.
    [default] = aws.ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [aws.vpc]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"]
    assert config["VpcConfig"]["SecurityGroupIds"] == [default["GroupId"]]
    assert made["Tags"] == {"owner": "you", ASSIGNED_GROUPS_TAG: default["GroupId"]}
    assert rows(conn, "SELECT tags::jsonb FROM lambda_function WHERE name = 'new-fn'") == [
        ({"owner": "you"},)
    ]
    assert rows(conn, "SELECT count(*) FROM lambda_function_security_groups") == [(1,)]
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE lambda_function SET memory_size = 1024 WHERE name = 'new-fn'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT memory_size FROM lambda_function WHERE name = 'new-fn'") == [(512,)]
    assert aws.config("new-fn")["Configuration"]["MemorySize"] == 512

    # Replace: the architecture; and delete the imported function.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE lambda_function SET architecture = 'arm64' WHERE name = 'new-fn'")
    conn.execute("DELETE FROM lambda_function WHERE name = 'pre-fn'")
    planned = preview(conn)
    by_action = dict(planned["lambda_function"])
    assert by_action["replace"]["architecture"] == {
        "old": "x86_64",
        "new": "arm64",
        "forces_replace": True,
    }
    assert "delete" in by_action
    commit(conn)
    config = aws.config("new-fn")["Configuration"]
    assert config["Architectures"] == ["arm64"]
    assert config["CodeSha256"] == sha(code2)  # redeployed from the row's package
    assert not aws.exists("pre-fn")
    no_drift(conn)

    # invoke_lambda: moto runs function code only in Docker, which this machine lacks; the
    # RPC says so instead of returning the endpoint's error as the function's answer.
    with pytest.raises(psycopg.Error, match="needs Docker") as failed:
        conn.execute("""SELECT * FROM invoke_lambda('sync-fn', '{"a": 1}')""")
    assert failed.value.sqlstate == "58000"
    with pytest.raises(psycopg.Error, match="function's name") as empty:
        conn.execute("SELECT * FROM invoke_lambda('')")
    assert empty.value.sqlstate == "22023"
    with pytest.raises(psycopg.Error, match=r"(?i)json"):
        conn.execute("SELECT * FROM invoke_lambda('sync-fn', 'nope')")

    # Delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM lambda_function WHERE name IN ('new-fn', 'sync-fn')")
    commit(conn)
    assert not aws.exists("new-fn") and not aws.exists("sync-fn")
    assert rows(conn, "SELECT count(*) FROM lambda_function") == [(0,)]
    no_drift(conn)
