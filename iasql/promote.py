"""`iasql promote`: replay one environment's committed transactions in another.

With `--from` and `--to`, every committed source transaction the target's ledger does not
have yet is promoted in order, each as one infrastructure transaction of the target:
1. the source writes its SQL, each statement with a check (iasql_get_promotion_sql);
2. the target applies its promotion rules to both (iasql_promotion_sql);
3. in the target, each check runs before its statement: where the target's row is not as
   the source's was before the change (a hand edit, drift), the promotion stops before
   touching the cloud and prints source before / source after / target now;
4. the statements run, the ledger records the source transaction, and the target's preview
   is printed; then it commits with --commit, or rolls back (a dry run).

A statement that fails rolls the target back: nothing is half-applied, the ledger unchanged.
`--transaction` promotes one source transaction the same way; `--since` and `--sql-in`
promote SQL with the rules applied but with no check and no ledger entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pglast

from engine.promotion import Rules, load_rules
from engine.sqlgen import fenced

COMMITTED = (
    "SELECT transaction_id, closed_at FROM iasql_transaction WHERE outcome = 'committed'"
    " ORDER BY closed_at, transaction_id"
)


class PromotionError(Exception):
    """Reported as one line (or a few) by the CLI, exit status 1."""


def add_promote(commands: Any) -> None:
    promote = commands.add_parser(
        "promote", help="replay the transactions of one environment in another"
    )
    promote.add_argument("--from", dest="source", help="the source environment's URL")
    promote.add_argument("--to", dest="target", help="the target environment's URL")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--transaction", help="only this source transaction")
    which.add_argument("--since", help="every change since this time (e.g. 2026-11-01)")
    which.add_argument("--status", action="store_true", help="list what is pending, and stop")
    promote.add_argument("--commit", action="store_true", help="commit (default: a dry run)")
    conflicts = promote.add_mutually_exclusive_group()
    conflicts.add_argument(
        "--force", action="store_true", help="apply even where the target's rows differ"
    )
    conflicts.add_argument(
        "--skip", action="store_true", help="record a conflicting transaction as skipped"
    )
    promote.add_argument(
        "--source-name", help="the source's name in the ledger (default: its database's name)"
    )
    promote.add_argument("--review", type=Path, help="also write the dry run as Markdown here")
    promote.add_argument("--sql-out", type=Path, help="write the SQL to this file and stop")
    promote.add_argument("--sql-in", type=Path, help="promote this (edited) SQL file instead")
    promote.set_defaults(run=lambda args: asyncio.run(run_promote(args)))


async def run_promote(args: argparse.Namespace) -> int:
    if args.sql_in is None and not args.source:
        raise PromotionError("name the source with --from URL (or give --sql-in FILE)")
    ledger_mode = args.sql_in is None and args.since is None and args.sql_out is None
    if not ledger_mode:
        given = [f for f in ("status", "force", "skip", "review") if getattr(args, f)]
        if given:
            raise PromotionError(
                f"--{given[0]} works when promoting source transactions (--from and --to"
                " without --since, --sql-in or --sql-out)"
            )
    if ledger_mode:
        if not args.target:
            raise PromotionError("name the target with --to URL")
        await Promotion(args).run()
        return 0
    name = args.source_name
    versions: dict[str, int] = {}
    if args.sql_in is not None:
        statements = split_statements(args.sql_in.read_text())
    else:
        source_name, statements, versions = await source_sql(
            args.source, args.transaction, args.since
        )
        name = name or source_name
    if args.sql_out is not None:
        args.sql_out.write_text("".join(s + "\n" for s in statements))
        print(f"wrote {len(statements)} statements to {args.sql_out}")
        return 0
    if not args.target:
        raise PromotionError("name the target with --to URL (or write the SQL with --sql-out)")
    target = await _connect(args.target, "target")
    try:
        schema = source_schema(versions, await schema_versions(target)) if versions else None
        steps = await apply_rules(target, [Step(s) for s in statements], name, schema)
        await Target(target).apply_plain(steps, commit=args.commit)
    finally:
        await target.close()
    return 0


def split_statements(text: str) -> list[str]:
    try:
        return [s.strip() + ";" for s in pglast.split(text) if s.strip()]
    except pglast.parser.ParseError as exc:
        raise PromotionError(f"the SQL file does not parse: {exc}") from exc


async def _connect(url: str, role: str) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PromotionError(f"cannot connect to the {role} database: {exc}") from exc
    conn.add_log_listener(_print_notice)
    return conn


def _print_notice(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
    print(f"  {message.message}")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def schema_versions(conn: asyncpg.Connection) -> dict[str, int]:
    """A server's module schema versions (a server older than them has 1 for each)."""
    rows = await conn.fetch("SELECT * FROM iasql_modules_list()")
    return {r["module_name"]: r.get("schema_version") or 1 for r in rows}


def source_schema(source: dict[str, int], target: dict[str, int]) -> dict[str, int] | None:
    """What the target needs to translate the source's SQL: the source's module schema
    versions when some are older than the target's, else None. Newer ones are refused: the
    target cannot know what changed in them."""
    newer = [
        f"{name} (source {version}, target {target[name]})"
        for name, version in sorted(source.items())
        if name in target and version > target[name]
    ]
    if newer:
        raise PromotionError(
            "the source's iasql writes newer module schemas than the target's: "
            + ", ".join(newer)
            + "; upgrade the target's iasql server first, then promote"
        )
    older = any(name in target and version < target[name] for name, version in source.items())
    return source if older else None


async def source_sql(
    url: str, transaction: str | None, since: str | None
) -> tuple[str, list[str], dict[str, int]]:
    """The source's name (its database's), its SQL, and its server's module schema versions."""
    conn = await _connect(url, "source")
    try:
        name = str(await conn.fetchval("SELECT current_database()"))
        versions = await schema_versions(conn)
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
    return name, [r["sql"] for r in rows], versions


# --- one statement, one source transaction -----------------------------------------------


@dataclass
class Step:
    """One statement of the source, before and after the target's rules."""

    source_sql: str
    table: str = ""
    rules: Rules | None = None  # the target's, to show the source's values as they become
    check_sql: str | None = None
    expected: int = 0
    now_sql: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    sql: str | None = None  # after the rules; None where an exclude rule keeps it out
    rewrites: list[dict[str, Any]] = field(default_factory=list)

    def shown(self, column: str, value: Any) -> Any:
        """A source value as the target's rules make it (strings inside JSON too)."""
        if isinstance(value, dict):
            return {k: self.shown(column, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.shown(column, v) for v in value]
        if isinstance(value, str) and self.rules is not None:
            return self.rules.map(self.table, column, value)[0]
        return value


@dataclass
class SourceTransaction:
    transaction_id: str
    closed_at: Any
    steps: list[Step]

    @property
    def statements(self) -> list[Step]:
        return [s for s in self.steps if s.sql is not None]


async def apply_rules(
    target: asyncpg.Connection,
    steps: list[Step],
    source: str | None,
    schema: dict[str, int] | None = None,
) -> list[Step]:
    """The steps with the target's rules applied to their statements and checks (translated
    first from the source's older module `schema`, when given)."""
    texts = [s.source_sql for s in steps]
    checked = all(s.check_sql is not None for s in steps)
    if checked:
        texts = [t for s in steps for t in (s.source_sql, s.check_sql, s.now_sql)]  # type: ignore[misc]
    if not texts:
        return steps
    try:
        rows = await target.fetch(
            "SELECT sql, rewrites FROM iasql_promotion_sql($1, $2, $3) ORDER BY position",
            "\n".join(str(t) for t in texts),
            source,
            None if schema is None else json.dumps(schema),
        )
    except asyncpg.PostgresError as exc:
        raise PromotionError(f"applying the target's rules failed: {_first_line(exc)}") from exc
    width = 3 if checked else 1
    if len(rows) != len(steps) * width:
        raise PromotionError("the target split the SQL into other statements than the source")
    for number, step in enumerate(steps):
        group = rows[number * width : (number + 1) * width]
        step.rewrites = [r for row in group for r in json.loads(row["rewrites"])]
        # Left out when an exclude rule matches the statement or its check (the row before).
        kept = all(row["sql"] is not None for row in group)
        step.sql = group[0]["sql"] if kept else None
        if checked and kept:
            step.check_sql, step.now_sql = group[1]["sql"], group[2]["sql"]
    return steps


async def load_transaction(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    row: Any,
    name: str,
    rules: Rules,
    schema: dict[str, int] | None,
) -> SourceTransaction:
    try:
        found = await source.fetch(
            "SELECT * FROM iasql_get_promotion_sql($1) ORDER BY position", row["transaction_id"]
        )
    except asyncpg.PostgresError as exc:
        raise PromotionError(f"reading the source's SQL failed: {_first_line(exc)}") from exc
    steps = [
        Step(
            source_sql=r["sql"],
            table=r["table_name"],
            rules=rules,
            check_sql=r["check_sql"],
            expected=r["expected_rows"],
            now_sql=r["now_sql"],
            before=json.loads(r["source_before"]) if r["source_before"] else None,
            after=json.loads(r["source_after"]) if r["source_after"] else None,
        )
        for r in found
    ]
    steps = await apply_rules(target, steps, name, schema)
    return SourceTransaction(row["transaction_id"], row["closed_at"], steps)


# --- conflicts ----------------------------------------------------------------------------


@dataclass
class Conflict:
    step: Step
    found: int
    now: dict[str, Any] | None

    def lines(self) -> list[str]:
        step = self.step
        key = (step.check_sql or "").partition(" WHERE ")[2].rstrip(";")
        head = f"  {step.sql}\n  rows where {key}: expected {step.expected}, found {self.found}"
        before = {c: step.shown(c, v) for c, v in (step.before or {}).items()}
        after = {c: step.shown(c, v) for c, v in (step.after or {}).items()}
        columns = list(dict.fromkeys([*before, *after]))
        cells = [
            [
                c,
                _text(before.get(c)) if step.before is not None else "(no row)",
                _text(after.get(c)) if step.after is not None else "(deleted)",
                _text(self.now.get(c)) if self.now is not None else "(no row)",
            ]
            for c in columns
        ]
        return [head, *text_table(["column", "source before", "source after", "target now"], cells)]


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    return value if isinstance(value, str) else json.dumps(value)


def text_table(headers: list[str], cells: list[list[str]]) -> list[str]:
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    return [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, ["-" * w for w in widths], *cells]
    ]


class ConflictFound(Exception):
    def __init__(self, conflict: Conflict) -> None:
        super().__init__("conflict")
        self.conflict = conflict
        self.transaction_id = ""  # set by whoever runs the source transaction


# --- the target ---------------------------------------------------------------------------


class Target:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.open = False

    async def begin(self) -> None:
        try:
            await self.conn.execute("SELECT * FROM iasql_begin()")
        except asyncpg.PostgresError as exc:
            raise PromotionError(f"cannot begin in the target: {_first_line(exc)}") from exc
        self.open = True

    async def rollback(self) -> None:
        """Rolls the open transaction back, quietly: its notices of rows re-read from the
        cloud say nothing about the promotion."""
        if self.open:
            self.conn.remove_log_listener(_print_notice)
            try:
                await self.conn.execute("SELECT * FROM iasql_rollback()")
            finally:
                self.conn.add_log_listener(_print_notice)
            self.open = False

    async def run(self, steps: list[Step], *, force: bool = False) -> list[Conflict]:
        """Runs the statements, each after its check, in the open transaction. A failing
        statement rolls it back; a failing check raises ConflictFound, or with `force` is
        returned, and the statement runs anyway."""
        runnable = [s for s in steps if s.sql is not None]
        conflicts = []
        for number, step in enumerate(runnable, 1):
            try:
                if step.check_sql is not None:
                    found = await self.conn.fetchval(step.check_sql)
                    if found != step.expected:
                        row = await self.conn.fetchval(str(step.now_sql))
                        conflict = Conflict(step, found, json.loads(row) if row else None)
                        if not force:
                            raise ConflictFound(conflict)
                        conflicts.append(conflict)
                await self.conn.execute(step.sql)
            except asyncpg.PostgresError as exc:
                await self.rollback()
                raise PromotionError(
                    f"statement {number} of {len(runnable)} failed in the target; it was"
                    f" rolled back, nothing was applied\n  {step.sql}\n  {_first_line(exc)}"
                ) from exc
        return conflicts

    async def preview(self) -> list[Any]:
        return list(
            await self.conn.fetch(
                "SELECT action, table_name, id, description FROM iasql_preview()"
                " ORDER BY table_name, action"
            )
        )

    async def commit(self, message: str) -> list[Any]:
        try:
            done = await self.conn.fetch("SELECT * FROM iasql_commit($1)", message)
        except asyncpg.PostgresError as exc:
            # A commit the cloud failed midway is undone and closed by the engine; one that
            # failed before (planning) leaves the transaction open, to be rolled back here.
            self.open = bool(
                await self.conn.fetchval(
                    "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL"
                )
            )
            await self.rollback()
            raise PromotionError(
                f"the target's commit failed: {_first_line(exc)}; the target was rolled back"
                " and its ledger is unchanged"
            ) from exc
        self.open = False
        return list(done)

    async def apply_plain(self, steps: list[Step], *, commit: bool) -> None:
        """Promotes SQL that has no checks and no ledger entry (--sql-in, --since)."""
        await self.begin()
        try:
            await self.run(steps)
            print_rewrites(steps)
            print_preview(await self.preview())
            if commit:
                done = await self.commit("promoted by iasql promote")
                print(f"committed {len(done)} cloud operations in the target")
            else:
                await self.rollback()
                print("dry run: rolled back (pass --commit to apply)")
        finally:
            await self.rollback()


class Promotion:
    """Every committed source transaction the target's ledger lacks, in order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.review: list[str] = []  # per transaction (a dry run that skips starts it over)
        self.conflicts: list[str] = []  # every conflict reported, for the review
        self.schema: dict[str, int] | None = None  # the source's, when older (source_schema)

    async def run(self) -> None:
        source = await _connect(self.args.source, "source")
        try:
            target_conn = await _connect(self.args.target, "target")
        except PromotionError:
            await source.close()
            raise
        target = Target(target_conn)
        try:
            name = self.args.source_name or await source.fetchval("SELECT current_database()")
            self.schema = source_schema(
                await schema_versions(source), await schema_versions(target_conn)
            )
            pending = await self.pending(source, target_conn, name)
            if self.args.status:
                await self.print_status(target_conn, name, pending)
            elif self.args.commit:
                await self.commit_each(target, name, pending)
            else:
                await self.dry_run(target, name, pending)
        except asyncpg.PostgresError as exc:
            raise PromotionError(f"the target failed: {_first_line(exc)}") from exc
        finally:
            try:
                await target.rollback()
            except asyncpg.PostgresError as exc:  # the error that brought us here matters more
                print(f"  could not roll the target back: {_first_line(exc)}")
            finally:
                await target_conn.close()
                await source.close()
                if self.args.review is not None:  # a conflict belongs in the review too
                    self.args.review.write_text("\n".join([*self.conflicts, *self.review]) + "\n")
                    print(f"wrote the review to {self.args.review}")

    async def pending(
        self, source: asyncpg.Connection, target: asyncpg.Connection, name: str
    ) -> list[SourceTransaction]:
        done = {
            r["source_transaction_id"]
            for r in await target.fetch(
                "SELECT source_transaction_id FROM iasql_promotions()"
                " WHERE source_environment = $1",
                name,
            )
        }
        committed = await source.fetch(COMMITTED)
        rules = await load_rules(target, name)
        if self.args.transaction is not None:
            committed = [r for r in committed if r["transaction_id"] == self.args.transaction]
            if not committed:
                raise PromotionError(
                    f"the source has no committed transaction {self.args.transaction!r}"
                )
        found = []
        for row in committed:
            if row["transaction_id"] in done:
                continue
            loaded = await load_transaction(source, target, row, name, rules, self.schema)
            if loaded.steps:  # a transaction of module functions only has nothing to replay
                found.append(loaded)
        return found

    async def print_status(
        self, target: asyncpg.Connection, name: str, pending: list[SourceTransaction]
    ) -> None:
        counts = await target.fetch(
            "SELECT status, count(*) FROM iasql_promotions() WHERE source_environment = $1"
            " GROUP BY status ORDER BY status",
            name,
        )
        done = ", ".join(f"{r['count']} {r['status']}" for r in counts) or "nothing yet"
        print(f"from {name}: {done}; {len(pending)} pending")
        for transaction in pending:
            print(
                f"  {transaction.transaction_id}  committed {transaction.closed_at:%Y-%m-%d %H:%M:%S}"
                f"  {len(transaction.statements)} of {len(transaction.steps)} statements"
            )

    def _heading(self, name: str, number: int, total: int, tx: SourceTransaction) -> None:
        line = f"{name} transaction {tx.transaction_id} ({number} of {total})"
        print(line)
        self.review += [f"## {line}", ""]

    async def commit_each(
        self, target: Target, name: str, pending: list[SourceTransaction]
    ) -> None:
        if not pending:
            print(f"nothing to promote from {name}")
        for number, tx in enumerate(pending, 1):
            self._heading(name, number, len(pending), tx)
            if not tx.statements:
                await self.record(target.conn, name, tx, "skipped")
                print("  skipped: exclude rules keep every statement out")
                continue
            await target.begin()
            try:
                forced = await target.run(tx.steps, force=self.args.force)
            except ConflictFound as found:
                await self.stop_unless_skipping(target, found)
                await self.record(target.conn, name, tx, "skipped")
                continue
            for conflict in forced:
                self.report(conflict, "applied anyway (--force)")
            await self.record(target.conn, name, tx, "forced" if forced else "applied")
            print_rewrites(tx.steps)
            preview = await target.preview()
            print_preview(preview)
            self.review += review_section(tx, preview)
            done = await target.commit(f"promoted {name} transaction {tx.transaction_id}")
            print(f"committed {len(done)} cloud operations in the target")

    async def dry_run(self, target: Target, name: str, pending: list[SourceTransaction]) -> None:
        """All pending transactions in one target transaction, rolled back at the end; a
        skipped conflict starts it over without that transaction."""
        skipped: set[str] = set()
        while True:
            self.review = []
            await target.begin()
            try:
                await self._dry_run_once(target, name, pending, skipped)
                break
            except ConflictFound as found:
                await self.stop_unless_skipping(target, found)
                skipped.add(found.transaction_id)
        await target.rollback()
        print("dry run: rolled back (pass --commit to apply)")

    async def _dry_run_once(
        self, target: Target, name: str, pending: list[SourceTransaction], skipped: set[str]
    ) -> None:
        if not pending:
            print(f"nothing to promote from {name}")
        for number, tx in enumerate(pending, 1):
            self._heading(name, number, len(pending), tx)
            if tx.transaction_id in skipped or not tx.statements:
                print("  skipped")
                self.review += ["Skipped.", ""]
                continue
            try:
                forced = await target.run(tx.steps, force=self.args.force)
            except ConflictFound as found:
                found.transaction_id = tx.transaction_id
                raise
            for conflict in forced:
                self.report(conflict, "would be applied anyway (--force)")
            print_rewrites(tx.steps)
            preview = await target.preview()
            if number > 1:
                print("the target's preview, with the transactions above:")
            print_preview(preview)
            self.review += review_section(tx, preview, cumulative=number > 1)

    def report(self, conflict: Conflict, outcome: str) -> None:
        lines = [f"conflict, {outcome}: the target's row is not as the source's was before:"]
        lines += conflict.lines()
        print("\n".join(lines))
        self.conflicts += ["## Conflict", "", *fenced("text", lines), ""]

    async def stop_unless_skipping(self, target: Target, found: ConflictFound) -> None:
        """Rolls the target back and reports the conflict; stops there unless --skip."""
        await target.rollback()
        self.report(found.conflict, "skipped (--skip)" if self.args.skip else "stopped")
        if not self.args.skip:
            raise PromotionError(
                "stopped at a conflict; nothing of this source transaction was applied"
                " (--force applies it anyway, --skip records it as skipped)"
            )

    async def record(
        self, target: asyncpg.Connection, name: str, tx: SourceTransaction, status: str
    ) -> None:
        await target.execute(
            "SELECT * FROM iasql_record_promotion($1, $2, $3)", name, tx.transaction_id, status
        )


def print_rewrites(steps: list[Step]) -> None:
    cells = [
        [r["table"], r["column"], _text(r["source"]), _text(r["target"])]
        for s in steps
        for r in s.rewrites
    ]
    cells = [c for i, c in enumerate(cells) if c not in cells[:i]]
    if cells:
        print("\n".join(text_table(["table", "column", "source value", "target value"], cells)))
    for step in steps:
        if step.sql is None:
            print(f"  left out by an exclude rule: {step.source_sql}")


def print_preview(rows: list[Any]) -> None:
    headers = ["action", "table_name", "id", "description"]
    cells = [[str(r[h]) if r[h] is not None else "" for h in headers] for r in rows]
    print("\n".join(text_table(headers, cells)))
    print(f"({len(rows)} cloud operations)")


def _cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def review_section(
    tx: SourceTransaction, preview: list[Any], *, cumulative: bool = False
) -> list[str]:
    """Markdown for one promoted transaction: the values the rules changed, the SQL after
    them, and the target's preview (in a dry run, with the transactions before it)."""
    lines = []
    rewrites = [r for s in tx.steps for r in s.rewrites]
    if rewrites:
        lines += ["| table | column | source value | target value |", "|---|---|---|---|"]
        seen = []
        for r in rewrites:
            row = f"| {r['table']} | {r['column']} | {_cell(r['source'])} | {_cell(r['target'])} |"
            if row not in seen:
                seen.append(row)
        lines += [*seen, ""]
    lines += [*fenced("sql", [s.sql for s in tx.statements if s.sql]), ""]
    if cumulative:
        lines += ["The target's preview, with the transactions above:", ""]
    lines += ["| action | table_name | id | description |", "|---|---|---|---|"]
    lines += [
        "| " + " | ".join(_cell(r[h]) for h in ("action", "table_name", "id", "description")) + " |"
        for r in preview
    ]
    return [*lines, ""]
