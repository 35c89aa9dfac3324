"""aws_sdk: IaSQL's invoke_<service>(method_name, method_input, region) functions against a
moto server: reads that compose with SQL (a filter in the input, a computed input, the
answer's timestamps and bytes as JSON), and the refusals (a write, an unknown method, a read
that would return a secret, an input that is not an object) as 22023, before any call. An
operation moto lacks (its HTTP 500 NotImplementedError page) is one clear line."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules import available_modules
from modules.aws_sdk import MODULE, REDACTED, SERVICES, _jsonable, _redact
from tests.support.aws import REGION
from tests.support.env import add_credentials, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _client(moto: MotoServer, service: str) -> Any:
    # Credentials of its own: the module-scoped fixture runs before the autouse dummy ones.
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=moto.endpoint,
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="a-very-secret-key",
    )


@pytest.fixture(scope="module")
def cloud(moto_accounts: Any) -> Iterator[dict[str, Any]]:
    """One moto account for the file, with a tagged VPC, a queue, a role, an object and a
    secret made with boto3."""
    moto: MotoServer = moto_accounts()
    ec2 = _client(moto, "ec2")
    vpc = ec2.create_vpc(
        CidrBlock="10.42.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "sdk", "Value": "yes"}]}],
    )["Vpc"]["VpcId"]
    ec2.create_vpc(CidrBlock="10.43.0.0/16")  # untagged: the filter leaves it out
    queue = _client(moto, "sqs").create_queue(QueueName="sdk-queue")["QueueUrl"]
    _client(moto, "iam").create_role(
        RoleName="sdk-role", AssumeRolePolicyDocument=json.dumps(ROLE_POLICY)
    )
    s3 = _client(moto, "s3")
    s3.create_bucket(Bucket="sdk-bucket")
    s3.put_object(Bucket="sdk-bucket", Key="hello.txt", Body=b"hello, sdk")
    _client(moto, "secretsmanager").create_secret(Name="sdk-secret", SecretString="s3cr3t-value")
    account = _client(moto, "sts").get_caller_identity()["Account"]
    yield {"moto": moto, "vpc": vpc, "queue": queue, "account": account}


@pytest.fixture
def sdk(envdb: psycopg.Connection, cloud: dict[str, Any]) -> psycopg.Connection:
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, cloud["moto"])
    only_regions(envdb, REGION)
    envdb.execute("SELECT * FROM iasql_install('aws_sdk')")
    return envdb


def _refused(conn: psycopg.Connection, sql: str, *params: Any) -> str:
    with pytest.raises(psycopg.Error) as error:
        conn.execute(sql, params or None)
    assert error.value.sqlstate == "22023", (sql, error.value)
    message = str(error.value.diag.message_primary)
    assert "\n" not in message
    return message


def test_module_declares_every_iasql_client() -> None:
    names = [f.name for f in MODULE.functions]
    assert names == [name for name, _service in SERVICES]
    for expected in ("invoke_ec2", "invoke_iam", "invoke_sqs", "invoke_sts", "invoke_elb"):
        assert expected in names
    for function in MODULE.functions:
        assert function.columns == (("result", "json"),)
        assert [p for p, _ in function.params] == ["method_name", "method_input", "region"]
        assert not function.changes_cloud
    assert MODULE.tables == ()
    # Function names are one namespace: none may shadow another module's RPC (aws_lambda's
    # invoke_lambda is why the Lambda client's is invoke_lambda_sdk).
    others = {
        f.name for m in available_modules().values() if m.name != "aws_sdk" for f in m.functions
    }
    assert not others & set(names)


def test_reads_compose_with_sql(sdk: psycopg.Connection, cloud: dict[str, Any]) -> None:
    conn = sdk
    # IaSQL's camelCase name, a filter in the input, the result taken apart by SQL.
    tagged = rows(
        conn,
        "SELECT jsonb_array_elements(result::jsonb -> 'Vpcs') ->> 'VpcId' FROM invoke_ec2("
        """'describeVpcs', '{"Filters": [{"Name": "tag:sdk", "Values": ["yes"]}]}')""",
    )
    assert tagged == [(cloud["vpc"],)]
    # The API's and boto3's names for the same method, the region named, and an input
    # computed by SQL (as IaSQL's test builds it with json_build_object).
    for name in ("DescribeVpcs", "describe_vpcs"):
        [(answer,)] = rows(
            conn,
            f"SELECT result FROM invoke_ec2('{name}',"
            f" json_build_object('VpcIds', ARRAY['{cloud['vpc']}']), '{REGION}')",
        )
        assert [v["CidrBlock"] for v in answer["Vpcs"]] == ["10.42.0.0/16"]
        assert "ResponseMetadata" not in answer
    # A parameter of the extended protocol for the input; the default region.
    [(cidr,)] = conn.execute(
        "SELECT invoke_ec2('describeVpcs', %s::json) -> 'Vpcs' -> 0 ->> 'CidrBlock'",
        (json.dumps({"VpcIds": [cloud["vpc"]]}),),
    ).fetchall()
    assert cidr == "10.42.0.0/16"

    # A read runs inside the client's own transaction block too (it changes nothing).
    with conn.transaction():
        [(queues,)] = rows(conn, "SELECT result FROM invoke_sqs('listQueues', '{}')")
    assert cloud["queue"] in queues["QueueUrls"]

    [(roles,)] = rows(conn, "SELECT result FROM invoke_iam('listRoles')")
    [role] = [r for r in roles["Roles"] if r["RoleName"] == "sdk-role"]
    assert isinstance(role["CreateDate"], str)
    datetime.datetime.fromisoformat(role["CreateDate"])  # a timestamp is ISO 8601 text

    assert rows(conn, "SELECT invoke_sts('getCallerIdentity', '{}') ->> 'Account'") == [
        (cloud["account"],)
    ]

    # Bytes (a streamed body) as text; its timestamp as ISO text.
    [(obj,)] = rows(
        conn,
        "SELECT result FROM invoke_s3('getObject',"
        """ '{"Bucket": "sdk-bucket", "Key": "hello.txt"}')""",
    )
    assert obj["Body"] == "hello, sdk"
    datetime.datetime.fromisoformat(obj["LastModified"])

    # A read the cloud refuses is the cloud's error, naming the operation.
    with pytest.raises(psycopg.Error) as error:
        conn.execute("SELECT * FROM invoke_iam('getRole', '{\"RoleName\": \"no-such-role\"}')")
    assert error.value.sqlstate == "58000"
    assert "GetRole" in str(error.value) and "NoSuchEntity" in str(error.value)


def test_refusals(sdk: psycopg.Connection, cloud: dict[str, Any]) -> None:
    conn = sdk
    ec2 = _client(cloud["moto"], "ec2")
    before = len(ec2.describe_vpcs()["Vpcs"])
    # A write, in any spelling: refused before any call.
    for name in ("createVpc", "CreateVpc", "create_vpc"):
        message = _refused(
            conn, f"SELECT * FROM invoke_ec2('{name}', '{{\"CidrBlock\": \"10.9.0.0/16\"}}')"
        )
        assert "'createVpc' is not a read" in message, message
    assert len(ec2.describe_vpcs()["Vpcs"]) == before
    message = _refused(
        conn, "SELECT * FROM invoke_iam('deleteRole', '{\"RoleName\": \"sdk-role\"}')"
    )
    assert "not a read" in message
    assert _client(cloud["moto"], "iam").get_role(RoleName="sdk-role")["Role"]

    # An unknown method, with the near ones.
    message = _refused(conn, "SELECT * FROM invoke_ec2('describeVpc', '{}')")
    assert "no method 'describeVpc'" in message and "'describeVpcs'" in message, message

    # Reads that would return a secret; the secret never shows in the error.
    message = _refused(
        conn,
        "SELECT * FROM invoke_secret_manager('getSecretValue', '{\"SecretId\": \"sdk-secret\"}')",
    )
    assert "secret" in message and "s3cr3t-value" not in message
    _refused(conn, "SELECT * FROM invoke_sts('getSessionToken', '{}')")
    _refused(conn, "SELECT * FROM invoke_ecr('getAuthorizationToken', '{}')")
    message = _refused(
        conn,
        "SELECT * FROM invoke_ssm('getParameter',"
        """ '{"Name": "/x", "WithDecryption": true}')""",
    )
    assert "WithDecryption" in message
    # Describing the secret is fine: it holds no value.
    [(described,)] = rows(
        conn,
        "SELECT result FROM invoke_secret_manager('describeSecret', '{\"SecretId\": \"sdk-secret\"}')",
    )
    assert described["Name"] == "sdk-secret" and "s3cr3t-value" not in json.dumps(described)

    # Inputs that are no JSON object, or do not fit the method.
    assert "not valid JSON" in _refused(conn, "SELECT * FROM invoke_sqs('listQueues', 'nope')")
    assert "JSON object" in _refused(conn, "SELECT * FROM invoke_sqs('listQueues', '[1, 2]')")
    message = _refused(conn, "SELECT * FROM invoke_ec2('describeVpcs', '{\"Bogus\": 1}')")
    assert "Bogus" in message, message
    _refused(conn, "SELECT * FROM invoke_ec2('', '{}')")


def test_operation_moto_lacks(sdk: psycopg.Connection) -> None:
    """moto answers HTTP 500 (a NotImplementedError page) for EC2's DescribeIpamPools."""
    with pytest.raises(psycopg.Error) as error:
        sdk.execute("SELECT * FROM invoke_ec2('describeIpamPools', '{}')")
    message = str(error.value.diag.message_primary)
    assert error.value.sqlstate == "58000"
    assert "'describeIpamPools' is not implemented by the endpoint" in message, message
    assert "\n" not in message


def test_answers_become_json_without_secrets() -> None:
    """Timestamps, bytes and numbers of an answer as JSON values; secret fields redacted."""
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    answer = {
        "CreateDate": when,
        "Text": b"plain",
        "Blob": b"\xff\x00",
        "Count": Decimal("3"),
        "Ratio": Decimal("0.5"),
        "Items": ({"Credentials": {"AccessKeyId": "AKID", "SecretAccessKey": "shh"}},),
        "SecretString": "hidden",
    }
    value = asyncio.run(_jsonable(answer))
    assert json.loads(json.dumps(value)) == value
    assert value["CreateDate"] == "2024-05-01T12:30:00+00:00"
    assert value["Text"] == "plain" and value["Blob"] == "/wA="
    assert value["Count"] == 3 and value["Ratio"] == 0.5
    redacted = _redact(value)
    assert redacted["Items"][0]["Credentials"] == {
        "AccessKeyId": "AKID",
        "SecretAccessKey": REDACTED,
    }
    assert redacted["SecretString"] == REDACTED
    assert "shh" not in json.dumps(redacted) and "hidden" not in json.dumps(redacted)
