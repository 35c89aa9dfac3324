"""The asyncio side: sockets in, sockets out. All protocol decisions are the Session's."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
import traceback
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from engine import CallContext, Engine, EngineError
from engine.admin import ADMIN_DATABASE
from proxy import native
from proxy import protocol as pg
from proxy.intercept import needles, prefilter
from proxy.limits import ConnectionLimits
from proxy.roles import RoleDirectory
from proxy.session import (
    CancelTarget,
    CloseConnection,
    ConnectServer,
    Event,
    KeyAssigned,
    LookupRole,
    RunEngine,
    Session,
    StartTls,
    ToClient,
    ToServer,
)
from proxy.tls import BackendTls

log = logging.getLogger("iasql.proxy")


@dataclass(frozen=True)
class BackendAddress:
    host: str
    port: int
    tls: BackendTls | None = None  # None: plaintext (as sslmode=disable)

    async def connect(self, loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
        if self.host.startswith("/"):  # Postgres speaks no TLS on a unix socket
            return await loop.create_unix_connection(factory, f"{self.host}/.s.PGSQL.{self.port}")
        if self.tls is None or self.tls.context is None:
            return await loop.create_connection(factory, self.host, self.port)
        return await self._connect_tls(loop, factory, self.tls, self.tls.context)

    async def _connect_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Any,
        tls: BackendTls,
        context: ssl.SSLContext,
    ) -> Any:
        """SSLRequest, then the TLS handshake on the same socket, as libpq does. What the
        caller then writes (the startup packet, a CancelRequest) goes through TLS."""
        raw, answer = await loop.create_connection(_SslAnswer, self.host, self.port)
        try:
            raw.write(_SSL_REQUEST)
            reply = await answer.reply
            if reply == b"S":
                # The caller's protocol comes in after the handshake: a failed one must not
                # reach its connection_lost (the caller reports the error itself).
                transport = await loop.start_tls(
                    raw, asyncio.Protocol(), context, server_hostname=self.host
                )
                if transport is None:  # the socket closed during the handshake
                    raise ConnectionResetError("the backing Postgres closed the TLS handshake")
                protocol = factory()
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                return transport, protocol
            if reply == b"N" and not tls.required:  # sslmode=prefer: carry on in plaintext
                protocol = factory()
                raw.set_protocol(protocol)
                protocol.connection_made(raw)
                return raw, protocol
            if reply == b"N":
                raise ConnectionRefusedError(
                    f"the backing Postgres does not offer TLS (sslmode={tls.mode})"
                )
            # Bytes after 'S' were sent before the handshake: a man in the middle may have
            # put them there (CVE-2021-23222), so they are never read as the server's.
            raise ConnectionError(f"unexpected answer to SSLRequest: {reply[:16]!r}")
        except BaseException:
            raw.close()
            raise


_SSL_REQUEST = struct.pack("!ii", 8, pg.SSL_REQUEST)


class _SslAnswer(asyncio.Protocol):
    """Reads the backend's one-byte answer to an SSLRequest (all that has arrived, so that
    anything sent after the 'S' is seen and refused)."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(
                exc or ConnectionResetError("the backing Postgres closed the connection")
            )


class ProxyServer:
    """Listens for Postgres clients and relays each to the backing Postgres."""

    def __init__(
        self,
        engine: Engine,
        backend: BackendAddress,
        *,
        max_message: int,
        ssl: ssl.SSLContext | None = None,
        require_tls: bool = False,
        auth_timeout: float = 10.0,
        limits: ConnectionLimits | None = None,
        verify_passwords: bool = True,
        relay: str | None = None,
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.max_message = max_message
        self.ssl = ssl  # with a context, SSLRequest is answered 'S'; without, 'N'
        self.require_tls = require_tls  # refuse startups that did not come through TLS
        # A client not logged in after this many seconds is disconnected (0: never).
        self.auth_timeout = auth_timeout
        self.limits = limits or ConnectionLimits()
        # Password checks in the proxy: the verifiers come from pg_authid (proxy/login.py).
        self.roles = (
            RoleDirectory(engine.config.backend_dsn, ADMIN_DATABASE) if verify_passwords else None
        )
        self.prefilter = prefilter(engine.functions)
        relay = relay or os.environ.get("IASQL_RELAY") or "auto"  # as `iasql serve --relay`
        if relay not in native.MODES:
            raise ValueError(f"relay must be one of {', '.join(native.MODES)}, not {relay!r}")
        if relay == "native" and not native.AVAILABLE:
            raise ValueError("the native relay (proxy._relay) is not built: use relay='python'")
        # Established sessions go to the native data plane (proxy/native.py), started by listen().
        if relay == "auto":
            relay = "native" if native.AVAILABLE else "python"
        self.relay = relay
        self.native: native.NativePlane | None = None
        self.by_cancel_key: dict[tuple[int, bytes], ClientConnection] = {}
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Starts listening; returns the port (useful when `port` is 0)."""
        loop = asyncio.get_running_loop()
        if self.relay == "native" and self.native is None:
            self.native = native.NativePlane(needles(self.engine.functions), self.max_message)
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
        if self.native is not None:
            self.native.close()
            self.native = None
        if self.roles is not None:
            await self.roles.close()

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
            tls=server.ssl is not None,
            require_tls=server.require_tls,
            verify_passwords=server.roles is not None,
        )
        self.counted = False  # in server.limits, for session.database
        self.auth_timer: asyncio.TimerHandle | None = None
        self.client: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.to_backend: list[bytes] = []  # written once the backend connection is up
        self.engine_task: asyncio.Task[None] | None = None
        self.engine_ctx: CallContext | None = None
        self.cancel_key: tuple[int, bytes] | None = None
        self.closed = False
        self.reading_paused = False
        self.backend_full = False  # the backend socket's write buffer is over its limit
        # The two sockets' descriptors, when the native plane may relay them (no TLS in this
        # process), and its handle while it does: then nothing here reads or writes them.
        self.native_fds: tuple[int, int] | None = None
        self.native_handle: int | None = None
        self.resuming = False  # feeding the session what the native plane handed back

    # --- client socket ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        if self.server.auth_timeout > 0:
            loop = asyncio.get_running_loop()
            self.auth_timer = loop.call_later(self.server.auth_timeout, self.auth_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.backend is not None and self.session.relay_client(data):
            self.backend.write(data)
        else:
            self.apply(self.session.client_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def server_data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.client is not None and self.session.relay_server(data):
            self.client.write(data)
        else:
            self.apply(self.session.server_data(data))
        if self.native_fds is not None:  # an answer came: maybe the end of an exchange
            self.go_native()

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
            elif isinstance(event, LookupRole):
                asyncio.get_running_loop().create_task(self.lookup_role(event.user))
            elif isinstance(event, ConnectServer):
                asyncio.get_running_loop().create_task(self.connect_backend(event))
            elif isinstance(event, KeyAssigned):
                self.cancel_key = (event.process_id, event.secret_key)
                self.server.by_cancel_key[self.cancel_key] = self
            elif isinstance(event, CancelTarget):
                asyncio.get_running_loop().create_task(self.server.cancel(event))
            elif isinstance(event, StartTls):
                asyncio.get_running_loop().create_task(self.start_tls())
            elif isinstance(event, CloseConnection):
                self.close()
        if self.reading_paused or self.backend is None or self.backend_full or self.session.blocked:
            self._flow_control()

    def _flow_control(self) -> None:
        if self.client is None or self.closed:
            return
        # Stop reading a client whose requests wait (for the engine, or for the backend to
        # connect), so a flood of input cannot grow the backlog without bound.
        waiting_for_backend = self.backend is None and self.session.wants_server
        should_pause = self.session.blocked or waiting_for_backend or self.backend_full
        if should_pause and not self.reading_paused:
            self.client.pause_reading()
            self.reading_paused = True
        elif not should_pause and self.reading_paused:
            self.client.resume_reading()
            self.reading_paused = False

    # --- the native data plane ------------------------------------------------------------

    def _plain_fds(self) -> tuple[int, int] | None:
        """The sockets' descriptors if the native plane can relay them: both plaintext."""
        if self.server.native is None or self.client is None or self.backend is None:
            return None
        if self.session.encrypted or any(
            t.get_extra_info("sslcontext") is not None for t in (self.client, self.backend)
        ):
            return None
        sockets = [t.get_extra_info("socket") for t in (self.client, self.backend)]
        if any(s is None for s in sockets):
            return None
        return sockets[0].fileno(), sockets[1].fileno()

    def go_native(self) -> None:
        """Hands the session to the native plane if it is between exchanges, with nothing
        waiting to be written or read here."""
        plane = self.server.native
        if (
            plane is None
            or self.native_fds is None
            or self.native_handle is not None
            or self.resuming
            or self.closed
            or self.engine_task is not None
            or self.reading_paused
            or self.backend_full
            or self.client is None
            or self.backend is None
            or self.client.get_write_buffer_size()
            or self.backend.get_write_buffer_size()
        ):
            return
        state = self.session.native_state()
        # Room for more Describes: a client pipelining over the limit would bounce back and forth.
        if state is None or len(state.describes) > native.MAX_DESCRIBES // 2:
            return
        self.client.pause_reading()
        self.backend.pause_reading()
        try:
            client_fd, server_fd = self.native_fds
            self.native_handle = plane.adopt(
                self,
                client_fd,
                server_fd,
                state.names,
                state.syncs,
                state.describes,
                self.session.status,
            )
        except Exception as exc:  # not adopted (out of descriptors, of memory): stay here
            log.warning("the native relay could not take a session: %s", exc)
            self.native_fds = None
            self.client.resume_reading()
            self.backend.resume_reading()

    def native_returned(self, handback: native.Handback) -> None:
        """The native plane handed the session back: send what it had cleared, let the session
        look at what it had not, and read the sockets here again."""
        self.native_handle = None
        if self.closed or self.client is None or self.backend is None:
            return
        if handback.ended:
            # A socket ended or failed: the transports read what it still holds, then find
            # the end themselves, as they would have without the thread.
            self.native_fds = None
        self.client.resume_reading()  # before the writes, which may pause it again
        self.backend.resume_reading()
        self._resume(handback)
        self.resuming = True  # no handing over before both directions are fed
        try:
            if handback.client_rest:
                self.data_received(handback.client_rest)
            if handback.server_rest:
                self.server_data_received(handback.server_rest)
        finally:
            self.resuming = False
        self.go_native()

    def take_back_from_native(self) -> None:
        """The connection closes: the native plane lets go of its sockets first."""
        plane, handle = self.server.native, self.native_handle
        self.native_handle = None
        if plane is None or handle is None:
            return
        handback = plane.release(handle)
        if handback is not None and self.client is not None and self.backend is not None:
            self._resume(handback)

    def _resume(self, handback: native.Handback) -> None:
        assert self.client is not None and self.backend is not None
        if handback.to_server:
            self.backend.write(handback.to_server)
        if handback.to_client:
            self.client.write(handback.to_client)
        self.session.resume_after_native(
            handback.syncs,
            handback.describes,
            handback.status,
            handback.client_skip,
            handback.server_skip,
        )

    async def start_tls(self) -> None:
        """The client got 'S': the handshake, on the same socket. The session is blocked
        until then, so its reading is paused (asyncio's start_tls resumes it)."""
        if self.client is None or self.closed or self.server.ssl is None:
            return
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.client, self, self.server.ssl, server_side=True)
        except OSError as exc:  # ssl.SSLError and TimeoutError (the handshake's 60 s) too
            log.info("TLS handshake with a client failed: %s", exc)
            self.close()
            return
        if transport is None or self.closed:
            if transport is not None:
                transport.close()
            self.close()
            return
        self.client = cast(asyncio.Transport, transport)
        self.reading_paused = False  # the TLS transport reads, whatever the raw one did
        self.apply(self.session.tls_started())

    async def lookup_role(self, user: str) -> None:
        assert self.server.roles is not None
        try:
            role = await self.server.roles.find(user)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("cannot read the role %r from the backing Postgres: %s", user, exc)
            self.fail("08006", "the iasql server cannot reach its backing Postgres")
            return
        if not self.closed:
            self.apply(self.session.role_found(role))

    def auth_timed_out(self) -> None:
        """--auth-timeout: a client still not logged in is disconnected, with a FATAL when no
        server message is half relayed to it."""
        self.auth_timer = None
        if self.closed or self.session.authenticated:
            return
        if self.client is not None and self.session.at_frame_boundary:
            timeout = f"{self.server.auth_timeout:g}"
            self.client.write(
                pg.error_response(
                    "08P01",
                    f"canceling authentication due to timeout: the login did not finish"
                    f" within {timeout} s (--auth-timeout)",
                    fatal=True,
                )
            )
        self.close()

    async def connect_backend(self, event: ConnectServer) -> None:
        if self.closed:
            return
        refusal = self.server.limits.admit(self.session.database)
        if refusal is not None:
            self.fail("53300", refusal)
            return
        self.counted = True
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
        self.native_fds = self._plain_fds()
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
        if self.counted:
            self.counted = False
            self.server.limits.release(self.session.database)
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.cancel_key is not None:
            self.server.by_cancel_key.pop(self.cancel_key, None)
        if self.engine_task is not None:
            self.engine_task.cancel()
        if self.native_handle is not None:
            self.take_back_from_native()
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
        self.owner.server_data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.close()

    def pause_writing(self) -> None:  # the backend reads slower than the client sends
        self.owner.backend_full = True
        self.owner.apply([])

    def resume_writing(self) -> None:
        self.owner.backend_full = False
        self.owner.apply([])
