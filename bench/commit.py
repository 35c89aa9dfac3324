"""How fast does iasql_commit() apply N changes to the cloud, next to calling AWS directly?

Starts a private Postgres, a moto server (the AWS account) and an iasql server in this process
(the engine and the proxy on a uvloop thread, as the tests do), then measures, each against a
baseline from the same run:

  a. the commit of one transaction that inserts N log groups, vs a bare aiobotocore loop
     making the same N create_log_group calls at the engine's commit concurrency (16), each
     against a fresh (reset) moto account;
  b. the same commit with a relay in front of moto that holds each request for --delay
     seconds (AWS's latency), vs applying one change at a time (sequential awaits through
     the relay, timed on --sample calls and extrapolated to N);
  c. iasql_preview() of N uncommitted log-group rows in an account that also holds
     --unrelated SQS queues (imported as rows), with one bare describe_log_groups as a
     reference.

a and b run --rounds times (medians; ratios of the same round).

It also times the engine's phases (by wrapping engine functions in this process; no engine
file changes) and the CPU each process used, and prints a Markdown table with PASS/FAIL per
target. Timings are wall-clock; nothing here is a test.

    .venv/bin/python bench/commit.py [--resources 1000] [--delay 0.1] [--unrelated 10000]
        [--sample 50] [--rounds 3] [--only a|b|c ...] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import functools
import io
import math
import os
import platform
import pstats
import secrets
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import uvloop
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

import engine.apply
import engine.audit
import engine.plan
import engine.sync
import engine.transaction
from engine import Engine, EngineConfig
from engine.admin import PublicAddress
from engine.transaction import TransactionSettings
from iasql.postgres import LocalPostgres, PostgresError, free_port
from iasql.sandbox import MotoServer, SandboxError
from modules.aws_cloudwatch import LogGroupMapper
from modules.aws_sqs import QueueMapper
from proxy.server import BackendAddress, ProxyServer

# The delaying HTTP relay belongs to the tests (tests/support/), not to the installed package:
# found through the repository root, since bench/ runs as scripts.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.http_relay import RelayThread

USER = "bench"
ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = TransactionSettings().commit_concurrency  # the engine's default: 16
TARGET_COMMIT_RATIO = 1.3  # a: commit time / bare concurrent loop time
TARGET_SPEEDUP = 10.0  # b: sequential time / commit time, with the delay
TARGET_BOUND_RATIO = 1.2  # b: commit time / the bare concurrent loop's time, with the delay
TARGET_PREVIEW_S = 1.0  # c: absolute
QUEUES_PER_REGION = 1000  # the unrelated queues are spread over regions, 1000 per region
PG_SETTINGS = {
    "max_connections": "200",
    "fsync": "off",  # a throwaway cluster: durability is irrelevant
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
AWS_KEY, AWS_SECRET = "AKIDBENCH", "bench-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(Exception):
    """A one-line reason the benchmark cannot run, or did not do what it measures."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- CPU accounting --------------------------------------------------------------------------


def _stat_fields(path: str) -> list[str]:
    stat = Path(path).read_text()
    return stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def cpu_of(path: str, *, children: bool = False) -> float:
    """utime + stime (+ reaped children's) in seconds, from a /proc stat file."""
    try:
        fields = _stat_fields(path)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def postgres_cpu(postmaster: int | None) -> float:
    """The postmaster, its live backends, and the backends that have exited."""
    if postmaster is None:
        return 0.0
    total = cpu_of(f"/proc/{postmaster}/stat", children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat_fields(f"/proc/{entry.name}/stat")
                if int(fields[1]) == postmaster:
                    total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@dataclass
class CpuMeter:
    """CPU seconds used by the iasql server thread, the bench's main thread, moto and
    Postgres, between two readings."""

    server_tid: int
    moto_pid: int | None
    postgres_pid: int | None

    def read(self) -> dict[str, float]:
        pid = os.getpid()
        return {
            "iasql server thread": cpu_of(f"/proc/{pid}/task/{self.server_tid}/stat"),
            "bench main thread + relay": cpu_of(f"/proc/{pid}/stat")
            - cpu_of(f"/proc/{pid}/task/{self.server_tid}/stat"),
            "moto": cpu_of(f"/proc/{self.moto_pid}/stat") if self.moto_pid else 0.0,
            "postgres": postgres_cpu(self.postgres_pid),
        }

    @contextlib.contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        before = self.read()
        yield
        after = self.read()
        into.update({k: after[k] - before[k] for k in after})


# --- phase timings (wrappers around engine functions) ----------------------------------------


@dataclass
class PhaseStats:
    calls: int = 0
    seconds: float = 0.0  # summed over calls, concurrent ones included


@dataclass
class Phases:
    """Wall time spent in engine functions, summed per function. Concurrent calls (the
    steps of a commit) add up to more than the wall time: their average is what counts."""

    stats: dict[str, PhaseStats] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # as a commit runs them

    def reset(self) -> None:
        self.stats.clear()

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        self.order.append(label)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                entry = self.stats.setdefault(label, PhaseStats())
                entry.calls += 1
                entry.seconds += time.perf_counter() - started

        setattr(owner, name, timed)

    def install(self) -> None:
        tx, plan, sync, apply = engine.transaction, engine.plan, engine.sync, engine.apply
        audit = engine.audit
        self.wrap(tx, "recover_interrupted", "recover_interrupted (commit start)")
        self.wrap(audit, "pending_changes", "audit.pending_changes")
        self.wrap(tx, "plan_changes", "plan_changes (build the plan)")
        self.wrap(tx, "build_plan", "  build_plan")
        self.wrap(plan, "fetch_rows", "    fetch_rows")
        self.wrap(plan, "read_cloud", "    read_cloud (all regions, for the plan)")
        self.wrap(apply.Applier, "run", "Applier.run (apply the steps)")
        self.wrap(apply.Applier, "_journal_start", "  step: journal insert")
        self.wrap(LogGroupMapper, "create", "  step: LogGroupMapper.create")
        self.wrap(apply.Applier, "_finish", "  step: write back + journal done")
        self.wrap(tx, "_sync_after", "_sync_after (re-read and store)")
        self.wrap(sync, "read_cloud", "  read_cloud (all regions, for the sync)")
        self.wrap(sync, "store", "  store")
        self.wrap(audit, "mark_applied", "audit.mark_applied")
        self.wrap(LogGroupMapper, "read", "LogGroupMapper.read (one region, in either read)")
        self.wrap(LogGroupMapper, "read_some", "LogGroupMapper.read_some (the commit's read-back)")
        self.wrap(QueueMapper, "read", "QueueMapper.read (one region)")

    def lines(self) -> list[str]:
        out = []
        for label in self.order:
            entry = self.stats.get(label)
            if entry is None:
                continue
            average = entry.seconds / entry.calls * 1000
            out.append(
                f"  {label:52} {entry.calls:6} calls  {entry.seconds:8.2f} s summed"
                f"  {average:8.1f} ms avg"
            )
        return out


# --- the in-process iasql server -------------------------------------------------------------


class InProcessServer:
    """The engine and the proxy on a uvloop in a daemon thread, like tests/conftest.py."""

    def __init__(self, pg: LocalPostgres) -> None:
        self.pg = pg
        self.port = free_port()
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="iasql", daemon=True)
        self.engine = Engine(
            EngineConfig(pg.dsn(), PublicAddress("127.0.0.1", self.port)),
        )
        self.proxy: ProxyServer | None = None
        self.tid = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()

        async def start() -> tuple[ProxyServer, int]:
            await self.engine.start()
            proxy = ProxyServer(
                self.engine, BackendAddress("127.0.0.1", self.pg.port or 0), max_message=1 << 27
            )
            await proxy.listen("127.0.0.1", self.port)
            return proxy, threading.get_native_id()

        self.proxy, self.tid = self.run(start(), 60)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proxy is not None:
                self.run(self.proxy.close(), 30)
            self.run(self.engine.close(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def admin_url(self) -> str:
        return f"postgresql://{USER}:{self.pg.password}@127.0.0.1:{self.port}/iasql"

    @contextlib.contextmanager
    def profiled(self, profiler: cProfile.Profile) -> Iterator[None]:
        """cProfile on the server thread only (a profiler hooks the thread that enables it)."""

        async def enable() -> None:
            profiler.enable()

        async def disable() -> None:
            profiler.disable()

        self.run(enable())
        try:
            yield
        finally:
            self.run(disable())


# --- environments and the cloud --------------------------------------------------------------


def new_environment(server: InProcessServer, endpoint: str, *modules: str) -> psycopg.Connection:
    """A fresh environment database (iasql_connect on the admin database), with aws_account,
    credentials pointing at `endpoint`, and `modules` installed (importing what is there)."""
    alias = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(server.admin_url(), autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert row is not None
    conn = psycopg.connect(str(row[0]), autocommit=True)
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    conn.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES (%s, %s, %s)",
        (AWS_KEY, AWS_SECRET, endpoint),
    )
    if modules:
        names = ", ".join(f"'{m}'" for m in modules)
        conn.execute(f"SELECT * FROM iasql_install({names})")
    return conn


def scalar(conn: psycopg.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def aws_config() -> AioConfig:
    # As engine/cloud.py configures its clients.
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=64,
        connect_timeout=10,
        read_timeout=60,
    )


@contextlib.asynccontextmanager
async def aws_client(service: str, endpoint: str, region: str = "us-east-1") -> Any:
    session = get_session()
    async with session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=AWS_KEY,
        aws_secret_access_key=AWS_SECRET,
        config=aws_config(),
    ) as client:
        yield client


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """On a fresh uvloop in this thread, as the engine runs on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def in_parallel(concurrency: int, jobs: Sequence[Callable[[], Awaitable[Any]]]) -> None:
    """`concurrency` workers taking jobs in order, like a bounded pool of steps."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def bare_creates(endpoint: str, names: list[str], concurrency: int) -> float:
    """Seconds for create_log_group of every name, `concurrency` at a time."""

    async def go() -> float:
        async with aws_client("logs", endpoint) as logs:
            await logs.describe_log_groups(limit=1)  # a warm client, as the engine's is
            jobs = [functools.partial(logs.create_log_group, logGroupName=n) for n in names]
            started = time.perf_counter()
            await in_parallel(concurrency, jobs)
            return time.perf_counter() - started

    return run_async(go())


def one_describe(endpoint: str, repeat: int = 5) -> float:
    """Median seconds of one describe_log_groups call (one page) in us-east-1."""

    async def go() -> float:
        async with aws_client("logs", endpoint) as logs:
            await logs.describe_log_groups(limit=1)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                await logs.describe_log_groups()
                times.append(time.perf_counter() - started)
            return statistics.median(times)

    return run_async(go())


def count_log_groups(endpoint: str) -> int:
    async def go() -> int:
        async with aws_client("logs", endpoint) as logs:
            count = 0
            async for page in logs.get_paginator("describe_log_groups").paginate():
                count += len(page["logGroups"])
            return count

    return run_async(go())


def create_queues(endpoint: str, count: int, regions: list[str]) -> None:
    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                r: await stack.enter_async_context(aws_client("sqs", endpoint, r)) for r in regions
            }
            jobs = [
                functools.partial(
                    clients[regions[i // QUEUES_PER_REGION]].create_queue,
                    QueueName=f"unrelated-{i}",
                )
                for i in range(count)
            ]
            await in_parallel(CONCURRENCY, jobs)

    run_async(go())


def moto_regions(endpoint: str) -> list[str]:
    async def go() -> list[str]:
        async with aws_client("ec2", endpoint) as ec2:
            answer = await ec2.describe_regions()
        return sorted(r["RegionName"] for r in answer["Regions"])

    return run_async(go())


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Row:
    measurement: str
    iasql_s: float
    baseline_s: float
    ratio: float
    ratio_label: str  # how the ratio is taken
    target: str
    passed: bool


@dataclass
class Bench:
    args: argparse.Namespace
    server: InProcessServer
    moto: MotoServer
    cpu: CpuMeter
    phases: Phases
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [f"/bench/{i}" for i in range(1, self.args.resources + 1)]

    def timed_commit(
        self,
        endpoint: str,
        label: str,
        relay: RelayThread | None = None,
        profiler: cProfile.Profile | None = None,
    ) -> tuple[float, dict[str, float], int]:
        """A fresh account and environment; commits N inserted log groups. Returns the
        commit's seconds, CPU use, and HTTP requests it made (with a relay). A profiler
        given is on for the commit statement only."""
        n = self.args.resources
        self.moto.reset()
        conn = new_environment(self.server, endpoint, "aws_cloudwatch")
        try:
            conn.execute("SELECT * FROM iasql_begin()")
            conn.execute(
                "INSERT INTO log_group (log_group_name)"
                " SELECT '/bench/' || i FROM generate_series(1, %s) i",
                (n,),
            )
            self.phases.reset()
            cpu: dict[str, float] = {}
            before = relay.requests if relay else 0
            profiling = self.server.profiled(profiler) if profiler else contextlib.nullcontext()
            with profiling, self.cpu.measure(cpu):
                started = time.perf_counter()
                applied = scalar(conn, "SELECT count(*) FROM iasql_commit()")
                seconds = time.perf_counter() - started
            requests = (relay.requests - before) if relay else 0
            if applied != n:
                raise BenchError(f"{label}: the commit reported {applied} operations, not {n}")
            missing = scalar(conn, "SELECT count(*) FROM log_group WHERE log_group_arn IS NULL")
            if missing:
                raise BenchError(f"{label}: {missing} rows have no arn after the commit")
        finally:
            conn.close()
        in_cloud = count_log_groups(self.moto.endpoint)
        if in_cloud != n:
            raise BenchError(f"{label}: moto holds {in_cloud} log groups, not {n}")
        self.report_phases(label, seconds, cpu, requests)
        return seconds, cpu, requests

    def report_phases(
        self, label: str, seconds: float, cpu: dict[str, float], requests: int = 0
    ) -> None:
        """Progress on stderr; the notes keep the phases of the first round only."""
        used = ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
        summary = f"{label}: {seconds:.2f} s; CPU {used}" + (
            f"; {requests} HTTP requests" if requests else ""
        )
        progress(summary)
        for line in self.phases.lines():
            progress(line)
        first = not any(note.startswith(label) for note in self.notes)
        self.notes.append(summary)
        if first:
            self.notes += self.phases.lines()

    def note(self, text: str) -> None:
        progress(text)
        self.notes.append(text)

    # a ----------------------------------------------------------------------------------

    def commit_vs_bare_loop(self) -> None:
        n, rounds = self.args.resources, self.args.rounds
        progress(f"\n[a] commit of {n} log groups vs a bare loop of {CONCURRENCY} concurrent calls")
        pairs = []
        for round_ in range(1, rounds + 1):
            commit_s, _cpu, _ = self.timed_commit(
                self.moto.endpoint, "a. iasql_commit, moto direct"
            )
            self.moto.reset()
            cpu: dict[str, float] = {}
            with self.cpu.measure(cpu):
                bare_s = bare_creates(self.moto.endpoint, self.names(), CONCURRENCY)
            if count_log_groups(self.moto.endpoint) != n:
                raise BenchError("a: the bare loop did not create every log group")
            used = ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
            self.note(f"a. bare aiobotocore loop: {bare_s:.2f} s; CPU {used}")
            self.note(f"a. round {round_}/{rounds}: {commit_s / bare_s:.2f}x")
            pairs.append((commit_s, bare_s))
        ratio = statistics.median(c / b for c, b in pairs)
        self.rows.append(
            Row(
                f"a. commit {n} log groups vs bare loop ({CONCURRENCY} concurrent), moto direct",
                statistics.median(c for c, _ in pairs),
                statistics.median(b for _, b in pairs),
                ratio,
                "iasql / baseline",
                f"≤ {TARGET_COMMIT_RATIO}x",
                ratio <= TARGET_COMMIT_RATIO,
            )
        )

    # b ----------------------------------------------------------------------------------

    def commit_vs_sequential_with_delay(self) -> None:
        n, delay, rounds = self.args.resources, self.args.delay, self.args.rounds
        sample = min(self.args.sample, n)
        ms = f"{delay * 1000:.0f} ms"
        progress(f"\n[b] with {ms} per request: commit vs one call at a time")
        pairs = []
        bounds = []  # (commit, bare concurrent loop) per round
        with RelayThread(self.moto.endpoint, delay) as relay:
            for round_ in range(1, rounds + 1):
                commit_s, _cpu, requests = self.timed_commit(
                    relay.endpoint, f"b. iasql_commit through the {ms} relay", relay
                )
                self.moto.reset()
                sequential_sample = bare_creates(relay.endpoint, self.names()[:sample], 1)
                sequential_s = sequential_sample * n / sample
                self.moto.reset()
                concurrent_s = bare_creates(relay.endpoint, self.names(), CONCURRENCY)
                self.note(
                    f"b. sequential create_log_group through the relay: {sample} calls took"
                    f" {sequential_sample:.2f} s ({sequential_sample / sample * 1000:.1f} ms"
                    f" each), extrapolated to {n} calls: {sequential_s:.1f} s"
                )
                self.note(
                    f"b. reference: a bare loop of {n} calls, {CONCURRENCY} concurrent, through"
                    f" the relay: {concurrent_s:.2f} s, {sequential_s / concurrent_s:.1f}x faster"
                    f" than sequential (the ideal at this concurrency:"
                    f" {math.ceil(n / CONCURRENCY) * delay:.2f} s)"
                )
                self.note(
                    f"b. round {round_}/{rounds}: {sequential_s / commit_s:.2f}x; the commit made"
                    f" {requests} HTTP requests for {n} resources ({requests / n:.2f} each)"
                )
                pairs.append((commit_s, sequential_s))
                bounds.append((commit_s, concurrent_s))
        speedup = statistics.median(s / c for c, s in pairs)
        self.rows.append(
            Row(
                f"b. commit {n} log groups, {ms}/request, vs one at a time"
                f" (extrapolated from {sample} sequential calls)",
                statistics.median(c for c, _ in pairs),
                statistics.median(s for _, s in pairs),
                speedup,
                "baseline / iasql (speedup)",
                f"≥ {TARGET_SPEEDUP:g}x faster",
                speedup >= TARGET_SPEEDUP,
            )
        )
        bound_ratio = statistics.median(c / b for c, b in bounds)
        self.rows.append(
            Row(
                f"b. the same commit vs a bare loop of the same calls, {CONCURRENCY} at once,"
                f" through the {ms} relay (the bound at this concurrency)",
                statistics.median(c for c, _ in bounds),
                statistics.median(b for _, b in bounds),
                bound_ratio,
                "iasql / bare loop",
                f"≤ {TARGET_BOUND_RATIO:g}x",
                bound_ratio <= TARGET_BOUND_RATIO,
            )
        )

    # c ----------------------------------------------------------------------------------

    def preview_with_unrelated(self) -> None:
        n, unrelated = self.args.resources, self.args.unrelated
        progress(f"\n[c] preview of {n} log groups beside {unrelated} unrelated queues")
        self.moto.reset()
        regions = moto_regions(self.moto.endpoint)
        used = regions[: max(1, math.ceil(unrelated / QUEUES_PER_REGION))]
        if len(used) * QUEUES_PER_REGION < unrelated:
            raise BenchError(f"--unrelated {unrelated} needs more than {len(regions)} regions")
        progress(f"creating {unrelated} SQS queues in {len(used)} regions...")
        started = time.perf_counter()
        create_queues(self.moto.endpoint, unrelated, used)
        progress(f"  {time.perf_counter() - started:.1f} s")
        progress("installing aws_cloudwatch and aws_sqs (imports the queues)...")
        started = time.perf_counter()
        self.phases.reset()
        conn = new_environment(self.server, self.moto.endpoint, "aws_cloudwatch", "aws_sqs")
        install_s = time.perf_counter() - started
        progress(f"  {install_s:.1f} s")
        try:
            rows = scalar(conn, "SELECT count(*) FROM queue")
            if rows != unrelated:
                raise BenchError(f"c: {rows} queue rows after the import, not {unrelated}")
            self.notes.append(
                f"c. setup: {unrelated} queues in {len(used)} regions, imported as rows by"
                f" iasql_install in {install_s:.1f} s"
            )
            conn.execute("SELECT * FROM iasql_begin()")
            conn.execute(
                "INSERT INTO log_group (log_group_name)"
                " SELECT '/bench/' || i FROM generate_series(1, %s) i",
                (n,),
            )
            times = []
            first_phases: list[str] = []
            cpu: dict[str, float] = {}
            for attempt in range(3):
                self.phases.reset()
                with self.cpu.measure(cpu):
                    started = time.perf_counter()
                    planned = scalar(conn, "SELECT count(*) FROM iasql_preview()")
                    times.append(time.perf_counter() - started)
                if planned != n:
                    raise BenchError(f"c: the preview shows {planned} operations, not {n}")
                if attempt == 0:
                    first_phases = self.phases.lines()
            conn.execute("SELECT * FROM iasql_rollback()")
        finally:
            conn.close()
        preview_s = statistics.median(times)
        describe_s = one_describe(self.moto.endpoint)
        used_cpu = ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
        self.note(
            f"c. iasql_preview: {', '.join(f'{t:.3f}' for t in times)} s (median"
            f" {preview_s:.3f} s); one bare describe_log_groups: {describe_s * 1000:.1f} ms;"
            f" CPU of the last preview: {used_cpu}"
        )
        self.note("c. phases of the first preview:")
        for line in first_phases:
            self.note(line)
        self.rows.append(
            Row(
                f"c. preview {n} new log groups beside {unrelated} unrelated queue rows"
                " (baseline: one describe_log_groups)",
                preview_s,
                describe_s,
                preview_s / describe_s,
                "iasql / baseline",
                f"≤ {TARGET_PREVIEW_S:g} s",
                preview_s <= TARGET_PREVIEW_S,
            )
        )

    # profile ----------------------------------------------------------------------------

    def profile_commit(self) -> None:
        progress("\n[profile] one more commit of measurement a under cProfile (server thread)")
        # cProfile's own clock (wall time): a CPU clock (time.thread_time) would leave out
        # waiting for a core, but its per-call cost inflates small functions several times.
        profiler = cProfile.Profile()
        self.timed_commit(self.moto.endpoint, "profiled commit (slower: cProfile)", None, profiler)
        stats = pstats.Stats(profiler)
        print("\n#### cProfile of the server thread during one commit (a): own time by package\n")
        print("| package | own time | share |\n|---|---|---|")
        by_package = own_time_by_package(stats)
        total = sum(by_package.values())
        rest = 0.0
        for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
            if seconds / total < 0.01:
                rest += seconds
                continue
            print(f"| {package} | {seconds:.2f} s | {seconds / total:.0%} |")
        print(f"| everything else (< 1% each) | {rest:.2f} s | {rest / total:.0%} |")
        print(f"| total (with cProfile's own overhead) | {total:.2f} s | 100% |")
        for sort in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(25)
            print(f"\n#### cProfile of the server thread, by {sort}\n\n```")
            print(text.getvalue().strip())
            print("```")


def own_time_by_package(stats: pstats.Stats) -> dict[str, float]:
    """Self time summed per top-level package (botocore, aiohttp, asyncpg, engine...)."""
    totals: dict[str, float] = {}
    for (filename, _line, _function), entry in stats.stats.items():  # type: ignore[attr-defined]
        own = entry[2]
        if "site-packages/" in filename:
            package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif filename.startswith(str(ROOT)):
            package = "iasql: " + Path(filename).relative_to(ROOT).parts[0]
        elif filename == "~":
            package = "C builtins (str.join, isinstance, dict.get...)"
        elif "/lib/python3" in filename:
            package = "stdlib: " + filename.split("/lib/python3", 1)[1].split("/")[1]
        else:
            package = "other"
        totals[package] = totals.get(package, 0.0) + own
    return totals


# --- report ----------------------------------------------------------------------------------


def report(bench: Bench, versions: dict[str, str]) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"\n### Commit benchmark ({now})\n")
    print(f"Command: `{shlex.join([sys.executable, *sys.argv])}`  ")
    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python"
        f" {platform.python_version()}  "
    )
    print("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + "\n")
    print("| measurement | iasql | baseline | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    for row in bench.rows:
        print(
            f"| {row.measurement} | {row.iasql_s:.3f} s | {row.baseline_s:.3f} s"
            f" | {row.ratio:.2f}x ({row.ratio_label}) | {row.target}"
            f" | {'PASS' if row.passed else 'FAIL'} |"
        )
    print(
        f"\na and b: medians of {bench.args.rounds} rounds, each ratio the median of the"
        " same-round ratios; c: median of 3 previews.\n"
    )
    print("Details (phase times are summed over calls; the steps of a commit overlap):\n")
    print(
        "\n".join(
            f"- {note}" if not note.startswith("  ") else f"    {note}" for note in bench.notes
        )
    )
    print(flush=True)


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--resources", type=int, default=1000, help="log groups per commit (N)")
    parser.add_argument(
        "--delay", type=float, default=0.1, help="seconds the relay holds each request"
    )
    parser.add_argument(
        "--unrelated", type=int, default=10000, help="SQS queues in the account for c"
    )
    parser.add_argument(
        "--sample", type=int, default=50, help="sequential calls timed for b's baseline"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of a and b (medians; ratios per round)"
    )
    parser.add_argument(
        "--only", choices=("a", "b", "c"), action="append", help="run only these measurements"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one commit (a) with cProfile"
    )
    args = parser.parse_args()
    if min(args.resources, args.sample, args.rounds) < 1 or min(args.delay, args.unrelated) < 0:
        parser.error("--resources, --sample, --rounds must be ≥ 1; --delay, --unrelated ≥ 0")
    return args


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="iasql-bench-commit-", dir="/tmp"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # runs last: after every stop
    tmp.chmod(0o755)  # the unprivileged Postgres user (when we are root) must reach pgdata
    progress(f"starting Postgres in {tmp}...")
    pg = LocalPostgres(
        tmp / "pgdata", superuser=USER, password=secrets.token_urlsafe(16), settings=PG_SETTINGS
    )
    pg.init()
    stack.callback(pg.stop)
    pg.start()
    progress("starting moto...")
    moto = MotoServer(log_path=tmp / "moto.log")
    stack.callback(moto.stop)
    moto.start()
    progress("starting the iasql server (in process)...")
    phases = Phases()
    phases.install()
    server = InProcessServer(pg)
    stack.callback(server.stop)
    server.start()
    cpu = CpuMeter(server.tid, moto.process.pid if moto.process else None, pg.pid)
    runner = Bench(args, server, moto, cpu, phases)
    only = set(args.only or ("a", "b", "c"))
    if "a" in only:
        runner.commit_vs_bare_loop()
    if "b" in only:
        runner.commit_vs_sequential_with_delay()
    if "c" in only:
        runner.preview_with_unrelated()
    versions = {
        "postgres": str(pg.binaries.version),
        "moto": _version("moto"),
        "aiobotocore": _version("aiobotocore"),
        "botocore": _version("botocore"),
    }
    report(runner, versions)
    if args.profile:
        runner.profile_commit()


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the ExitStack like a Ctrl-C


def run_bench(
    name: str,
    run: Callable[[argparse.Namespace, contextlib.ExitStack], None],
    args: argparse.Namespace,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Runs a benchmark (`run(args, stack)`, which leaves what it starts to the stack) and
    returns its exit status: 1 for its own errors (BenchError, PostgresError, SandboxError and
    `errors`), 130 for an interrupt, after the stack has cleaned up."""
    # Dummy credentials for any client that looks at the environment: never real AWS.
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    os.environ.update(AWS_ACCESS_KEY_ID=AWS_KEY, AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    own: tuple[type[Exception], ...] = (BenchError, PostgresError, SandboxError, *errors)
    try:
        with contextlib.ExitStack() as stack:
            run(args, stack)
    except own as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    return run_bench("commit bench", bench, args)


if __name__ == "__main__":
    sys.exit(main())
