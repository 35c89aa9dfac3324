"""Memory of a real `iasql serve` for one huge statement naming an iasql function: its peak
stays within twice the statement's size, and it is given back afterwards (section 8: memory
stays bounded). Read from the server's /proc/PID/status, so everything counts: Python
objects, pglast's C buffers, the event loop's."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from iasql.postgres import LocalPostgres, free_port
from tests.support.cli import Server
from tests.support.env import reachable_tempdir

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

SIZE = 64 << 20  # the statement; --max-message-size is 128 MiB by default
ALLOWANCE = 48 << 20  # the rest: result rows, the rewrite, allocator slack, buffers


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak of VmRSS) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak(pid: int) -> None:
    """Sets VmHWM back to the current VmRSS (Linux 4.0 and later)."""
    # Where it cannot be reset, the peak counts from the start: lower than the statement's.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def run(conn: psycopg.Connection, sql: str, protocol: str) -> psycopg.pq.abc.PGresult:
    """`sql` as one Query message (simple), or as Parse/Bind/Execute/Sync (extended)."""
    pgconn, data = conn.pgconn, sql.encode()
    result = pgconn.exec_(data) if protocol == "simple" else pgconn.exec_params(data, [])
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    return result


@pytest.fixture
def server(postgres: LocalPostgres) -> Iterator[tuple[Server, str]]:
    folder = reachable_tempdir("iasql-memory-")
    server = Server(folder / "data", free_port(), "--backend-url", postgres.dsn())
    try:
        banner = server.start()
        yield server, banner.admin_url
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_huge_statement_costs_at_most_twice_its_size_and_is_given_back(
    server: tuple[Server, str], protocol: str
) -> None:
    proc, url = server[0].proc, server[1]
    assert proc is not None
    template = "SELECT version FROM iasql_version() WHERE '{}' <> ''"
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(3):  # warm up: every code path the big statement takes has run once
            run(conn, template.format("w" * 100_000), protocol)
        baseline = memory(proc.pid)["VmRSS"]
        reset_peak(proc.pid)
        sql = template.format("x" * SIZE)
        result = run(conn, sql, protocol)
        del sql
        assert result.ntuples == 1
        peak = memory(proc.pid)["VmHWM"] - baseline
        assert peak <= 2 * SIZE + ALLOWANCE, f"peak {peak >> 20} MiB for {SIZE >> 20} MiB"
        # Given back: no copy stays referenced, and the allocator returns the pages.
        deadline = time.monotonic() + 10
        while (kept := memory(proc.pid)["VmRSS"] - baseline) > ALLOWANCE:
            assert time.monotonic() < deadline, f"{kept >> 20} MiB kept after the statement"
            time.sleep(0.1)
        # and the session goes on
        assert run(conn, template.format("y"), protocol).ntuples == 1
