"""The floor for a Python proxy: a uvloop relay that forwards bytes both ways and looks at
nothing. bench/proxy_overhead.py runs it beside iasql, so the cost of iasql's own work (frame
walks, interception, bookkeeping) shows apart from the cost of Python and uvloop themselves.

    python bench/bare_relay.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Backend(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.backend: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what arrives before the backend connection is up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        backend, _ = await loop.create_connection(
            lambda: Backend(self.transport), "127.0.0.1", self.backend_port
        )
        self.backend = cast(asyncio.Transport, backend)
        self.backend.write(b"".join(self.early))

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        else:
            self.backend.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.close()


async def serve(listen_port: int, backend_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(backend_port), "127.0.0.1", listen_port)
    print(f"bare relay listening on {listen_port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
