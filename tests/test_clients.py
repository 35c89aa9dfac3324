"""More clients against the server, with and without TLS: pgjdbc (Debian's
libpostgresql-jdbc-java, run as a single-file Java program) and node-postgres (`pg` from npm,
in tests/clients/node_modules), installed by scripts/ensure-clients.sh; and SQLAlchemy's
reflection of module tables through psycopg.

Each client connects, runs a query through an iasql function with a parameter, one prepared
statement many times (pgjdbc switches to a named server-side statement at the 5th run), gets a
notice and two errors' SQLSTATEs. The TLS listener refuses plaintext, so a client that works
there spoke TLS."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import MetaData, inspect, select, text

from tests.support.env import RunningServer, TlsServer

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "tests" / "clients"
JDBC_JAR = "/usr/share/java/postgresql.jar"

# What every client must see on a working connection.
EXPECTED: dict[str, Any] = {
    "function_rows": ["aws_account"],
    "notices": ["hello from plpgsql"],
    "errors": ["42704", "22012"],  # the engine's unknown module; division by zero
    "after_errors": 42,
}


def expected_prepared(runs: int) -> list[list[list[Any]]]:
    return [[["aws_sqs" if i % 2 else "aws_s3", i]] for i in range(runs)]


@pytest.fixture(scope="session")
def clients_installed() -> None:
    """The test command installs them (make test runs scripts/ensure-clients.sh); this runs
    it too, so that pytest alone works. It is quick when they are there."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-clients.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"scripts/ensure-clients.sh failed:\n{out.stderr}"


@dataclass
class Env:
    """An environment database, made with iasql_connect() as a user would."""

    user: str
    password: str
    database: str
    url: str  # through the plaintext listener


@pytest.fixture(scope="module")
def env(iasql: RunningServer) -> Iterator[Env]:
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect('clients')").fetchone()
        assert row is not None
        parts = urlsplit(row[0])
        assert parts.username and parts.password
        yield Env(unquote(parts.username), unquote(parts.password), parts.path.lstrip("/"), row[0])
        admin.execute("SELECT * FROM iasql_disconnect('clients')")


def run_client(cmd: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=CLIENTS)
    assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout}\n{out.stderr}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def check_session(result: dict[str, Any], runs: int) -> None:
    assert "connect_error" not in result, result
    for key, value in EXPECTED.items():
        assert result[key] == value, (key, result)
    assert result["prepared"] == expected_prepared(runs)


def test_pgjdbc(
    clients_installed: None, iasql: RunningServer, iasql_tls: TlsServer, env: Env
) -> None:
    def jdbc(port: int, query: str) -> str:
        return f"jdbc:postgresql://127.0.0.1:{port}/{env.database}?{query}"

    ca = quote(str(iasql_tls.ca))
    urls = [
        jdbc(iasql.port, "sslmode=disable"),
        jdbc(iasql_tls.port, f"sslmode=verify-full&sslrootcert={ca}"),
        jdbc(iasql_tls.port, "sslmode=require"),
        jdbc(iasql_tls.port, "sslmode=disable"),
    ]
    java = ["java", "-cp", JDBC_JAR, str(CLIENTS / "ClientCheck.java")]
    plain, verified, required, refused = run_client([*java, env.user, env.password, *urls])
    for result in (plain, verified, required):
        check_session(result, 10)
        assert result["server_prepared"] is True  # the last runs used a named statement
    assert refused["connect_error"] == "28000"
    assert "sslmode=require" in refused["message"]


def test_node_postgres(
    clients_installed: None, iasql: RunningServer, iasql_tls: TlsServer, env: Env
) -> None:
    ca = quote(str(iasql_tls.ca))
    urls = [
        f"{env.url}?sslmode=disable",
        iasql_tls.tls_dsn(env.url),  # verify-full with the CA
        # node-postgres treats require as verify-full unless asked for libpq's meaning
        iasql_tls.tls_dsn(env.url, "require").replace(f"&sslrootcert={ca}", "")
        + "&uselibpqcompat=true",
        iasql_tls.tls_dsn(env.url, "disable"),
    ]
    plain, verified, required, refused = run_client(["node", "client_check.js", *urls])
    for result, tls in ((plain, False), (verified, True), (required, True)):
        check_session(result, 8)
        assert result["tls"] is tls
    assert refused["connect_error"] == "28000"


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_sqlalchemy_reflects_module_tables(
    iasql: RunningServer, iasql_tls: TlsServer, env_url: str, tls: bool
) -> None:
    url = iasql_tls.tls_dsn(env_url) if tls else env_url
    engine = sqlalchemy.create_engine(
        url.replace("postgres://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as conn:
            installed = conn.execute(text("SELECT * FROM iasql_install(:m)"), {"m": "aws_account"})
            assert installed.all()
        meta = MetaData()
        meta.reflect(engine, only=["aws_credentials", "aws_regions"])
        credentials, regions = meta.tables["aws_credentials"], meta.tables["aws_regions"]
        assert {"access_key_id", "secret_access_key", "endpoint_url"} <= set(credentials.c.keys())
        assert {"region", "is_default", "is_enabled"} <= set(regions.c.keys())
        assert isinstance(regions.c.is_enabled.type, sqlalchemy.Boolean)
        inspector = inspect(engine)
        assert {"aws_credentials", "aws_regions"} <= set(inspector.get_table_names())
        assert inspector.get_pk_constraint("aws_regions")["constrained_columns"]
        with engine.connect() as conn:  # the reflected tables are usable
            conn.execute(
                credentials.insert().values(
                    access_key_id="AKIDTEST",
                    secret_access_key="x",
                    endpoint_url="http://127.0.0.1:9",  # nothing there: no real AWS, ever
                )
            )
            assert conn.execute(select(credentials.c.access_key_id)).scalars().all() == ["AKIDTEST"]
    finally:
        engine.dispose()
