"""aws_appsync: GraphQL APIs made with boto3 and found at install and by iasql_sync(); created,
changed in place (name, authentication type, configurations, tags), rolled back and deleted
through begin / preview / commit. Every cloud effect is read back with boto3."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from iasql.sandbox import MotoServer
from modules.aws_appsync import GRAPHQL_API, normalize_config
from modules.spec import TOKEN, TOKEN_TAG, Record
from tests.support.aws import REGION
from tests.support.env import add_credentials, in_cloud, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

AUTHORIZER = "arn:aws:lambda:us-east-1:123456789012:function:authorizer"
ISSUER = "https://issuer.example.com"


@pytest.fixture(scope="module")
def appsync_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def appsync(appsync_moto: MotoServer) -> Any:
    return boto3.client("appsync", region_name=REGION, endpoint_url=appsync_moto.endpoint)


def install(conn: psycopg.Connection, moto: MotoServer) -> None:
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn, REGION)
    conn.execute("SELECT * FROM iasql_install('aws_appsync')")


def nothing_to_do(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def preview(conn: psycopg.Connection) -> list[tuple[str, dict[str, Any]]]:
    return rows(conn, "SELECT action, changes FROM iasql_preview() ORDER BY action, id")


def cloud_apis(appsync: Any) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in appsync.list_graphql_apis()["graphqlApis"]}


def test_table_is_iasqls() -> None:
    assert [(c.name, c.type, c.nullable, c.default) for c in GRAPHQL_API.columns] == [
        ("id", "serial", False, None),
        ("name", "varchar", False, None),
        ("api_id", "varchar", True, None),
        ("arn", "varchar", True, None),
        ("authentication_type", "varchar", False, None),
        ("lambda_authorizer_config", "json", True, None),
        ("open_id_connect_config", "json", True, None),
        ("user_pool_config", "json", True, None),
        ("region", "varchar", False, "default_aws_region()"),
        ("tags", "json", True, None),
    ]
    assert GRAPHQL_API.column("authentication_type").check == (
        "authentication_type IN ('AMAZON_COGNITO_USER_POOLS', 'API_KEY', 'AWS_IAM',"
        " 'AWS_LAMBDA', 'OPENID_CONNECT')"
    )
    # Configurations compare as objects without their null keys; an empty one is none.
    assert normalize_config('{"issuer": "x", "clientId": null}') == {"issuer": "x"}
    assert normalize_config({}) is None
    assert normalize_config(None) is None


def test_graphql_api_lifecycle(
    envdb: psycopg.Connection, appsync_moto: MotoServer, appsync: Any
) -> None:
    conn = envdb
    # 1. Import: an API made before the install is a row, and nothing is left to do.
    pre = appsync.create_graphql_api(
        name="pre-key", authenticationType="API_KEY", tags={"team": "web"}
    )["graphqlApi"]
    install(conn, appsync_moto)
    assert rows(
        conn,
        "SELECT name, api_id, arn, authentication_type, lambda_authorizer_config,"
        " open_id_connect_config, user_pool_config, region, tags::jsonb FROM graphql_api",
    ) == [
        (
            "pre-key",
            pre["apiId"],
            pre["arn"],
            "API_KEY",
            None,
            None,
            None,
            REGION,
            {"team": "web"},
        )
    ]
    nothing_to_do(conn)

    # ... and one made afterwards comes in with iasql_sync().
    oidc = appsync.create_graphql_api(
        name="synced-oidc",
        authenticationType="OPENID_CONNECT",
        openIDConnectConfig={"issuer": ISSUER, "clientId": "web"},
    )["graphqlApi"]
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn,
        "SELECT api_id, authentication_type, open_id_connect_config::jsonb FROM graphql_api"
        " WHERE name = 'synced-oidc'",
    ) == [(oidc["apiId"], "OPENID_CONNECT", {"issuer": ISSUER, "clientId": "web"})]
    nothing_to_do(conn)

    # 2. One commit: a create, and updates in place of every updatable column.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO graphql_api (name, authentication_type, lambda_authorizer_config, tags)"
        " VALUES ('made-lambda', 'AWS_LAMBDA', %s, '{\"env\": \"dev\"}')",
        (f'{{"authorizerUri": "{AUTHORIZER}", "authorizerResultTtlInSeconds": 60}}',),
    )
    conn.execute(
        "UPDATE graphql_api SET name = 'pre-renamed', authentication_type = 'AWS_IAM',"
        """ tags = '{"team": "api", "env": "prod"}' WHERE name = 'pre-key'"""
    )
    conn.execute(
        "UPDATE graphql_api SET open_id_connect_config ="
        f""" '{{"issuer": "{ISSUER}/v2", "clientId": "web", "iatTTL": 3600}}'"""
        " WHERE name = 'synced-oidc'"
    )
    planned = preview(conn)
    assert [a for a, _ in planned] == ["create", "update", "update"]
    assert planned[0][1] == {
        "name": {"old": None, "new": "made-lambda"},
        "authentication_type": {"old": None, "new": "AWS_LAMBDA"},
        "lambda_authorizer_config": {
            "old": None,
            "new": {"authorizerUri": AUTHORIZER, "authorizerResultTtlInSeconds": 60},
        },
        "region": {"old": None, "new": REGION},
        "tags": {"old": None, "new": {"env": "dev"}},
    }
    assert planned[1][1] == {
        "name": {"old": "pre-key", "new": "pre-renamed"},
        "authentication_type": {"old": "API_KEY", "new": "AWS_IAM"},
        "tags": {"old": {"team": "web"}, "new": {"team": "api", "env": "prod"}},
    }
    assert planned[2][1] == {
        "open_id_connect_config": {
            "old": {"issuer": ISSUER, "clientId": "web"},
            "new": {"issuer": f"{ISSUER}/v2", "clientId": "web", "iatTTL": 3600},
        }
    }
    conn.execute("SELECT * FROM iasql_commit()")
    nothing_to_do(conn)

    apis = cloud_apis(appsync)
    assert set(apis) == {"made-lambda", "pre-renamed", "synced-oidc"}
    made = apis["made-lambda"]
    assert made["authenticationType"] == "AWS_LAMBDA"
    assert made["lambdaAuthorizerConfig"] == {
        "authorizerUri": AUTHORIZER,
        "authorizerResultTtlInSeconds": 60,
    }
    # The create carries the engine's token as a tag; the row shows the user's tags only.
    assert set(made["tags"]) == {"env", TOKEN_TAG}
    assert rows(
        conn, "SELECT api_id, arn, tags::jsonb FROM graphql_api WHERE name = 'made-lambda'"
    ) == [(made["apiId"], made["arn"], {"env": "dev"})]
    renamed = apis["pre-renamed"]
    assert (renamed["apiId"], renamed["authenticationType"]) == (pre["apiId"], "AWS_IAM")
    assert renamed["tags"] == {"team": "api", "env": "prod"}
    assert apis["synced-oidc"]["apiId"] == oidc["apiId"]
    assert apis["synced-oidc"]["openIDConnectConfig"] == {
        "issuer": f"{ISSUER}/v2",
        "clientId": "web",
        "iatTTL": 3600,
    }

    # The SQL that replays the transaction names APIs by name and region, never by id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3
    for cloud_value in (pre["apiId"], pre["arn"], oidc["apiId"], made["apiId"], made["arn"]):
        assert not any(cloud_value in sql for sql in replay), replay
    assert not any("arn:aws:appsync" in sql or "api_id" in sql for sql in replay), replay
    assert any("'pre-key'" in sql and "'pre-renamed'" in sql for sql in replay), replay

    # 3. Rollback: uncommitted changes go, and nothing reaches the cloud.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE graphql_api SET authentication_type = 'API_KEY' WHERE name = 'made-lambda'"
    )
    conn.execute("DELETE FROM graphql_api WHERE name = 'pre-renamed'")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(2,)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT name, authentication_type FROM graphql_api ORDER BY name") == [
        ("made-lambda", "AWS_LAMBDA"),
        ("pre-renamed", "AWS_IAM"),
        ("synced-oidc", "OPENID_CONNECT"),
    ]
    assert cloud_apis(appsync).keys() == apis.keys()
    nothing_to_do(conn)

    # 4. Delete; tags set to NULL are removed in the cloud.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM graphql_api WHERE name = 'made-lambda'")
    conn.execute("UPDATE graphql_api SET tags = NULL WHERE name = 'pre-renamed'")
    planned = preview(conn)
    assert [a for a, _ in planned] == ["delete", "update"]
    assert planned[0][1]["name"] == {"old": "made-lambda", "new": None}
    conn.execute("SELECT * FROM iasql_commit()")
    nothing_to_do(conn)
    apis = cloud_apis(appsync)
    assert set(apis) == {"pre-renamed", "synced-oidc"}
    assert not apis["pre-renamed"].get("tags")
    with pytest.raises(ClientError, match="NotFound"):
        appsync.get_graphql_api(apiId=made["apiId"])

    # Uninstall drops the table and its trigger function, and leaves the cloud as it is.
    conn.execute("SELECT * FROM iasql_uninstall('aws_appsync')")
    assert rows(
        conn, "SELECT to_regclass('graphql_api'), to_regproc('graphql_api_tags_as_text')"
    ) == [(None, None)]
    assert set(cloud_apis(appsync)) == {"pre-renamed", "synced-oidc"}


def test_mapper_repeated_delete(appsync_moto: MotoServer, appsync: Any) -> None:
    """A delete of an API already gone (a retried commit) is done."""

    async def scenario(cloud: Any) -> Record:
        mapper = GRAPHQL_API.mapper
        assert mapper is not None
        wanted = {"name": "mapper-iam", "authentication_type": "AWS_IAM", "region": REGION}
        created = await mapper.create(cloud, {**wanted, TOKEN: "token-1"})
        assert created[TOKEN] == "token-1" and created["tags"] is None
        await mapper.delete(cloud, created)
        await mapper.delete(cloud, created)
        return created

    created = in_cloud(appsync_moto, scenario)
    with pytest.raises(ClientError, match="NotFound"):
        appsync.get_graphql_api(apiId=created["api_id"])
