"""Promotion between environments that differ.

A target environment keeps rules (rows of `iasql_promotion_rule`) saying how values written
in a source environment differ there: exact values, name patterns, network ranges, regions.
`rewrite()` applies them to the SQL a source wrote (`iasql_get_sql_for_transaction` and the
promotion checks): each string constant is mapped according to the table and column it is
written to or compared with, so the natural-key sub-selects use the mapped values and foreign
keys still resolve. The text is edited in place, constant by constant, so a statement no rule
touches stays byte for byte the same.

The ledger (`iasql_promotion`) records each source transaction the target applied or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pglast.parser import ParseError, parse_sql_json, scan

from engine.contract import EngineError, Row
from engine.ddl import quote_literal
from engine.schema_sql import SchemaTranslationError, translate_statement
from modules import migration
from modules.spec import Table

KINDS = ("value", "cidr", "region", "pattern", "exclude")  # in the order they are tried
MAX_SQL_BYTES = 4 * 2**20  # what iasql_promotion_sql() parses at once
REWRITE_SECONDS = 30.0  # how long the worker may take for it
WORKER_MEMORY = 2 * 2**30  # the worker's address space
MAX_STARS = 3  # wildcards in a pattern: more would make matching slow on long names

# Rules as tables: the target's role may write them; their changes land in the audit log.
RULES_DDL = f"""
CREATE TABLE IF NOT EXISTS iasql_promotion_rule (
    id serial PRIMARY KEY,
    source_environment text,  -- NULL: from any source
    table_name text,          -- NULL: every table
    column_name text,         -- NULL: every column
    kind text NOT NULL,
    match text NOT NULL,
    replacement text,
    CONSTRAINT "kind is value, cidr, region, pattern or exclude"
        CHECK (kind IN ({", ".join(f"'{k}'" for k in KINDS)})),
    CONSTRAINT "an exclude rule has no replacement, every other rule has one"
        CHECK ((kind = 'exclude') = (replacement IS NULL)),
    CONSTRAINT "a pattern has at most {MAX_STARS} *, and its replacement no more than it"
        CHECK (kind NOT IN ('pattern', 'exclude') OR (
            length(match) - length(replace(match, '*', '')) <= {MAX_STARS}
            AND coalesce(length(replacement) - length(replace(replacement, '*', '')), 0)
                <= length(match) - length(replace(match, '*', '')))),
    CONSTRAINT "a cidr rule maps a network to one of the same size and family"
        CHECK (kind <> 'cidr' OR (masklen(match::cidr) = masklen(replacement::cidr)
            AND family(match::cidr) = family(replacement::cidr))),
    CONSTRAINT "a cidr rule writes its networks in full, as 10.1.0.0/16"
        CHECK (kind <> 'cidr' OR (match::cidr::text = match
            AND replacement::cidr::text = replacement))
);
CREATE OR REPLACE TRIGGER iasql_promotion_rule_audit
    AFTER INSERT OR UPDATE OR DELETE ON iasql_promotion_rule
    FOR EACH ROW EXECUTE FUNCTION iasql_audit();

-- Source transactions this database applied (in one of its transactions) or skipped.
CREATE TABLE IF NOT EXISTS iasql_promotion (
    id bigserial PRIMARY KEY,
    source_environment text NOT NULL,
    source_transaction_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('applied', 'forced', 'skipped')),
    target_transaction_id text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by text NOT NULL
);
CREATE INDEX IF NOT EXISTS iasql_promotion_source
    ON iasql_promotion (source_environment, source_transaction_id);
"""
RULES_TABLE = "iasql_promotion_rule"
LEDGER_TABLE = "iasql_promotion"
STATUSES = ("applied", "forced", "skipped")


# --- rules ------------------------------------------------------------------------------


def _glob(pattern: str, value: str) -> tuple[str, ...] | None:
    """What each `*` of the pattern stands for in `value` (shortest first), or None when it
    does not match. Linear, with no backtracking: a user's pattern must not stall the engine."""
    if "*" not in pattern:
        return () if value == pattern else None
    first, *middle, last = pattern.split("*")
    end = len(value) - len(last)
    if end < len(first) or not value.startswith(first) or not value.endswith(last):
        return None
    groups, at = [], len(first)
    for part in middle:
        found = value.find(part, at, end)
        if found < 0:
            return None
        groups.append(value[at:found])
        at = found + len(part)
    return (*groups, value[at:end])


def _fill(template: str, groups: tuple[str, ...]) -> str:
    parts = template.split("*")
    return "".join(part + (groups[i] if i < len(parts) - 1 else "") for i, part in enumerate(parts))


def _address(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR block or an address (as a /32 or /128), exactly as AWS writes them."""
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=True)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class Rule:
    id: int
    kind: str
    match: str
    replacement: str | None = None
    table_name: str | None = None
    column_name: str | None = None
    source_environment: str | None = None

    def covers(self, table: str, column: str) -> bool:
        return self.table_name in (None, table) and self.column_name in (None, column)

    @property
    def rank(self) -> tuple[int, int, int]:
        """The more specific rule first: table and column named, then column, then table;
        then by kind (KINDS), then oldest."""
        scope = 2 * (self.column_name is not None) + (self.table_name is not None)
        return (-scope, KINDS.index(self.kind), self.id)

    def matches(self, value: str) -> bool:
        """For exclude rules: the value matches the pattern."""
        return _glob(self.match, value) is not None

    def apply(self, value: str) -> str | None:
        """The value in the target, or None when this rule does not match it."""
        replacement = self.replacement
        assert replacement is not None, "exclude rules map nothing"
        if self.kind == "value":
            return replacement if value == self.match else None
        if self.kind == "pattern":
            found = _glob(self.match, value)
            return None if found is None else _fill(replacement, found)
        if self.kind == "region":
            # A region, or one of its zones: us-east-1 → eu-west-1, us-east-1b → eu-west-1b;
            # or a part of a dotted name: com.amazonaws.us-east-1.s3.
            if value == self.match:
                return replacement
            parts = value.split(".")
            if len(parts) > 1 and self.match in parts:
                return ".".join(replacement if p == self.match else p for p in parts)
            zone = value.removeprefix(self.match)
            return replacement + zone if zone != value and re.fullmatch("[a-z]", zone) else None
        return self._rebase(value)

    def _rebase(self, value: str) -> str | None:
        """A block or address inside `match`, at the same offset inside `replacement`."""
        found = _address(value)
        try:
            source = ipaddress.ip_network(self.match)
            target = ipaddress.ip_network(str(self.replacement))
        except ValueError:  # a rule written before its CHECK asked for the full form
            return None
        if found is None or found.version != source.version or not found.subnet_of(source):  # type: ignore[arg-type]
            return None
        offset = int(found.network_address) - int(source.network_address)
        address = type(target.network_address)(int(target.network_address) + offset)
        return str(address) if "/" not in value else f"{address}/{found.prefixlen}"


@dataclass
class Rules:
    rules: list[Rule]

    def __post_init__(self) -> None:
        self.rules = sorted(self.rules, key=lambda r: r.rank)

    def map(self, table: str, column: str, value: str) -> tuple[str, Rule | None]:
        for rule in self.rules:
            if rule.kind != "exclude" and rule.covers(table, column):
                mapped = rule.apply(value)
                if mapped is not None:
                    return mapped, rule
        return value, None

    def excluding(self, table: str, column: str | None, value: str | None) -> Rule | None:
        """The exclude rule that keeps this value's row out (a rule naming no column keeps
        the whole table out)."""
        for rule in self.rules:
            if rule.kind != "exclude" or rule.table_name not in (None, table):
                continue
            whole_table = rule.column_name is None and rule.table_name is not None
            if whole_table or (
                column is not None
                and value is not None
                and rule.covers(table, column)
                and rule.matches(value)
            ):
                return rule
        return None


async def load_rules(conn: asyncpg.Connection, source_environment: str | None) -> Rules:
    rows = await conn.fetch(
        "SELECT id, kind, match, replacement, table_name, column_name, source_environment"
        f" FROM {RULES_TABLE} WHERE source_environment IS NULL OR source_environment = $1",
        source_environment,
    )
    return Rules([Rule(**dict(r)) for r in rows])


# --- rewriting SQL ----------------------------------------------------------------------


@dataclass
class Rewritten:
    """One statement after the rules: its text (None when an exclude rule keeps it out) and
    each value a rule changed."""

    source_sql: str
    sql: str | None
    rewrites: list[Row] = field(default_factory=list)
    excluded_by: int | None = None


def _literal_end(raw: bytes, start: int) -> int | None:
    """Where the string constant starting at `start` ends: '...' or E'...' (the forms
    iasql writes), including pieces continued on the next lines ('a'<newline>'b' is 'ab');
    None for any other form, which is then left as it is."""
    escapes = raw[start : start + 1] in (b"E", b"e")
    at = start + 1 if escapes else start
    if raw[at : at + 1] != b"'":
        return None
    at += 1
    while at < len(raw):
        char = raw[at : at + 1]
        doubled = char == b"'" and raw[at + 1 : at + 2] == b"'"
        if doubled or (escapes and char == b"\\"):  # '' or \x: an escaped character
            at += 2
        elif char == b"'":
            rest = raw[at + 1 :]
            gap = len(rest) - len(rest.lstrip())
            if rest[gap : gap + 2] in (b"--", b"/*") and _continued_after_comment(rest):
                return None  # pieces with comments between: left as written
            if b"\n" not in rest[:gap] or rest[gap : gap + 1] != b"'":
                return at + 1
            at += gap + 2  # the constant goes on after the line break
        else:
            at += 1
    return None


def _continued_after_comment(rest: bytes) -> bool:
    """Whether a string constant goes on after comments ('a' -- note <newline> 'b')."""
    while True:
        rest = rest.lstrip()
        if rest.startswith(b"--"):
            rest = rest.partition(b"\n")[2]
        elif rest.startswith(b"/*"):
            rest = rest.partition(b"*/")[2]
        else:
            return rest.startswith(b"'")


def _one(node: dict[str, Any]) -> tuple[str, Any]:
    ((kind, body),) = node.items()
    return kind, body


def _column_of(node: Any) -> str | None:
    """The column a ColumnRef (possibly cast, `"tags"::jsonb`) names."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, body = _one(node)
    if kind == "TypeCast":
        return _column_of(body.get("arg"))
    if kind == "ColumnRef":
        last = body["fields"][-1]
        return last.get("String", {}).get("sval") if isinstance(last, dict) else None
    return None


def _type_name(type_cast: dict[str, Any]) -> str:
    return str(type_cast["typeName"]["names"][-1]["String"]["sval"])


class _Statement:
    """Walks one parsed statement and collects the edits the rules make to its constants.

    An exclude rule that matches anywhere in it, in a sub-select too, keeps the statement
    out: a row whose parent is left out could not be made in the target either."""

    def __init__(self, raw: bytes, rules: Rules) -> None:
        self.raw = raw
        self.rules = rules
        self.edits: list[tuple[int, int, str]] = []
        self.rewrites: list[Row] = []
        self.excluded_by: Rule | None = None

    def run(self, node: dict[str, Any]) -> None:
        kind, body = _one(node)
        if kind == "InsertStmt":
            table = body["relation"]["relname"]
            self._exclude_table(table)
            columns = [t["ResTarget"]["name"] for t in body.get("cols", [])]
            select = body.get("selectStmt", {}).get("SelectStmt", {})
            rows = [values["List"]["items"] for values in select.get("valuesLists", [])]
            # INSERT ... SELECT: the select list's items are the values.
            rows.append([t["ResTarget"].get("val") for t in select.get("targetList", [])])
            for items in rows:
                for column, item in zip(columns, items, strict=False):
                    self.value(item, table, column)
            self.select_rest(select)
        elif kind in ("UpdateStmt", "DeleteStmt"):
            table = body["relation"]["relname"]
            self._exclude_table(table)
            for target in body.get("targetList", []):
                self.value(target["ResTarget"]["val"], table, target["ResTarget"]["name"])
            self.expression(body.get("whereClause"), table)
        elif kind == "SelectStmt":
            self.select(body)

    def _exclude_table(self, table: str) -> None:
        self.excluded_by = self.excluded_by or self.rules.excluding(table, None, None)

    def select(self, body: dict[str, Any]) -> None:
        """A sub-select (or a promotion check) on one table: its constants are compared
        with that table's columns."""
        table = self.select_rest(body)
        for target in body.get("targetList", []):
            self.expression(target["ResTarget"].get("val"), table)

    def select_rest(self, body: dict[str, Any]) -> str | None:
        """A select's FROM and WHERE; its one table, if it has one."""
        tables = [f["RangeVar"]["relname"] for f in body.get("fromClause", []) if "RangeVar" in f]
        table = tables[0] if len(tables) == 1 else None
        if table is not None:
            self._exclude_table(table)
        self.expression(body.get("whereClause"), table)
        return table

    def expression(self, node: Any, table: str | None) -> None:
        """Finds `column = constant`, `constant = column`, IS [NOT] DISTINCT FROM and
        `column IN (...)` comparisons anywhere."""
        if isinstance(node, list):
            for item in node:
                self.expression(item, table)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            kind, body = _one(node)
            if kind == "SubLink":
                self.select(body["subselect"]["SelectStmt"])
                return
            if kind == "A_Expr" and table is not None:
                for side, other in (("lexpr", "rexpr"), ("rexpr", "lexpr")):
                    column = _column_of(body.get(side))
                    if column is not None:
                        self.value(body.get(other), table, column)
                        return
        for child in node.values():
            self.expression(child, table)

    def value(self, node: Any, table: str, column: str) -> None:
        """A value written to, or compared with, `table`.`column`."""
        if not isinstance(node, dict) or len(node) != 1:
            return self.expression(node, table)
        kind, body = _one(node)
        if kind == "A_Const" and "sval" in body:
            self._constant(body, table, column, as_json=False)
        elif kind == "TypeCast" and "A_Const" in body.get("arg", {}):
            as_json = _type_name(body) in ("json", "jsonb")
            constant = body["arg"]["A_Const"]
            if "sval" in constant:
                self._constant(constant, table, column, as_json=as_json)
        elif kind in ("TypeCast", "A_ArrayExpr", "List"):
            for child in body.get("elements", body.get("items", [body.get("arg")])):
                self.value(child, table, column)
        else:
            self.expression(node, table)

    def _constant(
        self, constant: dict[str, Any], table: str, column: str, *, as_json: bool
    ) -> None:
        text = constant["sval"]["sval"]
        start = constant.get("location", -1)
        end = _literal_end(self.raw, start) if start >= 0 else None
        if end is None:  # a form iasql does not write ($$...$$): left as it is, unreported
            self._exclude(table, column, text)
            return
        if as_json:
            try:
                document = json.loads(text)
            except ValueError:
                return
            mapped = self._json(document, table, column)
            new_text = json.dumps(mapped, ensure_ascii=False) if mapped != document else text
        else:
            new_text = self._string(text, table, column)
        if new_text != text:
            self.edits.append((start, end, quote_literal(new_text)))

    def _exclude(self, table: str, column: str, text: str) -> None:
        self.excluded_by = self.excluded_by or self.rules.excluding(table, column, text)

    def _string(self, text: str, table: str, column: str) -> str:
        self._exclude(table, column, text)
        mapped, rule = self.rules.map(table, column, text)
        if rule is not None and mapped != text:
            self.rewrites.append(
                {
                    "table": table,
                    "column": column,
                    "source": text,
                    "target": mapped,
                    "rule": rule.id,
                }
            )
        return mapped

    def _json(self, document: Any, table: str, column: str) -> Any:
        """Every string inside a JSON value (tags' values, not their keys)."""
        if isinstance(document, str):
            return self._string(document, table, column)
        if isinstance(document, list):
            return [self._json(item, table, column) for item in document]
        if isinstance(document, dict):
            return {k: self._json(v, table, column) for k, v in document.items()}
        return document


def _statements(text: str) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Each parsed statement with its byte range in the UTF-8 text."""
    try:
        parsed = json.loads(parse_sql_json(text))
    except ParseError as exc:
        raise EngineError("42601", f"the SQL to promote does not parse: {exc}") from None
    size = len(text.encode())
    for item in parsed.get("stmts", []):
        start = item.get("stmt_location", 0)
        yield item["stmt"], start, start + item.get("stmt_len", size - start)


def _terminated(statement: str) -> str:
    """The statement with its semicolon, on a line of its own after a trailing comment."""
    statement = statement.strip()
    tokens = scan(statement) if statement else []
    ends_in_comment = bool(tokens) and tokens[-1].name == "SQL_COMMENT"
    return statement + ("\n;" if ends_in_comment else ";")


# --- SQL from an environment on an older module schema ------------------------------------

# The steps that change SQL text (engine/schema_sql.py), as JSON for the worker process.
_TEXT_STEPS = {
    "RenameColumn": migration.RenameColumn,
    "DropColumn": migration.DropColumn,
    "ChangeType": migration.ChangeType,
    "SplitTable": migration.SplitTable,
}


def steps_to_json(steps: list[migration.Step]) -> list[dict[str, Any]]:
    found = []
    for step in steps:
        kind = type(step).__name__
        if kind not in _TEXT_STEPS:
            continue
        fields = {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}
        if isinstance(step, migration.SplitTable):
            fields["table"] = step.table.name
        found.append({"kind": kind, **fields})
    return found


def steps_from_json(found: list[dict[str, Any]]) -> list[migration.Step]:
    steps: list[migration.Step] = []
    for fields in found:
        fields = dict(fields)
        kind = _TEXT_STEPS[fields.pop("kind")]
        if kind is migration.SplitTable:
            # Only its name is needed to say where the columns went.
            fields["table"] = Table(fields["table"], (), None, ())
            fields["columns"] = tuple(fields["columns"])
        steps.append(kind(**fields))
    return steps


def translate_then_rewrite(text: str, rules: Rules, steps: list[migration.Step]) -> list[Rewritten]:
    """Each statement, written for an older schema of the modules, translated through `steps`
    into this database's, then rewritten by the rules; `source_sql` stays the source's."""
    if not steps:
        return rewrite(text, rules)
    result = []
    for statement in rewrite(text, Rules([])):
        try:
            translated = translate_statement(statement.source_sql, steps)
        except SchemaTranslationError as exc:
            raise EngineError("0A000", str(exc)) from None
        if translated is None:  # nothing of it exists in this schema (a dropped column)
            result.append(Rewritten(statement.source_sql, None))
            continue
        [done] = rewrite(translated, rules)
        result.append(dataclasses.replace(done, source_sql=statement.source_sql))
    return result


def rewrite(text: str, rules: Rules) -> list[Rewritten]:
    """Each statement of `text` with the rules applied, in order."""
    raw = text.encode()
    result = []
    for node, start, end in _statements(text):
        walk = _Statement(raw, rules)
        walk.run(node)
        pieces, at = [], start
        for edit_start, edit_end, literal in sorted(walk.edits):
            pieces += [raw[at:edit_start], literal.encode()]
            at = edit_end
        pieces.append(raw[at:end])
        source = _terminated(raw[start:end].decode())
        sql = _terminated(b"".join(pieces).decode())
        excluded = walk.excluded_by
        result.append(
            Rewritten(
                source_sql=source,
                sql=None if excluded else sql,
                rewrites=walk.rewrites,
                excluded_by=excluded.id if excluded else None,
            )
        )
    return result


# --- the ledger ---------------------------------------------------------------------------

# What a ledger row counts as: skipped rows always, applied ones once their transaction
# committed; while it is open they are pending.
_LEDGER = f"""
SELECT p.source_environment, p.source_transaction_id,
       CASE WHEN t.closed_at IS NULL AND t.transaction_id IS NOT NULL THEN 'pending'
            ELSE p.status END AS status,
       p.target_transaction_id, p.recorded_at, p.recorded_by
FROM {LEDGER_TABLE} p LEFT JOIN iasql_transaction t ON t.transaction_id = p.target_transaction_id
WHERE p.status = 'skipped' OR t.outcome = 'committed'
   OR (t.transaction_id IS NOT NULL AND t.closed_at IS NULL)
"""


async def ledger(conn: asyncpg.Connection) -> list[Row]:
    rows = await conn.fetch(f"SELECT * FROM ({_LEDGER}) l ORDER BY recorded_at")
    return [dict(r) for r in rows]


async def record(
    conn: asyncpg.Connection, user: str, source: str, source_transaction: str, status: str
) -> Row:
    """Records a source transaction as applied in the open transaction (on its commit), or
    as skipped (at once)."""
    if status not in STATUSES:
        raise EngineError("22023", f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {LEDGER_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        earlier = await conn.fetchrow(
            f"SELECT * FROM ({_LEDGER}) l WHERE source_environment = $1"
            " AND source_transaction_id = $2",
            source,
            source_transaction,
        )
        if earlier is not None:
            raise EngineError(
                "23505",
                f"{source} transaction {source_transaction} is in the ledger already"
                f" ({earlier['status']})",
                hint="SELECT * FROM iasql_promotions() lists what this database has",
            )
        target = await conn.fetchval(
            "SELECT transaction_id FROM iasql_transaction WHERE closed_at IS NULL"
        )
        if status != "skipped" and target is None:
            raise EngineError(
                "25P01",
                "no infrastructure transaction is open to apply the promotion in",
                hint="SELECT * FROM iasql_begin(), run the promoted SQL, record it, commit",
            )
        row = await conn.fetchrow(
            f"INSERT INTO {LEDGER_TABLE} (source_environment, source_transaction_id, status,"
            " target_transaction_id, recorded_by) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING source_environment, source_transaction_id, status,"
            " target_transaction_id, recorded_at, recorded_by",
            source,
            source_transaction,
            status,
            None if status == "skipped" else target,
            user,
        )
    return dict(row)


# --- the worker process -------------------------------------------------------------------


class RewriteWorker:
    """Runs rewrite() in a child process (engine.promotion_worker), one request at a time: a
    large or pathological text then costs that process time and memory, not the server's
    event loop. A request over the time limit, one that exhausts the child's memory or a
    cancelled one ends the child; the next request starts another."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def rewrite(
        self, text: str, rules: Rules, steps: list[migration.Step] | None = None
    ) -> list[Rewritten]:
        size = len(text.encode())
        if size > MAX_SQL_BYTES:
            raise EngineError(
                "54000",
                f"the SQL to promote is {size} bytes; at most {MAX_SQL_BYTES} are parsed at once",
                hint="promote one transaction at a time",
            )
        request = {
            "text": text,
            "rules": [dataclasses.asdict(r) for r in rules.rules],
            "steps": steps_to_json(steps or []),
        }
        async with self._lock:
            line = await self._ask(json.dumps(request).encode() + b"\n")
        answer = json.loads(line)
        if "error" in answer:
            raise EngineError(answer["sqlstate"], answer["error"])
        return [Rewritten(**statement) for statement in answer["statements"]]

    async def _ask(self, request: bytes) -> bytes:
        process = await self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(request)
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), REWRITE_SECONDS)
        except TimeoutError:
            await self.close()
            raise EngineError(
                "57014", f"applying the promotion rules took over {REWRITE_SECONDS:g} s"
            ) from None
        except BaseException:  # cancelled, or the child is gone: its next answer is stale
            await self.close()
            raise
        if not line.endswith(b"\n"):  # the child died (out of memory)
            await self.close()
            raise EngineError("54000", "the SQL to promote is too large to parse")
        return line

    async def _start(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engine.promotion_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=16 * MAX_SQL_BYTES,  # an answer is one line: the statements and more
            )
        return self._process

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
