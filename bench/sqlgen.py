"""How fast is iasql_get_sql_since() over a long audit log with foreign keys?

Starts a private Postgres, a moto server and an iasql server in this process (the harness of
bench/commit.py), makes one environment with aws_vpc and aws_security_group, and writes
--rows user changes into it: VPCs, subnets in them, security groups in them, and rules whose
source is another group (a foreign key two levels deep: rule → group → VPC). Then, through
the proxy, it times

  - `SELECT * FROM iasql_get_sql_since()`, which turns every change into a replayable
    statement with natural-key sub-selects (target: ≤ 1 s for 10,000 changes), against
  - a baseline from the same run: fetching the same audit rows with a plain SELECT.

Nothing is committed: user changes are in the audit log as soon as they are written, which is
what the generator reads. Timings are wall-clock medians; nothing here is a test.

    .venv/bin/python bench/sqlgen.py [--rows 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import os
import platform
import pstats
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import (  # bench/ is not a package: found through sys.path
    PG_SETTINGS,
    USER,
    BenchError,
    InProcessServer,
    new_environment,
    progress,
    run_bench,
    scalar,
)

from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer

TARGET_S = 1.0
SUBNETS, GROUPS = 5, 5  # per VPC; rules: 9 per VPC (each group's source is another group)
RULES = 9
PER_VPC = 1 + SUBNETS + GROUPS + RULES
# The changes written below (the credentials row is a user change too, but never replayed).
WRITTEN = (
    "change_type = 'INSERT' AND \"user\" = current_user"
    " AND table_name IN ('vpc', 'subnet', 'security_group', 'security_group_rule')"
)


def write_changes(conn: psycopg.Connection, vpcs: int) -> int:
    """Inserts the rows (as a user, outside an infrastructure transaction); returns how many."""
    conn.execute(
        "INSERT INTO vpc (cidr_block, region)"
        " SELECT '10.' || (i / 250) || '.' || (i %% 250) || '.0/24', 'us-east-1'"
        " FROM generate_series(0, %s - 1) i",
        (vpcs,),
    )
    conn.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone, region)"
        " SELECT v.id, host(network(v.cidr_block::cidr)::inet + 16 * s) || '/28',"
        " 'us-east-1a', 'us-east-1'"
        " FROM vpc v, generate_series(0, %s - 1) s WHERE NOT v.is_default",
        (SUBNETS,),
    )
    conn.execute(
        "INSERT INTO security_group (group_name, description, vpc_id, region)"
        " SELECT 'tier-' || g, 'tier ' || g, v.id, 'us-east-1'"
        " FROM vpc v, generate_series(1, %s) g WHERE NOT v.is_default",
        (GROUPS,),
    )
    conn.execute(
        "INSERT INTO security_group_rule (security_group_id, is_egress, ip_protocol, from_port,"
        " to_port, source_security_group, region)"
        " SELECT a.id, false, 'tcp', 8000 + r, 8000 + r, b.id, 'us-east-1'"
        " FROM generate_series(1, %s) r"
        " JOIN security_group a ON a.group_name = 'tier-' || (1 + r %% %s)"
        " JOIN security_group b ON b.vpc_id = a.vpc_id AND b.group_name = 'tier-' || (1 + (r + 1) %% %s)"
        " JOIN vpc v ON v.id = a.vpc_id AND NOT v.is_default",
        (RULES, GROUPS, GROUPS),
    )
    return int(
        scalar(
            conn,
            f"SELECT count(*) FROM iasql_audit_log WHERE {WRITTEN}",
        )
    )


def timed(conn: psycopg.Connection, sql: str, repeat: int) -> tuple[float, int]:
    """Median seconds to fetch every row of `sql`, and the row count."""
    times, count = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = len(conn.execute(sql).fetchall())
        times.append(time.perf_counter() - started)
    return statistics.median(times), count


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="iasql-bench-sqlgen-", dir="/tmp"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    tmp.chmod(0o755)  # the unprivileged Postgres user (when we are root) must reach pgdata
    progress("starting Postgres, moto and the iasql server...")
    pg = LocalPostgres(
        tmp / "pgdata", superuser=USER, password=secrets.token_urlsafe(16), settings=PG_SETTINGS
    )
    pg.init()
    stack.callback(pg.stop)
    pg.start()
    moto = MotoServer(log_path=tmp / "moto.log")
    stack.callback(moto.stop)
    moto.start()
    server = InProcessServer(pg)
    stack.callback(server.stop)
    server.start()
    conn = new_environment(server, moto.endpoint, "aws_vpc", "aws_security_group")
    stack.callback(conn.close)

    vpcs = max(1, args.rows // PER_VPC)
    progress(f"writing {vpcs * PER_VPC} changes ({vpcs} VPCs with subnets, groups, rules)...")
    changes = write_changes(conn, vpcs)
    if changes < vpcs * PER_VPC:
        raise BenchError(f"only {changes} changes were written")

    progress("timing...")
    baseline_s, rows = timed(
        conn,
        f"SELECT change FROM iasql_audit_log WHERE {WRITTEN} ORDER BY id",
        args.repeat,
    )
    generate_s, statements = timed(conn, "SELECT * FROM iasql_get_sql_since()", args.repeat)
    if statements != changes or rows != changes:
        raise BenchError(f"{statements} statements and {rows} audit rows for {changes} changes")
    rule = scalar(
        conn, "SELECT sql FROM iasql_get_sql_since() WHERE sql LIKE '%security_group_rule%' LIMIT 1"
    )
    if rule.count("(SELECT") < 3:
        raise BenchError(f"a rule's references are not nested sub-selects: {rule}")

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"\n### SQL generation benchmark ({now})\n")
    print(f"Command: `{shlex.join([sys.executable, *sys.argv])}`  ")
    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}\n"
    )
    print("| measurement | iasql | baseline | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    print(
        f"| iasql_get_sql_since() over {changes} changes with foreign keys"
        f" (baseline: SELECT of the same audit rows) | {generate_s:.3f} s | {baseline_s:.3f} s"
        f" | {generate_s / baseline_s:.1f}x | ≤ {TARGET_S:g} s"
        f" | {'PASS' if generate_s <= TARGET_S else 'FAIL'} |"
    )
    print(f"\nMedians of {args.repeat} runs. A rule's statement:\n\n    {rule}\n", flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        with server.profiled(profiler):
            conn.execute("SELECT * FROM iasql_get_sql_since()").fetchall()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000, help="user changes to write")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--profile", action="store_true", help="then profile one run")
    return run_bench("sqlgen bench", bench, parser.parse_args(), errors=(psycopg.Error,))


if __name__ == "__main__":
    sys.exit(main())
