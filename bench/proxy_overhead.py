"""How much does the iasql proxy cost on plain SQL, next to PgBouncer and to no proxy at all?

Starts a private Postgres, loads `pgbench -i -s 10`, puts `iasql serve` twice (its native data
plane, `--relay native`, and its asyncio relay, `--relay python`), PgBouncer (session pooling)
and a bare uvloop relay (bench/bare_relay.py: the floor for any Python proxy) in front of it,
and runs the read-only pgbench workload (`-S`) through each. Runs are
interleaved (every round visits every target) because this kind of machine drifts a lot: drift
then hits all targets alike. Prints a Markdown table of medians and PASS/FAIL per target.

    .venv/bin/python bench/proxy_overhead.py [--seconds N] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iasql.postgres import LocalPostgres, PostgresError, free_port

USER = "bench"
DATABASE = "postgres"
SCALE = 10
# relay: bench/bare_relay.py; iasql: `iasql serve --relay native`, iasql-py: `--relay python`
TARGETS = ("direct", "pgbouncer", "relay", "iasql", "iasql-py")
PROXIES = ("iasql", "iasql-py", "pgbouncer", "relay")
MODES = ["simple", "prepared"]  # --modes narrows these two
CLIENTS = [1, 8]  # --clients
# iasql (native) at 8 clients: TPS >= 0.95x PgBouncer's; at 1 client: added latency and, at
# both, CPU per transaction no more than PgBouncer's.
TARGET_RATIO = 0.95
PG_SETTINGS = {
    "max_connections": "100",
    "shared_buffers": "128MB",
    "fsync": "off",  # read-only benchmark: durability is irrelevant, init gets faster
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A one-line reason the benchmark cannot run."""


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int | None  # the proxy process whose CPU time is charged to it


@dataclass(frozen=True)
class Sample:
    tps: float
    latency_ms: float
    cpu_us_per_tx: float | None


Key = tuple[str, str, int]  # (target, mode, clients)


# --- finding tools -----------------------------------------------------------------------------


def find_tool(name: str, *extra_dirs: Path) -> str:
    found = shutil.which(name) or next(
        (str(d / name) for d in (*extra_dirs, Path("/usr/sbin")) if os.access(d / name, os.X_OK)),
        None,
    )
    if found is None:
        hint = "bash scripts/ensure-postgres.sh pgbouncer"
        raise BenchError(f"{name} not found in PATH or /usr/sbin; install it with: {hint}")
    return found


def tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout.strip().splitlines() or ["?"])[0]


def iasql_command() -> list[str]:
    # Prefer the console script next to this interpreter: the venv's own install.
    script = Path(sys.executable).parent / "iasql"
    return [str(script)] if script.exists() else [sys.executable, "-m", "iasql.cli"]


# --- processes ---------------------------------------------------------------------------------


def client_env(password: str) -> dict[str, str]:
    # Stray PG* variables (PGDATABASE, PGSSLMODE...) would change what pgbench does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    # iasql offers TLS, which libpq's default (prefer) would take; the other targets have none.
    env["PGSSLMODE"] = "disable"
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    """Polls `ready()` until true; fails early (with the log) if `proc` dies meanwhile."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after 60s:\n{log_tail(log)}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (a Ctrl-C reaches us, and we stop it in order)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


# --- the three targets -------------------------------------------------------------------------


def start_postgres(stack: contextlib.ExitStack, tmp: Path, password: str) -> LocalPostgres:
    pg = LocalPostgres(tmp / "pgdata", superuser=USER, password=password, settings=PG_SETTINGS)
    pg.init()
    stack.callback(pg.stop)
    pg.start()
    return pg


def load_data(pgbench: str, pg: LocalPostgres, password: str) -> None:
    cmd = [pgbench, "-i", "-s", str(SCALE), "-q", *conn_args(pg.port or 0), DATABASE]
    out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(password))
    if out.returncode != 0:
        raise BenchError(f"pgbench -i failed: {out.stderr.strip()}")


def start_iasql(stack: contextlib.ExitStack, tmp: Path, pg: LocalPostgres, relay: str) -> Target:
    name = "iasql" if relay == "native" else "iasql-py"
    port, log = free_port(), tmp / f"{name}.log"
    cmd = [*iasql_command(), "serve", "--backend-url", pg.dsn(DATABASE), "--relay", relay]
    cmd += ["--port", str(port), "--data-dir", str(tmp / f"{name}-data"), "--log-level", "warning"]
    proc = stack.enter_context(running(cmd, log))
    wait_until(lambda: "listening on" in log.read_text(errors="replace"), proc, log, "iasql serve")
    return Target(name, port, proc.pid)


def start_bare_relay(stack: contextlib.ExitStack, tmp: Path, pg: LocalPostgres) -> Target:
    port, log = free_port(), tmp / "relay.log"
    cmd = [sys.executable, str(Path(__file__).with_name("bare_relay.py")), str(port), str(pg.port)]
    proc = stack.enter_context(running(cmd, log))
    wait_until(lambda: "listening" in log.read_text(errors="replace"), proc, log, "bare relay")
    return Target("relay", port, proc.pid)


def pgbouncer_config(tmp: Path, pg: LocalPostgres, password: str, port: int) -> str:
    server = f"host=127.0.0.1 port={pg.port} dbname={DATABASE} user={USER} password={password}"
    return f"""\
[databases]
{DATABASE} = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {tmp / "userlist.txt"}
pool_mode = session
max_client_conn = 100
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""


def start_pgbouncer(
    stack: contextlib.ExitStack, tmp: Path, pg: LocalPostgres, password: str, binary: str
) -> Target:
    port, log = free_port(), tmp / "pgbouncer.log"
    ini = tmp / "pgbouncer.ini"
    ini.write_text(pgbouncer_config(tmp, pg, password, port))
    (tmp / "userlist.txt").write_text(f'"{USER}" "{password}"\n')
    kw: dict[str, Any] = {"cwd": str(tmp)}
    account = pg.account
    if account.switch:  # we are root: pgbouncer refuses that, run it as Postgres's own user
        for path in (ini, tmp / "userlist.txt"):
            os.chown(path, account.uid, account.gid)
        kw.update(user=account.uid, group=account.gid, extra_groups=list(account.groups))
    for path in (ini, tmp / "userlist.txt"):
        path.chmod(0o600)
    proc = stack.enter_context(running([binary, str(ini)], log, **kw))
    wait_until(lambda: port_open(port), proc, log, "pgbouncer")
    return Target("pgbouncer", port, proc.pid)


# --- measuring ---------------------------------------------------------------------------------


def conn_args(port: int) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(port), "-U", USER]


def pgbench_run_args(mode: str, clients: int, seconds: int) -> list[str]:
    jobs = 1 if clients == 1 else 2
    return ["-S", "-n", "-M", mode, "-c", str(clients), "-j", str(jobs), "-T", str(seconds)]


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of `pid` itself (all its threads, none of its children)."""
    if pid is None:
        return 0.0
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may hold spaces; fields start at 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def parse_pgbench(output: str) -> tuple[float, float, int]:
    """(tps, average latency in ms, transactions) from pgbench's report."""

    def number(pattern: str) -> str:
        match = re.search(pattern, output)
        if match is None:
            raise BenchError(f"unexpected pgbench output:\n{output.strip()}")
        return match.group(1)

    transactions = int(number(r"number of transactions actually processed: (\d+)"))
    latency = float(number(r"latency average = ([\d.]+) ms"))
    tps = float(number(r"tps = ([\d.]+)"))
    return tps, latency, transactions


def measure(
    pgbench: str, target: Target, mode: str, clients: int, seconds: int, password: str
) -> Sample:
    cmd = [pgbench, *conn_args(target.port), *pgbench_run_args(mode, clients, seconds), DATABASE]
    before = cpu_seconds(target.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(password))
    after = cpu_seconds(target.pid)
    if out.returncode != 0:
        raise BenchError(f"pgbench via {target.name} failed: {out.stderr.strip()}")
    tps, latency, transactions = parse_pgbench(out.stdout)
    cpu = (after - before) * 1e6 / transactions if target.pid and transactions else None
    return Sample(tps, latency, cpu)


def run_rounds(
    pgbench: str, targets: list[Target], rounds: int, seconds: int, password: str
) -> dict[Key, list[Sample]]:
    samples: dict[Key, list[Sample]] = {}
    for rnd in range(rounds):
        # Rotate the target order too, so no target always runs right after the same one.
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for mode in MODES:
            for clients in CLIENTS:
                for target in order:
                    s = measure(pgbench, target, mode, clients, seconds, password)
                    samples.setdefault((target.name, mode, clients), []).append(s)
                    cpu = (
                        f", {s.cpu_us_per_tx:.1f} µs CPU/tx" if s.cpu_us_per_tx is not None else ""
                    )
                    progress(
                        f"round {rnd + 1}/{rounds} {mode:8} c={clients} {target.name:9}: "
                        f"{s.tps:8.0f} tps, {s.latency_ms * 1000:7.1f} µs/tx{cpu}"
                    )
    return samples


def warm_up(pgbench: str, targets: list[Target], password: str) -> None:
    # Pulls the table into cache and lets each proxy finish its first-connection work.
    for target in targets:
        measure(pgbench, target, "simple", 8, 2, password)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- reporting ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired(
    samples: dict[Key, list[Sample]], a: str, b: str, mode: str, clients: int
) -> list[tuple[Sample, Sample]]:
    # Same-round pairs: the ratio within a round is immune to drift between rounds.
    return list(zip(samples[(a, mode, clients)], samples[(b, mode, clients)], strict=True))


def ratio(samples: dict[Key, list[Sample]], a: str, b: str, mode: str, clients: int) -> float:
    return median([x.tps / y.tps for x, y in paired(samples, a, b, mode, clients)])


def added_us(samples: dict[Key, list[Sample]], proxy: str, mode: str) -> float:
    """Median over rounds of the proxy's extra time per query vs direct, 1 client, in µs."""
    # With one client a query's latency is 1/TPS; TPS has more digits than pgbench's latency.
    pairs = paired(samples, proxy, "direct", mode, 1)
    return median([1e6 / x.tps - 1e6 / y.tps for x, y in pairs])


def added_vs(samples: dict[Key, list[Sample]], proxy: str, other: str, mode: str) -> float:
    """Median over rounds of the proxy's time per query less `other`'s, 1 client, in µs: the
    difference of their added latencies, taken within each round (direct cancels out, and
    with it direct's own noise, which a difference of two medians would count twice)."""
    pairs = paired(samples, proxy, other, mode, 1)
    return median([1e6 / x.tps - 1e6 / y.tps for x, y in pairs])


def median_tps(samples: dict[Key, list[Sample]], target: str, mode: str, clients: int) -> float:
    return median([s.tps for s in samples[(target, mode, clients)]])


def median_cpu(samples: dict[Key, list[Sample]], target: str, mode: str, clients: int) -> str:
    values = [
        s.cpu_us_per_tx for s in samples[(target, mode, clients)] if s.cpu_us_per_tx is not None
    ]
    return f"{median(values):.1f}" if values else "n/a"


RATIOS = (("iasql", "pgbouncer"), ("iasql-py", "pgbouncer"), ("relay", "pgbouncer"))


def table(samples: dict[Key, list[Sample]]) -> list[str]:
    columns = [
        *("protocol", "clients", *(f"TPS {t}" for t in TARGETS)),
        *(f"{a}/{b}" for a, b in RATIOS),
        *(f"µs added/query {p}" for p in PROXIES),
        *(f"CPU µs/tx {p}" for p in PROXIES),
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for mode in MODES:
        for clients in CLIENTS:
            tps = [f"{median_tps(samples, t, mode, clients):,.0f}" for t in TARGETS]
            ratios = [f"{ratio(samples, a, b, mode, clients):.2f}x" for a, b in RATIOS]
            added = ["n/a"] * len(PROXIES)
            if clients == 1:
                added = [f"{added_us(samples, p, mode):+.1f}" for p in PROXIES]
            cpu = [median_cpu(samples, p, mode, clients) for p in PROXIES]
            cells = [mode, str(clients), *tps, *ratios, *added, *cpu]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdicts(samples: dict[Key, list[Sample]]) -> list[str]:
    lines = []
    for mode in MODES if 8 in CLIENTS else []:
        r = ratio(samples, "iasql", "pgbouncer", mode, 8)
        ok = "PASS" if r >= TARGET_RATIO else "FAIL"
        lines.append(
            f"- {ok}: 8 clients, {mode}: iasql/pgbouncer TPS = {r:.2f}x (target ≥ {TARGET_RATIO}x)"
        )
    for mode in MODES if 1 in CLIENTS else []:
        more = added_vs(samples, "iasql", "pgbouncer", mode)
        ok = "PASS" if more <= 0 else "FAIL"
        lines.append(
            f"- {ok}: 1 client, {mode}: iasql adds {more:+.1f} µs/query more than PgBouncer"
            " (median of same-round differences; target: ≤ 0)"
        )
    for mode in MODES:
        for clients in CLIENTS:
            ours, theirs = (
                cpu_of(samples, "iasql", mode, clients),
                cpu_of(samples, "pgbouncer", mode, clients),
            )
            ok = "PASS" if ours <= theirs else "FAIL"
            lines.append(
                f"- {ok}: {clients} client(s), {mode}: iasql uses {ours:.1f} µs CPU/tx "
                f"(target: ≤ PgBouncer's {theirs:.1f} µs)"
            )
    return lines


def cpu_of(samples: dict[Key, list[Sample]], target: str, mode: str, clients: int) -> float:
    values = [s.cpu_us_per_tx for s in samples[(target, mode, clients)]]
    return median([v for v in values if v is not None])


def report(
    samples: dict[Key, list[Sample]], args: argparse.Namespace, versions: dict[str, str]
) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"\n### Proxy overhead ({now})\n")
    print(f"Command: `{shlex.join([sys.executable, *sys.argv])}`  ")
    print(
        f"Workload: `pgbench -S -n -M <protocol> -c <clients> -j <1|2> -T {args.seconds}`, "
        f"scale {SCALE}, {args.rounds} interleaved rounds, medians (ratios and added latency: "
        "median of same-round pairs)  "
    )
    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}  "
    )
    print("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + "\n")
    print("\n".join(table(samples)))
    print("\nTargets:\n")
    print("\n".join(verdicts(samples)), flush=True)


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--modes", default="simple,prepared", help="pgbench protocols to run")
    parser.add_argument("--clients", default="1,8", help="client counts to run: 1, 8 or both")
    args = parser.parse_args()
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    modes, clients = args.modes.split(","), args.clients.split(",")
    if not modes or not set(modes) <= {"simple", "prepared"}:
        parser.error("--modes takes simple, prepared or both, separated by a comma")
    if not clients or not set(clients) <= {"1", "8"}:
        parser.error("--clients takes 1, 8 or both, separated by a comma")
    MODES[:] = [m for m in ("simple", "prepared") if m in modes]
    CLIENTS[:] = [c for c in (1, 8) if str(c) in clients]
    return args


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    pgbouncer = find_tool("pgbouncer")
    tmp = Path(tempfile.mkdtemp(prefix="iasql-bench-", dir="/tmp"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # runs last: after every stop
    tmp.chmod(0o755)  # the unprivileged server user must reach pgdata and pgbouncer's files
    password = secrets.token_urlsafe(16)
    progress(f"starting Postgres in {tmp}...")
    pg = start_postgres(stack, tmp, password)
    pgbench = find_tool("pgbench", pg.binaries.bindir)
    progress(f"loading pgbench data (scale {SCALE})...")
    load_data(pgbench, pg, password)
    targets = [
        Target("direct", pg.port or 0, None),
        start_pgbouncer(stack, tmp, pg, password, pgbouncer),
        start_bare_relay(stack, tmp, pg),
        start_iasql(stack, tmp, pg, "native"),
        start_iasql(stack, tmp, pg, "python"),
    ]
    versions = {
        "postgres": tool_version(str(pg.binaries.bindir / "postgres")),
        "pgbouncer": tool_version(pgbouncer),
        "pgbench": tool_version(pgbench),
    }
    progress("warming up...")
    warm_up(pgbench, targets, password)
    samples = run_rounds(pgbench, targets, args.rounds, args.seconds, password)
    report(samples, args, versions)


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the ExitStack like a Ctrl-C


def run(
    name: str,
    body: Callable[[argparse.Namespace, contextlib.ExitStack], None],
    args: argparse.Namespace,
) -> int:
    """Runs a benchmark whose processes and files `body` puts on the stack: a failure is one
    line, and a Ctrl-C or SIGTERM stops them in order. The exit code."""
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            body(args, stack)
    except (BenchError, PostgresError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0


def main() -> int:
    return run("proxy_overhead", bench, parse_args())


if __name__ == "__main__":
    sys.exit(main())
