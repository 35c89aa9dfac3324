"""aws_secrets_manager: secrets against moto. The value is write-only: a commit puts it into
the secret (a new version, whose id the row follows) and the row's value is NULL again
afterwards; it never reaches the audit log, the commit journal, generated SQL, notices or
the server's logs."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from modules.aws_secrets_manager import SECRET
from modules.spec import TOKEN, Record
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def sm_client(moto: MotoServer) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto.endpoint)


@pytest.fixture(scope="module")
def sm_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def sm_env(
    envdb: psycopg.Connection, sm_moto: MotoServer
) -> Iterator[tuple[psycopg.Connection, Any]]:
    sm_moto.reset()
    sm = sm_client(sm_moto)
    yield envdb, sm


def install(conn: psycopg.Connection, moto: MotoServer) -> None:
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_one_region(conn)
    conn.execute("SELECT * FROM iasql_install('aws_secrets_manager')")


def preview(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    found = rows(conn, "SELECT action, table_name, description, changes FROM iasql_preview()")
    return sorted(found, key=lambda r: (r[2], r[0]))


def settled(conn: psycopg.Connection) -> None:
    """Nothing left to do, nothing drifted."""
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def current_version(sm: Any, name: str) -> str:
    versions = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    [version] = [v for v, stages in versions.items() if "AWSCURRENT" in stages]
    return str(version)


def value_of(sm: Any, name: str) -> str:
    """The current value. (moto's GetSecretValue without a stage keeps answering the last
    version put, even once AWSCURRENT moved; AWS answers the AWSCURRENT one.)"""
    answer = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    return str(answer["SecretString"])


def secret_row(conn: psycopg.Connection, name: str) -> tuple[Any, ...]:
    [row] = rows(conn, f"SELECT description, value, version_id FROM secret WHERE name = '{name}'")
    return row


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as error:
        call()
    return str(error.value.response["Error"]["Code"])


def test_secret_lifecycle_keeps_the_value_out_of_every_log(
    sm_env: tuple[psycopg.Connection, Any],
    sm_moto: MotoServer,
    postgres: LocalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn, sm = sm_env
    # The server runs in this process: its log lines, at DEBUG as `iasql serve` configures
    # them (the AWS SDK's loggers, which log request bodies at DEBUG, held at INFO).
    caplog.set_level(logging.DEBUG)
    for talkative in ("botocore", "aiobotocore", "boto3", "urllib3", "aiohttp"):
        caplog.set_level(logging.INFO, logger=talkative)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    postgres_log_start = postgres.log_path.stat().st_size if postgres.log_path.exists() else 0
    mark = secrets.token_hex(6)
    values = [f"v{i}-{mark}-pa55" for i in range(5)]  # every value this test writes

    # 1. Import: secrets made before the install (one without any value yet), and one made
    # after it, via iasql_sync().
    sm.create_secret(Name="db-pass", Description="the db", SecretString="made-outside")
    sm.create_secret(Name="empty", Description="no value yet")
    install(conn, sm_moto)
    assert secret_row(conn, "db-pass") == ("the db", None, current_version(sm, "db-pass"))
    assert secret_row(conn, "empty") == ("no value yet", None, None)
    sm.create_secret(Name="api-key", SecretString="also-outside")
    conn.execute("SELECT * FROM iasql_sync()")
    assert secret_row(conn, "api-key") == (None, None, current_version(sm, "api-key"))
    settled(conn)

    # 2. Create, a description changed in place, and a first value for a secret that had
    # none, in one commit.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO secret (name, description, value) VALUES ('token', 'a token', %s)",
        (values[0],),
    )
    conn.execute("UPDATE secret SET description = 'the api' WHERE name = 'api-key'")
    conn.execute("UPDATE secret SET value = %s WHERE name = 'empty'", (values[4],))
    api_version = current_version(sm, "api-key")
    assert preview(conn) == [
        ("update", "secret", f"api-key/{REGION}", {"description": {"old": None, "new": "the api"}}),
        ("update", "secret", f"empty/{REGION}", {"version_id": {"old": None, "new": "pending"}}),
        (
            "create",
            "secret",
            f"token/{REGION}",
            {
                "name": {"old": None, "new": "token"},
                "description": {"old": None, "new": "a token"},
                "region": {"old": None, "new": REGION},
            },
        ),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert value_of(sm, "token") == values[0]
    assert sm.describe_secret(SecretId="token")["Description"] == "a token"
    assert secret_row(conn, "token") == ("a token", None, current_version(sm, "token"))
    assert sm.describe_secret(SecretId="api-key")["Description"] == "the api"
    assert current_version(sm, "api-key") == api_version  # a description is no new version
    assert secret_row(conn, "api-key") == ("the api", None, api_version)
    assert value_of(sm, "empty") == values[4]
    assert secret_row(conn, "empty") == ("no value yet", None, current_version(sm, "empty"))
    settled(conn)
    sql = [s for (s,) in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert sql == [
        'INSERT INTO "secret" ("name", "description", "region") VALUES'
        " ('token', 'a token', 'us-east-1');",
        'UPDATE "secret" SET "description" = \'the api\''
        " WHERE \"name\" = 'api-key' AND \"region\" = 'us-east-1';",
        'UPDATE "secret" SET "version_id" = \'pending\''
        " WHERE \"name\" = 'empty' AND \"region\" = 'us-east-1';",
    ]

    # 3. A new value (a new version the row follows), a rename (a new secret; the old one is
    # deleted without recovery) and a delete, in one commit.
    old_db_version = current_version(sm, "db-pass")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE secret SET value = %s WHERE name = 'db-pass'", (values[1],))
    assert secret_row(conn, "db-pass") == ("the db", values[1], "pending")
    conn.execute(
        "UPDATE secret SET name = 'token-2', value = %s WHERE name = 'token'", (values[2],)
    )
    conn.execute("DELETE FROM secret WHERE name = 'api-key'")
    assert preview(conn) == [
        (
            "delete",
            "secret",
            f"api-key/{REGION}",
            {
                "name": {"old": "api-key", "new": None},
                "description": {"old": "the api", "new": None},
                "version_id": {"old": api_version, "new": None},
                "region": {"old": REGION, "new": None},
            },
        ),
        (
            "update",
            "secret",
            f"db-pass/{REGION}",
            {"version_id": {"old": old_db_version, "new": "pending"}},
        ),
        (
            "create",
            "secret",
            f"token-2/{REGION}",
            {
                "name": {"old": None, "new": "token-2"},
                "description": {"old": None, "new": "a token"},
                "version_id": {"old": None, "new": "pending"},
                "region": {"old": None, "new": REGION},
            },
        ),
        (
            "delete",
            "secret",
            f"token/{REGION}",
            {
                "name": {"old": "token", "new": None},
                "description": {"old": "a token", "new": None},
                "version_id": {"old": current_version(sm, "token"), "new": None},
                "region": {"old": REGION, "new": None},
            },
        ),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert value_of(sm, "db-pass") == values[1]
    new_db_version = current_version(sm, "db-pass")
    assert new_db_version != old_db_version
    assert secret_row(conn, "db-pass") == ("the db", None, new_db_version)
    assert value_of(sm, "token-2") == values[2]
    assert secret_row(conn, "token-2") == ("a token", None, current_version(sm, "token-2"))
    assert error_code(lambda: sm.describe_secret(SecretId="token")) == "ResourceNotFoundException"
    assert error_code(lambda: sm.describe_secret(SecretId="api-key")) == (
        "ResourceNotFoundException"
    )
    assert sorted(r[0] for r in rows(conn, "SELECT name FROM secret")) == [
        "db-pass",
        "empty",
        "token-2",
    ]
    settled(conn)
    sql = [s for (s,) in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert sql == [
        'UPDATE "secret" SET "version_id" = \'pending\''
        " WHERE \"name\" = 'db-pass' AND \"region\" = 'us-east-1';",
        'UPDATE "secret" SET "name" = \'token-2\', "version_id" = \'pending\''
        " WHERE \"name\" = 'token' AND \"region\" = 'us-east-1';",
        'DELETE FROM "secret" WHERE "name" = \'api-key\' AND "region" = \'us-east-1\';',
    ]
    for statement in sql:  # natural keys only: no version ids, no ARNs
        assert "arn:" not in statement and old_db_version not in statement

    # 4. A rolled-back value changes nothing: the row is as before, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE secret SET value = %s WHERE name = 'db-pass'", (values[3],))
    conn.execute("SELECT * FROM iasql_rollback()")
    assert secret_row(conn, "db-pass") == ("the db", None, new_db_version)
    assert value_of(sm, "db-pass") == values[1]
    assert current_version(sm, "db-pass") == new_db_version
    settled(conn)

    # 5. The row naming an earlier version makes it the current one again.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE secret SET version_id = %s WHERE name = 'db-pass'", (old_db_version,))
    assert preview(conn) == [
        (
            "update",
            "secret",
            f"db-pass/{REGION}",
            {"version_id": {"old": new_db_version, "new": old_db_version}},
        )
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert current_version(sm, "db-pass") == old_db_version
    assert value_of(sm, "db-pass") == "made-outside"
    assert secret_row(conn, "db-pass") == ("the db", None, old_db_version)
    settled(conn)

    # The values reached AWS only.
    for value in values:
        pattern = f"%{value}%"
        for source in (
            "iasql_audit_log",
            "iasql_commit_journal",
            "iasql_get_sql_since()",
            "iasql_get_sql_for_transaction()",
            "iasql_preview()",
            "secret",
        ):
            found = conn.execute(
                f"SELECT count(*) FROM {source} AS t WHERE t::text LIKE %s", (pattern,)
            ).fetchall()
            assert found == [(0,)], (source, value)
        assert not [n for n in notices if value in n]
        assert not [r for r in caplog.records if value in r.getMessage()]
    # The journal recorded the steps (without the value), so the check above means something.
    journaled = "SELECT count(*) > 0 FROM iasql_commit_journal WHERE table_name = 'secret'"
    assert rows(conn, journaled) == [(True,)]
    audited = "SELECT count(*) > 0 FROM iasql_audit_log WHERE table_name = 'secret'"
    assert rows(conn, audited) == [(True,)]
    with postgres.log_path.open("rb") as log:
        log.seek(postgres_log_start)
        text = log.read().decode(errors="replace")
    assert not [v for v in values if v in text]


def test_mapper_retries_are_harmless(sm_moto: MotoServer) -> None:
    """A retried create (the secret was made, the step was not recorded) answers the version
    its first try made instead of failing; a delete of a gone secret is done."""
    sm_moto.reset()
    sm = sm_client(sm_moto)
    mapper = SECRET.mapper
    assert mapper is not None
    record = {
        "name": "retried",
        "description": None,
        "value": "first-try",
        "version_id": None,
        "region": REGION,
        TOKEN: "tx-1:1",
    }

    async def scenario(cloud: Any) -> tuple[Record, Record]:
        made = await mapper.create(cloud, record)
        again = await mapper.create(cloud, record)
        assert value_of(sm, "retried") == "first-try"
        # A secret that is there already (made by another try with another value): the
        # create puts the row's value into it.
        other = await mapper.create(cloud, {**record, "value": "second-try", TOKEN: "tx-2:1"})
        assert other["version_id"] != made["version_id"]
        assert value_of(sm, "retried") == "second-try"
        gone = {**record, **made}  # as the engine hands it: the request, then the answer
        await mapper.delete(cloud, gone)
        await mapper.delete(cloud, gone)
        return made, again

    made, again = in_cloud(sm_moto, scenario)
    assert made["value"] is None and again["value"] is None
    assert made["version_id"] == again["version_id"]  # the same request token: one version
    assert error_code(lambda: sm.describe_secret(SecretId="retried")) == "ResourceNotFoundException"
