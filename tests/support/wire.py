"""Wire-protocol bytes for feeding the sans-IO session directly: a startup packet, a session
past its startup, the bytes of its events, and a byte string split into frames."""

from __future__ import annotations

import struct
from typing import Any

from engine import EngineConfig
from engine.admin import PublicAddress
from engine.core import Engine
from proxy import protocol as pg
from proxy.intercept import prefilter
from proxy.session import ConnectServer, Session, ToClient, ToServer

# The engine's function catalog, without a database behind it.
CATALOG = Engine(EngineConfig("postgresql://unused", PublicAddress("127.0.0.1", 1))).functions


def startup(user: str = "alice", database: str = "db") -> bytes:
    body = (
        struct.pack("!i", pg.PROTOCOL_V3)
        + b"".join(pg.cstring(x) for x in ("user", user, "database", database))
        + b"\x00"
    )
    return struct.pack("!i", len(body) + 4) + body


def started_session() -> Session:
    session = Session(CATALOG, prefilter(CATALOG), max_message=4096)
    events = session.client_data(startup())
    assert isinstance(events[0], ConnectServer)
    assert session.server_data(pg.ready_for_query(b"I")) == [ToClient(pg.ready_for_query(b"I"))]
    return session


def to_server(events: list[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ToServer))


def to_client(events: list[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ToClient))


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    found, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("!i", data, pos + 1)[0]
        found.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return found
