"""Concurrency shared by mappers and the engine."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


async def gather_bounded(jobs: Iterable[Awaitable[T]], limit: int = 8) -> list[T]:
    """Runs `jobs` concurrently, at most `limit` at a time, results in order: per-resource
    describe calls stay under an API's rate limit."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


class KeyedLocks(Generic[K]):
    """One asyncio lock per key (an instance id, a load balancer's ARN), for read-modify-write
    calls that a commit's concurrent steps must not interleave: `async with LOCKS(key):`.

    A lock belongs to one event loop, and a mapper outlives loops (tests run one per call), so
    the locks are kept per running loop and go with it."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[K, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def __call__(self, key: K) -> asyncio.Lock:
        locks = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        return lock
