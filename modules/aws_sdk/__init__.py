"""aws_sdk: IaSQL's `invoke_<service>(method_name, method_input, region)` functions, one per AWS
client IaSQL exposes, each calling one method of that client and returning its answer as one
`result json` row. No tables.

- `method_name` is the JS SDK's method name, as IaSQL takes it (`'describeVpcs'`); the API's
  own name (`'DescribeVpcs'`) and boto3's (`'describe_vpcs'`) are taken too.
- `method_input` is the method's input as a JSON object (`'{}'` or NULL for none), keyed as the
  API is (`{"Filters": [{"Name": "tag:env", "Values": ["prod"]}]}`).
- `region` defaults to the database's default region.

The result is the answer without its request metadata (IaSQL drops `$metadata`), as JSON:
timestamps are ISO 8601 text, bytes are text (base64 when they are not UTF-8), and a streamed
body (S3's GetObject) is read. One call, no pagination: a `NextToken`/`Marker` in the result is
passed back in `method_input`, as with IaSQL.

Unlike IaSQL, whose functions call any method of the client (createGroup included), these
only read: a method that is not a describe, get or list call is refused before any call, and
so are the reads whose answer is a secret (a secret's value, new credentials, registry
passwords, decrypted parameters). Resources change through the module tables and
iasql_commit(). Whatever secret-looking field an answer still carries is redacted.
"""

from __future__ import annotations

import base64
import datetime
import difflib
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from botocore import xform_name
from botocore.exceptions import ClientError, ParamValidationError

from modules import VERSION
from modules.spec import ArgumentError, Cloud, CloudError, ModuleFunction, ModuleSpec, Record

# IaSQL's function names (its AwsSdkModule's invokers, snake_cased) and the boto3 client each
# one calls. Two differ from IaSQL's list: invoke_opensearch is not IaSQL's (its list has no
# OpenSearch client), and the Lambda client's is invoke_lambda_sdk, because invoke_lambda is
# aws_lambda's RPC (IaSQL's too: its aws_sdk invoke_lambda, wired to the ACM client by a slip,
# never called Lambda), and function names are one namespace.
SERVICES: tuple[tuple[str, str], ...] = (
    ("invoke_acm", "acm"),
    ("invoke_api_gateway", "apigatewayv2"),
    ("invoke_app_sync", "appsync"),
    ("invoke_cloudfront", "cloudfront"),
    ("invoke_cloudwatch_logs", "logs"),
    ("invoke_cloudwatch", "cloudwatch"),
    ("invoke_codebuild", "codebuild"),
    ("invoke_codedeploy", "codedeploy"),
    ("invoke_codepipeline", "codepipeline"),
    ("invoke_dynamo", "dynamodb"),
    ("invoke_ec2", "ec2"),
    ("invoke_ssm", "ssm"),
    ("invoke_ecr", "ecr"),
    ("invoke_ecr_public", "ecr-public"),
    ("invoke_ecs", "ecs"),
    ("invoke_elasticache", "elasticache"),
    ("invoke_elb", "elbv2"),
    ("invoke_iam", "iam"),
    ("invoke_lambda_sdk", "lambda"),
    ("invoke_memory_db", "memorydb"),
    ("invoke_rds", "rds"),
    ("invoke_route53", "route53"),
    ("invoke_s3", "s3"),
    ("invoke_secret_manager", "secretsmanager"),
    ("invoke_sns", "sns"),
    ("invoke_sts", "sts"),
    ("invoke_sqs", "sqs"),
    ("invoke_cloudformation", "cloudformation"),
    ("invoke_opensearch", "opensearch"),
)

READ_VERBS = ("describe", "get", "list")

# Reads whose answer is a secret, or which make one: refused whatever the input.
SECRET_METHODS: Mapping[tuple[str, str], str] = {
    ("secretsmanager", "get_secret_value"): "its answer is the secret's value",
    ("secretsmanager", "get_random_password"): "its answer is a new password",
    ("sts", "get_session_token"): "it makes new credentials and answers with their secret key",
    ("sts", "get_federation_token"): "it makes new credentials and answers with their secret key",
    ("ecr", "get_authorization_token"): "its answer is a registry password",
    ("ecr-public", "get_authorization_token"): "its answer is a registry password",
    ("ec2", "get_password_data"): "its answer is an instance's (encrypted) Windows password",
    ("appsync", "list_api_keys"): "its answer holds the API keys themselves",
}

# SSM reads that decrypt SecureString parameters when asked to.
DECRYPTING = {
    ("ssm", "get_parameter"),
    ("ssm", "get_parameters"),
    ("ssm", "get_parameters_by_path"),
    ("ssm", "get_parameter_history"),
}

# Fields of an answer that hold secrets, whatever the method: their values are replaced.
SECRET_FIELDS = frozenset(
    {
        "SecretString",
        "SecretBinary",
        "SecretAccessKey",
        "SessionToken",
        "Password",
        "MasterUserPassword",
        "AuthToken",
        "authorizationToken",
        "PrivateKey",
        "RandomPassword",
    }
)
REDACTED = "(redacted)"

BODY_LIMIT = 1 << 20  # bytes of a streamed body (S3 GetObject) read into the result


def _one_line(text: str, limit: int = 60) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _camel(python_name: str) -> str:
    """boto3's `describe_vpcs` as the JS SDK (and IaSQL) writes it: `describeVpcs`."""
    first, *rest = python_name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _is_read(python_name: str) -> bool:
    return python_name.split("_", 1)[0] in READ_VERBS


def _method(function: str, service: str, operations: list[str], name: Any) -> str:
    """boto3's name for the method `name` (camelCase, PascalCase or snake_case) of the client,
    refused unless it is one of the client's reads."""
    signature = f"{function}(method_name, method_input json, region)"
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError(f"name the method to call, such as 'describeVpcs': {signature}")
    by_key = {_key(op): xform_name(op) for op in operations}
    python_name = by_key.get(_key(name.strip()))
    if python_name is None:
        reads = sorted(_camel(xform_name(op)) for op in operations if _is_read(xform_name(op)))
        close = difflib.get_close_matches(name.strip(), reads, n=3)
        suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ArgumentError(
            f"the {service} client has no method {_one_line(name)!r}{suggestion}"
            f" (method names are the JS SDK's, as IaSQL takes them; the client has"
            f" {len(reads)} describe, get and list methods)"
        )
    if not _is_read(python_name):
        raise ArgumentError(
            f"{_camel(python_name)!r} is not a read: only describe, get and list methods are"
            " called; change resources through the module tables and iasql_commit()"
        )
    why = SECRET_METHODS.get((service, python_name))
    if why is not None:
        raise ArgumentError(
            f"{_camel(python_name)!r} is refused: {why}, and iasql never returns AWS secrets"
        )
    return python_name


def _input(value: Any) -> dict[str, Any]:
    """method_input: a JSON object, '' or NULL for none (the proxy hands JSON text or,
    when the argument was computed, the parsed value)."""
    example = '\'{"VpcIds": ["vpc-0abc"]}\''
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            raise ArgumentError(
                f"method_input is not valid JSON: {_one_line(value)!r}; write a JSON object"
                f" such as {example} ('{{}}' for none)"
            ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ArgumentError(
            f"method_input is a JSON object such as {example} ('{{}}' for none), not"
            f" {_one_line(json.dumps(value))}"
        )
    return value


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")


async def _jsonable(value: Any) -> Any:
    """An answer as JSON values: ISO 8601 timestamps, bytes as text, streamed bodies read."""
    if isinstance(value, dict):
        return {str(k): await _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [await _jsonable(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes(bytes(value))
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "read"):  # a streamed body (aiobotocore's AioStreamingBody)
        aclose = getattr(value, "aclose", None)
        try:
            data = await value.read(BODY_LIMIT + 1)
        finally:
            if aclose is not None:
                await aclose()
        if len(data) > BODY_LIMIT:
            raise CloudError(
                f"the body is larger than {BODY_LIMIT} bytes: ask for part of it"
                ' (method_input "Range": "bytes=0-1048575")'
            )
        return _bytes(bytes(data))
    return str(value)


def _not_implemented(error: ClientError) -> bool:
    """A 5xx answer whose body was no AWS error: what a moto server answers for an
    operation it does not implement (its NotImplementedError page)."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.response.get("Error", {}).get("Code", ""))
    return isinstance(status, int) and status >= 500 and code == str(status)


def _invoker(function: str, service: str) -> Any:
    async def invoke(
        cloud: Cloud, method_name: Any, method_input: Any = None, region: str | None = None
    ) -> list[Record]:
        arguments = _input(method_input)
        async with cloud.client(service, region) as client:
            operations = list(client.meta.service_model.operation_names)
            python_name = _method(function, service, operations, method_name)
            if (service, python_name) in DECRYPTING and arguments.get("WithDecryption"):
                raise ArgumentError(
                    f"{_camel(python_name)!r} with WithDecryption is refused: iasql never"
                    " returns AWS secrets; leave it out, and SecureString values stay encrypted"
                )
            try:
                answer = await getattr(client, python_name)(**arguments)
            except ParamValidationError as error:
                raise ArgumentError(
                    f"method_input does not fit {_camel(python_name)!r}: "
                    + _one_line(
                        "; ".join(line for line in str(error).splitlines()[1:] if line.strip()),
                        300,
                    )
                ) from None
            except ClientError as error:
                if _not_implemented(error):
                    where = client.meta.endpoint_url
                    raise CloudError(
                        f"{_camel(python_name)!r} is not implemented by the endpoint {where}:"
                        " it answered HTTP 500 with no AWS error (as moto does for an"
                        " operation it lacks)"
                    ) from None
                raise
            answer.pop("ResponseMetadata", None)
            return [{"result": _redact(await _jsonable(answer))}]

    invoke.__name__ = function
    invoke.__qualname__ = function
    return invoke


def _function(function: str, service: str) -> ModuleFunction:
    samples = {
        "invoke_ec2": (
            "SELECT jsonb_array_elements(result::jsonb -> 'Vpcs') ->> 'VpcId'"
            ' FROM invoke_ec2(\'describeVpcs\', \'{"Filters": [{"Name": "is-default",'
            ' "Values": ["true"]}]}\')'
        ),
        "invoke_iam": "SELECT invoke_iam('listRoles', '{}') -> 'Roles'",
        "invoke_sts": "SELECT invoke_sts('getCallerIdentity', '{}') ->> 'Account'",
    }
    return ModuleFunction(
        name=function,
        columns=(("result", "json"),),
        params=(("method_name", "text"), ("method_input", "json"), ("region", "text")),
        run=_invoker(function, service),
        description=f"Calls one read (describe, get, list) of the AWS SDK's {service} client"
        " with a JSON input; returns its answer as JSON",
        changes_cloud=False,
        optional=("method_input", "region"),
        sample=samples.get(
            function, f"SELECT * FROM {function}('<describe/get/list method>', '{{}}')"
        ),
    )


FUNCTIONS = tuple(_function(function, service) for function, service in SERVICES)

MODULE = ModuleSpec(
    name="aws_sdk",
    version=VERSION,
    dependencies=("aws_account",),
    description="invoke_<service>(method, input, region): one read call of an AWS SDK client",
    functions=FUNCTIONS,
)
