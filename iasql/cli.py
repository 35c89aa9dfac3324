"""The `iasql` command: `iasql serve` runs the server, `iasql db ...` manages environments."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from engine import Engine, EngineConfig
from engine.admin import ADMIN_DATABASE, PublicAddress
from engine.core import server_version
from engine.transaction import TransactionSettings
from iasql.certs import ensure_certificate, names_for
from iasql.postgres import LocalPostgres, PostgresError
from iasql.promote import PromotionError, add_promote
from iasql.sandbox import MotoServer, SandboxError, read_json, require_sandbox, stop_stale
from modules import add_module_path
from proxy import native
from proxy.limits import ConnectionLimits
from proxy.server import BackendAddress, ProxyServer
from proxy.tls import TlsConfigError, backend_tls, server_context

ADMIN_USER = "iasql"
STATE_FILE = "server.json"
LOCK_FILE = "serve.lock"  # held (flock) by the `iasql serve` that owns the data directory
SANDBOX_FILE = "sandbox.json"  # the local cloud's port, kept across restarts, and its pid
JOURNAL_FILE = "sandbox-journal.jsonl"  # the local cloud's state (iasql/sandbox_server.py)
# Connections of the backing Postgres kept for the engine: its pools (up to 8 per environment
# in use), its admin and watch connections, and the proxy's password lookups.
ENGINE_CONNECTIONS = 20
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_CONNECTIONS_PER_DB = 50


class StartupError(Exception):
    """A configuration problem reported as one line, without a traceback."""


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        # The embedded Postgres runs as an unprivileged user, which cannot enter /root.
        return Path("/var/lib/iasql")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iasql"


def env_default(name: str, fallback: Any = None) -> Any:
    return os.environ.get(f"IASQL_{name}", fallback)


# --- serve ------------------------------------------------------------------------------------

RELAY_BANNER = {
    "native": "native (established plaintext sessions relayed by a C thread)",
    "python": "python (every session relayed by the asyncio loop)",
}


def add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the iasql server")
    serve.add_argument("--host", default=env_default("HOST", "127.0.0.1"), help="listen address")
    serve.add_argument("--port", type=int, default=int(env_default("PORT", 5433)))
    serve.add_argument(
        "--backend-url",
        default=env_default("BACKEND_URL"),
        help="backing Postgres (a role that may create databases and roles); default: embedded",
    )
    serve.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR"))
    serve.add_argument(
        "--local-cloud",
        action="store_true",
        default=env_default("LOCAL_CLOUD") in ("1", "true"),
        help="also run a local AWS sandbox (moto) and make it the default endpoint",
    )
    serve.add_argument("--cloud-port", type=int, default=int(env_default("CLOUD_PORT", 0)))
    serve.add_argument(
        "--cloud-endpoint",
        default=env_default("CLOUD_ENDPOINT"),
        help="an AWS endpoint you run (e.g. a moto server) to use as the default, like --local-cloud",
    )
    serve.add_argument(
        "--advertise",
        default=env_default("ADVERTISE"),
        help="HOST[:PORT] written into the URLs iasql hands out (default: the listen address)",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=env_default("TLS_CERT"),
        help="the server's TLS certificate (PEM, chain included); default: one signed by a CA"
        " that iasql makes in DATA_DIR/tls at the first start",
    )
    serve.add_argument(
        "--tls-key", type=Path, default=env_default("TLS_KEY"), help="the key of --tls-cert"
    )
    serve.add_argument(
        "--require-tls",
        action="store_true",
        default=env_default("REQUIRE_TLS") in ("1", "true"),
        help="refuse connections that do not use TLS (sslmode=disable or allow)",
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=int(env_default("MAX_MESSAGE_SIZE", 128 * 1024 * 1024)),
        help="largest client message accepted, in bytes",
    )
    serve.add_argument(
        "--relay",
        choices=("auto", "native", "python"),
        default=env_default("RELAY", "auto"),
        help="who relays established sessions: the native C thread, the asyncio loop, or"
        " auto (native where it was built)",
    )
    serve.add_argument(
        "--auth-timeout",
        type=float,
        default=float(env_default("AUTH_TIMEOUT", 10)),
        help="seconds a client has to finish its startup and login (0: no limit)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=_optional_int(env_default("MAX_CONNECTIONS")),
        help=f"client connections at once, server-wide (default {DEFAULT_MAX_CONNECTIONS},"
        " or what the backing Postgres has room for beside the engine)",
    )
    serve.add_argument(
        "--max-connections-per-db",
        type=int,
        default=_optional_int(env_default("MAX_CONNECTIONS_PER_DB")),
        help=f"client connections at once to one environment database (default"
        f" {DEFAULT_MAX_CONNECTIONS_PER_DB})",
    )
    serve.add_argument(
        "--admin-reserved-connections",
        type=int,
        default=int(env_default("ADMIN_RESERVED_CONNECTIONS", 5)),
        help="of --max-connections, how many only the admin database may use",
    )
    serve.add_argument(
        "--begin-timeout",
        type=float,
        default=float(env_default("BEGIN_TIMEOUT", 30)),
        help="seconds iasql_begin() waits for another open transaction",
    )
    serve.add_argument(
        "--commit-concurrency",
        type=int,
        default=int(env_default("COMMIT_CONCURRENCY", 16)),
        help="cloud operations a commit runs at once",
    )
    serve.add_argument(
        "--module-path",
        default=env_default("MODULE_PATH"),
        help=f"more folders of module packages, separated by {os.pathsep!r} (modules of your own)",
    )
    serve.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"))
    serve.add_argument(
        "--log-format", choices=("text", "json"), default=env_default("LOG_FORMAT", "text")
    )
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    if args.module_path:
        add_module_path(args.module_path.split(os.pathsep))
    # Until the event loop takes over, SIGTERM unwinds like Ctrl-C so that the ExitStack
    # stops the children already started (the embedded Postgres runs in its own session).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    data_dir: Path = args.data_dir or default_data_dir()
    if args.local_cloud:
        require_sandbox()  # an extra (moto[server]): checked before anything is created
    if args.relay == "native" and not native.AVAILABLE:
        raise StartupError(
            "--relay native: proxy._relay was not built (it needs Linux and a C compiler when"
            " iasql is installed); use --relay auto or --relay python"
        )
    check_port_free(args.host, args.port)
    with contextlib.ExitStack() as stack:
        if not args.backend_url or args.local_cloud:
            # Whatever Postgres or sandbox is still running here, its server has died.
            stack.callback(os.close, lock_data_dir(data_dir))
        # Its port is checked before anything starts.
        cloud = local_cloud(data_dir, args.cloud_port) if args.local_cloud else None
        if args.backend_url:
            backend_dsn, backing = args.backend_url, "external"
        else:
            postgres = embedded_postgres(data_dir, args.max_connections)
            stack.callback(postgres.stop)
            postgres.stop_stale()
            postgres.start()
            # Loopback only, no TLS: the relay's connections need not ask for it.
            backend_dsn = postgres.dsn() + "?sslmode=disable"
            backing = f"embedded Postgres {postgres.binaries.version}, data in {data_dir}"
        if cloud is not None:
            stack.callback(cloud.stop)
            cloud.start()
        return run_loop(serve_forever(args, data_dir, backend_dsn, backing, cloud))


def public_address(args: argparse.Namespace) -> PublicAddress:
    """Where clients reach this server: --advertise, else the listen address (a wildcard
    listen address is no place to connect to, so URLs then say localhost)."""
    if args.advertise:
        host, colon, port = args.advertise.partition(":")
        try:
            return PublicAddress(host, int(port) if colon else args.port)
        except ValueError as exc:
            raise StartupError(
                f"--advertise {args.advertise!r}: expected HOST or HOST:PORT"
            ) from exc
    host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    return PublicAddress(host, args.port)


async def serve_forever(
    args: argparse.Namespace,
    data_dir: Path,
    backend_dsn: str,
    backing: str,
    cloud: MotoServer | None,
) -> int:
    address = public_address(args)
    tls, tls_banner = server_tls(args, data_dir, address)
    backend = backend_address(backend_dsn)
    endpoint = cloud.endpoint if cloud else args.cloud_endpoint
    settings = TransactionSettings(args.begin_timeout, args.commit_concurrency)
    engine = Engine(EngineConfig(backend_dsn, address, endpoint, settings))
    try:
        await engine.start()
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StartupError(
            f"cannot use the backing Postgres at {describe_dsn(backend_dsn)}: {exc}"
        ) from exc
    try:
        limits = await connection_limits(args, backend_dsn)
    except BaseException:
        await engine.close()
        raise
    server = ProxyServer(
        engine,
        backend,
        max_message=args.max_message_size,
        ssl=tls,
        require_tls=args.require_tls,
        auth_timeout=args.auth_timeout,
        limits=limits,
        relay=args.relay,
    )
    try:
        await server.listen(args.host, args.port)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from exc
    admin_url = address.url(*admin_login(backend_dsn), ADMIN_DATABASE)
    state = write_state(data_dir, admin_url)
    print(f"iasql {server_version()} listening on {args.host}:{args.port}")
    print(f"  backing store: {backing}")
    if cloud is not None:
        print(f"  local AWS sandbox (moto): {cloud.endpoint}")
    elif args.cloud_endpoint:
        print(f"  default AWS endpoint: {args.cloud_endpoint}")
    print(f"  admin database: {admin_banner(backend_dsn, address, data_dir, args.backend_url)}")
    print(f"  TLS: {tls_banner}")
    print(f"  relay: {RELAY_BANNER[server.relay]}")
    print("  create an environment database with: iasql db create NAME", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("iasql: shutting down", flush=True)
    await server.close()
    await engine.close()
    state.unlink(missing_ok=True)
    return 0


def make_data_dir(data_dir: Path) -> None:
    if not data_dir.exists():
        data_dir.mkdir(parents=True)
        data_dir.chmod(0o711)  # our own folder: the Postgres user must be able to enter it


def lock_data_dir(data_dir: Path) -> int:
    """Makes this process the data directory's one server, until it exits (however it
    exits: the kernel drops the lock). Returns the locked file descriptor."""
    make_data_dir(data_dir)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_json(data_dir / STATE_FILE).get("pid")
        which = f" (pid {pid})" if pid else ""
        raise StartupError(f"another iasql serve{which} is running on {data_dir}") from None
    return fd


def local_cloud(data_dir: Path, cloud_port: int) -> MotoServer:
    """The local AWS sandbox, on the port it had before (the environments' endpoint_url
    names it), with its state replayed from its journal. --cloud-port changes the port."""
    state, journal = data_dir / SANDBOX_FILE, data_dir / JOURNAL_FILE
    stop_stale(state, journal)  # left behind by a server that died, if it still runs
    remembered = read_json(state).get("port")
    if cloud_port:
        check_port_free("127.0.0.1", cloud_port, what="the local cloud")
    elif isinstance(remembered, int):
        cloud_port = remembered
        try:
            check_port_free("127.0.0.1", cloud_port, what="the local cloud")
        except StartupError as exc:
            raise StartupError(
                f"{exc} (the port it has had since it was first started, and that the"
                " environments' endpoint_url names); stop what holds it, or choose another"
                " port with --cloud-port"
            ) from None
    return MotoServer(cloud_port or None, data_dir / "moto.log", journal, state)


def embedded_postgres(data_dir: Path, max_connections: int | None = None) -> LocalPostgres:
    """The server's own Postgres in `data_dir/pgdata`, created on first start."""
    make_data_dir(data_dir)
    password_file = data_dir / "admin_password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
    postgres = LocalPostgres(
        data_dir / "pgdata",
        superuser=ADMIN_USER,
        password=password,
        settings={
            "password_encryption": "scram-sha-256",
            # Room for the proxy's clients, the engine, and Postgres's 3 superuser slots.
            "max_connections": str(
                (max_connections or DEFAULT_MAX_CONNECTIONS) + ENGINE_CONNECTIONS + 3
            ),
        },
        die_with_parent=True,  # a `kill -9` of the server does not leave it running
    )
    if not postgres.initialized():
        postgres.init()
    return postgres


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None


async def connection_limits(args: argparse.Namespace, backend_dsn: str) -> ConnectionLimits:
    """The proxy's limits, checked against the backing Postgres: its max_connections must
    hold --max-connections, plus ENGINE_CONNECTIONS for the engine, plus the slots it keeps
    for superusers (which environment roles cannot use)."""
    conn = await asyncpg.connect(backend_dsn)
    try:
        total = int(await conn.fetchval("SELECT current_setting('max_connections')"))
        reserved = int(
            await conn.fetchval(
                "SELECT current_setting('superuser_reserved_connections')::int"
                " + coalesce(current_setting('reserved_connections', true), '0')::int"
            )
        )
    finally:
        await conn.close()
    room = total - reserved - ENGINE_CONNECTIONS
    why = (
        f"the backing Postgres has max_connections {total}, {reserved} of them reserved,"
        f" and the engine keeps {ENGINE_CONNECTIONS}"
    )
    limit = args.max_connections
    if limit is None:
        limit = min(DEFAULT_MAX_CONNECTIONS, room)
        if limit < 1:
            raise StartupError(f"no room for client connections: {why}")
    elif limit < 1 or limit > room:
        raise StartupError(f"--max-connections {limit} does not fit: {why} (room for {room})")
    per_db = args.max_connections_per_db or min(DEFAULT_MAX_CONNECTIONS_PER_DB, limit)
    if not 0 <= args.admin_reserved_connections < limit:
        raise StartupError(
            f"--admin-reserved-connections {args.admin_reserved_connections} must be less"
            f" than --max-connections {limit}"
        )
    return ConnectionLimits(limit, per_db, args.admin_reserved_connections, ADMIN_DATABASE)


def admin_login(dsn: str) -> tuple[str, str | None]:
    parts = urlsplit(dsn)  # username/password come back still percent-encoded
    user = unquote(parts.username) if parts.username else os.environ.get("PGUSER", "postgres")
    return user, unquote(parts.password) if parts.password else None


def backend_address(dsn: str) -> BackendAddress:
    """Where the relay connects, and with what TLS: the URL's sslmode (default prefer, as
    libpq and the engine's asyncpg pools), sslrootcert, sslcert and sslkey."""
    parts = urlsplit(dsn)
    try:
        tls = backend_tls(dsn)
    except TlsConfigError as exc:
        raise StartupError(str(exc)) from exc
    return BackendAddress(parts.hostname or "localhost", parts.port or 5432, tls)


def server_tls(
    args: argparse.Namespace, data_dir: Path, address: PublicAddress
) -> tuple[ssl.SSLContext, str]:
    """The context clients get TLS with, and the banner's line about it: --tls-cert and
    --tls-key, else the certificate iasql keeps in DATA_DIR/tls (made at the first start)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise StartupError("--tls-cert and --tls-key go together: give both, or neither")
    if args.tls_cert:
        cert, key = Path(args.tls_cert), Path(args.tls_key)
        line = f"certificate {cert}"
    else:
        make_data_dir(data_dir)
        made = ensure_certificate(data_dir, names_for(args.host, address.host))
        cert, key = made.cert, made.key
        line = f"verify the server with sslmode=verify-full sslrootcert={made.ca}"
    if args.require_tls:
        line += " (required)"
    try:
        return server_context(cert, key), line
    except TlsConfigError as exc:
        raise StartupError(str(exc)) from exc


def describe_dsn(dsn: str) -> str:
    """host:port/database, without the password."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def check_port_free(host: str, port: int, what: str = "iasql") -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or exc
            raise StartupError(f"{what} cannot listen on {host}:{port}: {reason}") from exc


def admin_banner(
    backend_dsn: str, address: PublicAddress, data_dir: Path, backend_url: str | None
) -> str:
    """The admin database's URL without its password, and where the password is kept: the
    banner is often written to a log."""
    user, password = admin_login(backend_dsn)
    url = address.url(user, None, ADMIN_DATABASE)
    if backend_url:
        where = "the password of --backend-url" if password else "no password"
    else:
        where = f"password in {(data_dir / 'admin_password').absolute()}"
    return f"{url} ({where})"


def write_state(data_dir: Path, admin_url: str) -> Path:
    """Tells `iasql db` on this machine how to reach the running server (mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STATE_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"admin_url": admin_url, "pid": os.getpid()}, out)
    return path


# --- db -----------------------------------------------------------------------------------------


def add_db(commands: Any) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--url", default=env_default("URL"), help="the server's admin URL")
    where.add_argument(
        "--data-dir", type=Path, default=env_default("DATA_DIR"), help="a local server's data dir"
    )
    db = commands.add_parser("db", help="create, list and drop environment databases")
    actions = db.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[where], help="create a database and its role")
    create.add_argument("name")
    actions.add_parser("list", parents=[where], help="list the environment databases")
    drop = actions.add_parser("drop", parents=[where], help="drop a database and its role")
    drop.add_argument("name")
    db.set_defaults(run=lambda args: run_loop(run_db(args)))
    upgrade = commands.add_parser(
        "upgrade",
        parents=[where],
        help="migrate every environment database's module tables to this server's schemas",
    )
    upgrade.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    upgrade.set_defaults(run=lambda args: run_loop(run_upgrade(args)))


async def _admin(args: argparse.Namespace) -> asyncpg.Connection:
    url = args.url or local_admin_url(args.data_dir or default_data_dir())
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StartupError(f"cannot reach the iasql server at {describe_dsn(url)}: {exc}") from exc


def _one_line(exc: asyncpg.PostgresError) -> str:
    hint = getattr(exc, "hint", None)
    first_line = str(exc).splitlines()[0]
    return f"{first_line} (hint: {hint})" if hint else first_line


async def run_upgrade(args: argparse.Namespace) -> int:
    """`iasql upgrade`: the server upgrades each environment database (it does so at start,
    too); a dry run prints each database's SQL."""
    conn = await _admin(args)
    try:
        rows = await conn.fetch("SELECT * FROM iasql_upgrade($1)", args.dry_run)
    except asyncpg.PostgresError as exc:
        raise StartupError(_one_line(exc)) from exc
    finally:
        await conn.close()
    if not rows:
        print("every environment database is on this server's module schemas")
        return 0
    shown: set[tuple[str, str]] = set()
    for row in rows:
        if row["module_name"] is None:  # the database could not be opened
            print(f"{row['database']}: {row['status']}: {row['detail']}")
        elif args.dry_run:
            key = (row["database"], row["module_name"])
            if key not in shown:
                shown.add(key)
                print(
                    f"-- {row['database']}: {row['module_name']} schema {row['from_version']}"
                    f" -> {row['to_version']}"
                )
            print(f"{row['detail']};")
        else:
            print(
                f"{row['database']}: {row['module_name']} schema {row['from_version']} ->"
                f" {row['to_version']}: {row['status']} ({row['detail']})"
            )
    return 1 if any(r["status"] != "upgraded" for r in rows) and not args.dry_run else 0


async def run_db(args: argparse.Namespace) -> int:
    conn = await _admin(args)
    try:
        if args.action == "create":
            row = await conn.fetchrow("SELECT * FROM iasql_connect($1)", args.name)
            print(f"created database {row['database']} with login role {row['user']}")
            print(row["url"])
        elif args.action == "drop":
            row = await conn.fetchrow("SELECT * FROM iasql_disconnect($1)", args.name)
            print(row["message"])
        else:
            for row in await conn.fetch("SELECT alias, url FROM iasql_db_list()"):
                print(f"{row['alias']}\t{row['url']}")
    except asyncpg.PostgresError as exc:
        raise StartupError(_one_line(exc)) from exc
    finally:
        await conn.close()
    return 0


def local_admin_url(data_dir: Path) -> str:
    state = data_dir / STATE_FILE
    try:
        return str(json.loads(state.read_text())["admin_url"])
    except (OSError, ValueError, KeyError) as exc:
        raise StartupError(
            f"no running iasql server found ({state} is missing); start one with `iasql serve`,"
            " or pass --url / set IASQL_URL"
        ) from exc


# --- plumbing -----------------------------------------------------------------------------------


def run_loop(main: Any) -> int:
    try:
        import uvloop

        return int(uvloop.run(main))
    except ImportError:
        return int(asyncio.run(main))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # At DEBUG these log request and response bodies: AWS secrets, passwords, private keys.
    for talkative in ("botocore", "aiobotocore", "boto3", "urllib3", "aiohttp"):
        logging.getLogger(talkative).setLevel(max(logging.INFO, logging.getLogger().level))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iasql", description="Infrastructure as SQL")
    parser.add_argument("--version", action="version", version=f"iasql {server_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve(commands)
    add_db(commands)
    add_promote(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (StartupError, PostgresError, SandboxError, PromotionError) as exc:
        print(f"iasql: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a data directory that cannot be created
        where = f": {exc.filename}" if exc.filename else ""
        print(f"iasql: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
