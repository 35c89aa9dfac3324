"""SQL written for an older schema of a module, rewritten for the current one.

When an environment on an older schema promotes SQL into one on a newer schema, the target
rewrites each statement through the migration steps between the two (modules/migration.py).
This works on pglast's parse tree: a statement no step touches comes back byte for byte; a
changed one is printed again by `pglast.stream.RawStream` (its formatting: `CAST(x AS t)`,
unquoted lower-case identifiers), with a trailing ';' when the input had one.

Column references are scoped as Postgres scopes them: a qualified reference names a FROM
item (its alias, or the table's name when it has none) of its own query level or an outer
one; an unqualified one belongs to the only table of the innermost level that has tables.
So a foreign key's sub-select `(SELECT "id" FROM "parent" WHERE "name" = 'q')` refers to
`parent`, whatever the statement around it writes to.

Supported: INSERT ... VALUES (one or many rows), INSERT ... SELECT, ON CONFLICT, UPDATE
(with FROM and an alias), DELETE (with USING), SELECT (joins, sub-selects, CTEs), RETURNING.
Refused, with SchemaTranslationError: what the steps cannot say (a dropped column still
read, a split column, an INSERT without a column list when its columns change, a whole WHERE
on a dropped column, an unqualified column of a join), and other statement kinds that name
a changed table.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import A_Expr_Kind, SetOperation
from pglast.enums.primnodes import BoolExprType
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

from engine.ddl import quote_literal
from modules.migration import ChangeType, DropColumn, RenameColumn, SplitTable, Step

Node = Any  # a pglast.ast node: its stubs declare every field optional

# The steps that change SQL text; the others add what no older statement names.
_TextStep = RenameColumn | DropColumn | ChangeType | SplitTable

# Operators whose other side is a value of the column's type.
_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_LIST_KINDS = (A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN)
_PAIR_KINDS = (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT)

# Statement kinds that name a table but none of its columns.
_COLUMNLESS = (ast.TruncateStmt, ast.LockStmt)


class SchemaTranslationError(ValueError):
    """One line saying which statement cannot be translated and why, and what to do instead."""


def translate_script(statements: Sequence[str], steps: Sequence[Step]) -> list[str | None]:
    """translate_statement() of each statement, in order."""
    return [translate_statement(sql, steps) for sql in statements]


def translate_statement(sql: str, steps: Sequence[Step]) -> str | None:
    """`sql` (one statement) written for the schema before `steps`, rewritten for the schema
    after them. Returns `sql` unchanged, byte for byte, when no step touches it; None when
    nothing of it is left (an UPDATE that only set dropped columns)."""
    active = [step for step in steps if isinstance(step, _TextStep)]
    if not active:
        return sql
    statement = _parse_one(sql)
    before = RawStream()(statement)
    for step in active:
        statement = _Rewrite(step, sql).statement(statement, None)
        if statement is None:
            return None
    after = RawStream()(statement)
    if after == before:
        return sql
    printed = _printed(statement)
    return printed + ";" if _ends_with_semicolon(sql) else printed


def _printed(statement: Node) -> str:
    """The tree as SQL that reads the same whatever `standard_conforming_strings`: pglast
    prints a string holding a backslash as a plain '' literal, so each such string is printed
    as a placeholder first, then replaced by its E'' literal."""
    token = secrets.token_hex(8)
    escaped: dict[str, str] = {}

    def hide(node: Node) -> None:
        if isinstance(node, tuple | list):
            for item in node:
                hide(item)
        elif isinstance(node, ast.A_Const):  # (identifiers are Strings too: not those)
            if isinstance(node.val, ast.String) and "\\" in (node.val.sval or ""):
                placeholder = f"iasql_string_{token}_{len(escaped)}"
                escaped[f"'{placeholder}'"] = quote_literal(node.val.sval)
                node.val = ast.String(sval=placeholder)
        elif isinstance(node, ast.Node):
            for name in node.__slots__:
                hide(getattr(node, name))

    hide(statement)
    text = RawStream()(statement)
    for placeholder, literal in escaped.items():
        text = text.replace(placeholder, literal)
    return text


def _parse_one(sql: str) -> Node:
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        raise SchemaTranslationError(f"cannot translate {_clip(sql)}: {exc}") from None
    if len(statements) != 1:
        raise SchemaTranslationError(
            f"cannot translate {_clip(sql)}: it is {len(statements)} statements, not one;"
            " translate them one by one"
        )
    return statements[0].stmt


def _ends_with_semicolon(sql: str) -> bool:
    tokens = [t for t in scan(sql) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    return bool(tokens) and tokens[-1].name == "ASCII_59"


def _clip(sql: str, limit: int = 100) -> str:
    text = " ".join(sql.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _names(ref: Node) -> tuple[str, ...] | None:
    """A column reference's names; None for a star (`t.*`)."""
    if not all(isinstance(f, ast.String) for f in ref.fields):
        return None
    return tuple(f.sval for f in ref.fields)


def _expression(text: str) -> Node:
    return parse_sql(f"SELECT {text}")[0].stmt.targetList[0].val


def _type_name(text: str) -> Node:
    return _expression(f"NULL::{text}").typeName


def _is_and(node: Node) -> bool:
    return isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR


def _is_null(node: Node) -> bool:
    return isinstance(node, ast.A_Const) and bool(node.isnull)


@dataclass
class _Level:
    """One query level's FROM items: the name a reference uses -> the table (None for a
    sub-select, a function or a CTE, whose columns no step changes)."""

    tables: dict[str, str | None]
    outer: _Level | None
    ctes: frozenset[str] = field(default_factory=frozenset)


class _Rewrite:
    """One step applied to one statement's tree (in place)."""

    def __init__(self, step: _TextStep, sql: str) -> None:
        self.step = step
        self.sql = sql
        if isinstance(step, SplitTable):
            self.table, self.columns = step.source, frozenset(step.columns)
        elif isinstance(step, RenameColumn):
            self.table, self.columns = step.table, frozenset({step.old})
        else:
            self.table, self.columns = step.table, frozenset({step.column})
        self.using: Node = None
        self.old_type: Node = None
        if isinstance(step, ChangeType):
            self.using = (
                _expression(step.using)
                if step.using
                else ast.TypeCast(
                    arg=ast.ColumnRef(fields=(ast.String(sval=step.column),)),
                    typeName=_type_name(step.new_type),
                )
            )
            self.old_type = _type_name(step.old_type)

    # --- errors -----------------------------------------------------------------------

    def _refuse(self, why: str, instead: str) -> SchemaTranslationError:
        return SchemaTranslationError(f"cannot translate {_clip(self.sql)}: {why}; {instead}")

    def _refuse_column(self, column: str) -> SchemaTranslationError:
        step = self.step
        if isinstance(step, SplitTable):
            return self._refuse(
                f"{step.source}.{column} was split into table {step.table.name} in the newer"
                " schema",
                f"write the change to {step.table.name} by hand, or upgrade the source"
                " environment and promote again",
            )
        return self._refuse(
            f"it still reads {self.table}.{column}, which the newer schema dropped",
            "rewrite the statement without it",
        )

    # --- statements -------------------------------------------------------------------

    def statement(self, node: Node, outer: _Level | None) -> Node | None:
        if isinstance(node, ast.InsertStmt):
            return self._insert(node, outer)
        if isinstance(node, ast.UpdateStmt):
            return self._update(node, outer)
        if isinstance(node, ast.DeleteStmt):
            return self._delete(node, outer)
        if isinstance(node, ast.SelectStmt):
            self._select(node, outer)
            return node
        if not isinstance(node, _COLUMNLESS) and self._names_table(node):
            kind = type(node).__name__.removesuffix("Stmt")
            raise self._refuse(
                f"{kind} statements on {self.table} are not translated",
                "rewrite it for the newer schema by hand",
            )
        return node

    def _with(self, clause: Node, outer: _Level | None) -> frozenset[str]:
        """The CTEs translated; their names, which hide tables of the same name."""
        if clause is None:
            return outer.ctes if outer else frozenset()
        names = set(outer.ctes if outer else ())
        for cte in clause.ctes:
            # A recursive CTE sees its own name; others only the ones before them.
            if clause.recursive:
                names.add(cte.ctename)
            scope = _Level({}, outer, frozenset(names))
            if self.statement(cte.ctequery, scope) is None:
                raise self._refuse(
                    f"its CTE {cte.ctename} only sets dropped columns", "rewrite it by hand"
                )
            names.add(cte.ctename)
        return frozenset(names)

    def _target_level(
        self, relation: Node, extra: Sequence[Node], outer: _Level | None, ctes: frozenset[str]
    ) -> _Level:
        level = _Level({}, outer, ctes)
        self._add_from(level, [relation, *extra])
        return level

    def _insert(self, node: Node, outer: _Level | None) -> Node:
        ctes = self._with(node.withClause, outer)
        relation = node.relation
        source = node.selectStmt
        if relation.relname == self.table:
            self._insert_columns(node)
            source = node.selectStmt
        if source is not None and source.valuesLists:
            # VALUES does not see the target table: its sub-selects start a fresh scope.
            values = _Level({}, None, ctes)
            for row in source.valuesLists:
                self._walk(row, values)
        elif source is not None:
            self._select(source, _Level({}, None, ctes))
        if relation.relname == self.table and isinstance(self.step, ChangeType):
            self._convert_inserted(node)
        level = self._target_level(relation, (), outer, ctes)
        level.tables["excluded"] = relation.relname
        self._on_conflict(node.onConflictClause, level, relation.relname == self.table)
        self._returning(node.returningClause, level)
        return node

    def _insert_columns(self, node: Node) -> None:
        """The target table's column list: renamed, or a dropped column out of it and of
        every row."""
        source = node.selectStmt
        if not node.cols:
            if source is not None and not isinstance(self.step, RenameColumn):
                raise self._refuse(
                    f"it lists no columns of {self.table}, whose columns the newer schema changes",
                    "name the columns",
                )
            return
        for index, target in enumerate(node.cols):
            if target.name not in self.columns:
                continue
            if isinstance(self.step, RenameColumn):
                target.name = self.step.new
            elif isinstance(self.step, SplitTable):
                raise self._refuse_column(target.name)
            elif isinstance(self.step, DropColumn):
                self._drop_inserted(node, index)
                return

    def _drop_inserted(self, node: Node, index: int) -> None:
        source = node.selectStmt
        rows = self._rows(source) if source is not None else []
        node.cols = tuple(c for i, c in enumerate(node.cols) if i != index)
        if source is None:
            return
        if source.valuesLists:
            source.valuesLists = tuple(
                tuple(v for i, v in enumerate(r) if i != index) for r in rows
            )
        else:
            source.targetList = tuple(t for i, t in enumerate(source.targetList) if i != index)
        if node.cols:
            return
        if source.valuesLists and len(source.valuesLists) == 1:
            node.cols, node.selectStmt = None, None  # INSERT ... DEFAULT VALUES
            return
        raise self._refuse(
            f"it writes only {self.table}.{self.step_column}, which the newer schema dropped",
            "insert the rows with DEFAULT VALUES by hand",
        )

    @property
    def step_column(self) -> str:
        return next(iter(self.columns))

    def _convert_inserted(self, node: Node) -> None:
        """Each value written to the retyped column, converted."""
        names = [c.name for c in node.cols or ()]
        if self.step_column not in names:
            return
        index = names.index(self.step_column)
        source = node.selectStmt
        if source.valuesLists:
            source.valuesLists = tuple(
                tuple(self._convert(v, None) if i == index else v for i, v in enumerate(row))
                for row in self._rows(source)
            )
        else:
            self._rows(source)  # refuses a star or a set operation
            target = source.targetList[index]
            target.val = self._convert(target.val, None)

    def _on_conflict(self, clause: Node, level: _Level, mine: bool) -> None:
        if clause is None:
            return
        infer = clause.infer
        if infer is not None:
            for element in infer.indexElems or ():
                if mine and element.name in self.columns:
                    if not isinstance(self.step, RenameColumn):
                        raise self._refuse(
                            f"its ON CONFLICT names {self.table}.{element.name}, which the"
                            " newer schema changes",
                            "rewrite the conflict target by hand",
                        )
                    element.name = self.step.new
                self._walk(element.expr, level)
            infer.whereClause = self._where(infer.whereClause, level)
        if clause.targetList:
            kept = self._assignments(clause.targetList, level, mine)
            if not kept:
                raise self._refuse(
                    "its ON CONFLICT DO UPDATE only sets dropped columns",
                    "rewrite it as ON CONFLICT DO NOTHING by hand",
                )
            clause.targetList = kept
        clause.whereClause = self._where(clause.whereClause, level)

    def _returning(self, clause: Node, level: _Level) -> None:
        if clause is not None:
            self._walk(clause.exprs, level)

    def _update(self, node: Node, outer: _Level | None) -> Node | None:
        ctes = self._with(node.withClause, outer)
        level = self._target_level(node.relation, node.fromClause or (), outer, ctes)
        self._walk_from(node.fromClause, level)
        kept = self._assignments(node.targetList, level, node.relation.relname == self.table)
        if not kept:
            return None
        node.targetList = kept
        node.whereClause = self._where(node.whereClause, level)
        self._returning(node.returningClause, level)
        return node

    def _assignments(self, targets: Sequence[Node], level: _Level, mine: bool) -> tuple[Node, ...]:
        """SET items: renamed, converted, or left out when their column was dropped."""
        kept = []
        for target in targets:
            if not (mine and target.name in self.columns):
                self._walk(target.val, level)
                kept.append(target)
                continue
            if isinstance(target.val, ast.MultiAssignRef) and not isinstance(
                self.step, RenameColumn
            ):
                raise self._refuse(
                    f"it sets {self.table}.{target.name} in a (column, ...) = (...) list",
                    "write one assignment per column",
                )
            if isinstance(self.step, SplitTable):
                raise self._refuse_column(target.name)
            if isinstance(self.step, DropColumn):
                continue
            self._walk(target.val, level)
            if isinstance(self.step, RenameColumn):
                target.name = self.step.new
            else:
                target.val = self._convert(target.val, None)
            kept.append(target)
        return tuple(kept)

    def _delete(self, node: Node, outer: _Level | None) -> Node:
        ctes = self._with(node.withClause, outer)
        level = self._target_level(node.relation, node.usingClause or (), outer, ctes)
        self._walk_from(node.usingClause, level)
        node.whereClause = self._where(node.whereClause, level)
        self._returning(node.returningClause, level)
        return node

    def _select(self, node: Node, outer: _Level | None) -> None:
        ctes = self._with(node.withClause, outer)
        scope = _Level({}, outer, ctes)
        if node.op != SetOperation.SETOP_NONE:
            self._select(node.larg, scope)
            self._select(node.rarg, scope)
            return
        if node.valuesLists:
            self._walk(node.valuesLists, scope)
            return
        self._add_from(scope, node.fromClause or ())
        self._walk_from(node.fromClause, scope)
        self._walk(node.targetList, scope)
        node.whereClause = self._where(node.whereClause, scope)
        for name in ("groupClause", "havingClause", "sortClause", "limitCount", "limitOffset"):
            self._walk(getattr(node, name), scope)

    # --- FROM ---------------------------------------------------------------------------

    def _add_from(self, level: _Level, items: Sequence[Node]) -> None:
        for item in items:
            if isinstance(item, ast.RangeVar):
                hidden = item.schemaname is None and item.relname in level.ctes
                name = item.alias.aliasname if item.alias else item.relname
                level.tables[name] = None if hidden else item.relname
            elif isinstance(item, ast.JoinExpr):
                self._add_from(level, (item.larg, item.rarg))
            elif getattr(item, "alias", None) is not None:
                level.tables[item.alias.aliasname] = None

    def _walk_from(self, items: Sequence[Node] | None, level: _Level) -> None:
        """Sub-selects and join conditions of a FROM list."""
        for item in items or ():
            if isinstance(item, ast.JoinExpr):
                self._walk_from((item.larg, item.rarg), level)
                self._walk(item.quals, level)
            elif isinstance(item, ast.RangeSubselect):
                self._select(item.subquery, level if item.lateral else level.outer)
            elif isinstance(item, ast.RangeFunction):
                self._walk(item.functions, level)

    def _names_table(self, node: Node) -> bool:
        if isinstance(node, tuple | list):
            return any(self._names_table(n) for n in node)
        if isinstance(node, ast.RangeVar):
            return node.relname == self.table
        if isinstance(node, ast.Node):
            return any(self._names_table(getattr(node, n)) for n in node.__slots__)
        return False

    # --- expressions --------------------------------------------------------------------

    def _resolve(self, ref: Node, level: _Level) -> tuple[str | None, str | None]:
        """(table, column) a column reference names, as far as the statement tells."""
        names = _names(ref)
        if names is None:
            return None, None
        if len(names) > 1:
            scope: _Level | None = level
            while scope is not None:
                if names[-2] in scope.tables:
                    return scope.tables[names[-2]], names[-1]
                scope = scope.outer
            return None, names[-1]
        scope = level
        while scope is not None and not scope.tables:
            scope = scope.outer
        if scope is None:
            return None, names[0]
        tables = set(scope.tables.values())
        if len(scope.tables) == 1:
            return tables.pop(), names[0]
        if self.table in tables and names[0] in self.columns:
            raise self._refuse(
                f"its column {names[0]} may be {self.table}'s, which the newer schema changes",
                "qualify the column with its table",
            )
        return None, names[0]

    def _is_mine(self, node: Node, level: _Level) -> bool:
        """Whether `node` is a reference to the step's column (through a cast too)."""
        if isinstance(node, ast.TypeCast):
            node = node.arg
        if not isinstance(node, ast.ColumnRef):
            return False
        table, column = self._resolve(node, level)
        return table == self.table and column in self.columns

    def _walk(self, node: Node, level: _Level) -> None:
        """Renames references, converts compared values, and refuses a dropped or split
        column that is read; sub-selects get their own level."""
        if isinstance(node, tuple | list):
            for item in node:
                self._walk(item, level)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SubLink):
            self._walk(node.testexpr, level)
            self._select(node.subselect, level)
        elif isinstance(node, ast.SelectStmt):
            self._select(node, level)
        elif isinstance(node, ast.ColumnRef):
            self._reference(node, level)
        else:
            for name in node.__slots__:
                self._walk(getattr(node, name), level)
            if isinstance(node, ast.A_Expr) and isinstance(self.step, ChangeType):
                self._compare(node, level)

    def _reference(self, node: Node, level: _Level) -> None:
        if not self._is_mine(node, level):
            return
        if isinstance(self.step, RenameColumn):
            node.fields = (*node.fields[:-1], ast.String(sval=self.step.new))
        elif not isinstance(self.step, ChangeType):
            raise self._refuse_column(node.fields[-1].sval)

    def _where(self, where: Node, level: _Level) -> Node:
        """A condition, without its conjuncts on a dropped column."""
        if where is None:
            return None
        if isinstance(self.step, DropColumn):
            conjuncts = list(where.args) if _is_and(where) else [where]
            kept = [c for c in conjuncts if not self._mentions(c, level)]
            if not kept:
                raise self._refuse(
                    f"its every condition is on {self.table}.{self.step_column}, which the"
                    " newer schema dropped, so it would touch every row",
                    "rewrite its WHERE clause by hand",
                )
            if len(kept) != len(conjuncts):
                where = (
                    kept[0]
                    if len(kept) == 1
                    else ast.BoolExpr(boolop=BoolExprType.AND_EXPR, args=tuple(kept))
                )
        self._walk(where, level)
        return where

    def _mentions(self, node: Node, level: _Level) -> bool:
        """Whether `node` reads the step's column at this level (sub-selects aside)."""
        if isinstance(node, tuple | list):
            return any(self._mentions(n, level) for n in node)
        if isinstance(node, ast.ColumnRef):
            return self._is_mine(node, level)
        if isinstance(node, ast.SubLink):
            return self._mentions(node.testexpr, level)
        if isinstance(node, ast.Node):
            return any(self._mentions(getattr(node, n), level) for n in node.__slots__)
        return False

    def _compare(self, node: Node, level: _Level) -> None:
        """`column <op> value` (either way round, or IN a list): the value converted. A
        column compared through a cast (`"c"::jsonb = ...`) keeps that cast's type."""
        kind = node.kind
        if kind == A_Expr_Kind.AEXPR_OP:
            if node.name[-1].sval not in _COMPARISONS:
                return
        elif kind not in _PAIR_KINDS and kind not in _LIST_KINDS:
            return
        left, right = self._is_mine(node.lexpr, level), self._is_mine(node.rexpr, level)
        if left == right:
            return
        column = node.lexpr if left else node.rexpr
        cast = column.typeName if isinstance(column, ast.TypeCast) else None
        if left and isinstance(node.rexpr, tuple | list):
            node.rexpr = tuple(self._convert(v, cast) for v in node.rexpr)
        elif left:
            node.rexpr = self._convert(node.rexpr, cast)
        else:
            node.lexpr = self._convert(node.lexpr, cast)

    def _convert(self, value: Node, cast: Node) -> Node:
        """A value of the old type as the step's USING expression makes it (then cast to
        `cast`, the type the column is compared as). NULL and DEFAULT stay."""
        if _is_null(value) or isinstance(value, ast.SetToDefault):
            return value
        old = ast.TypeCast(arg=value, typeName=self.old_type)
        converted = self._substitute(copy.deepcopy(self.using), old)
        if cast is not None:
            converted = ast.TypeCast(arg=converted, typeName=copy.deepcopy(cast))
        return converted

    def _substitute(self, node: Node, value: Node) -> Node:
        """`node` with each reference to the retyped column replaced by `value`."""
        if isinstance(node, tuple | list):
            return tuple(self._substitute(n, value) for n in node)
        if isinstance(node, ast.ColumnRef):
            names = _names(node) or ()
            if names[-1:] == (self.step_column,) and names[:-1] in ((), (self.table,)):
                return copy.deepcopy(value)
            return node
        if isinstance(node, ast.Node):
            for name in node.__slots__:
                setattr(node, name, self._substitute(getattr(node, name), value))
        return node

    def _rows(self, source: Node) -> list[list[Node]]:
        """The rows of an INSERT's VALUES; for INSERT ... SELECT, checks that its targets line
        up with the column list (no star, no UNION)."""
        if source.valuesLists:
            return [list(row) for row in source.valuesLists]
        targets = source.targetList or ()
        if source.op != SetOperation.SETOP_NONE or any(
            isinstance(t.val, ast.ColumnRef) and _names(t.val) is None for t in targets
        ):
            raise self._refuse(
                f"its SELECT's columns cannot be matched to {self.table}'s",
                "list the selected columns one by one",
            )
        return []
