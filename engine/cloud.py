"""AWS access for one environment database: credentials from its `aws_credentials` row,
clients cached per (service, region), botocore's standard retry mode for throttling."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from engine.functions import EngineError

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


class AwsCloud:
    """Implements modules.spec.Cloud."""

    def __init__(self, credentials: Credentials, max_connections: int = 64) -> None:
        self.credentials = credentials
        self._session = get_session()
        self._config = AioConfig(
            retries={"mode": "standard", "max_attempts": 8},
            max_pool_connections=max_connections,
            connect_timeout=10,
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
            client = await self._stack.enter_async_context(
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
            self._clients[key] = client
        yield client

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


async def load_credentials(conn: Any) -> Credentials:
    if not await conn.fetchval("SELECT to_regclass('aws_credentials') IS NOT NULL"):
        raise EngineError(
            "55000",
            "the aws_account module is not installed",
            hint="SELECT * FROM iasql_install('aws_account'), then add a row to aws_credentials",
        )
    rows = await conn.fetch(
        "SELECT access_key_id, secret_access_key, session_token, endpoint_url"
        " FROM aws_credentials ORDER BY id"
    )
    if not rows:
        raise EngineError(
            "55000",
            "this database has no AWS credentials",
            hint="INSERT INTO aws_credentials (access_key_id, secret_access_key) VALUES (...)",
        )
    row = rows[0]
    return Credentials(
        row["access_key_id"], row["secret_access_key"], row["session_token"], row["endpoint_url"]
    )
