"""Concurrency shared by mappers and the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather_bounded(jobs: Iterable[Awaitable[T]], limit: int = 8) -> list[T]:
    """Runs `jobs` concurrently, at most `limit` at a time, results in order: per-resource
    describe calls stay under an API's rate limit."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))
