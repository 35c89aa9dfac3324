"""The asyncio side: sockets in, sockets out. All protocol decisions are the Session's."""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from engine import CallContext, Engine, EngineError
from proxy import protocol as pg
from proxy.intercept import prefilter
from proxy.session import (
    CancelTarget,
    CloseConnection,
    ConnectServer,
    Event,
    KeyAssigned,
    RunEngine,
    Session,
    ToClient,
    ToServer,
)

log = logging.getLogger("iasql.proxy")


@dataclass(frozen=True)
class BackendAddress:
    host: str
    port: int

    async def connect(self, loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
        if self.host.startswith("/"):
            return await loop.create_unix_connection(factory, f"{self.host}/.s.PGSQL.{self.port}")
        return await loop.create_connection(factory, self.host, self.port)


class ProxyServer:
    """Listens for Postgres clients and relays each to the backing Postgres."""

    def __init__(self, engine: Engine, backend: BackendAddress, *, max_message: int) -> None:
        self.engine = engine
        self.backend = backend
        self.max_message = max_message
        self.prefilter = prefilter(engine.functions)
        self.by_cancel_key: dict[tuple[int, bytes], ClientConnection] = {}
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Starts listening; returns the port (useful when `port` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=512
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def cancel(self, event: CancelTarget) -> None:
        """Cancels a running engine call of that session, and whatever its backend runs."""
        target = self.by_cancel_key.get((event.process_id, event.secret_key))
        if target is not None:
            target.cancel_engine()
        try:
            loop = asyncio.get_running_loop()
            transport, _ = await self.backend.connect(loop, asyncio.Protocol)
            transport.write(event.packet)
            transport.close()
        except OSError as exc:
            log.warning("could not forward a cancel request: %s", exc)


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.session = Session(
            catalog=server.engine.functions,
            mentions_function=server.prefilter,
            max_message=server.max_message,
        )
        self.client: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.to_backend: list[bytes] = []  # written once the backend connection is up
        self.engine_task: asyncio.Task[None] | None = None
        self.engine_ctx: CallContext | None = None
        self.cancel_key: tuple[int, bytes] | None = None
        self.closed = False
        self.reading_paused = False
        self.backend_full = False  # the backend socket's write buffer is over its limit

    # --- client socket ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.backend is not None and self.session.relay_client(data):
            self.backend.write(data)
        else:
            self.apply(self.session.client_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def pause_writing(self) -> None:  # the client reads slower than the backend answers
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()

    # --- events -------------------------------------------------------------------------

    def apply(self, events: list[Event]) -> None:
        for event in events:
            # Exact type checks, the two relay events first: this loop runs for every chunk.
            if type(event) is ToServer:
                if self.backend is not None:
                    self.backend.write(event.data)
                else:
                    self.to_backend.append(event.data)
            elif type(event) is ToClient:
                if self.client is not None and not self.closed:
                    self.client.write(event.data)
            elif isinstance(event, RunEngine):
                self.engine_task = asyncio.get_running_loop().create_task(self.run_engine(event))
            elif isinstance(event, ConnectServer):
                asyncio.get_running_loop().create_task(self.connect_backend(event))
            elif isinstance(event, KeyAssigned):
                self.cancel_key = (event.process_id, event.secret_key)
                self.server.by_cancel_key[self.cancel_key] = self
            elif isinstance(event, CancelTarget):
                asyncio.get_running_loop().create_task(self.server.cancel(event))
            elif isinstance(event, CloseConnection):
                self.close()
        if self.reading_paused or self.backend is None or self.backend_full or self.session.blocked:
            self._flow_control()

    def _flow_control(self) -> None:
        if self.client is None or self.closed:
            return
        # Stop reading a client whose requests wait (for the engine, or for the backend to
        # connect), so a flood of input cannot grow the backlog without bound.
        waiting_for_backend = self.backend is None and self.session.user != ""
        should_pause = self.session.blocked or waiting_for_backend or self.backend_full
        if should_pause and not self.reading_paused:
            self.client.pause_reading()
            self.reading_paused = True
        elif not should_pause and self.reading_paused:
            self.client.resume_reading()
            self.reading_paused = False

    async def connect_backend(self, event: ConnectServer) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await self.server.backend.connect(loop, lambda: BackendConnection(self))
        except OSError as exc:
            log.error("cannot reach the backing Postgres: %s", exc)
            self.fail("08006", "the iasql server cannot reach its backing Postgres")
            return
        if self.closed:
            transport.close()
            return
        self.backend = transport
        transport.write(event.startup_packet)
        for data in self.to_backend:
            transport.write(data)
        self.to_backend.clear()
        self.apply(self.session.client_data(b""))

    async def run_engine(self, event: RunEngine) -> None:
        ctx = CallContext(
            self.session.database,
            self.session.user,
            notify=self.notice,
            in_transaction_block=self.session.status != b"I",
        )
        self.engine_ctx = ctx
        results = []
        try:
            for spec, arguments in event.calls:
                results.append(await self.server.engine.call(spec, ctx, spec.bind(arguments)))
            events = self.session.engine_done(results, None)
        except EngineError as exc:
            events = self.session.engine_done(None, exc)
        except asyncio.CancelledError:
            if self.closed:
                return
            events = self.session.engine_done(
                None, EngineError("57014", "canceling statement due to user request")
            )
        except asyncpg.PostgresError as exc:
            error = EngineError(exc.sqlstate or "XX000", str(exc).splitlines()[0])
            events = self.session.engine_done(None, error)
        except Exception as exc:
            if _backend_unreachable(exc):  # down or restarting: one line, no traceback
                log.warning("an engine call could not reach the backing Postgres: %s", exc)
                error = EngineError(
                    "08006",
                    "the iasql server cannot reach its backing Postgres",
                    detail=f"{type(exc).__name__}: {exc}",
                    hint="try again once it is back",
                )
            else:
                log.error("internal error in an engine call:\n%s", traceback.format_exc())
                error = EngineError("XX000", f"internal error: {type(exc).__name__}: {exc}")
            events = self.session.engine_done(None, error)
        finally:
            self.engine_task = None
        self.apply(events)

    def notice(self, text: str) -> None:
        self.apply(self.session.notice(text))

    def cancel_engine(self) -> None:
        if self.engine_task is not None:
            if self.engine_ctx is not None:
                self.engine_ctx.cancel_requested = True
            self.engine_task.cancel()

    def fail(self, code: str, text: str) -> None:
        if self.client is not None and not self.closed:
            self.client.write(pg.error_response(code, text, fatal=True))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.connections.discard(self)
        if self.cancel_key is not None:
            self.server.by_cancel_key.pop(self.cancel_key, None)
        if self.engine_task is not None:
            self.engine_task.cancel()
        if self.client is not None:
            self.client.close()
        if self.backend is not None:
            self.backend.close()


def _backend_unreachable(exc: Exception) -> bool:
    """Did an engine call fail for want of the backing Postgres? Socket errors (refused,
    reset, timed out) and a connection found closed. (Errors Postgres sends, such as 57P01
    when it shuts down, are PostgresErrors with their own SQLSTATE; AWS's are EngineErrors.)"""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


class BackendConnection(asyncio.Protocol):
    def __init__(self, owner: ClientConnection) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner.closed:
            return
        if owner.client is not None and owner.session.relay_server(data):
            owner.client.write(data)
        else:
            owner.apply(owner.session.server_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.close()

    def pause_writing(self) -> None:  # the backend reads slower than the client sends
        self.owner.backend_full = True
        self.owner.apply([])

    def resume_writing(self) -> None:
        self.owner.backend_full = False
        self.owner.apply([])
