"""`iasql promote`: replay a staging transaction in prod.

The SQL comes from the source database's audit log (or a file a person edited). In the
target it runs inside an infrastructure transaction: the preview is printed, then the
transaction is committed with --commit, and rolled back otherwise (a dry run). A statement
that fails rolls the target back: nothing is half-applied.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pglast


class PromotionError(Exception):
    """Reported as one line (or a few) by the CLI, exit status 1."""


def add_promote(commands: Any) -> None:
    promote = commands.add_parser(
        "promote", help="replay a transaction of one environment in another"
    )
    promote.add_argument("--from", dest="source", help="the source environment's URL")
    promote.add_argument("--to", dest="target", help="the target environment's URL")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--transaction", help="the source transaction (default: the latest)")
    which.add_argument("--since", help="every change since this time (e.g. 2026-11-01)")
    promote.add_argument("--commit", action="store_true", help="commit (default: a dry run)")
    promote.add_argument("--sql-out", type=Path, help="write the SQL to this file and stop")
    promote.add_argument("--sql-in", type=Path, help="promote this (edited) SQL file instead")
    promote.set_defaults(run=lambda args: asyncio.run(run_promote(args)))


async def run_promote(args: argparse.Namespace) -> int:
    if args.sql_in is not None:
        statements = split_statements(args.sql_in.read_text())
    else:
        if not args.source:
            raise PromotionError("name the source with --from URL (or give --sql-in FILE)")
        statements = await source_sql(args.source, args.transaction, args.since)
    if args.sql_out is not None:
        args.sql_out.write_text("".join(s + "\n" for s in statements))
        print(f"wrote {len(statements)} statements to {args.sql_out}")
        return 0
    if not args.target:
        raise PromotionError("name the target with --to URL (or write the SQL with --sql-out)")
    await apply_to_target(args.target, statements, commit=args.commit)
    return 0


def split_statements(text: str) -> list[str]:
    try:
        return [s.strip() + ";" for s in pglast.split(text) if s.strip()]
    except pglast.parser.ParseError as exc:
        raise PromotionError(f"the SQL file does not parse: {exc}") from exc


async def _connect(url: str, role: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PromotionError(f"cannot connect to the {role} database: {exc}") from exc


async def source_sql(url: str, transaction: str | None, since: str | None) -> list[str]:
    conn = await _connect(url, "source")
    try:
        if since is not None:
            rows = await conn.fetch("SELECT sql FROM iasql_get_sql_since($1)", since)
        else:
            rows = await conn.fetch(
                "SELECT sql FROM iasql_get_sql_for_transaction($1)", transaction
            )
    except asyncpg.PostgresError as exc:
        raise PromotionError(f"reading the source's SQL failed: {_first_line(exc)}") from exc
    finally:
        await conn.close()
    return [r["sql"] for r in rows]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def apply_to_target(url: str, statements: list[str], *, commit: bool) -> None:
    conn = await _connect(url, "target")
    conn.add_log_listener(lambda _conn, message: print(f"  {message.message}"))
    try:
        try:
            await conn.execute("SELECT * FROM iasql_begin()")
        except asyncpg.PostgresError as exc:
            raise PromotionError(f"cannot begin in the target: {_first_line(exc)}") from exc
        for number, statement in enumerate(statements, 1):
            try:
                await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                await conn.execute("SELECT * FROM iasql_rollback()")
                raise PromotionError(
                    f"statement {number} of {len(statements)} failed in the target; it was"
                    f" rolled back, nothing was applied\n  {statement}\n  {_first_line(exc)}"
                ) from exc
        preview = await conn.fetch(
            "SELECT action, table_name, id, description FROM iasql_preview()"
            " ORDER BY table_name, action"
        )
        print_table(preview)
        if commit:
            await conn.execute("SELECT * FROM iasql_commit('promoted by iasql promote')")
            print(f"committed {len(preview)} cloud operations in the target")
        else:
            await conn.execute("SELECT * FROM iasql_rollback()")
            print("dry run: rolled back (pass --commit to apply)")
    except asyncpg.PostgresError as exc:
        raise PromotionError(f"the target failed: {_first_line(exc)}") from exc
    finally:
        await conn.close()


def print_table(rows: list[Any]) -> None:
    headers = ["action", "table_name", "id", "description"]
    cells = [[str(r[h]) if r[h] is not None else "" for h in headers] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)))
    print(f"({len(rows)} cloud operations)")
