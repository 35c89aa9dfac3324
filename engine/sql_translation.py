"""SQL text written for an older schema of a module, rewritten for this server's: what a
target does to SQL promoted from an environment whose iasql is older (engine/promotion.py,
in the worker process). It works on pglast's parse tree and prints the tree again where a
step changed it; a statement no step touches comes back byte for byte.

The statements are those iasql writes (INSERT ... VALUES, UPDATE ... SET ... WHERE, DELETE,
the SELECTs of promotion checks, foreign keys as nested sub-selects) and ones a person
writes like them. A column reference belongs to the table of its own query level: the FROM
item it names, or the only one there is.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.primnodes import BoolExprType
from pglast.parser import ParseError
from pglast.stream import RawStream

from modules.migration import ChangeType, DropColumn, RenameColumn, SplitTable, Step

Node = Any  # a pglast.ast node: its stubs declare every field optional


# The steps that change SQL text; the others add or check what no older SQL names.
_TextStep = RenameColumn | DropColumn | ChangeType | SplitTable


class SchemaTranslationError(ValueError):
    """A statement that cannot be said in the new schema; the message says why and what to
    do instead."""


def translate_script(statements: Sequence[str], steps: Sequence[Step]) -> list[str | None]:
    return [translate_statement(s, steps) for s in statements]


def translate_statement(sql: str, steps: Sequence[Step]) -> str | None:
    """`sql`, one statement written for the schema before `steps`, in the schema after them:
    unchanged when no step touches it, None when nothing of it is left (an UPDATE that set
    only dropped columns)."""
    relevant = [s for s in steps if isinstance(s, _TextStep)]
    if not relevant:
        return sql
    try:
        [raw] = parse_sql(sql)
    except (ParseError, ValueError) as exc:
        raise SchemaTranslationError(
            f"cannot translate SQL that is not one statement: {exc}"
        ) from None
    statement = raw.stmt
    changed = False
    for step in relevant:
        edit = _Edit(step, sql)
        statement = edit.statement(statement)
        if statement is None:
            return None
        changed |= edit.changed
    if not changed:
        return sql
    text = RawStream()(statement)
    return text + ";" if sql.rstrip().endswith(";") else text


def _names(node: Node) -> tuple[str, ...]:
    return tuple(f.sval for f in node.fields if isinstance(f, ast.String))


class _Scope:
    """The tables of one query level, by the names its column references may use."""

    def __init__(self, relations: list[Node], outer: _Scope | None) -> None:
        self.by_name: dict[str, str] = {}
        for relation in relations:
            name = relation.alias.aliasname if relation.alias else relation.relname
            self.by_name[name] = relation.relname
        self.only = relations[0].relname if len(relations) == 1 else None
        self.outer = outer

    def table_of(self, ref: Node) -> tuple[str | None, str | None]:
        """(table, column) a column reference names, as far as can be told."""
        names = _names(ref)
        if len(ref.fields) != len(names):  # a star
            return None, None
        if len(names) == 1:
            return self.only, names[0]
        scope: _Scope | None = self
        while scope is not None:
            if names[-2] in scope.by_name:
                return scope.by_name[names[-2]], names[-1]
            scope = scope.outer
        return None, names[-1]


def _relations(items: Sequence[Node] | None) -> list[Node]:
    return [item for item in items or () if isinstance(item, ast.RangeVar)]


class _Edit:
    """One step applied to one statement's tree."""

    def __init__(self, step: _TextStep, sql: str) -> None:
        self.step = step
        self.table = step.source if isinstance(step, SplitTable) else step.table
        self.sql = sql
        self.changed = False

    # --- statements -------------------------------------------------------------------

    def statement(self, node: Node) -> Node | None:
        if isinstance(node, ast.InsertStmt):
            return self._insert(node)
        if isinstance(node, ast.UpdateStmt):
            return self._update(node)
        if isinstance(node, ast.DeleteStmt):
            scope = _Scope([node.relation, *_relations(node.usingClause)], None)
            node.whereClause = self._where(node.whereClause, scope, node.relation.relname)
            self._walk(getattr(node, "returningClause", None), scope)
            return node
        if isinstance(node, ast.SelectStmt):
            self._select(node, None)
            return node
        return node

    def _insert(self, node: Node) -> Node:
        scope = _Scope([node.relation], None)
        mine = node.relation.relname == self.table
        columns = [c.name for c in node.cols or ()]
        source = node.selectStmt
        rows: list[list[Node]] = []
        if source is not None and source.valuesLists:
            rows = [list(r) for r in source.valuesLists]
        elif source is not None:
            self._select(source, None)
        if mine and self.column_in(columns):
            if isinstance(self.step, SplitTable):
                self._refuse()
            index = columns.index(self.column)
            if isinstance(self.step, RenameColumn):
                node.cols[index].name = self.step.new
            elif isinstance(self.step, DropColumn):
                node.cols = tuple(c for i, c in enumerate(node.cols) if i != index) or None
                if rows:
                    rows = [[v for i, v in enumerate(r) if i != index] for r in rows]
                elif source is not None and source.targetList:
                    source.targetList = tuple(
                        t for i, t in enumerate(source.targetList) if i != index
                    )
            elif isinstance(self.step, ChangeType):
                if rows:
                    rows = [[*r[:index], self._convert(r[index]), *r[index + 1 :]] for r in rows]
                elif source is not None and source.targetList:
                    target = source.targetList[index]
                    target.val = self._convert(target.val)
            self.changed = True
        if rows:
            for row in rows:
                for value in row:
                    self._walk(value, scope)
            source.valuesLists = tuple(tuple(r) for r in rows)
        self._walk(getattr(node, "returningClause", None), scope)
        return node

    def _update(self, node: Node) -> Node | None:
        scope = _Scope([node.relation, *_relations(node.fromClause)], None)
        mine = node.relation.relname == self.table
        kept = []
        for target in node.targetList:
            self._walk(target.val, scope)
            if mine and self.column_in([target.name]):
                self.changed = True
                if isinstance(self.step, SplitTable):
                    self._refuse()
                if isinstance(self.step, DropColumn):
                    continue
                if isinstance(self.step, RenameColumn):
                    target.name = self.step.new
                elif isinstance(self.step, ChangeType):
                    target.val = self._convert(target.val)
            kept.append(target)
        if not kept:
            return None
        node.targetList = tuple(kept)
        node.whereClause = self._where(node.whereClause, scope, node.relation.relname)
        self._walk(getattr(node, "returningClause", None), scope)
        return node

    def _select(self, node: Node, outer: _Scope | None) -> None:
        for branch in (node.larg, node.rarg):
            if branch is not None:
                self._select(branch, outer)
        scope = _Scope(_relations(node.fromClause), outer)
        self._walk(node.targetList, scope)
        self._walk(node.fromClause, scope)
        only = scope.only if len(scope.by_name) == 1 else None
        node.whereClause = self._where(node.whereClause, scope, only)
        for values in node.valuesLists or ():
            self._walk(values, scope)

    # --- expressions ------------------------------------------------------------------

    @property
    def column(self) -> str:
        step = self.step
        return step.old if isinstance(step, RenameColumn) else getattr(step, "column", "")

    def column_in(self, names: list[str]) -> bool:
        if isinstance(self.step, SplitTable):
            return any(n in self.step.columns for n in names)
        return self.column in names

    def _mine(self, node: Node, scope: _Scope) -> bool:
        """Whether a column reference names the step's column of the step's table."""
        if not isinstance(node, ast.ColumnRef):
            return False
        table, column = scope.table_of(node)
        return table == self.table and column is not None and self.column_in([column])

    def _where(self, where: Node, scope: _Scope, table: str | None) -> Node:
        """A WHERE clause, without the conditions on a dropped column."""
        if where is None:
            return None
        if isinstance(self.step, DropColumn):
            conditions = list(where.args) if _is_and(where) else [where]
            kept = [c for c in conditions if not self._mentions(c, scope)]
            if len(kept) != len(conditions):
                self.changed = True
                if not kept:
                    raise SchemaTranslationError(
                        f"{_clip(self.sql)}: its only condition is on {self.table}.{self.column},"
                        " which the newer schema dropped; without it the statement would touch"
                        " every row: rewrite its WHERE clause by hand"
                    )
                where = (
                    kept[0]
                    if len(kept) == 1
                    else ast.BoolExpr(boolop=where.boolop, args=tuple(kept))
                )
        self._walk(where, scope)
        return where

    def _mentions(self, node: Node, scope: _Scope) -> bool:
        found = False

        def look(item: Node) -> None:
            nonlocal found
            if self._mine(item, scope):
                found = True

        _each(node, look, stop_at_sublinks=True)
        return found

    def _walk(self, node: Node, scope: _Scope) -> None:
        """Renames references and converts compared values at this level; descends into
        sub-selects with their own scope."""
        if node is None:
            return
        if isinstance(node, tuple | list):
            for item in node:
                self._walk(item, scope)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SubLink):
            self._walk(node.testexpr, scope)
            self._select(node.subselect, scope)
            return
        if isinstance(node, ast.RangeSubselect):
            self._select(node.subquery, scope)
            return
        if isinstance(node, ast.ColumnRef) and self._mine(node, scope):
            self.changed = True
            if isinstance(self.step, RenameColumn):
                node.fields = (*node.fields[:-1], ast.String(sval=self.step.new))
            elif isinstance(self.step, SplitTable):
                self._refuse()
            return
        if isinstance(node, ast.A_Expr) and isinstance(self.step, ChangeType):
            self._compare(node, scope)
        for name in node.__slots__:
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple | list):
                self._walk(value, scope)

    def _compare(self, node: Node, scope: _Scope) -> None:
        """`column op value` (or the other way round, or IN a list): the value converted."""
        if self._mine(_uncast(node.lexpr), scope):
            if isinstance(node.rexpr, tuple | list):
                node.rexpr = tuple(self._convert(v) for v in node.rexpr)
            else:
                node.rexpr = self._convert(node.rexpr)
            self.changed = True
        elif self._mine(_uncast(node.rexpr), scope):
            node.lexpr = self._convert(node.lexpr)
            self.changed = True

    def _convert(self, value: Node) -> Node:
        """A value of the old type as the step's USING expression makes it."""
        step = self.step
        assert isinstance(step, ChangeType)
        if isinstance(value, ast.A_Const) and value.isnull:
            return value
        using = (
            f"({step.using})::{step.new_type}"
            if step.using
            else f'"{step.column}"::{step.new_type}'
        )
        expression = parse_sql(f"SELECT {using}")[0].stmt.targetList[0].val
        old = parse_sql(f"SELECT NULL::{step.old_type}")[0].stmt.targetList[0].val.typeName

        def replace(node: Node) -> Node:
            if isinstance(node, ast.ColumnRef) and _names(node)[-1:] == (step.column,):
                return ast.TypeCast(arg=copy.deepcopy(value), typeName=copy.deepcopy(old))
            if isinstance(node, tuple | list):
                return tuple(replace(n) for n in node)
            if isinstance(node, ast.Node):
                for name in node.__slots__:
                    setattr(node, name, replace(getattr(node, name)))
            return node

        return replace(expression)

    def _refuse(self) -> None:
        step = self.step
        assert isinstance(step, SplitTable)
        raise SchemaTranslationError(
            f"{_clip(self.sql)}: {step.source}'s columns {', '.join(step.columns)} moved to"
            f" table {step.table.name} in a newer schema; write this change for that table"
            " by hand, or upgrade the source and promote again"
        )


def _is_and(node: Node) -> bool:
    return isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR


def _uncast(node: Node) -> Node:
    return node.arg if isinstance(node, ast.TypeCast) else node


def _each(node: Node, visit: Any, *, stop_at_sublinks: bool) -> None:
    if isinstance(node, tuple | list):
        for item in node:
            _each(item, visit, stop_at_sublinks=stop_at_sublinks)
        return
    if not isinstance(node, ast.Node):
        return
    visit(node)
    if stop_at_sublinks and isinstance(node, ast.SubLink):
        return
    for name in node.__slots__:
        _each(getattr(node, name), visit, stop_at_sublinks=stop_at_sublinks)


def _clip(sql: str, limit: int = 120) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."
