"""The real `iasql` command as a subprocess: serve, db create/list/drop, signals, restarts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import boto3
import psycopg
import pytest

from engine.core import server_version
from engine.platform import module_catalogue
from iasql.cli import configure_logging
from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer, SandboxError
from proxy import native
from tests.support.cli import (
    START_DEADLINE,
    STOP_DEADLINE,
    Banner,
    Pid,
    Server,
    children,
    cli_env,
    created_url,
    iasql,
)
from tests.support.env import (
    PASSWORD,
    SUPERUSER,
    commit,
    only_regions,
    psql_env,
    reachable_tempdir,
    rows,
)

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=psql_env(),
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


# --- processes, from /proc --------------------------------------------------------------


def cmdline(pid: Pid) -> str:
    try:
        return Path(f"/proc/{pid.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def is_moto(pid: Pid) -> bool:
    """moto itself, or the local sandbox's journaling wrapper around it."""
    command = cmdline(pid)
    return "moto.server" in command or "iasql.sandbox_server" in command


# --- one `iasql serve` ------------------------------------------------------------------


@dataclass
class Running:
    server: Server
    banner: Banner
    postmaster_pid: int
    postmaster_port: int
    moto: Pid | None


def observe(server: Server, banner: Banner) -> Running:
    """What a running embedded-Postgres server owns: its postmaster and its moto child."""
    pidfile = (server.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    moto = [c for c in server.seen if is_moto(c)]
    assert len(moto) == (1 if banner.moto_endpoint else 0), moto
    return Running(server, banner, int(pidfile[0]), int(pidfile[3]), moto[0] if moto else None)


def assert_stops_cleanly(running: Running, sig: signal.Signals) -> None:
    server, banner = running.server, running.banner
    assert accepting(running.postmaster_port) and accepting(banner.port)
    code, rest = server.stop(sig)
    assert code == 0, server.stderr()
    assert rest == ["iasql: shutting down"]
    assert "Traceback" not in server.stderr()
    # The embedded Postgres shut down (a clean shutdown removes its lock file) ...
    [postmaster] = [c for c in server.seen if c.pid == running.postmaster_pid]
    assert not postmaster.alive()
    assert not (server.data_dir / "pgdata" / "postmaster.pid").exists()
    assert not accepting(running.postmaster_port)
    # ... so did moto, and nothing else is left listening or running.
    if running.moto is not None:
        assert banner.moto_endpoint is not None
        assert not running.moto.alive()
        assert not accepting(urlsplit(banner.moto_endpoint).port or 0)
    assert not accepting(banner.port)
    assert not any(child.alive() for child in server.seen)
    assert not (server.data_dir / "server.json").exists()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = reachable_tempdir("iasql-cli-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(workdir: Path) -> Iterator[Callable[..., Server]]:
    """Makes Server objects that are closed when the test ends, however it ends."""
    made: list[Server] = []

    def make(name: str, *extra: str, port: int | None = None) -> Server:
        made.append(Server(workdir / name, port or free_port(), *extra))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="module")
def shared(workdir: Path) -> Iterator[Running]:
    """One `iasql serve --local-cloud` with its embedded Postgres, for the read-mostly tests."""
    server = Server(workdir / "shared", free_port(), "--local-cloud")
    try:
        banner = server.start()
        yield observe(server, banner)
    finally:
        server.close()


# --- serve ------------------------------------------------------------------------------


def test_banner_names_address_admin_url_and_sandbox(shared: Running) -> None:
    banner, data_dir = shared.banner, shared.server.data_dir
    assert (
        banner.lines[0] == f"iasql {server_version()} listening on 127.0.0.1:{shared.server.port}"
    )
    assert (banner.host, banner.port) == ("127.0.0.1", shared.server.port)
    assert banner.backing == f"embedded Postgres 15, data in {data_dir}"
    assert banner.moto_endpoint is not None
    assert shared.moto is not None and shared.moto.alive()
    admin = urlsplit(banner.admin_url)
    assert (admin.scheme, admin.hostname, admin.port) == ("postgres", "127.0.0.1", banner.port)
    assert (admin.username, admin.path) == ("iasql", "/iasql")
    # The banner (often kept in a log) says where the password is, never the password.
    assert banner.admin_password_at == f"password in {data_dir / 'admin_password'}"
    assert admin.password is not None
    assert unquote(admin.password) not in "\n".join(banner.lines)
    version = psql(banner.admin_url, "SELECT * FROM iasql_version()")
    assert (version.returncode, version.stdout) == (0, f"{banner.version}\n"), version.stderr
    # The plane that relays sessions: native where proxy._relay was built (`make test` runs
    # the relay's tests a second time with IASQL_RELAY=python).
    relay = os.environ.get("IASQL_RELAY", "auto")
    if relay == "auto":
        relay = "native" if native.AVAILABLE else "python"
    assert any(line.startswith(f"  relay: {relay} (") for line in banner.lines), banner.lines


def test_secret_files_are_private(shared: Running) -> None:
    data_dir = shared.server.data_dir
    for name in ("admin_password", "server.json"):
        mode = (data_dir / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, f"{name}: {oct(mode)}"
    state = json.loads((data_dir / "server.json").read_text())
    assert shared.server.proc is not None
    assert state == {"admin_url": shared.banner.admin_url, "pid": shared.server.proc.pid}


def test_local_cloud_answers_boto3(shared: Running) -> None:
    options = {
        "endpoint_url": shared.banner.moto_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    s3 = boto3.client("s3", **options)
    s3.create_bucket(Bucket="iasql-cli-bucket")
    assert "iasql-cli-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    sqs = boto3.client("sqs", **options)
    url = sqs.create_queue(QueueName="iasql-cli-queue")["QueueUrl"]
    assert sqs.list_queues()["QueueUrls"] == [url]


def test_moto_servers_are_separate_accounts(moto_accounts: Callable[[], MotoServer]) -> None:
    first, second = moto_accounts(), moto_accounts()
    s3 = {
        m: boto3.client("s3", endpoint_url=m.endpoint, region_name="us-east-1")
        for m in (first, second)
    }
    s3[first].create_bucket(Bucket="only-in-first")
    s3[second].create_bucket(Bucket="only-in-second")
    names = {m: {b["Name"] for b in s3[m].list_buckets()["Buckets"]} for m in (first, second)}
    assert "only-in-first" in names[first] and "only-in-first" not in names[second]
    assert "only-in-second" in names[second] and "only-in-second" not in names[first]


# --- iasql db ---------------------------------------------------------------------------


def test_db_create_connect_list_drop(shared: Running) -> None:
    banner, data_dir = shared.banner, str(shared.server.data_dir)
    staging = created_url(
        iasql("db", "create", "staging", "--data-dir", data_dir), "staging", banner
    )
    prod = created_url(iasql("db", "create", "prod", "--url", banner.admin_url), "prod", banner)

    version = psql(staging, "SELECT * FROM iasql_version()")
    assert (version.returncode, version.stdout) == (0, f"{server_version()}\n"), version.stderr
    builtin = [name for name in module_catalogue() if name.startswith("iasql")]
    assert builtin
    count = psql(
        staging, "SELECT count(*) FROM iasql_modules_list() WHERE module_name LIKE 'iasql%'"
    )
    assert (count.returncode, count.stdout) == (0, f"{len(builtin)}\n"), count.stderr
    who = psql(prod, "SELECT current_user, current_database()")
    assert who.stdout == "prod|prod\n", who.stderr

    listed = iasql("db", "list", "--data-dir", data_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"prod\tpostgres://prod@127.0.0.1:{banner.port}/prod",
        f"staging\tpostgres://staging@127.0.0.1:{banner.port}/staging",
    ]

    # Each role reaches its own database only: not the other one, not the admin database.
    for url, other in ((staging, "prod"), (prod, "staging"), (staging, "iasql")):
        denied = psql(urlsplit(url)._replace(path=f"/{other}").geturl(), "SELECT 1")
        assert denied.returncode != 0
        assert f'permission denied for database "{other}"' in denied.stderr

    again = iasql("db", "create", "staging", "--data-dir", data_dir)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.splitlines() == [
        "iasql: database 'staging' already exists"
        " (hint: list them with SELECT * FROM iasql_db_list())"
    ]

    dropped = iasql("db", "drop", "staging", "--data-dir", data_dir)
    assert (dropped.returncode, dropped.stdout) == (
        0,
        "database staging and its role were dropped\n",
    )
    listed = iasql("db", "list", "--url", banner.admin_url)
    assert listed.stdout.splitlines() == [f"prod\tpostgres://prod@127.0.0.1:{banner.port}/prod"]
    gone = psql(staging, "SELECT 1")
    assert gone.returncode != 0 and 'authentication failed for user "staging"' in gone.stderr
    assert psql(prod, "SELECT 1").stdout == "1\n"

    assert iasql("db", "drop", "prod", "--url", banner.admin_url).returncode == 0
    assert iasql("db", "list", "--data-dir", data_dir).stdout == ""


def test_db_without_a_running_server_says_so(workdir: Path) -> None:
    out = iasql("db", "list", "--data-dir", str(workdir / "never-served"))
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("iasql: no running iasql server found") and "server.json" in line


# --- wrong configuration ------------------------------------------------------------------


def assert_one_line_failure(out: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("iasql: ")
    for text in expected:
        assert text in line


def test_port_in_use_fails_at_start(workdir: Path) -> None:
    data_dir = workdir / "port-in-use"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = iasql("serve", "--data-dir", str(data_dir), "--port", str(port), "--local-cloud")
    assert_one_line_failure(out, f"127.0.0.1:{port}", "in use")
    assert not data_dir.exists()  # refused before creating or starting anything


def test_unreachable_backend_fails_at_start(workdir: Path) -> None:
    backend_port = free_port()
    out = iasql(
        "serve",
        "--data-dir",
        str(workdir / "unreachable"),
        "--port",
        str(free_port()),
        "--backend-url",
        f"postgres://someone:hush-hush-pw@127.0.0.1:{backend_port}/postgres",
    )
    assert_one_line_failure(out, "backing Postgres", f"127.0.0.1:{backend_port}/postgres")
    assert "hush-hush-pw" not in out.stderr


def wait_for_connection(listener: socket.socket, server: Server) -> socket.socket:
    assert server.proc is not None
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"iasql serve exited with {server.proc.returncode}{server.stderr()}")
        try:
            return listener.accept()[0]
        except TimeoutError:
            continue
    pytest.fail(f"iasql serve never connected to its backend{server.stderr()}")


def test_sigterm_during_startup_stops_the_children_already_started(
    serve: Callable[..., Server],
) -> None:
    # A backend that accepts the connection but never answers holds the server in its
    # startup, after the moto child has been started and found ready.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(0.2)
        backend = f"postgres://x:y@127.0.0.1:{silent.getsockname()[1]}/postgres"
        cloud_port = free_port()
        server = serve("startup-sigterm", "--local-cloud", "--cloud-port", str(cloud_port))
        server.argv += ["--backend-url", backend]
        with server.stderr_path.open("w") as stderr:
            server.proc = subprocess.Popen(
                server.argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=cli_env()
            )
        connection = wait_for_connection(silent, server)
        with connection:
            server.seen |= set(children(server.proc.pid))
            [moto] = [c for c in server.seen if is_moto(c)]
            assert accepting(cloud_port)
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(STOP_DEADLINE)
    assert code != 0 and "Traceback" not in server.stderr()
    assert not moto.alive() and not accepting(cloud_port)


# --- lifecycle ----------------------------------------------------------------------------


def test_restart_keeps_data_and_signals_stop_everything(serve: Callable[..., Server]) -> None:
    port = free_port()
    first = serve("restart", "--local-cloud", port=port)
    running = observe(first, first.start())
    data_dir = first.data_dir
    url = created_url(
        iasql("db", "create", "keep", "--data-dir", str(data_dir)), "keep", running.banner
    )
    made = psql(
        url,
        "CREATE TABLE kept (id int PRIMARY KEY, note text);"
        " INSERT INTO kept VALUES (1, 'survives a restart')",
    )
    assert made.returncode == 0, made.stderr
    password = (data_dir / "admin_password").read_text()
    assert_stops_cleanly(running, signal.SIGTERM)

    second = serve("restart", "--local-cloud", port=port)
    again = observe(second, second.start())
    assert again.banner.admin_url == running.banner.admin_url
    assert (data_dir / "admin_password").read_text() == password
    row = psql(url, "SELECT id, note FROM kept")
    assert (row.returncode, row.stdout) == (0, "1|survives a restart\n"), row.stderr
    listed = iasql("db", "list", "--url", again.banner.admin_url)
    assert listed.stdout == f"keep\tpostgres://keep@127.0.0.1:{port}/keep\n", listed.stderr
    assert_stops_cleanly(again, signal.SIGINT)


# --- the local sandbox: one account per environment, kept across restarts -----------------

CloudIds = dict[str, list[tuple[Any, ...]]]


def cloud_ids(conn: psycopg.Connection) -> CloudIds:
    return {
        "queue": rows(conn, "SELECT name, url, arn FROM queue ORDER BY name"),
        "vpc": rows(conn, "SELECT vpc_id, cidr_block, is_default FROM vpc ORDER BY vpc_id"),
        "subnet": rows(conn, "SELECT subnet_id, cidr_block FROM subnet ORDER BY subnet_id"),
    }


def sandbox_stack(url: str, queue: str) -> CloudIds:
    """As the README has it: credentials whose endpoint_url defaults to the sandbox, then a
    queue, a VPC and a subnet committed through iasql."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        conn.execute(
            "INSERT INTO aws_credentials (access_key_id, secret_access_key)"
            " VALUES ('AKIAIOSFODNN7EXAMPLE', 'unused-by-the-sandbox')"
        )
        only_regions(conn)
        conn.execute("SELECT * FROM iasql_install('aws_sqs', 'aws_vpc')")
        conn.execute("SELECT * FROM iasql_begin()")
        conn.execute("INSERT INTO queue (name) VALUES (%s)", (queue,))
        conn.execute("INSERT INTO vpc (cidr_block) VALUES ('10.7.0.0/16')")
        conn.execute(
            "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
            " SELECT id, '10.7.1.0/24', 'us-east-1a' FROM vpc WHERE cidr_block = '10.7.0.0/16'"
        )
        commit(conn)
        return cloud_ids(conn)


def assert_cloud_unchanged(url: str, before: CloudIds) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert rows(conn, "SELECT * FROM iasql_drift()") == []
        assert rows(conn, "SELECT * FROM iasql_preview()") == []
        assert cloud_ids(conn) == before


def test_each_environment_is_its_own_sandbox_account(shared: Running) -> None:
    banner, data_dir = shared.banner, str(shared.server.data_dir)
    urls = [
        created_url(iasql("db", "create", name, "--data-dir", data_dir), name, banner)
        for name in ("sandbox_dev", "sandbox_ci")
    ]
    try:
        # The same queue name and VPC CIDR in both: no clash, and each sees only its own.
        made = [sandbox_stack(url, "same-name") for url in urls]
        accounts = []
        for url, ids in zip(urls, made, strict=True):
            with psycopg.connect(url, autocommit=True) as conn:
                [(account,)] = rows(
                    conn, "SELECT value FROM iasql_settings WHERE key = 'sandbox_account_id'"
                )
            [(_name, _url, arn)] = ids["queue"]
            assert arn == f"arn:aws:sqs:us-east-1:{account}:same-name"
            assert sorted(cidr for _id, cidr, _default in ids["vpc"]) == [
                "10.7.0.0/16",
                "172.31.0.0/16",
            ]
            accounts.append(account)
        assert accounts[0] != accounts[1]
        for kind in ("vpc", "subnet"):  # the default VPCs and subnets too
            assert not {r[0] for r in made[0][kind]} & {r[0] for r in made[1][kind]}

        # Any client reaches a database's account with its account id as the access key.
        options = {"endpoint_url": banner.moto_endpoint, "region_name": "us-east-1"}
        for account, ids in zip(accounts, made, strict=True):
            ec2 = boto3.client(
                "ec2", aws_access_key_id=account, aws_secret_access_key="x", **options
            )
            vpcs = sorted(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"])
            assert vpcs == [vpc_id for vpc_id, _cidr, _default in ids["vpc"]]
        other = boto3.client(
            "sqs", aws_access_key_id="testing", aws_secret_access_key="x", **options
        )
        assert not [u for u in other.list_queues().get("QueueUrls", []) if "same-name" in u]
    finally:
        for name in ("sandbox_dev", "sandbox_ci"):
            iasql("db", "drop", name, "--data-dir", data_dir)


def test_a_second_server_on_the_same_data_dir_is_refused(shared: Running) -> None:
    data_dir = shared.server.data_dir
    assert shared.server.proc is not None
    out = iasql("serve", "--data-dir", str(data_dir), "--port", str(free_port()), "--local-cloud")
    assert_one_line_failure(
        out, f"another iasql serve (pid {shared.server.proc.pid}) is running on {data_dir}"
    )
    assert shared.moto is not None and shared.moto.alive()  # the first one's are untouched
    assert accepting(shared.postmaster_port)


def wait_gone(pids: list[Pid], deadline: float = STOP_DEADLINE) -> list[Pid]:
    """The ones still alive after `deadline` seconds."""
    end = time.monotonic() + deadline
    while any(p.alive() for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    return [p for p in pids if p.alive()]


def test_sandbox_keeps_its_port_and_state_across_restarts_and_kill_9(
    serve: Callable[..., Server],
) -> None:
    port = free_port()
    first = serve("sandbox-restart", "--local-cloud", port=port)
    running = observe(first, first.start())
    data_dir, endpoint = first.data_dir, running.banner.moto_endpoint
    url = created_url(
        iasql("db", "create", "keep", "--data-dir", str(data_dir)), "keep", running.banner
    )
    before = sandbox_stack(url, "kept")

    # A clean stop and start: the same endpoint, and the cloud the rows describe.
    assert_stops_cleanly(running, signal.SIGTERM)
    second = serve("sandbox-restart", "--local-cloud", port=port)
    again = observe(second, second.start())
    assert again.banner.moto_endpoint == endpoint
    assert_cloud_unchanged(url, before)

    # kill -9: the embedded Postgres and the sandbox go too, by themselves ...
    assert second.proc is not None and again.moto is not None
    [postmaster] = [c for c in second.seen if c.pid == again.postmaster_pid]
    second.proc.kill()
    second.proc.wait()
    assert wait_gone([postmaster, again.moto]) == []
    # ... and had they not (an older server, or a sandbox that would not die), the next start
    # stops them: here a Postgres on the same cluster and a sandbox on the same journal.
    admin_password = (data_dir / "admin_password").read_text().strip()
    stale_pg = LocalPostgres(data_dir / "pgdata", superuser="iasql", password=admin_password)
    stale_pg.start()
    stale_cloud = MotoServer(
        urlsplit(endpoint or "").port,
        data_dir / "stale-moto.log",
        data_dir / "sandbox-journal.jsonl",
        data_dir / "sandbox.json",
    )
    stale_cloud.start()
    assert stale_pg.pid is not None and stale_cloud.process is not None
    stale = [c for c in children(os.getpid()) if c.pid in (stale_pg.pid, stale_cloud.process.pid)]
    assert len(stale) == 2

    third = serve("sandbox-restart", "--local-cloud", port=port)
    last = observe(third, third.start())
    assert not any(p.alive() for p in stale)
    stale_cloud.process.wait(STOP_DEADLINE)  # reap them: they were our children
    stale_pg.stop()
    assert last.banner.moto_endpoint == endpoint
    assert_cloud_unchanged(url, before)
    assert_stops_cleanly(last, signal.SIGTERM)


def test_backend_url_uses_an_external_postgres(
    postgres: LocalPostgres, serve: Callable[..., Server]
) -> None:
    server = serve("external", "--backend-url", postgres.dsn())
    banner = server.start()
    assert banner.backing == "external" and banner.moto_endpoint is None
    assert server.seen == set()  # neither an embedded Postgres nor moto
    assert not (server.data_dir / "pgdata").exists()
    assert not (server.data_dir / "admin_password").exists()
    # The admin URL is the external role's own login; the banner does not print its password.
    admin = urlsplit(banner.admin_url)
    assert (admin.username, unquote(admin.password or "")) == (SUPERUSER, PASSWORD)
    assert banner.admin_password_at == "the password of --backend-url"
    assert quote(PASSWORD, safe="") not in "\n".join(banner.lines)
    version = psql(banner.admin_url, "SELECT * FROM iasql_version()")
    assert (version.returncode, version.stdout) == (0, f"{server_version()}\n"), version.stderr

    url = created_url(
        iasql("db", "create", "cli_external", "--data-dir", str(server.data_dir)),
        "cli_external",
        banner,
    )
    try:
        version = psql(url, "SELECT * FROM iasql_version()")
        assert (version.returncode, version.stdout) == (0, f"{server_version()}\n"), version.stderr
        who = psql(url, "SELECT current_user, current_database(), inet_server_port()")
        assert who.stdout == f"cli_external|cli_external|{postgres.port}\n", who.stderr
    finally:
        dropped = iasql("db", "drop", "cli_external", "--url", banner.admin_url)
    assert dropped.returncode == 0, dropped.stderr
    code, rest = server.stop(signal.SIGTERM)
    assert (code, rest) == (0, ["iasql: shutting down"]), server.stderr()
    assert accepting(postgres.port)  # an external Postgres is not ours to stop


def test_cloud_port_in_use_and_bad_data_dir_fail_in_one_line(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cloud_port = taken.getsockname()[1]
        out = iasql(
            "serve",
            *("--data-dir", str(workdir / "cloud-port"), "--port", str(free_port())),
            *("--local-cloud", "--cloud-port", str(cloud_port)),
        )
    assert_one_line_failure(out, "local cloud", f"127.0.0.1:{cloud_port}", "in use")
    out = iasql("serve", "--data-dir", "/proc/no-such/iasql", "--port", str(free_port()))
    assert_one_line_failure(out, "/proc/no-such")


def test_remembered_cloud_port_in_use_fails_in_one_line(workdir: Path) -> None:
    data_dir = workdir / "remembered-port"
    data_dir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cloud_port = taken.getsockname()[1]
        (data_dir / "sandbox.json").write_text(json.dumps({"port": cloud_port, "pid": None}))
        out = iasql(
            "serve", "--data-dir", str(data_dir), "--port", str(free_port()), "--local-cloud"
        )
    assert_one_line_failure(out, f"127.0.0.1:{cloud_port}", "in use", "--cloud-port")
    assert not (data_dir / "pgdata").exists()  # refused before starting anything


@pytest.mark.parametrize("hidden", ["moto", "flask"])
def test_local_cloud_without_the_sandbox_extra_says_what_to_install(
    workdir: Path, hidden: str
) -> None:
    """moto[server] is the `sandbox` extra: a server installed without it (or with moto but
    not its server's Flask) refuses --local-cloud at once, in one line, naming the fix."""
    data_dir = workdir / f"without-{hidden}"
    code = (
        f"import sys; sys.modules[{hidden!r}] = None  # as if it were not installed\n"
        "from iasql.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["serve", "--local-cloud", "--data-dir", str(data_dir), "--port", str(free_port())]
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert_one_line_failure(
        out, "--local-cloud", f"not found: {hidden})", "pip install 'iasql[sandbox]'"
    )
    assert not data_dir.exists()  # refused before creating or starting anything


def test_moto_server_without_moto_fails_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)
    server = MotoServer()
    with pytest.raises(SandboxError, match=r"not found: moto\): pip install 'iasql\[sandbox\]'"):
        server.start()
    assert server.process is None


def test_advertised_address_and_external_cloud_endpoint(
    postgres: LocalPostgres, serve: Callable[..., Server]
) -> None:
    """Behind Docker or a load balancer, URLs must name the address clients use."""
    server = serve(
        "advertise",
        *("--backend-url", postgres.dsn(), "--host", "0.0.0.0"),
        *("--advertise", "iasql.example.test:6000", "--cloud-endpoint", "http://moto.test:5000"),
    )
    banner = server.start()
    assert "  default AWS endpoint: http://moto.test:5000" in banner.lines
    admin = urlsplit(banner.admin_url)
    assert (admin.hostname, admin.port, admin.path) == ("iasql.example.test", 6000, "/iasql")
    # The URL's own port is the advertised one; connect through the real port instead.
    direct = banner.admin_url.replace("iasql.example.test:6000", f"127.0.0.1:{server.port}")
    created = iasql("db", "create", "cli_advertise", "--url", direct)
    try:
        assert created.returncode == 0, created.stderr
        assert "@iasql.example.test:6000/cli_advertise" in created.stdout
    finally:
        iasql("db", "drop", "cli_advertise", "--url", direct)
    code, _rest = server.stop(signal.SIGTERM)
    assert code == 0, server.stderr()


def test_debug_logging_keeps_aws_request_bodies_out() -> None:
    """botocore logs request and response bodies (secrets) at DEBUG: even with
    --log-level debug they stay at INFO."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        root.handlers.clear()
        configure_logging("debug", "text")
        assert root.level == logging.DEBUG
        for name in ("botocore", "botocore.endpoint", "aiobotocore", "urllib3"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
