"""AWS access for one environment database: credentials from its account module's row,
clients cached per (service, region), botocore's standard retry mode for throttling; and
cloud_failure(), which turns a failed AWS call into the error a client sees."""

from __future__ import annotations

import contextlib
import functools
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as boto
from botocore.parsers import ResponseParserError

from engine.contract import EngineError
from modules import account_module

GLOBAL_REGION = "us-east-1"  # where global services (IAM, Route 53) are called


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    endpoint_url: str | None

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return (
            f"Credentials(access_key_id={self.access_key_id!r}, endpoint_url={self.endpoint_url!r})"
        )


@functools.cache
def _shared_session() -> Any:
    """One botocore session for every account: each client gets its own credentials, and the
    session's loader parses each service's model once (tens of MB for EC2), not once per
    environment database."""
    return get_session()


class AwsCloud:
    """Implements modules.spec.Cloud."""

    def __init__(self, credentials: Credentials, max_connections: int = 64) -> None:
        self.credentials = credentials
        self._session = _shared_session()
        # An unreachable, refusing, 500-answering or connection-dropping endpoint fails a call
        # in about 10 s (3 attempts of a 3 s connect, with backoff under 1 + 2 s); a slow one
        # has 60 s. A 3 s connect outlasts a loopback SYN retry at 1 s and a busy event loop;
        # 2 s timed out against a local moto on a machine loaded with test suites.
        self._config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=max_connections,
            connect_timeout=3,
            read_timeout=60,
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._stack = contextlib.AsyncExitStack()

    @contextlib.asynccontextmanager
    async def client(self, service: str, region: str | None) -> AsyncIterator[Any]:
        key = (service, region or GLOBAL_REGION)
        client = self._clients.get(key)
        if client is None:
            creds = self.credentials
            made: Any = await self._stack.enter_async_context(
                self._session.create_client(
                    service,
                    region_name=key[1],
                    endpoint_url=creds.endpoint_url,
                    aws_access_key_id=creds.access_key_id,
                    aws_secret_access_key=creds.secret_access_key,
                    aws_session_token=creds.session_token,
                    config=self._config,
                )
            )
            made.meta.events.register("before-parse", _plain_server_error)
            self._clients[key] = client = made
        yield client

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


def _plain_server_error(response_dict: dict[str, Any], **_: Any) -> None:
    """Makes a 5xx answer whose body is not the service's protocol (a web server's HTML
    page, a proxy's text) look like the bodiless error botocore expects, so that it is
    retried like any HTTP 500 instead of failing at once as an unparsable answer (botocore
    does this only for bodies starting `<html>`; werkzeug's page, which a moto server
    answers for an exception of its own, starts `<!doctype html>`)."""
    if response_dict.get("status_code", 0) < 500:
        return
    body = response_dict.get("body")
    if not isinstance(body, bytes):
        return
    start = body.lstrip()[:16].lower()
    in_protocol = start.startswith(b"{") or (
        start.startswith(b"<") and not start.startswith((b"<!doctype", b"<html"))
    )
    if not in_protocol:
        response_dict["body"] = b""


async def load_credentials(conn: Any) -> Credentials:
    module, account = account_module()
    table = account.credentials.name
    if not await conn.fetchval(f"SELECT to_regclass('{table}') IS NOT NULL"):
        raise EngineError(
            "55000",
            f"the {module.name} module is not installed",
            hint=f"SELECT * FROM iasql_install('{module.name}'), then add a row to {table}",
        )
    rows = await conn.fetch(
        "SELECT access_key_id, secret_access_key, session_token, endpoint_url"
        f" FROM {table} ORDER BY id"
    )
    if not rows:
        raise EngineError(
            "55000",
            "this database has no AWS credentials",
            hint=f"INSERT INTO {table} (access_key_id, secret_access_key) VALUES (...)",
        )
    row = rows[0]
    return Credentials(
        row["access_key_id"], row["secret_access_key"], row["session_token"], row["endpoint_url"]
    )


# --- failed calls ---------------------------------------------------------------------------


def _unreachable_hint() -> str:
    table = account_module()[1].credentials.name
    return f"check {table}.endpoint_url (NULL means AWS itself) and the network, then retry"


MESSAGE_LIMIT = 300  # characters of the cloud's own message kept in ours
# botocore's parameter errors quote the value: "Invalid length for parameter X, value: 2, ..."
_QUOTED_VALUE = re.compile(r", value: .*?(?=, (?:valid|type)\b|$)", re.MULTILINE)


def cloud_failure(exc: BaseException) -> EngineError | None:
    """The error a client sees for a failed AWS call, or None when `exc` is not one.

    An endpoint that cannot be reached (refused, timed out, unknown host, connection closed
    or reset, no answer) is 08001 naming the endpoint; an answer that is an error (ClientError,
    an HTTP 500, a body that is not an AWS response) is 58000 naming the operation. Looks
    into exception groups and `raise ... from` causes. Credentials never appear: botocore
    puts none in its errors, and only the endpoint's scheme, host and port are kept."""
    for error in _errors(exc, set()):
        failure = _failure(error)
        if failure is not None:
            return failure
    return None


def _errors(exc: BaseException, seen: set[int]) -> Iterator[BaseException]:
    if id(exc) in seen:
        return
    seen.add(id(exc))
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _errors(inner, seen)
    if exc.__cause__ is not None:
        yield from _errors(exc.__cause__, seen)


def _failure(error: BaseException) -> EngineError | None:
    if isinstance(error, boto.ClientError):
        return _client_error(error)
    if isinstance(error, boto.ProxyConnectionError):
        proxy = error.kwargs.get("proxy_url", "")
        return _unreachable(f"cannot reach the HTTP proxy {proxy}: {_reason(error)}")
    if isinstance(error, boto.ConnectionError | boto.HTTPClientError):
        url = error.kwargs.get("endpoint_url")
        where = f"the AWS endpoint {_endpoint(url)}" if url else "the AWS endpoint"
        return _unreachable(f"cannot reach {where}: {_reason(error)}")
    if isinstance(error, aiohttp.ClientError):
        return _unreachable(f"cannot reach the AWS endpoint: {_first_line(str(error))}")
    if isinstance(error, ResponseParserError):
        operation = _operation(error)
        return EngineError(
            "58000",
            f"AWS {operation or 'call'} failed: the endpoint's answer is not an AWS response",
            detail=_first_line(" ".join(str(error).split())),  # with the answer's start
            hint=f"check {account_module()[1].credentials.name}.endpoint_url:"
            " something other than AWS answers there",
        )
    if isinstance(error, boto.BotoCoreError):
        # All of it: a ParamValidationError says what is wrong only after its first line;
        # but not the values it quotes, which may be secrets.
        operation = _operation(error)
        text = one_line(_QUOTED_VALUE.sub("", str(error)))
        return EngineError("58000", f"AWS {operation or 'call'} failed: {text}")
    return None


def _client_error(error: boto.ClientError) -> EngineError:
    info = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(info.get("Code") or status or "unknown error")
    message = _first_line(str(info.get("Message") or ""))
    text = f"AWS {error.operation_name} failed: {code}" + (f": {message}" if message else "")
    hint = None
    if isinstance(status, int) and status >= 500:
        hint = f"the endpoint answered HTTP {status}; retry later"
    return EngineError("58000", text, hint=hint)


def _unreachable(message: str) -> EngineError:
    return EngineError("08001", message, hint=_unreachable_hint())


def _reason(error: boto.BotoCoreError) -> str:
    """What went wrong on the connection, in a few words."""
    if isinstance(error, boto.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(error, boto.ReadTimeoutError):
        return "no answer in time (read timed out)"
    if isinstance(error, boto.ConnectionClosedError):
        return "the connection was closed before an answer"
    cause = error.kwargs.get("error")
    for inner in (cause, getattr(cause, "os_error", None), getattr(cause, "__cause__", None)):
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, ConnectionResetError):
            return "connection reset"
        if isinstance(inner, socket.gaierror):
            return "unknown host"
        if isinstance(inner, TimeoutError):
            return "connect timed out"
    text = str(cause if cause is not None else error)
    if "refused" in text.lower():
        return "connection refused"
    return _first_line(text)


def _endpoint(url: str) -> str:
    """scheme://host:port of a request URL, without its path, query or any user info."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return _first_line(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _operation(error: BaseException) -> str | None:
    """The botocore operation (e.g. ListQueues) the error went through, from its traceback."""
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_make_api_call":
            name = frame.f_locals.get("operation_name")
            if isinstance(name, str):
                return name
        tb = tb.tb_next
    return None


def one_line(text: str) -> str:
    """`text` on one line (its lines joined), cut at MESSAGE_LIMIT characters."""
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"
