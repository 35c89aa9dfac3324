"""AWS errors as mappers meet them: their codes, and the ones that mean "nothing there"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import ClientError


def error_code(error: ClientError) -> str:
    """The AWS error code of a failed call, e.g. "NoSuchEntity"."""
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def ignoring(*codes: str) -> Iterator[None]:
    """Swallows the AWS errors `codes`, e.g. "not found" on a delete of something already
    gone (a retried delete, or one done outside iasql). Every other error propagates."""
    try:
        yield
    except ClientError as error:
        if error_code(error) not in codes:
            raise
