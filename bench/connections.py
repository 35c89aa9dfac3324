"""Connection abuse under load: does a real `iasql serve` keep serving its legitimate clients?

Starts `iasql serve` (embedded Postgres, a data directory of its own) as a subprocess with
--max-connections sized for the run, creates --environments environment databases, then, all
at once on 127.0.0.1:

  - --clients asyncpg connections spread evenly over the environments (each within
    --max-connections-per-db), each querying `SELECT 1` every second while held;
  - --stalled raw sockets that send a startup packet (half for real environment roles, half
    for unknown ones), read the SCRAM challenge and never answer it; each one the server
    closes (--auth-timeout) is opened again at once;
  - --half-open raw sockets that send half a startup packet and nothing more, reopened in the
    same way.

While all of that is held for --hold seconds, it times new logins (connect, SELECT 1, close)
to an environment database and to the admin database. It reports the errors the legitimate
clients saw (target: zero), the login times (target: under 1 s), the proxy's RSS and open
file descriptors before, under and after the load, and the backing Postgres's connections
(the stalled logins must hold none). The proxy does not pool: each client connection has its
own backend connection, so the embedded Postgres gets max_connections = --max-connections + 23
(20 for the engine, 3 superuser slots). Nothing here is a test; it prints a Markdown table.

    .venv/bin/python bench/connections.py [--clients 1000] [--environments 4]
        [--stalled 300] [--half-open 300] [--hold 20] [--auth-timeout 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
IASQL = [str(Path(sys.executable).with_name("iasql"))]


def startup(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608)
    for key, value in (("user", user), ("database", database), ("application_name", "bench")):
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proxy:
    pid: int

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sample(self) -> dict[str, float]:
        return {"rss_mib": round(self.rss_mib(), 1), "fds": self.fds()}


@dataclass
class Tally:
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    queries: int = 0
    query_errors: list[str] = field(default_factory=list)
    attacker_opens: int = 0
    attacker_closed_by_server: int = 0


async def legit_client(
    url: str, tally: Tally, gate: asyncio.Semaphore, hold: asyncio.Event
) -> None:
    async with gate:
        try:
            conn = await asyncpg.connect(url, timeout=60)
        except Exception as exc:  # every failure counts, whatever it is
            tally.connect_errors.append(f"{type(exc).__name__}: {exc}")
            return
    tally.connected += 1
    try:
        while not hold.is_set():
            try:
                assert await conn.fetchval("SELECT 1") == 1
                tally.queries += 1
            except Exception as exc:
                tally.query_errors.append(f"{type(exc).__name__}: {exc}")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.wait(), 1.0)
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)


async def attacker(port: int, payload: bytes, tally: Tally, stop: asyncio.Event) -> None:
    """Opens a socket, sends `payload`, waits until the server closes it, and starts over."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        tally.attacker_opens += 1
        try:
            writer.write(payload)
            await writer.drain()
            while not stop.is_set():
                read = asyncio.ensure_future(reader.read(4096))
                stopped = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    break
                stopped.cancel()
                if not read.result():
                    tally.attacker_closed_by_server += 1
                    break
        except OSError:
            tally.attacker_closed_by_server += 1
        finally:
            writer.close()


async def timed_login(url: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=30)
    assert await conn.fetchval("SELECT 1") == 1
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * (args.clients + args.stalled + args.half_open) + 1000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    limit_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    folder = Path(tempfile.mkdtemp(prefix="iasql-bench-conn-", dir="/tmp"))
    folder.chmod(0o755)  # the embedded Postgres runs as the postgres user under root
    port = free_port()
    max_connections = args.clients + 100
    per_db = -(-args.clients // args.environments) + 50
    command = [
        *IASQL,
        "serve",
        "--data-dir",
        str(folder / "data"),
        "--port",
        str(port),
        "--max-connections",
        str(max_connections),
        "--max-connections-per-db",
        str(per_db),
        "--auth-timeout",
        str(args.auth_timeout),
    ]
    log = (folder / "serve.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    results: dict[str, Any] = {"command": " ".join(command[1:])}
    try:
        admin_url = await wait_for_server(folder / "data", server)
        proxy = Proxy(server.pid)
        admin = await asyncpg.connect(admin_url)
        urls = []
        for i in range(args.environments):
            row = await admin.fetchrow("SELECT * FROM iasql_connect($1)", f"bench_{i}")
            urls.append(row["url"])
        await admin.close()
        backend_dsn = backing_dsn(folder / "data")
        results["backend_max_connections"] = await fetch_one(backend_dsn, "SHOW max_connections")
        await asyncio.sleep(1)
        results["before"] = proxy.sample()

        tally = Tally()
        stop = asyncio.Event()
        hold = asyncio.Event()
        attackers = []
        for i in range(args.stalled):
            url = urls[i % len(urls)]
            user = url.split("//")[1].split(":")[0] if i % 2 == 0 else f"nobody_{i}"
            payload = startup(user, url.rsplit("/", 1)[1])
            attackers.append(asyncio.create_task(attacker(port, payload, tally, stop)))
        for i in range(args.half_open):
            payload = startup(f"half_{i}", "bench_0")
            attackers.append(
                asyncio.create_task(attacker(port, payload[: len(payload) // 2], tally, stop))
            )
        await asyncio.sleep(2)  # the attack is in place before the clients come
        results["attack_only"] = proxy.sample()

        gate = asyncio.Semaphore(args.connect_concurrency)
        started = time.perf_counter()
        clients = [
            asyncio.create_task(legit_client(urls[i % len(urls)], tally, gate, hold))
            for i in range(args.clients)
        ]
        while tally.connected + len(tally.connect_errors) < args.clients:
            await asyncio.sleep(0.1)
        results["connect_all_seconds"] = round(time.perf_counter() - started, 2)

        logins: list[float] = []
        admin_logins: list[float] = []
        hold_until = time.monotonic() + args.hold
        while time.monotonic() < hold_until:
            logins.append(await timed_login(urls[0]))
            admin_logins.append(await timed_login(admin_url))
            await asyncio.sleep(1)
        results["under_load"] = proxy.sample()
        results["backend_connections_under_load"] = await fetch_one(
            backend_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        results["backend_connections_of_stalled_roles"] = await fetch_one(
            backend_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bench'",
        )
        hold.set()
        await asyncio.gather(*clients)
        stop.set()
        await asyncio.gather(*attackers)
        await asyncio.sleep(2)
        results["after"] = proxy.sample()
        results["clients"] = args.clients
        results["environments"] = args.environments
        results["per_db_limit"] = per_db
        results["max_connections"] = max_connections
        results["connected"] = tally.connected
        results["connect_errors"] = len(tally.connect_errors)
        results["query_errors"] = len(tally.query_errors)
        results["error_samples"] = (tally.connect_errors + tally.query_errors)[:5]
        results["queries"] = tally.queries
        results["attacker_opens"] = tally.attacker_opens
        results["attacker_closed_by_server"] = tally.attacker_closed_by_server
        results["login_seconds"] = summary(logins)
        results["admin_login_seconds"] = summary(admin_logins)
        results["nofile_limit"] = limit_fds
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3) if values else float("nan"),
        "max": round(max(values), 3) if values else float("nan"),
    }


async def wait_for_server(data_dir: Path, server: subprocess.Popen[bytes]) -> str:
    """The admin URL (with its password) once the server is up."""
    deadline = time.monotonic() + 120
    state = data_dir / "server.json"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"iasql serve exited with {server.returncode}")
        if state.exists():
            with contextlib.suppress(ValueError, KeyError):
                url = str(json.loads(state.read_text())["admin_url"])
                password = (data_dir / "admin_password").read_text().strip()
                if "@" in url and ":" not in url.split("//")[1].split("@")[0]:
                    user, rest = url.split("//")[1].split("@", 1)
                    url = f"postgres://{user}:{password}@{rest}"
                return url
        await asyncio.sleep(0.2)
    raise SystemExit("iasql serve did not start in 120 s")


def backing_dsn(data_dir: Path) -> str:
    """The embedded Postgres, directly (its port is in postmaster.pid)."""
    lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    password = (data_dir / "admin_password").read_text().strip()
    return f"postgres://iasql:{password}@127.0.0.1:{lines[3]}/postgres?sslmode=disable"


async def fetch_one(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def report(results: dict[str, Any]) -> str:
    b, a, u, k = results["before"], results["after"], results["under_load"], results["attack_only"]
    login, admin = results["login_seconds"], results["admin_login_seconds"]
    errors = results["connect_errors"] + results["query_errors"]
    rows = [
        (
            "legitimate clients connected",
            f"{results['connected']} of {results['clients']}",
            "all",
            results["connected"] == results["clients"],
        ),
        (
            "errors seen by legitimate clients",
            f"{errors} ({results['queries']:,} queries)",
            "0",
            errors == 0,
        ),
        (
            "new login under load (environment), median / max",
            f"{login['median']} s / {login['max']} s ({login['n']} logins)",
            "< 1 s",
            login["max"] < 1,
        ),
        (
            "new login under load (admin database), median / max",
            f"{admin['median']} s / {admin['max']} s",
            "< 1 s",
            admin["max"] < 1,
        ),
        (
            "backend connections of stalled logins",
            str(results["backend_connections_of_stalled_roles"]),
            "0",
            results["backend_connections_of_stalled_roles"] == 0,
        ),
        (
            "backend client connections under load",
            str(results["backend_connections_under_load"]),
            "",
            None,
        ),
        (
            "proxy RSS: before / attack only / under load / after",
            f"{b['rss_mib']} / {k['rss_mib']} / {u['rss_mib']} / {a['rss_mib']} MiB",
            "",
            None,
        ),
        (
            "proxy fds: before / attack only / under load / after",
            f"{b['fds']} / {k['fds']} / {u['fds']} / {a['fds']}",
            "",
            None,
        ),
        ("time to connect all clients", f"{results['connect_all_seconds']} s", "", None),
        (
            "attacker sockets opened / closed by the server",
            f"{results['attacker_opens']} / {results['attacker_closed_by_server']}",
            "",
            None,
        ),
    ]
    lines = ["| measurement | result | target | |", "|---|---|---|---|"]
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("pass" if ok else "FAIL")
        lines.append(f"| {name} | {value} | {target} | {verdict} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--environments", type=int, default=4)
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--half-open", type=int, default=300)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the load is held")
    parser.add_argument("--auth-timeout", type=float, default=10.0)
    parser.add_argument(
        "--connect-concurrency", type=int, default=100, help="client logins in flight at once"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and log")
    parser.add_argument("--json", action="store_true", help="also print the raw results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import uvloop

    results = uvloop.run(run(args))
    print(
        f"{datetime.date.today()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {results['clients']} clients over {results['environments']} environments"
        f" (--max-connections {results['max_connections']}, --max-connections-per-db"
        f" {results['per_db_limit']}), backing max_connections"
        f" {results['backend_max_connections']}, RLIMIT_NOFILE {results['nofile_limit']}"
    )
    print(report(results))
    if results["error_samples"]:
        print("error samples:", *results["error_samples"], sep="\n  ")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
