"""Waiting for a resource that was just made or changed."""

from __future__ import annotations

from typing import Any


async def wait_for(ec2: Any, waiter: str, **params: Any) -> None:
    """Waits with an EC2 waiter, polling every 2 s: new resources are usually ready at once,
    but a describe right after a create may not find them yet."""
    await ec2.get_waiter(waiter).wait(**params, WaiterConfig={"Delay": 2, "MaxAttempts": 60})
