"""Real-Postgres tests for iasql.postgres (no mocks)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from iasql.postgres import LocalPostgres, PostgresError, find_binaries, free_port

PASSWORD = "s3cret p@ss/word:%"  # exercises URL quoting


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # pytest's tmp_path lives under a 0700 root-owned folder the postgres user cannot reach.
    path = Path(tempfile.mkdtemp(prefix="iasql-pg-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(workdir / "data" / "pgdata", superuser="iasql", password=PASSWORD)
    assert not pg.initialized()
    pg.init()
    assert pg.initialized()
    with pg:
        yield pg
    assert not pg.running


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def _children(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(ln.split(":\t", 1) for ln in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


def test_find_binaries() -> None:
    bins = find_binaries()
    assert bins.version >= 14
    assert (bins.bindir / "initdb").is_file()
    assert (bins.bindir / "postgres").is_file()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


async def test_scram_login_over_tcp(cluster: LocalPostgres) -> None:
    conn = await asyncpg.connect(cluster.url)
    try:
        assert await conn.fetchval("SELECT current_user") == "iasql"
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        assert await conn.fetchval("SHOW unix_socket_directories") == ""
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
    finally:
        await conn.close()


async def test_wrong_password_rejected(cluster: LocalPostgres) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(
            host="127.0.0.1", port=cluster.port, user="iasql", password="wrong", database="postgres"
        )
    assert info.value.sqlstate == "28P01"


def test_hba_is_tcp_scram_only(cluster: LocalPostgres) -> None:
    rules = [
        ln.split()
        for ln in (cluster.pgdata / "pg_hba.conf").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert rules
    assert all(r[0] == "host" and r[-1] == "scram-sha-256" for r in rules)
    assert {r[3] for r in rules} == {"127.0.0.1/32", "::1/128"}


def test_runs_unprivileged(cluster: LocalPostgres) -> None:
    pid = cluster.pid
    assert pid is not None
    if os.geteuid() == 0:
        assert _uid_of(pid) != 0
        assert _uid_of(pid) == cluster.account.uid
        assert os.stat(cluster.pgdata).st_uid == cluster.account.uid
    else:
        assert _uid_of(pid) == os.geteuid()
    kids = _children(pid)
    assert kids, "postmaster should have background workers"
    assert all(_uid_of(k) == _uid_of(pid) for k in kids)
    assert os.stat(cluster.pgdata).st_mode & 0o777 == 0o700


async def test_data_persists_across_restart(cluster: LocalPostgres) -> None:
    conn = await asyncpg.connect(cluster.url)
    await conn.execute("CREATE TABLE persisted (v text); INSERT INTO persisted VALUES ('kept')")
    await conn.close()
    old_port = cluster.port
    cluster.stop()
    assert not cluster.running
    cluster.stop()  # idempotent
    cluster.start()
    assert cluster.port == old_port
    conn = await asyncpg.connect(cluster.url)
    try:
        assert await conn.fetchval("SELECT v FROM persisted") == "kept"
    finally:
        await conn.close()


async def test_restart_after_kill_with_stale_pidfile(cluster: LocalPostgres) -> None:
    pid = cluster.pid
    assert pid is not None
    kids = _children(pid)
    os.kill(pid, signal.SIGKILL)
    cluster.stop()  # reaps the dead postmaster
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{k}").exists() for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)  # orphaned workers notice postmaster death and exit
    pidfile = cluster.pgdata / "postmaster.pid"
    assert pidfile.exists()
    # Make the stale pid belong to an unrelated live process of the server account, the one
    # case postgres itself would refuse to start in.
    creds = cluster._creds()
    with subprocess.Popen(["sleep", "30"], **creds) as squatter:
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        try:
            cluster.start(timeout=20)
        finally:
            squatter.kill()
    conn = await asyncpg.connect(cluster.url)
    try:
        assert await conn.fetchval("SELECT v FROM persisted") == "kept"
    finally:
        await conn.close()


def test_second_start_on_running_cluster_refused(cluster: LocalPostgres) -> None:
    other = LocalPostgres(cluster.pgdata, superuser="iasql", password=PASSWORD)
    with pytest.raises(PostgresError, match="already running"):
        other.start()
    with pytest.raises(PostgresError, match="already holds"):
        other.init()


def test_unreachable_pgdata_is_reported(workdir: Path) -> None:
    # Root can traverse anything, so as root a 0700 root-owned folder blocks the postgres
    # user; a non-root user is blocked only by removing its own search permission.
    blocked = workdir / "blocked"
    blocked.mkdir()
    blocked.chmod(0o700 if os.geteuid() == 0 else 0o000)
    try:
        pg = LocalPostgres(blocked / "pgdata", superuser="iasql", password=PASSWORD)
        with pytest.raises(PostgresError) as info:
            pg.init()
    finally:
        blocked.chmod(0o755)
    assert str(blocked) in str(info.value)
    assert not (blocked / "pgdata").exists()


def test_start_failure_reports_log(workdir: Path, cluster: LocalPostgres) -> None:
    # Same port as the running cluster: the new server must die and we must say why.
    pgdata = workdir / "second"
    pg = LocalPostgres(pgdata, superuser="iasql", password=PASSWORD, port=cluster.port)
    pg.init()
    with pytest.raises(PostgresError, match="could not"):
        pg.start(timeout=15)
    assert not pg.running


def test_reserved_settings_rejected(workdir: Path) -> None:
    with pytest.raises(PostgresError, match="listen_addresses"):
        LocalPostgres(
            workdir / "x", superuser="a", password="b", settings={"listen_addresses": "*"}
        )


def test_dsn_quotes_credentials(cluster: LocalPostgres) -> None:
    assert cluster.dsn("my db").endswith(f":{cluster.port}/my%20db")
    assert "s3cret%20p%40ss%2Fword%3A%25@127.0.0.1" in cluster.url
