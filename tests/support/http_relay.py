"""A TCP relay that imitates a distant HTTP server: each request waits a fixed delay.

For tests and benchmarks (bench/commit.py), not part of the server. Put it in front of a local moto server and every AWS call takes at
least `delay_seconds` longer, as it would over the network to AWS. The delay is per request,
not per connection: botocore keeps connections alive and sends many requests on each one.
To find where each request starts, the relay reads just enough HTTP/1.1: the request line and
headers, then a Content-Length body or a chunked body. Request bytes are forwarded unchanged,
and response bytes are streamed back unchanged and unparsed. Each client connection gets its
own upstream connection, so concurrent connections are delayed concurrently.

    relay = DelayingRelay("127.0.0.1", moto.port, 0.1)
    await relay.start()          # relay.endpoint == "http://127.0.0.1:PORT"
    ...
    await relay.stop()

From synchronous code (pytest, a benchmark's main thread), a relay on its own event loop in a
daemon thread:

    with running_relay(moto.endpoint, 0.1) as endpoint: ...
    with RelayThread(moto.endpoint, 0.1) as relay: ...   # relay.requests counts requests

Faults, for tests of what a client does when the cloud goes away. Set `fault` while the
relay runs, from any thread (the RelayThread setter returns once the fault is in place):

    relay.fault = "500"      # every request answered with HTTP 500, a small non-AWS body
    relay.fault = "500-once" # only the next request answered so, then forwarding again
    relay.fault = "drop"     # the connection closed as soon as a request head arrives
    relay.fault = "refuse"   # not listening, open connections closed: ECONNREFUSED
    relay.fault = "dark"     # an unreachable host: connects time out, open connections closed
    relay.fault = None       # forwarding again, on the same port

"dark" on loopback: a socket on the relay's port listens with a backlog of 0, is never
accepted, and the relay fills its accept queue itself, so the kernel drops further SYNs.

From the repository root, `.venv/bin/python -m tests.support.http_relay http://127.0.0.1:5000 0.1`
runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlsplit

HEAD_LIMIT = 1 << 20  # longest request line + headers accepted
COPY_SIZE = 1 << 16
FAULTS = (None, "500", "500-once", "drop", "refuse", "dark")
FAULT_BODY = b"relay fault: 500\n"  # not an AWS error document
DARK_PROBE = 0.2  # a connect to the dark port that takes this long has been dropped


class RelayError(Exception):
    """A request the relay cannot frame; the connection is closed."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """("host", port) of an http:// endpoint URL."""
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// endpoint: {endpoint!r}")
    return parts.hostname, parts.port or 80


def body_framing(head: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked) of a request head. A request with neither has no body."""
    length, chunked = 0, False
    for line in head.lstrip(b"\r\n").split(b"\r\n")[1:]:  # the headers
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            chunked = bool(codings) and codings[-1] == b"chunked"
            if not chunked:
                raise RelayError(f"unsupported request Transfer-Encoding: {value.strip()!r}")
        elif name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise RelayError(f"bad Content-Length: {value.strip()!r}") from None
            if length < 0:
                raise RelayError(f"bad Content-Length: {length}")
    # With both, Transfer-Encoding wins (RFC 9112, 6.3).
    return (0, True) if chunked else (length, False)


def fault_response(keep_alive: bool = True) -> bytes:
    """The relay's own HTTP 500, as a broken proxy or load balancer might answer."""
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
        % (len(FAULT_BODY), connection, FAULT_BODY)
    )


class DelayingRelay:
    """Listens on 127.0.0.1 and forwards to target_host:target_port, holding each HTTP
    request for `delay_seconds` before it is forwarded."""

    def __init__(self, target_host: str, target_port: int, delay_seconds: float) -> None:
        if delay_seconds < 0:
            raise ValueError("delay_seconds must be >= 0")
        self.target_host = target_host
        self.target_port = target_port
        self.delay_seconds = delay_seconds
        self.port = 0
        self.requests = 0  # requests seen (each delayed once)
        self.connections = 0  # client connections accepted
        self.delaying = 0  # requests being held right now
        self.max_delaying = 0  # the most requests held at the same time
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._fault: str | None = None
        self._listener = "stopped"  # listening, refused, dark or stopped
        self._dark: list[socket.socket] = []  # the unaccepted listener and its filler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("the relay is not started")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        await self._listen()
        self._listener = "listening"
        await self.set_fault(self._fault)  # one set before start

    async def stop(self) -> None:
        if self._lock is None:
            return
        async with self._lock:
            await self._close_listener()
            self._listener = "stopped"

    # --- faults ---------------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, mode: str | None) -> None:
        """From another thread, returns once the fault is in place; on the relay's own loop,
        "refuse", "dark" and back take effect a moment later (await set_fault to wait)."""
        if mode not in FAULTS:
            raise ValueError(f"fault is one of {FAULTS}, not {mode!r}")
        self._fault = mode
        loop = self._loop
        if loop is None or self._listener == "stopped":
            return  # applied at start
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(self.set_fault(mode))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            asyncio.run_coroutine_threadsafe(self.set_fault(mode), loop).result(30)

    async def set_fault(self, mode: str | None) -> None:
        if mode not in FAULTS:
            raise ValueError(f"fault is one of {FAULTS}, not {mode!r}")
        self._fault = mode
        assert self._lock is not None, "the relay is not started"
        async with self._lock:
            if self._listener == "stopped":
                return
            wanted = {"refuse": "refused", "dark": "dark"}.get(mode or "", "listening")
            if wanted == self._listener:
                return
            await self._close_listener()
            if wanted == "listening":
                await self._listen()
            elif wanted == "dark":
                await self._go_dark()
            self._listener = wanted

    async def _listen(self) -> None:
        """Listens on self.port (any free port the first time)."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, limit=HEAD_LIMIT, backlog=512
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close_listener(self) -> None:
        """Stops listening (or being dark) and closes every client connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        dark, self._dark = self._dark, []
        for sock in dark:
            sock.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _go_dark(self) -> None:
        """A listener on self.port that is never accepted, its accept queue filled by our own
        connects until one hangs: from then on the kernel drops SYNs to the port."""
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._dark.append(listener)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(0)
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                await asyncio.wait_for(
                    loop.sock_connect(filler, ("127.0.0.1", self.port)), DARK_PROBE
                )
            except TimeoutError:
                filler.close()
                return  # the queue is full
            self._dark.append(filler)
        raise RelayError("could not fill the accept queue of the dark port")

    async def __aenter__(self) -> DelayingRelay:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- one client connection ----------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            requests = asyncio.ensure_future(self._forward_requests(client_r, upstream_w, client_w))
            responses = asyncio.ensure_future(self._copy(upstream_r, client_w))
            try:
                await asyncio.wait({requests, responses}, return_when=asyncio.FIRST_COMPLETED)
                if requests.done() and requests.exception() is None and not responses.done():
                    # The client half-closed after its last request: let the answer through.
                    await responses
            finally:
                for side in (requests, responses):
                    side.cancel()
                await asyncio.gather(requests, responses, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, RelayError):
            pass  # either side went away, or sent what we cannot frame: drop the connection
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending normally keeps asyncio's stream callback
            # from logging the cancel as an error.
            pass
        finally:
            self._handlers.discard(task)
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()

    async def _forward_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        """Request after request: read its head, wait, forward the head, then stream its
        body. The head goes first so that `Expect: 100-continue` works. Under the "500"
        fault the body is read and dropped and the relay answers `client` itself."""
        while True:
            head = await self._read_head(reader)
            if head is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            length, chunked = body_framing(head)
            self.requests += 1
            if self._fault == "drop":
                raise RelayError("fault: the connection is dropped unanswered")
            self.delaying += 1
            self.max_delaying = max(self.max_delaying, self.delaying)
            try:
                await asyncio.sleep(self.delay_seconds)
            finally:
                self.delaying -= 1
            if self._fault in ("500", "500-once"):
                if self._fault == "500-once":  # the next request is answered: it was a blip
                    self._fault = None
                # A client waiting for 100 Continue sends no body: answer and close.
                waiting = b"100-continue" in head.lower()
                client.write(fault_response(keep_alive=not waiting))
                await client.drain()
                if waiting:
                    raise RelayError("fault: answered 500 to a request waiting to continue")
                target: asyncio.StreamWriter | None = None
            else:
                target = writer
                writer.write(head)
            if chunked:
                await self._forward_chunked(reader, target)
            else:
                await self._forward_exactly(reader, target, length)
            if target is not None:
                await target.drain()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
        """The next request line + headers (through the blank line), or None at a clean end
        of the connection. Empty lines before a request line are skipped (RFC 9112, 2.2)."""
        lines: list[bytes] = []  # any empty lines first (forwarded as they are), then the head
        started = False
        size = 0
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.IncompleteReadError as exc:
                if started or exc.partial.strip():
                    raise
                return None
            except asyncio.LimitOverrunError:
                raise RelayError("request line or header too long") from None
            lines.append(line)
            size += len(line)
            if size > HEAD_LIMIT:
                raise RelayError("request headers too long")
            if line != b"\r\n":
                started = True
            elif started:
                return b"".join(lines)

    @staticmethod
    async def _forward_exactly(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, length: int
    ) -> None:
        """`length` bytes to `writer` (None: read and dropped)."""
        while length > 0:
            data = await reader.read(min(length, COPY_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(data)
            if writer is not None:
                writer.write(data)
                await writer.drain()

    async def _forward_chunked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        """A chunked body: chunks until the zero-size one, then trailers until a blank line.
        To `writer`, or read and dropped when it is None."""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            if writer is not None:
                writer.write(size_line)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise RelayError(f"bad chunk size line: {size_line!r}") from None
            if size == 0:
                break
            await self._forward_exactly(reader, writer, size + 2)  # the data and its CRLF
        while True:
            trailer = await reader.readuntil(b"\r\n")
            if writer is not None:
                writer.write(trailer)
            if trailer == b"\r\n":
                return

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Responses, byte for byte, until the server closes."""
        while data := await reader.read(COPY_SIZE):
            writer.write(data)
            await writer.drain()


# --- from synchronous code ----------------------------------------------------------------


class RelayThread:
    """A DelayingRelay on its own event loop, in a daemon thread."""

    def __init__(self, target_endpoint: str, delay_seconds: float) -> None:
        host, port = parse_endpoint(target_endpoint)
        self.relay = DelayingRelay(host, port, delay_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return self.relay.endpoint

    @property
    def requests(self) -> int:
        return self.relay.requests

    @property
    def fault(self) -> str | None:
        return self.relay.fault

    @fault.setter
    def fault(self, mode: str | None) -> None:
        """Returns once the fault is in place (see DelayingRelay.fault)."""
        self.relay.fault = mode

    def start(self, timeout: float = 10) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="delaying-relay", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.relay.start(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.relay.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> RelayThread:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_relay(target_endpoint: str, delay_seconds: float) -> Iterator[str]:
    """The endpoint of a delaying relay in front of `target_endpoint`, for the block."""
    with RelayThread(target_endpoint, delay_seconds) as relay:
        yield relay.endpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("target", help="the HTTP server's endpoint, e.g. http://127.0.0.1:5000")
    parser.add_argument("delay", type=float, help="seconds each request is held")
    args = parser.parse_args(argv)

    async def serve() -> None:
        host, port = parse_endpoint(args.target)
        async with DelayingRelay(host, port, args.delay) as relay:
            print(relay.endpoint, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
