"""Running a plan against the cloud: a dependency graph of steps, run concurrently within a
bound, each journaled before and after it touches the cloud, and undone on failure.

A create waits for the creates of the rows it references (a subnet for its VPC); a delete
waits for the deletes and updates of what references it (a VPC for its subnets); a replace is
a delete followed by a create. Cloud-assigned values (ids, arns) are written back to the row,
with the journal entry, in one database transaction as each step ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from engine.plan import CREATE, DELETE, REPLACE, UPDATE, Operation, Plan
from engine.records import Pending, cloud_key, primary_key, row_as_record, update_row
from engine.sync import read_cloud
from modules.spec import CREATED_WITH, TOKEN, Cloud, CloudError, Column, Mapper, Record, Table

log = logging.getLogger("iasql.apply")

VERBS = {CREATE: "creating", UPDATE: "updating", DELETE: "deleting"}
PROGRESS_LINES = 20  # progress notices for a commit of more than 50 steps


@dataclass(eq=False)
class Step:
    operation: Operation
    kind: str  # create, update or delete: a replace is a delete step and a create step
    number: int
    waiting: int = 0
    dependents: list[Step] = field(default_factory=list)
    result: Record | None = None  # the cloud's record after a create or update
    token: str = ""
    journal: int = 0  # its iasql_commit_journal id, once started
    made_with: list[Step] = field(default_factory=list)  # see Table.created_with

    @property
    def table(self) -> Table:
        return self.operation.table

    @property
    def mapper(self) -> Mapper:
        assert self.table.mapper is not None
        return self.table.mapper

    def needs(self, other: Step | None) -> None:
        if other is not None and other is not self and self not in other.dependents:
            other.dependents.append(self)
            self.waiting += 1

    def label(self) -> str:
        return (
            f"{self.table.name} {self.operation.description or self.operation.row_id or ''}".strip()
        )


class StepFailed(Exception):
    def __init__(self, step: Step, error: BaseException) -> None:
        # On one line: a client shows the first line of a message (botocore's parameter
        # errors put what is wrong on the next ones).
        super().__init__(" ".join(f"{step.kind} {step.label()}: {error}".split()))
        self.step = step
        self.error = error


def build_steps(plan: Plan) -> list[Step]:
    steps: list[Step] = []
    for operation in plan.operations:
        kinds = [DELETE, CREATE] if operation.action == REPLACE else [operation.action]
        pair = [Step(operation, kind, len(steps) + i + 1) for i, kind in enumerate(kinds)]
        if len(pair) == 2:
            pair[1].needs(pair[0])
        steps += pair
    referenced = {(c.ref.table, c.ref.key) for t in plan.tables for c in t.references if c.ref}
    cloud_referenced = {
        (c.ref.table, c.ref.cloud or c.ref.key) for t in plan.tables for c in t.references if c.ref
    } | {
        (c.cloud_ref.table, c.cloud_ref.key)
        for t in plan.tables
        for c in t.cloud_references
        if c.cloud_ref
    }
    # Who creates the row with table.key = value, and who deletes the resource with that id.
    creates: dict[tuple[str, str, Any], Step] = {}
    deletes: dict[tuple[str, str, Any], Step] = {}
    for step in steps:
        op = step.operation
        if step.kind == CREATE and op.row is not None:
            for table_name, key in referenced:
                if table_name == step.table.name:
                    creates[(table_name, key, op.row.get(key))] = step
        if step.kind == DELETE and op.current is not None:
            for table_name, cloud_column in cloud_referenced:
                if table_name == step.table.name:
                    deletes[(table_name, cloud_column, op.current.get(cloud_column))] = step
    for step in steps:
        op = step.operation
        for column in step.table.references:
            ref = column.ref
            assert ref is not None
            if step.kind in (CREATE, UPDATE) and op.row is not None:
                step.needs(creates.get((ref.table, ref.key, op.row.get(column.name))))
            if step.kind in (DELETE, UPDATE) and op.current is not None:
                parent = deletes.get((ref.table, ref.cloud or ref.key, op.current.get(column.name)))
                if parent is not None:
                    parent.needs(step)
        if step.kind in (DELETE, UPDATE) and op.current is not None:
            for column in step.table.cloud_references:
                _after_naming_rows(step, column, op.current.get(column.name), deletes)
    # The orders tables declare come after every reference's, which they never outrank.
    for step in steps:
        if step.kind in (CREATE, UPDATE):
            for other in steps:
                if other.kind == CREATE and other.table.name in step.table.create_after:
                    _wait_unless_cycle(step, other)
    _give_created_with(steps)
    return steps


def _wait_unless_cycle(step: Step, other: Step) -> None:
    """`step` waits for `other`, unless `other` already waits for `step` (through any chain):
    an order a table declares (create_after, created_with) never outranks a reference."""
    seen: set[int] = set()
    stack = [step]
    while stack:
        current = stack.pop()
        if current is other:
            return
        if id(current) not in seen:
            seen.add(id(current))
            stack.extend(current.dependents)
    step.needs(other)


def _give_created_with(steps: list[Step]) -> None:
    """A create of a table with `created_with` gets the creates of those rows that reference
    its row, and waits for what they wait for (except itself)."""
    needed_by: dict[int, list[Step]] = {}
    for step in steps:
        for dependent in step.dependents:
            needed_by.setdefault(id(dependent), []).append(step)
    for step in steps:
        wanted = step.table.created_with
        if step.kind != CREATE or not wanted or step.operation.row is None:
            continue
        for child in steps:
            if child.kind == CREATE and child.table.name in wanted and _refers(child, step):
                step.made_with.append(child)
                for need in needed_by.get(id(child), []):
                    _wait_unless_cycle(step, need)


def _refers(child: Step, parent: Step) -> bool:
    row, parent_row = child.operation.row, parent.operation.row
    assert row is not None and parent_row is not None
    return any(
        c.ref is not None
        and c.ref.table == parent.table.name
        and row.get(c.name) is not None
        and row.get(c.name) == parent_row.get(c.ref.key)
        for c in child.table.references
    )


def _after_naming_rows(
    step: Step, column: Column, value: Any, deletes: dict[tuple[str, str, Any], Step]
) -> None:
    """A resource named by cloud id in `column` is deleted only after `step` (which deletes or
    changes the row naming it) has run."""
    ref = column.cloud_ref
    assert ref is not None
    for cloud_id in value if isinstance(value, list) else [value]:
        parent = deletes.get((ref.table, ref.key, cloud_id))
        if parent is not None:
            parent.needs(step)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def as_json(table: Table, record: Record | None) -> str | None:
    """A record for the journal, without its secrets (the journal is readable by users)."""
    if record is None:
        return None
    secrets = {c.name for c in table.columns if c.secret}
    kept = {k: v for k, v in record.items() if k not in secrets}
    return json.dumps(kept, default=_json_default)


class Applier:
    """Runs the steps of one commit."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        cloud: Cloud,
        plan: Plan,
        transaction_id: str,
        notify: Callable[[str], None],
        concurrency: int,
        stop_requested: Callable[[], bool],
    ) -> None:
        self.pool = pool
        self.cloud = cloud
        self.plan = plan
        self.transaction_id = transaction_id
        self.notify = notify
        self.concurrency = max(1, concurrency)
        self.stop_requested = stop_requested
        self.steps = build_steps(plan)
        self.done: list[Step] = []
        self.finished = 0
        # Resources made whose rows were deleted before their ids could be written back.
        self.vanished: dict[str, list[Record]] = {}

    async def run(self) -> None:
        """Runs every step; on the first failure (or a stop request) schedules nothing more,
        lets the running steps end, and raises StepFailed (or CancelledError)."""
        ready = [s for s in self.steps if s.waiting == 0]
        running: dict[asyncio.Task[None], Step] = {}
        failure: StepFailed | None = None
        while ready or running:
            while ready and len(running) < self.concurrency and failure is None:
                if self.stop_requested():
                    break
                step = ready.pop(0)
                running[asyncio.ensure_future(self._execute(step))] = step
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                step = running.pop(task)
                error = task.exception()
                if error is not None:
                    failure = failure or StepFailed(step, error)
                    continue
                self.done.append(step)
                for dependent in step.dependents:
                    dependent.waiting -= 1
                    if dependent.waiting == 0:
                        ready.append(dependent)
        if failure is not None:
            raise failure
        if self.stop_requested():
            raise asyncio.CancelledError
        if len(self.done) != len(self.steps):
            raise CloudError("some operations wait on each other in a cycle; nothing more ran")

    async def _execute(self, step: Step) -> None:
        step.token = f"{self.transaction_id}:{step.number}"
        # A step that fails stays `started` in the journal: a mapper may have made the resource
        # before a later call of its own failed, so the revert looks for it in the cloud.
        await self._apply(step)
        self.finished += 1
        # Every step of a small commit; about every 5% of a big one, so progress stays readable.
        every = max(1, len(self.steps) // PROGRESS_LINES) if len(self.steps) > 50 else 1
        if self.finished % every == 0 or self.finished == len(self.steps):
            self.notify(
                f"{self.finished}/{len(self.steps)} {VERBS[step.kind]} {step.label()}: done"
            )

    async def _apply(self, step: Step) -> None:
        op = step.operation
        if step.kind == DELETE:
            assert op.current is not None
            journal = await self._journal_start(step, op.current, None)
            await step.mapper.delete(self.cloud, op.current)
            await self._finish(step, journal, None)
        else:
            assert op.row is not None
            desired = row_as_record(step.table, op.row, self.plan.refs)
            missing = [v for v in desired.values() if isinstance(v, Pending)]
            if missing:
                raise CloudError(f"{missing[0]} was not created")
            desired[TOKEN] = step.token
            if step.kind == CREATE:
                journal = await self._journal_start(step, None, desired)
                result = await step.mapper.create(self.cloud, self._with_rows(step, desired))
            else:
                assert op.current is not None
                journal = await self._journal_start(step, op.current, desired)
                result = await step.mapper.update(self.cloud, desired, op.current)
            # What the mapper did not echo back (e.g. the region) is as requested.
            result.pop(CREATED_WITH, None)  # the children's records: not this row's
            step.result = {**desired, **result}
            await self._finish(step, journal, step.result)

    def _with_rows(self, step: Step, desired: Record) -> Record:
        if not step.made_with:
            return desired
        made_with: dict[str, list[Record]] = {}
        for child in step.made_with:
            assert child.operation.row is not None
            record = row_as_record(child.table, child.operation.row, self.plan.refs)
            parent_refs = {
                c.name for c in child.table.references if c.ref and c.ref.table == step.table.name
            }
            if any(isinstance(v, Pending) for n, v in record.items() if n not in parent_refs):
                continue  # what it names is not made: its own create reports that
            made_with.setdefault(child.table.name, []).append(record)
        return {**desired, CREATED_WITH: made_with}

    async def _journal_start(self, step: Step, before: Record | None, after: Record | None) -> int:
        step.journal = int(
            await self.pool.fetchval(
                "INSERT INTO iasql_commit_journal (transaction_id, table_name, action, token,"
                " before, after, state) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb,"
                " 'started') RETURNING id",
                self.transaction_id,
                step.table.name,
                step.kind,
                step.token,
                as_json(step.table, before),
                as_json(step.table, after),
            )
        )
        return step.journal

    async def _finish(self, step: Step, journal: int, result: Record | None) -> None:
        """Writes the cloud-assigned values back and closes the journal entry, atomically
        (one statement when the cloud assigned nothing: most of a big commit's steps)."""
        row = step.operation.row
        writes = result is not None and row is not None and _assigns(step.table, result)
        async with (
            self.pool.acquire() as conn,
            conn.transaction() if writes else contextlib.nullcontext(),
        ):
            await self._record_result(conn, step, journal, result)

    async def _record_result(
        self, conn: asyncpg.Connection, step: Step, journal: int, result: Record | None
    ) -> None:
        if result is not None and step.operation.row is not None:
            row = await write_back(conn, step.table, step.operation.row, result, self.plan)
            if row is None:  # a user deleted the row meanwhile: its DELETE stays pending
                self.vanished.setdefault(step.table.name, []).append(result)
            else:
                self.plan.refs.learn(step.table, row)
        await conn.execute(
            "UPDATE iasql_commit_journal SET state = 'done', after = $2::text::jsonb,"
            " updated_at = clock_timestamp() WHERE id = $1",
            journal,
            as_json(step.table, result),
        )

    def applied(self) -> dict[str, list[Record]]:
        """The resources this commit created or changed, as the cloud answered, by table."""
        made: dict[str, list[Record]] = {}
        for step in self.done:
            if step.result is not None:
                made.setdefault(step.table.name, []).append(step.result)
        return made

    async def revert(self, regions: list[str]) -> list[str]:
        """Undoes the steps that ran, newest first, then finds out whether the steps cut short
        by the failure reached the cloud and undoes those too. A journal entry is marked
        undone only once its undo succeeded; what could not be undone stays in the journal
        for a later retry. Returns one line per resource left in the cloud."""
        problems: list[str] = []
        down: BaseException | None = None
        for step in reversed(self.done):
            if down is not None:
                problems.append(f"{step.kind} of {step.label()}: not tried")
                continue
            try:
                await undo_step(
                    self.cloud, step.table, step.kind, step.operation.current, step.result
                )
            except Exception as exc:  # keep undoing the rest; report every leftover
                problems.append(f"{step.kind} of {step.label()}: {exc}")
                down = exc if unreachable(exc) else None
                continue
            await _set_state(self.pool, step.journal, "undone")
            self.notify(f"undid {step.kind} of {step.label()}")
        tables = {t.name: t for t in self.plan.tables}
        if down is None:
            problems += await recover(
                self.pool, self.cloud, self.transaction_id, tables, regions, self.notify, True
            )
        else:
            cut_short = await self.pool.fetch(
                "SELECT table_name, action, token, before, after FROM iasql_commit_journal"
                " WHERE transaction_id = $1 AND state = 'started'",
                self.transaction_id,
            )
            problems += [
                f"{_entry_label(tables.get(e['table_name']), e)}: may have happened, not checked"
                for e in cut_short
            ]
        return problems


def unreachable(error: BaseException) -> bool:
    """Whether the endpoint could not be reached, or failed on its side even after retries
    (HTTP 5xx), so that further calls would most likely fail too."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500
    failing = BotoConnectionError | HTTPClientError | ResponseParserError | OSError | TimeoutError
    return isinstance(error, failing)


async def _set_state(pool: asyncpg.Pool, journal: int, state: str) -> None:
    await pool.execute(
        "UPDATE iasql_commit_journal SET state = $2, updated_at = clock_timestamp() WHERE id = $1",
        journal,
        state,
    )


async def undo_step(
    cloud: Cloud, table: Table, kind: str, before: Record | None, after: Record | None
) -> None:
    """Puts one resource back the way it was before a step changed it."""
    assert table.mapper is not None
    if kind == CREATE and after is not None:
        await table.mapper.delete(cloud, after)
    elif kind == UPDATE and before is not None and after is not None:
        await table.mapper.update(cloud, before, after)
    elif kind == DELETE and before is not None:
        await table.mapper.create(cloud, before)


def _assigns(table: Table, result: Record) -> bool:
    """Whether a mapper's result carries values for the row's cloud-assigned columns."""
    return any(c.cloud_assigned and c.name in result for c in table.columns)


async def write_back(
    conn: asyncpg.Connection, table: Table, row: Record, result: Record, plan: Plan
) -> Record | None:
    """Stores the values the cloud assigned (ids, arns, states) into the row; None when the
    row is gone."""
    values = {
        c.name: plan.refs.to_key(c, result.get(c.name))
        for c in table.columns
        if c.cloud_assigned and c.name in result
    }
    row.update(values)
    if values:
        status = await update_row(conn, table, primary_key(table, row), values)
        if status == "UPDATE 0":
            return None
    return row


async def recover(
    pool: asyncpg.Pool,
    cloud: Cloud,
    transaction_id: str,
    tables: dict[str, Table],
    regions: list[str],
    notify: Callable[[str], None],
    only_started: bool = False,
) -> list[str]:
    """Undoes what a commit did to the cloud, from its journal: after a crash, for steps a
    failure cut short (`only_started`), and to retry undos that failed. A step that started
    but never finished may or may not have happened: the cloud is read to find out (a created
    resource by its token or its name). Each entry is marked undone once its undo succeeded;
    after the endpoint proves unreachable nothing more is tried. Returns what is left."""
    entries = await pool.fetch(
        "SELECT id, table_name, action, token, before, after, state FROM iasql_commit_journal"
        " WHERE transaction_id = $1 AND state IN ('started', 'done')"
        + (" AND state = 'started'" if only_started else "")
        + " ORDER BY id DESC",
        transaction_id,
    )
    problems = []
    found: dict[str, list[Record]] = {}
    down: BaseException | None = None
    for entry in entries:
        table = tables.get(entry["table_name"])
        label = _entry_label(table, entry)
        if table is None or table.mapper is None:
            problems.append(f"{label}: its module is not installed")
            continue
        if down is not None:
            problems.append(f"{label}: not tried")
            continue
        before, after = entry["before"], entry["after"]
        try:
            if entry["state"] == "started":
                if table.name not in found:
                    found[table.name] = await read_cloud(cloud, table, regions)
                after = _find(table, found[table.name], entry["token"], after)
                if entry["action"] == DELETE and _find(table, found[table.name], "", before):
                    after = before = None  # the delete never happened: nothing to undo
            await undo_step(cloud, table, entry["action"], before, after)
        except Exception as exc:
            problems.append(f"{label}: {exc}")
            down = exc if unreachable(exc) else None
            continue
        await _set_state(pool, entry["id"], "undone")
        if after is not None or before is not None:
            notify(f"undid {label}")
    return problems


def _entry_label(table: Table | None, entry: asyncpg.Record) -> str:
    """How a journal entry names its resource: `create of queue jobs/us-east-1`."""
    key = None
    if table is not None:
        key = cloud_key(table, entry["after"] or {}) or cloud_key(table, entry["before"] or {})
    name = "/".join(str(v) for v in key) if key else entry["token"]
    return f"{entry['action']} of {entry['table_name']} {name}"


def _find(table: Table, records: list[Record], token: str, wanted: Record | None) -> Record | None:
    """The cloud's record made by the step with `token`, or with the cloud id of `wanted`."""
    key = cloud_key(table, wanted) if wanted else None
    for record in records:
        if token and record.get(TOKEN) == token:
            return record
        if key is not None and cloud_key(table, record) == key:
            return record
    return None
