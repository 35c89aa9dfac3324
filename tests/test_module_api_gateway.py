"""aws_api_gateway: HTTP and WebSocket APIs (API Gateway v2) made with boto3 and found at
install and by iasql_sync(); created, changed in place, replaced (protocol type), rolled back
and deleted through begin / preview / commit. Every cloud effect is read back with boto3."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from iasql.sandbox import MotoServer
from modules.aws_api_gateway import API, api_arn
from modules.spec import TOKEN, TOKEN_TAG, Record
from tests.support.aws import REGION
from tests.support.env import add_credentials, in_cloud, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


@pytest.fixture(scope="module")
def apigw_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def apigw(apigw_moto: MotoServer) -> Any:
    return boto3.client("apigatewayv2", region_name=REGION, endpoint_url=apigw_moto.endpoint)


def install(conn: psycopg.Connection, moto: MotoServer) -> None:
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn, REGION)
    conn.execute("SELECT * FROM iasql_install('aws_api_gateway')")


def nothing_to_do(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def preview(conn: psycopg.Connection) -> dict[str, tuple[str, dict[str, Any]]]:
    """The preview by API name (the row's, or the cloud's for a delete)."""
    names = dict(rows(conn, "SELECT id::text, name FROM api"))
    planned = {}
    for row_id, action, changes in rows(conn, "SELECT id, action, changes FROM iasql_preview()"):
        planned[names.get(row_id) or changes["name"]["old"]] = (action, changes)
    return planned


def cloud_apis(apigw: Any) -> dict[str, dict[str, Any]]:
    return {a["Name"]: a for a in apigw.get_apis()["Items"]}


def test_table_is_iasqls() -> None:
    assert [(c.name, c.type, c.nullable, c.default) for c in API.columns] == [
        ("id", "serial", False, None),
        ("api_id", "varchar", True, None),
        ("name", "varchar", True, None),
        ("description", "varchar", True, None),
        ("disable_execute_api_endpoint", "boolean", True, None),
        ("protocol_type", "varchar", True, None),
        ("version", "varchar", True, None),
        ("region", "varchar", False, "default_aws_region()"),
        ("tags", "json", True, None),
    ]
    assert API.column("protocol_type").check == "protocol_type IN ('HTTP', 'WEBSOCKET')"
    assert api_arn("abc123", "us-east-1") == "arn:aws:apigateway:us-east-1::/apis/abc123"


def test_api_lifecycle(envdb: psycopg.Connection, apigw_moto: MotoServer, apigw: Any) -> None:
    conn = envdb
    # 1. Import: an API made before the install is a row, and nothing is left to do.
    pre = apigw.create_api(
        Name="pre-http", ProtocolType="HTTP", Description="made before", Tags={"team": "web"}
    )
    install(conn, apigw_moto)
    assert rows(
        conn,
        "SELECT api_id, name, description, disable_execute_api_endpoint, protocol_type,"
        " version, region, tags::jsonb FROM api",
    ) == [(pre["ApiId"], "pre-http", "made before", False, "HTTP", None, REGION, {"team": "web"})]
    nothing_to_do(conn)

    # ... and one made afterwards comes in with iasql_sync().
    ws = apigw.create_api(
        Name="synced-ws",
        ProtocolType="WEBSOCKET",
        RouteSelectionExpression="$request.body.action",
        Version="v1",
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn, "SELECT api_id, protocol_type, version FROM api WHERE name = 'synced-ws'"
    ) == [(ws["ApiId"], "WEBSOCKET", "v1")]
    nothing_to_do(conn)

    # 2. One commit: a create, an update in place of every updatable column, a replace.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO api (name, description, version, tags)"
        """ VALUES ('made-http', 'made by iasql', '1.0', '{"env": "dev", "n": 1}')"""
    )
    conn.execute(
        "UPDATE api SET name = 'pre-renamed', description = 'changed', version = '2.0',"
        """ disable_execute_api_endpoint = true, tags = '{"team": "api", "env": "prod"}'"""
        " WHERE name = 'pre-http'"
    )
    conn.execute("UPDATE api SET protocol_type = 'HTTP' WHERE name = 'synced-ws'")
    planned = preview(conn)
    assert planned["made-http"] == (
        "create",
        {
            "name": {"old": None, "new": "made-http"},
            "description": {"old": None, "new": "made by iasql"},
            "version": {"old": None, "new": "1.0"},
            "region": {"old": None, "new": REGION},
            "tags": {"old": None, "new": {"env": "dev", "n": "1"}},  # stored as AWS's text
        },
    )
    assert planned["pre-renamed"] == (
        "update",
        {
            "name": {"old": "pre-http", "new": "pre-renamed"},
            "description": {"old": "made before", "new": "changed"},
            "version": {"old": None, "new": "2.0"},
            "disable_execute_api_endpoint": {"old": False, "new": True},
            "tags": {"old": {"team": "web"}, "new": {"team": "api", "env": "prod"}},
        },
    )
    assert planned["synced-ws"] == (
        "replace",
        {"protocol_type": {"old": "WEBSOCKET", "new": "HTTP", "forces_replace": True}},
    )
    conn.execute("SELECT * FROM iasql_commit()")
    nothing_to_do(conn)

    apis = cloud_apis(apigw)
    assert set(apis) == {"made-http", "pre-renamed", "synced-ws"}
    made = apis["made-http"]
    assert (made["ProtocolType"], made["Description"], made["Version"]) == (
        "HTTP",
        "made by iasql",
        "1.0",
    )
    # The create carries the engine's token as a tag; the row shows the user's tags only.
    assert set(made["Tags"]) == {"env", "n", TOKEN_TAG}
    assert rows(
        conn, "SELECT api_id, tags::jsonb, protocol_type FROM api WHERE name = 'made-http'"
    ) == [(made["ApiId"], {"env": "dev", "n": "1"}, "HTTP")]
    renamed = apis["pre-renamed"]
    assert renamed["ApiId"] == pre["ApiId"]  # in place
    assert (renamed["Description"], renamed["Version"], renamed["DisableExecuteApiEndpoint"]) == (
        "changed",
        "2.0",
        True,
    )
    assert renamed["Tags"] == {"team": "api", "env": "prod"}
    replaced = apis["synced-ws"]
    assert replaced["ApiId"] != ws["ApiId"] and replaced["ProtocolType"] == "HTTP"
    assert replaced["Version"] == "v1"
    with pytest.raises(ClientError, match="NotFound"):
        apigw.get_api(ApiId=ws["ApiId"])
    assert rows(conn, "SELECT api_id FROM api WHERE name = 'synced-ws'") == [(replaced["ApiId"],)]

    # The SQL that replays the transaction names APIs by name and region, never by id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3
    for api_id in (pre["ApiId"], ws["ApiId"], made["ApiId"], replaced["ApiId"]):
        assert not any(api_id in sql for sql in replay), replay
    assert not any("arn:" in sql or "api_id" in sql for sql in replay), replay
    assert any(sql.startswith('INSERT INTO "api"') and "'made-http'" in sql for sql in replay)

    # 3. Rollback: uncommitted changes go, and nothing reaches the cloud.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE api SET description = 'oops' WHERE name = 'made-http'")
    conn.execute("DELETE FROM api WHERE name = 'pre-renamed'")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(2,)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT name, description FROM api ORDER BY name") == [
        ("made-http", "made by iasql"),
        ("pre-renamed", "changed"),
        ("synced-ws", None),
    ]
    assert cloud_apis(apigw).keys() == apis.keys()
    nothing_to_do(conn)

    # 4. Delete; a description set to NULL is cleared in the cloud, the tags with it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM api WHERE name = 'made-http'")
    conn.execute("UPDATE api SET description = NULL, tags = NULL WHERE name = 'pre-renamed'")
    planned = preview(conn)
    assert planned["made-http"][0] == "delete"
    assert planned["made-http"][1]["description"] == {"old": "made by iasql", "new": None}
    conn.execute("SELECT * FROM iasql_commit()")
    nothing_to_do(conn)
    apis = cloud_apis(apigw)
    assert set(apis) == {"pre-renamed", "synced-ws"}
    assert not apis["pre-renamed"].get("Description")
    assert not apis["pre-renamed"].get("Tags")
    with pytest.raises(ClientError, match="NotFound"):
        apigw.get_api(ApiId=made["ApiId"])

    # A change made outside iasql is drift, and iasql_sync() takes it into the row.
    apigw.update_api(ApiId=pre["ApiId"], Description="console edit")
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_drift()")
    assert (action, changes) == (
        "update",
        {"description": {"old": None, "new": "console edit"}},
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT description FROM api WHERE name = 'pre-renamed'") == [
        ("console edit",)
    ]
    nothing_to_do(conn)


def test_mapper_websocket_and_repeated_delete(apigw_moto: MotoServer, apigw: Any) -> None:
    """A WebSocket API gets the route selection expression AWS requires of one; a delete of an
    API already gone (a retried commit) is done."""

    async def scenario(cloud: Any) -> Record:
        mapper = API.mapper
        assert mapper is not None
        wanted = {"name": "mapper-ws", "protocol_type": "WEBSOCKET", "region": REGION}
        created = await mapper.create(cloud, {**wanted, TOKEN: "token-1"})
        assert created[TOKEN] == "token-1" and created["tags"] is None
        await mapper.delete(cloud, created)
        await mapper.delete(cloud, created)
        return created

    created = in_cloud(apigw_moto, scenario)
    assert created["protocol_type"] == "WEBSOCKET"
    with pytest.raises(ClientError, match="NotFound"):
        apigw.get_api(ApiId=created["api_id"])
