"""Does iasql's native plane add more latency than PgBouncer at 1 client? A finer measure.

bench/proxy_overhead.py judges this from the median of 3 rounds of 5 s, whose same-round
differences swing by up to 40 µs on this machine: more than the effect. This runs only the two
proxies, in many short pairs back to back (the order flips every pair), so drift hits both
alike, and reports the mean difference with its 95% interval (two standard errors).

    .venv/bin/python bench/latency_pairs.py [--pairs N] [--seconds N] [--modes simple,prepared]
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import proxy_overhead as overhead  # the sibling script: its processes and measuring


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=15, help="pairs of runs per protocol")
    parser.add_argument("--seconds", type=int, default=2, help="duration of each pgbench run")
    parser.add_argument("--modes", default="simple,prepared", help="pgbench protocols to run")
    args = parser.parse_args()
    if args.pairs < 2 or args.seconds < 1:
        parser.error("--pairs must be at least 2 and --seconds at least 1")
    args.modes = args.modes.split(",")
    if not set(args.modes) <= {"simple", "prepared"}:
        parser.error("--modes takes simple, prepared or both, separated by a comma")
    return args


def verdict(mean: float, margin: float) -> str:
    if mean + margin < 0:
        return "iasql adds less than PgBouncer"
    if mean - margin > 0:
        return "iasql adds more than PgBouncer"
    return "no difference this run can tell"


def measure_pairs(
    pgbench: str, pair: list[overhead.Target], mode: str, args: argparse.Namespace, password: str
) -> str:
    differences: list[float] = []
    cpu: dict[str, list[float]] = {t.name: [] for t in pair}
    for i in range(args.pairs):
        samples: dict[str, overhead.Sample] = {}
        for target in pair if i % 2 == 0 else pair[::-1]:
            samples[target.name] = overhead.measure(
                pgbench, target, mode, 1, args.seconds, password
            )
            cpu[target.name].append(samples[target.name].cpu_us_per_tx or 0.0)
        iasql, pgbouncer = samples["iasql"], samples["pgbouncer"]
        differences.append(1e6 / iasql.tps - 1e6 / pgbouncer.tps)
        overhead.progress(f"{mode:8} pair {i + 1}/{args.pairs}: {differences[-1]:+6.1f} µs")
    mean = statistics.mean(differences)
    margin = 2 * statistics.stdev(differences) / len(differences) ** 0.5
    slower = sum(d > 0 for d in differences)
    return (
        f"| {mode} | {args.pairs} | {mean:+.1f} ± {margin:.1f} | "
        f"{statistics.median(differences):+.1f} | {slower}/{args.pairs} | "
        f"{statistics.median(cpu['iasql']):.1f}, {statistics.median(cpu['pgbouncer']):.1f} | "
        f"{verdict(mean, margin)} |"
    )


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    pgbouncer = overhead.find_tool("pgbouncer")
    tmp = Path(tempfile.mkdtemp(prefix="iasql-pairs-", dir="/tmp"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    tmp.chmod(0o755)  # the unprivileged server user must reach pgdata and pgbouncer's files
    password = secrets.token_urlsafe(16)
    pg = overhead.start_postgres(stack, tmp, password)
    pgbench = overhead.find_tool("pgbench", pg.binaries.bindir)
    overhead.load_data(pgbench, pg, password)
    pair = [
        overhead.start_pgbouncer(stack, tmp, pg, password, pgbouncer),
        overhead.start_iasql(stack, tmp, pg, "native"),
    ]
    overhead.warm_up(pgbench, pair, password)
    rows = [measure_pairs(pgbench, pair, mode, args, password) for mode in args.modes]
    print(f"\nCommand: `{' '.join([sys.executable, *sys.argv])}`\n")
    print(
        "| protocol | pairs | iasql less PgBouncer, µs per query (mean ± 2 s.e.) | median | "
        "pairs iasql slower | CPU µs/tx: iasql, PgBouncer | verdict |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)


def main() -> int:
    return overhead.run("latency_pairs", bench, parse_args())


if __name__ == "__main__":
    sys.exit(main())
