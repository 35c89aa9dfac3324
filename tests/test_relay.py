"""Ordinary SQL through the proxy behaves exactly as Postgres itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hashlib
import io
import subprocess
import threading
import time
import uuid

import asyncpg
import psycopg
import pytest

from iasql.postgres import LocalPostgres
from tests.support.env import SUPERUSER, RunningServer, psql_env


async def test_types_and_nulls_round_trip(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        row = await conn.fetchrow(
            "SELECT $1::int AS i, $2::text AS t, $3::numeric AS n, $4::timestamptz AS ts,"
            " $5::jsonb AS j, $6::text[] AS a, $7::bytea AS b, $8::uuid AS u, NULL::int AS nothing,"
            " $9::bool AS flag",
            -7,
            "é'\"\\$$",
            decimal.Decimal("12345.678901"),
            dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.UTC),
            '{"a": [1, null, "x"]}',
            ["a", None, "c"],
            b"\x00\xff\x01",
            uuid.UUID(int=42),
            False,
        )
    finally:
        await conn.close()
    assert row["i"] == -7 and row["t"] == "é'\"\\$$"
    assert row["n"] == decimal.Decimal("12345.678901")
    assert row["ts"] == dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.UTC)
    assert row["j"] == '{"a": [1, null, "x"]}' and row["a"] == ["a", None, "c"]
    assert row["b"] == b"\x00\xff\x01" and row["u"] == uuid.UUID(int=42)
    assert row["nothing"] is None and row["flag"] is False


def test_errors_keep_every_field(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as error:
            conn.execute("SELECT a FROM no_such_table")
        diag = error.value.diag
        assert diag.sqlstate == "42P01" and diag.statement_position == "15"
        assert diag.severity == "ERROR" and diag.source_function
        conn.execute("CREATE TEMP TABLE uniq (a int PRIMARY KEY)")
        conn.execute("INSERT INTO uniq VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as error:
            conn.execute("INSERT INTO uniq VALUES (1)")
        assert error.value.diag.constraint_name == "uniq_pkey"
        assert "Key (a)=(1) already exists" in (error.value.diag.message_detail or "")


def test_notices_and_transactions(iasql: RunningServer) -> None:
    notices: list[str] = []
    with psycopg.connect(iasql.dsn()) as conn:
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        conn.execute("CREATE TEMP TABLE tx (a int)")
        conn.execute("INSERT INTO tx VALUES (1)")
        conn.rollback()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM tx")
        conn.rollback()
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE tx2 (a int)")
            conn.execute("INSERT INTO tx2 VALUES (2)")
        assert conn.execute("SELECT a FROM tx2").fetchall() == [(2,)]
    assert notices == ["hello 42"]


def test_copy_in_and_out(iasql: RunningServer) -> None:
    rows = [(i, f"name {i}\twith tab", None if i % 3 else "x") for i in range(5000)]
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE copied (id int, name text, maybe text)")
        with conn.cursor().copy("COPY copied FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        out = io.BytesIO()
        with conn.cursor().copy("COPY copied TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                out.write(chunk)
        assert conn.execute("SELECT count(*), sum(id) FROM copied").fetchone() == (
            5000,
            sum(range(5000)),
        )
    assert out.getvalue().count(b"\n") == 5000
    assert out.getvalue().endswith(b"4999,name 4999\twith tab,\n")


def test_copy_failure_from_client_is_relayed(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE half (a int)")
        with pytest.raises(RuntimeError), conn.cursor().copy("COPY half FROM STDIN") as copy:
            copy.write_row((1,))
            raise RuntimeError("client gave up")  # psycopg sends CopyFail, the server aborts
        assert conn.execute("SELECT count(*) FROM half").fetchone() == (0,)


def test_psql_copy_both_ways(iasql: RunningServer, tmp_path: object) -> None:
    script = (
        "CREATE TEMP TABLE p (a int, b text);\n"
        "COPY p FROM STDIN;\n1\tone\n2\ttwo\n\\.\n"
        "COPY (SELECT a, b FROM p ORDER BY a) TO STDOUT;\n"
    )
    out = subprocess.run(
        ["psql", iasql.dsn(), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        input=script,
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1\tone\n2\ttwo\n"


async def test_listen_notify(iasql: RunningServer) -> None:
    listener = await asyncpg.connect(iasql.dsn())
    sender = await asyncpg.connect(iasql.dsn())
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("events", lambda *args: received.put_nowait(args[3]))
        await sender.execute("NOTIFY events, 'first'")
        await sender.execute("SELECT pg_notify('events', 'second')")
        assert await asyncio.wait_for(received.get(), 10) == "first"
        assert await asyncio.wait_for(received.get(), 10) == "second"
    finally:
        await listener.close()
        await sender.close()


async def test_a_million_rows(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
        assert len(rows) == 1_000_000 and rows[-1][0] == 1_000_000
        assert rows[123][1] == hashlib.md5(b"124").hexdigest()
        async with conn.transaction():
            seen = 0
            async for _row in conn.cursor(
                "SELECT g FROM generate_series(1, 200000) g", prefetch=5000
            ):
                seen += 1
            assert seen == 200_000
    finally:
        await conn.close()


def test_psql_streams_a_million_rows(iasql: RunningServer) -> None:
    out = subprocess.run(
        [
            "psql",
            iasql.dsn(),
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT g FROM generate_series(1, 1000000) g",
        ],
        capture_output=True,
        env=psql_env(),
        timeout=60,
    )
    assert out.returncode == 0
    lines = out.stdout.split(b"\n")
    assert lines[0] == b"1" and lines[999_999] == b"1000000"


def test_scram_password_is_checked_by_postgres(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn()) as conn:
        method = conn.execute(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
        ).fetchone()
        assert method == (True,)
    with pytest.raises(psycopg.OperationalError) as error:
        psycopg.connect(iasql.dsn(password="wrong"))
    assert "password authentication failed" in str(error.value)


async def test_wrong_password_sqlstate_is_postgres_own(iasql: RunningServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as error:
        await asyncpg.connect(iasql.dsn(password="nope"))
    assert error.value.sqlstate == "28P01"
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(iasql.dsn(database="no_such_db"))


def test_psql_wrong_password_message(iasql: RunningServer) -> None:
    out = subprocess.run(
        ["psql", iasql.dsn(password="bad"), "-X", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=30,
    )
    assert out.returncode == 2
    assert f'password authentication failed for user "{SUPERUSER}"' in out.stderr


def test_cancel_reaches_the_right_backend(iasql: RunningServer) -> None:
    with (
        psycopg.connect(iasql.dsn(), autocommit=True) as busy,
        psycopg.connect(iasql.dsn(), autocommit=True) as bystander,
    ):
        # cancel_safe, not cancel: libpq's blocking PQcancel keeps the GIL, which would
        # freeze this process's own server thread.
        timer = threading.Timer(0.5, busy.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert busy.execute("SELECT 1").fetchone() == (1,)
        assert bystander.execute("SELECT 2").fetchone() == (2,)


async def test_asyncpg_timeout_cancels_the_query(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("SELECT pg_sleep(20)", timeout=0.5)
        assert await conn.fetchval("SELECT 'still usable'") == "still usable"
    finally:
        await conn.close()


async def _backend_count(postgres: LocalPostgres, application_name: str) -> int:
    conn = await asyncpg.connect(postgres.dsn())
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                application_name,
            )
        )
    finally:
        await conn.close()


async def test_client_disconnect_closes_the_backend(
    iasql: RunningServer, postgres: LocalPostgres
) -> None:
    name = f"leak-{uuid.uuid4().hex[:8]}"
    baseline = len(iasql.proxy.connections)
    clients = [
        await asyncpg.connect(iasql.dsn(), server_settings={"application_name": name})
        for _ in range(5)
    ]
    assert await _backend_count(postgres, name) == 5
    for client in clients[:3]:
        await client.close()  # Terminate
    for client in clients[3:]:
        client.terminate()  # socket closed without Terminate
    for _ in range(100):
        if await _backend_count(postgres, name) == 0:
            break
        await asyncio.sleep(0.05)
    assert await _backend_count(postgres, name) == 0
    assert len(iasql.proxy.connections) == baseline


async def test_backend_disconnect_closes_the_client(
    iasql: RunningServer, postgres: LocalPostgres
) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    admin = await asyncpg.connect(postgres.dsn())
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    # The proxy must close the client socket too; asyncpg notices that while idle.
    for _ in range(100):
        if conn.is_closed():
            break
        await asyncio.sleep(0.05)
    assert conn.is_closed()
    with pytest.raises(asyncpg.InterfaceError):
        await conn.fetchval("SELECT 1")


async def test_prepared_statements_and_many_sessions(iasql: RunningServer) -> None:
    async def worker(n: int) -> int:
        conn = await asyncpg.connect(iasql.dsn())
        try:
            statement = await conn.prepare("SELECT $1::int * 2")
            return sum([await statement.fetchval(i) for i in range(n)])
        finally:
            await conn.close()

    totals = await asyncio.gather(*(worker(50) for _ in range(20)))
    assert totals == [2 * sum(range(50))] * 20
