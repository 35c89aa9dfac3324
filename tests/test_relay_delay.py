"""The delaying relay (tests/support/http_relay.py): boto3 through it to a real moto server,
the delay per request on keep-alive connections, concurrent connections delayed together, the
HTTP framing (Content-Length, chunked, Expect: 100-continue) on a raw upstream, and the faults
(500, drop, refuse, dark) set while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
)

from iasql.sandbox import MotoServer
from tests.support.http_relay import (
    FAULT_BODY,
    DelayingRelay,
    RelayThread,
    body_framing,
    running_relay,
)

DELAY = 0.3
EPSILON = 0.002  # the event loop may wake a timer up to its clock resolution early


def logs_client(endpoint: str) -> Any:
    config = Config(retries={"mode": "standard", "max_attempts": 1})
    return boto3.client("logs", region_name="us-east-1", endpoint_url=endpoint, config=config)


@pytest.fixture(scope="module")
def account(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


def test_boto3_through_the_relay_reaches_moto(account: MotoServer) -> None:
    with RelayThread(account.endpoint, 0.01) as relay:
        logs = logs_client(relay.endpoint)
        logs.create_log_group(logGroupName="/relay/a")
        logs.create_log_group(logGroupName="/relay/b")
        with pytest.raises(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName="/relay/a")
        names = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
        assert relay.requests == 4
    assert {"/relay/a", "/relay/b"} <= set(names)
    # The same account seen directly: the relay only forwarded.
    direct = logs_client(account.endpoint).describe_log_groups(logGroupNamePrefix="/relay/")
    assert [g["logGroupName"] for g in direct["logGroups"]] == ["/relay/a", "/relay/b"]


def test_each_request_takes_at_least_the_delay(account: MotoServer) -> None:
    with RelayThread(account.endpoint, DELAY) as relay:
        logs = logs_client(relay.endpoint)
        for i in range(3):
            started = time.monotonic()
            logs.describe_log_groups(logGroupNamePrefix=f"/none/{i}")
            assert time.monotonic() - started >= DELAY - EPSILON
        assert relay.requests == 3


class KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request on a kept-alive connection (moto's server closes each one)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_each_request_on_a_keep_alive_connection_is_delayed(keep_alive_server: str) -> None:
    with RelayThread(keep_alive_server, DELAY) as relay:
        conn = http.client.HTTPConnection("127.0.0.1", relay.relay.port, timeout=10)
        for i in range(3):
            started = time.monotonic()
            conn.request("POST", "/", body=f"request {i}".encode())
            answer = conn.getresponse()
            assert answer.read() == f"request {i}".encode()
            assert time.monotonic() - started >= DELAY - EPSILON
        conn.close()
        assert relay.requests == 3
        assert relay.relay.connections == 1  # one connection carried every request


def test_concurrent_connections_are_delayed_together(account: MotoServer) -> None:
    count = 8
    with RelayThread(account.endpoint, DELAY) as relay:
        clients = [logs_client(relay.endpoint) for _ in range(count)]  # one pool each
        barrier = threading.Barrier(count + 1)
        errors: list[BaseException] = []

        def call(client: Any) -> None:
            barrier.wait()
            try:
                client.describe_log_groups(logGroupNamePrefix="/relay/")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.monotonic()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        assert not errors
        assert relay.requests == count
        assert relay.relay.connections == count
        assert relay.relay.max_delaying >= 2  # some requests were held at the same time
    # One after the other they would take count * DELAY.
    assert DELAY - EPSILON <= elapsed < count * DELAY / 2


def test_running_relay_gives_an_endpoint_and_stops(account: MotoServer) -> None:
    with running_relay(account.endpoint, 0) as endpoint:
        assert endpoint.startswith("http://127.0.0.1:")
        logs = logs_client(endpoint)
        logs.describe_log_groups()
    with pytest.raises(Exception, match="Could not connect"):
        logs.describe_log_groups()


def test_body_framing() -> None:
    assert body_framing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (0, False)
    assert body_framing(b"POST / HTTP/1.1\r\ncontent-LENGTH:  12 \r\n\r\n") == (12, False)
    assert body_framing(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    ) == (0, True)


class Upstream:
    """A raw TCP server that records what it receives and answers with given bytes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.arrived = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self.writers[-1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                self.received += data
                self.arrived.set()
        writer.close()

    async def wait_for(self, size: int) -> bytes:
        async with asyncio.timeout(10):
            while len(self.received) < size:
                self.arrived.clear()
                await self.arrived.wait()
        return bytes(self.received)

    async def close(self) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_framing_of_pipelined_requests_and_responses_unchanged() -> None:
    upstream = Upstream()
    relay = DelayingRelay("127.0.0.1", await upstream.start(), 0.05)
    await relay.start()
    requests = (
        b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nyo"
        b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n4\r\n\r\n\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        started = asyncio.get_running_loop().time()
        writer.write(requests)
        assert await upstream.wait_for(len(requests)) == requests
        # Three requests, held one after the other on this connection.
        assert relay.requests == 3
        assert asyncio.get_running_loop().time() - started >= 3 * 0.05 - EPSILON
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 3
        upstream.writer.write(answer)
        assert await reader.readexactly(len(answer)) == answer
        writer.close()
    finally:
        await relay.stop()
        await upstream.close()


async def test_expect_continue_forwards_the_head_before_the_body() -> None:
    upstream = Upstream()
    relay = DelayingRelay("127.0.0.1", await upstream.start(), 0.01)
    await relay.start()
    head = b"PUT /k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(head)
        assert await upstream.wait_for(len(head)) == head
        upstream.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        assert await upstream.wait_for(len(head) + 4) == head + b"body"
        assert relay.requests == 1
        writer.close()
    finally:
        await relay.stop()
        await upstream.close()


async def test_stop_ends_open_connections() -> None:
    upstream = Upstream()
    relay = DelayingRelay("127.0.0.1", await upstream.start(), 10)
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # held for 10 s
    await asyncio.sleep(0.05)
    assert relay.delaying == 1
    async with asyncio.timeout(5):
        await relay.stop()
        assert await reader.read() == b""  # the relay closed the connection
    writer.close()
    await upstream.close()


# --- faults --------------------------------------------------------------------------------


def one_attempt_client(endpoint: str, **config: Any) -> Any:
    """A logs client that tries each call once (retries' max_attempts does not count the
    first attempt)."""
    settings = Config(retries={"mode": "standard", "total_max_attempts": 1}, **config)
    return boto3.client("logs", region_name="us-east-1", endpoint_url=endpoint, config=settings)


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end closed (or reset) the connection within 5 s."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def still_forwards(relay: RelayThread, port: int) -> None:
    """Back to no fault: forwarding again, on the same port."""
    assert relay.relay.port == port
    logs_client(relay.endpoint).describe_log_groups(logGroupNamePrefix="/fault/")


def test_fault_500_answers_every_request_without_forwarding(account: MotoServer) -> None:
    with RelayThread(account.endpoint, 0) as relay:
        port = relay.relay.port
        relay.fault = "500"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(2):  # kept alive: two answers on one connection
            conn.request("POST", "/", body=b'{"logGroupName": "/fault/500"}')
            answer = conn.getresponse()
            assert answer.status == 500
            assert answer.getheader("Connection") == "keep-alive"
            assert answer.read() == FAULT_BODY
        conn.close()
        logs = one_attempt_client(relay.endpoint)
        with pytest.raises(ClientError) as raised:
            logs.create_log_group(logGroupName="/fault/500")
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert relay.requests == 3
        assert relay.relay.connections == 2
        relay.fault = None
        still_forwards(relay, port)
        assert relay.requests == 4
    # Nothing reached moto.
    direct = logs_client(account.endpoint).describe_log_groups(logGroupNamePrefix="/fault/")
    assert direct["logGroups"] == []


def test_fault_drop_closes_the_connection_unanswered(account: MotoServer) -> None:
    with RelayThread(account.endpoint, 0) as relay:
        port = relay.relay.port
        relay.fault = "drop"
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert closed_by_peer(sock)
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)) as raised:
            # botocore: "Connection was closed" (a FIN) or "Could not connect" (a reset).
            one_attempt_client(relay.endpoint).describe_log_groups()
        assert relay.endpoint in str(raised.value)
        assert relay.requests == 2
        relay.fault = None
        still_forwards(relay, port)
        assert relay.requests == 3


def test_fault_refuse_stops_listening_and_closes_connections(keep_alive_server: str) -> None:
    with RelayThread(keep_alive_server, 0) as relay:
        port = relay.relay.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body=b"before")
        assert conn.getresponse().read() == b"before"
        relay.fault = "refuse"
        assert conn.sock is not None and closed_by_peer(conn.sock)
        conn.close()
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        relay.fault = None
        assert relay.relay.port == port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body=b"after")
        assert conn.getresponse().read() == b"after"
        conn.close()
        assert relay.requests == 2


def test_fault_dark_connects_time_out(account: MotoServer, keep_alive_server: str) -> None:
    with RelayThread(keep_alive_server, 0) as relay:
        port = relay.relay.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body=b"before")
        assert conn.getresponse().read() == b"before"
        relay.fault = "dark"
        assert conn.sock is not None and closed_by_peer(conn.sock)
        conn.close()
        for _ in range(2):  # an unreachable host: no answer at all, not a refusal
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                connect(port, timeout=1)
            assert time.monotonic() - started >= 1 - EPSILON
        relay.fault = "refuse"  # from dark straight to refused
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        relay.fault = "dark"
        relay.fault = None
        assert relay.relay.port == port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body=b"after")
        assert conn.getresponse().read() == b"after"
        conn.close()
        assert relay.requests == 2
    # boto3 meets the dark relay as a connect timeout.
    with RelayThread(account.endpoint, 0) as relay:
        relay.fault = "dark"
        logs = one_attempt_client(relay.endpoint, connect_timeout=1)
        with pytest.raises(ConnectTimeoutError):
            logs.describe_log_groups()
        relay.fault = None
        logs.describe_log_groups()


async def test_fault_set_on_the_relay_loop() -> None:
    relay = DelayingRelay("127.0.0.1", 9, 0)
    with pytest.raises(ValueError, match="fault is one of"):
        relay.fault = "slow"
    relay.fault = "refuse"  # before start: applied at start
    await relay.start()
    try:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", relay.port)
        relay.fault = None  # on the loop: takes effect a moment later
        await relay.set_fault(None)
        _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.close()
    finally:
        await relay.stop()
