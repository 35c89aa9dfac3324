"""The contract between the proxy and the engine: what an iasql function is (its signature,
its result columns, the code that runs it), the context of a call, and EngineError, the
failure a client sees as a Postgres ErrorResponse."""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.ddl import quote_literal

REQUIRED = object()

Row = dict[str, Any]


class EngineError(Exception):
    """An error reported to the client as a Postgres ErrorResponse."""

    def __init__(
        self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # a Postgres type name: text, boolean, integer, timestamptz, text[] ...
    default: Any = REQUIRED
    variadic: bool = False

    def declaration(self) -> str:
        """The parameter as SQL declares it: `VARIADIC module_names text[]`,
        `force boolean DEFAULT false`."""
        text = f"{'VARIADIC ' if self.variadic else ''}{self.name} {self.type}"
        return text if self.default is REQUIRED else f"{text} DEFAULT {quote_literal(self.default)}"

    @property
    def element_type(self) -> str:
        """The type of one argument: a VARIADIC text[] parameter takes text arguments."""
        return self.type.removesuffix("[]") if self.variadic else self.type


@dataclass(frozen=True)
class SqlArgument:
    """One argument as written in SQL: positional (name None) or named (`name => value`)."""

    name: str | None
    value: Any


@dataclass
class CallContext:
    """Who is calling, from which database; `notify` sends a NOTICE to the client."""

    database: str
    user: str
    notify: Callable[[str], None] = field(default=lambda _text: None)
    in_transaction_block: bool = False  # the client's own Postgres transaction is open
    # Set by a CancelRequest (Ctrl-C), as opposed to the client going away.
    cancel_requested: bool = False


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[list[Row]]]


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, Postgres type)
    params: tuple[Param, ...]
    handler: Handler
    description: str
    admin_only: bool = False  # runs only on the server's admin database
    # Changes the cloud or the schema: refused inside a client's transaction block, whose
    # ROLLBACK could not undo it (the engine works on its own connections).
    outside_transaction_block: bool = False
    sample: str | None = None  # an example call, for iasql_help()

    def param_at(self, position: int) -> Param | None:
        if position < len(self.params):
            return self.params[position]
        if self.params and self.params[-1].variadic:
            return self.params[-1]
        return None

    def param_named(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def signature(self) -> str:
        """The function as SQL declares it: `iasql_commit(message text DEFAULT NULL)`, as
        iasql_help() shows it and as the stub in every environment database is created."""
        return f"{self.name}({', '.join(p.declaration() for p in self.params)})"

    def bind(self, arguments: list[SqlArgument]) -> dict[str, Any]:
        """Matches arguments to parameters as Postgres would, with clear errors."""
        bound: dict[str, Any] = {}
        positional = [a.value for a in arguments if a.name is None]
        for param in self.params:
            if param.variadic:
                bound[param.name], positional = positional, []
            elif positional:
                bound[param.name] = positional.pop(0)
        if positional:
            raise self._no_such_signature(
                f"{self.name}() takes at most {len(self.params)} arguments"
            )
        for argument in arguments:
            if argument.name is None:
                continue
            if self.param_named(argument.name) is None:
                raise self._no_such_signature(f"{self.name}() has no parameter {argument.name!r}")
            bound[argument.name] = argument.value
        for param in self.params:
            if param.name not in bound:
                if param.default is REQUIRED:
                    raise self._no_such_signature(f"{self.name}() needs the argument {param.name}")
                bound[param.name] = param.default
            self._check_null(param, bound[param.name])
            bound[param.name] = _coerce(self.name, param, bound[param.name])
        return bound

    def _check_null(self, param: Param, value: Any) -> None:
        """NULL is an argument only where the parameter's default is NULL (as it is for
        `iasql_commit(message)`); elsewhere it is refused here, before any handler runs."""
        if param.variadic:
            if None not in (value if isinstance(value, list) else [value]):
                return
            message = f"{self.name}(): no argument of VARIADIC {param.name} can be NULL"
            hint = f"the signature is {self.signature()}"
        elif value is not None or param.default is None:
            return
        elif param.default is REQUIRED:
            message = f"{self.name}(): the argument {param.name} cannot be NULL"
            hint = f"the signature is {self.signature()}"
        else:
            message = f"{self.name}(): the argument {param.name} cannot be NULL"
            hint = f"leave it out for its default, {quote_literal(param.default)}"
        raise EngineError("22004", message, hint=hint)

    def _no_such_signature(self, message: str) -> EngineError:
        return EngineError("42883", message, hint=f"the signature is {self.signature()}")


_BOOLEANS = {
    **dict.fromkeys(("t", "true", "y", "yes", "on", "1"), True),
    **dict.fromkeys(("f", "false", "n", "no", "off", "0"), False),
}


def parse_boolean(text: str) -> bool:
    """A boolean written as Postgres reads one ('true', 'off', 't', ...); ValueError if not."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid input syntax for type boolean: {text!r}") from None


def _coerce(function: str, param: Param, value: Any) -> Any:
    """An untyped string constant ('false') read as the parameter's type, as Postgres would."""
    if not isinstance(value, str) or param.variadic:
        return value
    try:
        if param.type == "boolean":
            return parse_boolean(value)
        if param.type in ("int", "integer", "bigint", "smallint"):
            return int(value.strip())
    except ValueError:
        raise EngineError(
            "22P02",
            f"{function}(): invalid input syntax for type {param.type}: {value!r}",
            hint="write true or false" if param.type == "boolean" else "write a whole number",
        ) from None
    return value


def did_you_mean(name: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(name, choices, n=1)
    return f'did you mean "{close[0]}"?' if close else None
