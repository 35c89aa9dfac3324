"""Finding iasql function calls in SQL text and rewriting them into relations.

A call such as `iasql_modules_list()` is replaced by
`(SELECT * FROM jsonb_to_recordset(<rows>::jsonb) AS t(module_name text, ...))`, where
`<rows>` is an extra parameter filled in at Bind time with the engine's rows as JSON (a simple
Query's statement is sent the extended way for that: see proxy/session.py `_extended_piece`),
so that the rows, secrets included, never appear in a statement's text, which Postgres logs
when it fails. (`render_with_rows` inlines them as literals.) The backing Postgres then evaluates
the whole statement, so WHERE, ORDER BY, joins and RowDescription are exactly Postgres's.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream

from engine.contract import EngineError, FunctionSpec, SqlArgument, did_you_mean, parse_boolean
from proxy.frames import find_any
from proxy.values import parse_text_array

# Postgres type OIDs the proxy needs to know, by the type names function specs use.
TYPE_OIDS = {
    "text": 25,
    "boolean": 16,
    "integer": 23,
    "bigint": 20,
    "timestamptz": 1184,
    "json": 114,
    "jsonb": 3802,
    "text[]": 1009,
}


# A pglast.ast node. Its stubs declare every field optional, so the tree is handled as Any.
SqlNode = Any


class UnsupportedCall(Exception):
    """A call the proxy cannot evaluate (e.g. an argument naming the statement's columns)."""

    sqlstate = "0A000"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def as_engine_error(self) -> EngineError:
        return EngineError(self.sqlstate, str(self), hint=self.hint)


class UnknownFunction(UnsupportedCall):
    """An iasql_* name that no module provides: the prefix is ours, so say so here."""

    sqlstate = "42883"


class InvalidArgument(UnsupportedCall):
    """An argument whose cast fails, as `'abc'::int` does in Postgres."""

    sqlstate = "22P02"


@dataclass
class Call:
    """One iasql function call found in a statement."""

    spec: FunctionSpec
    args: list[SqlNode]
    named: dict[str, SqlNode]
    variadic: bool
    source: SqlNode = field(init=False)  # where the rows come from, set by the rewrite

    def arguments(
        self, params: list[Any] | None, computed: Iterator[Any] | None = None
    ) -> list[SqlArgument]:
        """The call's arguments as Python values; `params` are the Bind values ($1 = params[0]),
        `computed` the values of its non-constant arguments, in order (`Statement.arguments`)."""

        def value(node: SqlNode) -> Any:
            if _is_constant(node):
                return _evaluate(node, params)
            if computed is None:
                raise UnsupportedCall(
                    "arguments of iasql functions must be constants or parameters"
                )
            return next(computed)

        positional = [value(node) for node in self.args]
        if self.variadic and positional and isinstance(positional[-1], list):
            positional[-1:] = positional[-1]  # f(VARIADIC ARRAY['a', 'b']) is f('a', 'b')
        named = [SqlArgument(name, value(node)) for name, node in self.named.items()]
        return [SqlArgument(None, value) for value in positional] + named

    def computed(self) -> list[tuple[SqlNode, str | None]]:
        """The non-constant arguments, in the order `arguments` takes their values, each with
        the type its value is cast to (None: the function has no such parameter)."""
        found: list[tuple[SqlNode, str | None]] = []
        for position, node in enumerate(self.args):
            if not _is_constant(node):
                param = self.spec.param_at(position)
                whole = self.variadic and position == len(self.args) - 1
                sqltype = None if param is None else param.type if whole else param.element_type
                found.append((node, sqltype))
        for name, node in self.named.items():
            if not _is_constant(node):
                param = self.spec.param_named(name)
                found.append((node, None if param is None else param.type))
        return found

    def param_types(self) -> dict[int, int]:
        """Parameter number -> type OID, for parameters used as this call's arguments."""
        found: dict[int, int] = {}
        for position, node in enumerate(self.args):
            param = self.spec.param_at(position)
            # f(VARIADIC $1): the parameter is the whole array; f(VARIADIC ARRAY[$1]), an item.
            whole = (
                self.variadic
                and position == len(self.args) - 1
                and not isinstance(node, ast.A_ArrayExpr)
            )
            name = "text" if param is None else param.type if whole else param.element_type
            _collect_params(node, TYPE_OIDS.get(name, 25), found)
        for name, node in self.named.items():
            param = self.spec.param_named(name)
            _collect_params(node, TYPE_OIDS.get(param.element_type if param else "text", 25), found)
        return found


@dataclass
class Statement:
    """One statement of a Query or Parse; `calls` is empty for ordinary SQL."""

    text: str
    tree: SqlNode | None
    calls: list[Call]
    max_param: int  # the highest $n the client's text uses
    # The calls' non-constant arguments (sub-selects, expressions), evaluated first by the
    # backing Postgres in the client's own session: `SELECT json_build_array(<arg>, ...)` (in
    # hex), whose one value lists them in the order `Call.arguments` takes them. Its own calls
    # (e.g. the iasql_modules_list() of `iasql_install(VARIADIC ARRAY(SELECT ... FROM
    # iasql_modules_list()))`) run first, their rows made a relation as everywhere else.
    arguments: Statement | None = None
    # Placeholder literal -> the E'' literal printed in its place (see _escape_strings).
    escapes: dict[str, str] = field(default_factory=dict)
    # For an `arguments` statement: the names of the WITH queries of the statement it computes
    # arguments for, which it cannot see (see `error_hint`).
    outer_names: frozenset[str] = frozenset()

    @property
    def computing_function(self) -> str:
        """The name of the first function whose arguments this statement computes first."""
        return next(c.spec.name for c in self.calls if c.computed())

    def error_hint(self, sqlstate: str, message: str) -> str | None:
        """A hint for Postgres's error about this `arguments` statement, when it has none."""
        if sqlstate == "21000":  # more than one row returned by a subquery
            return (
                "an argument of an iasql function is computed once: pass a list,"
                " as in iasql_install(VARIADIC ARRAY(SELECT ...))"
            )
        if sqlstate == "42P01" and any(f'relation "{n}" ' in message for n in self.outer_names):
            return (
                "an argument of an iasql function is computed before the statement runs, so it"
                " cannot read the statement's WITH queries: write the query in the argument,"
                " as in iasql_install(VARIADIC ARRAY(SELECT ... FROM iasql_modules_list()))"
            )
        return None

    def render(self) -> str:
        """The rewritten SQL, with each call's current `source` node in place."""
        assert self.tree is not None
        sql = str(RawStream()(self.tree))
        for placeholder, literal in self.escapes.items():
            sql = sql.replace(placeholder, literal, 1)
        return sql

    def render_with_rows(self, rows: list[list[dict[str, Any]]]) -> str:
        """The rows inlined as E'' literals: pglast prints a plain '' literal, whose
        backslashes (every `"` or non-ASCII character in JSON has one) would change meaning
        under `standard_conforming_strings = off`. So each call gets a placeholder, replaced
        after printing."""
        token = secrets.token_hex(8)
        literals: dict[str, str] = {}
        for number, (call, call_rows) in enumerate(zip(self.calls, rows, strict=True)):
            placeholder = f"iasql_rows_{token}_{number}"
            _set_literal(call.source, placeholder)
            literals[f"'{placeholder}'"] = _escape_literal(json.dumps(call_rows, default=str))
        sql = self.render()
        for placeholder, literal in literals.items():
            sql = sql.replace(placeholder, literal, 1)
        return sql

    def render_with_params(self, first: int) -> str:
        """Rows come from parameters $first, $first+1, ... (one per call)."""
        for offset, call in enumerate(self.calls):
            _set_param(call.source, first + offset)
        return self.render()


Prefilter = Callable[[bytes, int, int], bool]


def needles(names: Iterable[str]) -> tuple[bytes, ...]:
    """What the prefilter searches for: "iasql_" and the names, lower-case, leaving out a name
    that holds a shorter one. The native relay (proxy/native.py) searches for the same."""
    found: list[bytes] = []
    for name in sorted({"iasql_", *(n.lower() for n in names)}, key=len):
        encoded = name.encode()
        if not any(needle in encoded for needle in found):
            found.append(encoded)
    return tuple(found)


def prefilter(names: Iterable[str]) -> Prefilter:
    """A cheap byte-level test run before parsing: might data[start:end] name a function?

    It runs on every Query and Parse, so it is a case-insensitive search for the names, in C
    where proxy/frames.py has it. A case-insensitive regex alternation of the names cost about
    14 µs per query."""
    return functools.partial(find_any, needles(names))


def split_statements(sql: str, catalog: Mapping[str, FunctionSpec]) -> list[Statement] | None:
    """The statements of `sql`, calls found and replaced; None when Postgres should see the
    text unchanged (it does not parse, or it calls nothing of ours)."""
    try:
        raw = parse_sql(sql)
    except ParseError:
        return None
    statements: list[Statement] = []
    for stmt in raw:
        end = stmt.stmt_location + stmt.stmt_len if stmt.stmt_len else len(sql)
        text = sql[stmt.stmt_location : end]
        numbers: dict[int, int] = {}
        _collect_params(stmt.stmt, 0, numbers)
        calls: list[Call] = []
        with_names = _with_names(stmt.stmt)  # before the rewrite, which may replace them
        tree = _Rewriter(catalog, calls).node(stmt.stmt)
        statement = Statement(text, tree if calls else None, calls, max(numbers, default=0))
        statement.arguments = _arguments_statement(calls, catalog)
        if statement.arguments is not None:
            statement.arguments.outer_names = with_names
        statements.append(statement)
    if not any(s.calls for s in statements):
        return None
    return statements


def _with_names(node: SqlNode) -> frozenset[str]:
    clause = getattr(node, "withClause", None)
    return frozenset(cte.ctename for cte in clause.ctes) if clause is not None else frozenset()


def _arguments_statement(
    calls: list[Call], catalog: Mapping[str, FunctionSpec]
) -> Statement | None:
    """The statement that computes the non-constant arguments of `calls` (see
    `Statement.arguments`), or None when they are all constants or parameters. Each argument
    is cast to its parameter's type, so a wrong one fails as Postgres fails it; values the
    engine takes as text (json, timestamps) come back as text, as a constant would."""
    targets: list[SqlNode] = []
    for call in calls:
        for node, sqltype in call.computed():
            if sqltype is None:
                targets.append(node)
                continue
            as_text = sqltype in ("json", "jsonb", "timestamptz")
            template = f"SELECT NULL::{sqltype}::text" if as_text else f"SELECT NULL::{sqltype}"
            cast = parse_sql(template)[0].stmt.targetList[0].val
            (cast.arg if as_text else cast).arg = node
            targets.append(cast)
    if not targets:
        return None
    # A scalar sub-select: an argument computed once, so a set-returning one that returns
    # several rows is Postgres's "more than one row returned by a subquery", and none is NULL.
    # The JSON comes back as hex of its UTF-8, whatever the session's client_encoding.
    tree = parse_sql(
        "SELECT pg_catalog.encode(pg_catalog.convert_to("
        "(SELECT pg_catalog.json_build_array(NULL))::text, 'UTF8'), 'hex')"
    )[0].stmt
    sublink = tree.targetList[0].val.args[0].args[0].arg
    sublink.subselect.targetList[0].val.args = tuple(targets)
    inner: list[Call] = []
    tree = _Rewriter(catalog, inner).node(tree)
    numbers: dict[int, int] = {}
    _collect_params(tree, 0, numbers)
    statement = Statement("", tree, inner, max(numbers, default=0))
    statement.escapes = _escape_strings(tree, secrets.token_hex(8), {})
    statement.text = statement.render()
    statement.arguments = _arguments_statement(inner, catalog)
    return statement


def _escape_strings(node: Any, token: str, escapes: dict[str, str]) -> dict[str, str]:
    """pglast prints a string with a backslash as a plain '' literal, which would read
    differently under `standard_conforming_strings = off`: each such string of the tree is
    replaced by a placeholder, to be printed as an E'' literal (as `render_with_rows` does)."""
    if isinstance(node, tuple | list):
        for item in node:
            _escape_strings(item, token, escapes)
    elif isinstance(node, ast.A_Const):  # (identifiers are Strings too: not those)
        value = node.val
        if isinstance(value, ast.String) and "\\" in (value.sval or ""):
            placeholder = f"iasql_string_{token}_{len(escapes)}"
            escapes[f"'{placeholder}'"] = _escape_literal(value.sval)
            node.val = ast.String(sval=placeholder)
    elif isinstance(node, ast.Node):
        for name in node.__slots__:
            _escape_strings(getattr(node, name), token, escapes)
    return escapes


# --- the rewrite ----------------------------------------------------------------------------


class _Rewriter:
    """Walks a parse tree, replacing each call of a catalog function by a relation."""

    def __init__(self, catalog: Mapping[str, FunctionSpec], calls: list[Call]) -> None:
        self.catalog = catalog
        self.calls = calls

    def node(self, node: Any) -> Any:
        if isinstance(node, tuple | list):
            return tuple(self.node(item) for item in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.RangeFunction):
            replaced = self._range_function(node)
            if replaced is not None:
                return replaced
        if isinstance(node, ast.SelectStmt) and node.targetList:
            node.targetList = tuple(self._select_target(t) for t in node.targetList)
        if isinstance(node, ast.FuncCall):
            call = self._call(node)
            if call is not None:
                return _scalar_subquery(call)
        for name in node.__slots__:
            if name == "targetList" and isinstance(node, ast.SelectStmt):
                continue  # done above
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple | list):
                setattr(node, name, self.node(value))
        return node

    def _call(self, node: SqlNode) -> Call | None:
        name = node.funcname[-1].sval.lower()
        spec = self.catalog.get(name)
        if spec is None:
            if name.startswith("iasql_"):
                hint = did_you_mean(name, list(self.catalog))
                raise UnknownFunction(f"function {name}() does not exist", hint)
            return None
        if node.agg_star or node.agg_distinct or node.agg_order or node.over or node.agg_filter:
            raise UnsupportedCall(f"{spec.name}() is not an aggregate or window function")
        args: list[SqlNode] = []
        named: dict[str, SqlNode] = {}
        for arg in node.args or ():
            if isinstance(arg, ast.NamedArgExpr):
                named[arg.name] = arg.arg
            elif named:
                raise UnsupportedCall("positional argument cannot follow named argument")
            else:
                args.append(arg)
        for arg in (*args, *named.values()):
            _check_argument(spec, arg)
        call = Call(spec, args, named, bool(node.func_variadic))
        self.calls.append(call)
        return call

    def _range_function(self, node: SqlNode) -> SqlNode | None:
        functions: list[Any] = list(node.functions or ())
        if len(functions) != 1 or not isinstance(functions[0][0], ast.FuncCall):
            return None
        function, coldeflist = functions[0]
        call = self._call(function)
        if call is None:
            return None
        if node.ordinality or node.coldeflist or coldeflist:
            raise UnsupportedCall(
                f"{call.spec.name}() does not support WITH ORDINALITY or a column definition list"
            )
        alias = node.alias or ast.Alias(aliasname=call.spec.name)
        return ast.RangeSubselect(lateral=node.lateral, subquery=_rows_select(call), alias=alias)

    def _select_target(self, target: SqlNode) -> SqlNode:
        """`SELECT f()` returns one row per function row, like a set-returning function."""
        if isinstance(target.val, ast.FuncCall):
            call = self._call(target.val)
            if call is not None:
                target.val = _set_returning(call)
                target.name = target.name or call.spec.name
                return target
        target.val = self.node(target.val)
        return target


def _expression(call: Call, template: str) -> Any:
    """Parses `template` (SQL with `{rows}` and `{value}` holes) and returns its first target's
    expression, with `call.source` pointing at the TypeCast that receives the rows."""
    names = [f't."{name}"' for name, _ in call.spec.columns]
    value = names[0] if len(names) == 1 else f"ROW({', '.join(names)})"
    coldefs = ", ".join(f'"{name}" {sqltype}' for name, sqltype in call.spec.columns)
    rows = f"jsonb_to_recordset($1::jsonb) AS t({coldefs})"
    stmt = parse_sql("SELECT " + template.format(rows=rows, value=value))[0].stmt
    call.source = _find_rows_source(stmt)
    return stmt.targetList[0].val


def _rows_select(call: Call) -> SqlNode:
    sublink = _expression(call, "(SELECT * FROM {rows})")
    return sublink.subselect


def _set_returning(call: Call) -> SqlNode:
    return _expression(call, "unnest(ARRAY(SELECT {value} FROM {rows}))")


def _scalar_subquery(call: Call) -> SqlNode:
    return _expression(call, "(SELECT {value} FROM {rows})")


def _find_rows_source(node: Any) -> Any:
    if isinstance(node, ast.TypeCast) and isinstance(node.arg, ast.ParamRef):
        return node
    children = node if isinstance(node, tuple | list) else ()
    if isinstance(node, ast.Node):
        children = tuple(getattr(node, name) for name in node.__slots__)
    for child in children:
        found = _find_rows_source(child)
        if found is not None:
            return found
    return None


def _set_literal(source: SqlNode, text: str) -> None:
    source.arg = ast.A_Const(val=ast.String(sval=text))


def _escape_literal(text: str) -> str:
    """`text` as an E'' literal, which reads the same whatever `standard_conforming_strings`."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _set_param(source: SqlNode, number: int) -> None:
    source.arg = ast.ParamRef(number=number)


def _collect_params(node: Any, oid: int, found: dict[int, int]) -> None:
    if isinstance(node, tuple | list):
        for item in node:
            _collect_params(item, oid, found)
    elif isinstance(node, ast.ParamRef):
        found.setdefault(node.number, oid)
    elif isinstance(node, ast.Node):
        for name in node.__slots__:
            _collect_params(getattr(node, name), oid, found)


# --- argument values ------------------------------------------------------------------------

_CASTS: dict[str, Callable[[Any], Any]] = {
    "text": str,
    "varchar": str,
    "int4": int,
    "int8": int,
    "int2": int,
    "bool": lambda v: v if isinstance(v, bool) else parse_boolean(str(v)),
}


def _is_constant(node: SqlNode) -> bool:
    """A constant or a parameter, which the proxy evaluates itself; anything else is computed
    by the backing Postgres first (see `Statement.arguments`)."""
    if isinstance(node, ast.TypeCast):
        return _is_constant(node.arg)
    if isinstance(node, ast.A_ArrayExpr):
        return all(_is_constant(element) for element in node.elements or ())
    return isinstance(node, ast.A_Const | ast.ParamRef)


def _check_argument(spec: FunctionSpec, node: SqlNode) -> None:
    """An argument is computed once, before the call, not once per row of the statement: so
    it may not name the statement's columns (a sub-select's own columns are fine)."""
    if not _is_constant(node) and _column_outside_subselect(node):
        raise UnsupportedCall(
            f"an argument of {spec.name}() cannot refer to a column of the calling statement",
            hint=f"compute the values in a sub-select: {spec.name}(VARIADIC ARRAY(SELECT"
            " module_name FROM iasql_modules_list() WHERE ...))"
            if any(p.variadic for p in spec.params)
            else f"compute the value in a sub-select: {spec.name}((SELECT ... FROM ...))",
        )


def _column_outside_subselect(node: Any) -> bool:
    if isinstance(node, ast.ColumnRef):
        return True
    if isinstance(node, ast.SubLink):
        return _column_outside_subselect(node.testexpr)  # `x IN (SELECT ...)`: x is outside
    if isinstance(node, tuple | list):
        return any(_column_outside_subselect(item) for item in node)
    if isinstance(node, ast.Node):
        return any(_column_outside_subselect(getattr(node, name)) for name in node.__slots__)
    return False


def _evaluate(node: SqlNode, params: list[Any] | None) -> Any:
    if isinstance(node, ast.A_Const):
        return None if node.isnull else _constant(node.val)
    if isinstance(node, ast.ParamRef):
        if params is None or not 0 < node.number <= len(params):
            raise UnsupportedCall(f"there is no parameter ${node.number}")
        return params[node.number - 1]
    if isinstance(node, ast.TypeCast):
        value = _evaluate(node.arg, params)
        cast = _CASTS.get(node.typeName.names[-1].sval)
        if node.typeName.arrayBounds and isinstance(value, str):  # '{a,b}'::text[]
            try:
                return parse_text_array(value)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
        if value is None or cast is None or node.typeName.arrayBounds:
            return value
        try:
            return cast(value)
        except (ValueError, TypeError) as exc:
            type_name = node.typeName.names[-1].sval
            raise InvalidArgument(f"invalid input syntax for type {type_name}: {value!r}") from exc
    if isinstance(node, ast.A_ArrayExpr):
        return [_evaluate(element, params) for element in node.elements or ()]
    raise UnsupportedCall("arguments of iasql functions must be constants or parameters")


def _constant(value: SqlNode) -> Any:
    if isinstance(value, ast.Integer):
        return value.ival
    if isinstance(value, ast.Float):
        return float(value.fval)
    if isinstance(value, ast.Boolean):
        return bool(value.boolval)
    if isinstance(value, ast.String):
        return value.sval
    if isinstance(value, ast.BitString):
        return value.bsval
    raise UnsupportedCall(f"unsupported constant {value!r}")
