"""The local sandbox's moto server, whose state survives restarts: `python -m iasql.sandbox_server`.

moto keeps everything in memory. This wrapper makes its state durable with a journal:

- Every request that changes something (a write: not Describe*/List*/Get*/..., not a GET or
  HEAD) is appended to the journal once moto has answered it successfully, one JSON line
  written with a single `write`, before the answer goes out. A `kill -9` loses nothing
  that a client saw succeed.
- At start the journal is replayed in-process (through the WSGI app, no HTTP) before the
  port opens, so clients never see a half-restored sandbox.
- Replays make the same ids, arns and timestamps: each write runs with moto's random source
  seeded from a value stored in its journal line, and with the clock frozen at the time
  stored there. A backend (an account's region of a service, with its default VPC, subnets
  and security groups) is created with a seed derived from its name, whenever it is first
  touched. Reads are not journaled: requests are handled one at a time, so a read can never
  draw from the random source in the middle of a write.
- `POST /moto-api/reset` empties the journal as well as moto.

It also makes a 12-digit access key id name the AWS account the request works in (an
`x-moto-account-id` header or MOTO_ACCOUNT_ID still take precedence), so that one sandbox
holds one account per environment database.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import datetime
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("iasql.sandbox")

# Operations whose names start with these only read (Describe*, List*, Get*, ...), except
# the few listed after them, which hand out credentials or identities that later calls use.
_READ_PREFIXES = (
    "Describe",
    "List",
    "Get",
    "Head",
    "BatchGet",
    "Query",
    "Scan",
    "Search",
    "Lookup",
    "Filter",
)
_NOT_READS = frozenset({"GetSessionToken", "GetFederationToken", "GetId", "GetOpenIdToken"})
_NOT_RECORDED = ("wsgi.", "werkzeug.")
_CREDENTIAL = re.compile(r"Credential=(\d{12})/")  # a 12-digit access key id


# --- a clock that can stand still -------------------------------------------------------------


class _Clock:
    """`datetime.now()`, `utcnow()` and `time.time()` answer `frozen` while it is set."""

    frozen: float | None = None

    @contextmanager
    def at(self, moment: float) -> Iterator[None]:
        self.frozen = moment
        try:
            yield
        finally:
            self.frozen = None


clock = _Clock()
_real_datetime = datetime.datetime
_real_time = time.time
_real_time_ns = time.time_ns


class _DatetimeType(type):
    # datetimes made before the switch, or by C code, still count as datetimes.
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _real_datetime)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _real_datetime)


class _Datetime(_real_datetime, metaclass=_DatetimeType):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _Datetime:
        if clock.frozen is None:
            return super().now(tz)
        return cls.fromtimestamp(clock.frozen, tz)

    @classmethod
    def utcnow(cls) -> _Datetime:
        if clock.frozen is None:
            return super().utcnow()
        return cls.utcfromtimestamp(clock.frozen)

    @classmethod
    def today(cls) -> _Datetime:
        return cls.now()


def _time() -> float:
    return _real_time() if clock.frozen is None else clock.frozen


def _time_ns() -> int:
    return _real_time_ns() if clock.frozen is None else int(clock.frozen * 1e9)


def install_clock() -> None:
    """Must run before moto (or anything doing `from datetime import datetime`) is imported."""
    datetime.datetime = _Datetime  # type: ignore[misc]
    time.time = _time
    time.time_ns = _time_ns


# --- moto, made deterministic -------------------------------------------------------------


def _seed_of(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _seed(value: int) -> None:
    from moto.moto_api._internal import mock_random

    mock_random.seed(value)
    random.seed(value)


@contextmanager
def _random_aside(seed: int | None = None) -> Iterator[None]:
    """Runs the block with its own random source (seeded), leaving the current one as it was:
    what a backend makes when it is first touched must not depend on when that happens (a
    read, which is not journaled, or a write, which is), nor change the ids a write makes."""
    from moto.moto_api._internal import mock_random

    saved = mock_random.getstate(), random.getstate()
    if seed is not None:
        _seed(seed)
    try:
        yield
    finally:
        mock_random.setstate(saved[0])
        random.setstate(saved[1])


def install_moto_patches() -> None:
    from moto.core.base_backend import AccountSpecificBackend, BackendDict
    from moto.core.responses import BaseResponse
    from moto.moto_api._internal import mock_random

    uuid.uuid4 = mock_random.uuid4  # a few backends call uuid4() directly

    create_account = BackendDict._create_account_specific_backend

    def account_backends(self: BackendDict[Any], account_id: str) -> None:
        if dict.__contains__(self, account_id):
            return create_account(self, account_id)
        with _random_aside():
            return create_account(self, account_id)

    BackendDict._create_account_specific_backend = account_backends  # type: ignore[method-assign]

    create_backend = AccountSpecificBackend.__getitem__

    def backend(self: AccountSpecificBackend[Any], region_name: str) -> Any:
        region = "aws" if region_name == "global" else region_name
        if dict.__contains__(self, region):
            return create_backend(self, region_name)
        # A new backend makes default resources (the default VPC ...) with random ids: they
        # depend on which backend it is, not on what ran before.
        with _random_aside(_seed_of(f"{self.service_name}/{self.account_id}/{region}")):
            return create_backend(self, region_name)

    AccountSpecificBackend.__getitem__ = backend  # type: ignore[method-assign]

    current_account = BaseResponse.get_current_account

    def account(self: BaseResponse) -> str:
        if "MOTO_ACCOUNT_ID" not in os.environ and "x-moto-account-id" not in self.headers:
            # moto's own parsing only knows 20-character key ids
            signed = self.headers.get("Authorization", "")
            presigned = self.querystring.get("X-Amz-Credential") or [""]
            found = _CREDENTIAL.search(signed) or _CREDENTIAL.match(f"Credential={presigned[0]}")
            if found is not None:
                return found[1]
        return current_account(self)

    BaseResponse.get_current_account = account  # type: ignore[method-assign]
    install_public_ami_parameters()


# --- the public SSM parameters of common AMIs -----------------------------------------------

# moto knows AWS's `/aws/service/ami-amazon-linux-latest/...` parameters, but none of the other
# public ones that IaSQL scripts launch from (`resolve:ssm:/aws/service/canonical/...`). The
# sandbox answers them with AMIs that moto has in every region: Ubuntu 16.04 (the newest
# Ubuntu moto knows) for Canonical's paths, Windows Server 2016 / 2012 R2 for Microsoft's.
_UBUNTU_AMI = "ami-785db401"  # ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-...
_UBUNTU_RELEASES = ("16.04", "18.04", "20.04", "22.04", "24.04")
_UBUNTU_CODENAMES = ("xenial", "bionic", "focal", "jammy", "noble")
_WINDOWS_AMIS = {
    "Windows_Server-2016-English-Full-Base": "ami-b7e93bce",
    "Windows_Server-2016-English-Nano-Base": "ami-03cf127a",
    "Windows_Server-2012-R2_RTM-English-64Bit-Base": "ami-1ecc1e67",
}
_AMI_PREFIXES = ("/aws/service/canonical/", "/aws/service/ami-windows-latest/")


def public_ami_parameters() -> dict[str, str]:
    """Parameter name -> AMI id, for the public AMI parameters the sandbox adds."""
    found: dict[str, str] = {}
    for release in (*_UBUNTU_RELEASES, *_UBUNTU_CODENAMES):
        for volume in ("ebs-gp2", "ebs-gp3"):
            for line in ("stable/current", "stable/latest"):
                path = f"/aws/service/canonical/ubuntu/server/{release}/{line}/amd64/hvm"
                found[f"{path}/{volume}/ami-id"] = _UBUNTU_AMI
    for name, ami in _WINDOWS_AMIS.items():
        found[f"/aws/service/ami-windows-latest/{name}"] = ami
    return found


def install_public_ami_parameters() -> None:
    """Loads the parameters of public_ami_parameters() into a region's SSM parameters the first
    time a name under their prefixes is asked for, as moto loads its Amazon Linux ones: the
    same values in every account and region, and nothing to journal (reads add them)."""
    from collections import defaultdict

    from moto.ssm.models import Parameter, ParameterDict

    check = ParameterDict._check_loading_status
    # As moto's own loader of the Amazon Linux parameters calls it: a JSON float for the date
    # (its annotations say datetime; its responses take either).
    parameter: Any = Parameter

    def check_loading_status(self: ParameterDict, key: str) -> None:
        check(self, key)
        if str(key or "").startswith(_AMI_PREFIXES) and not getattr(self, "_iasql_amis", False):
            self._iasql_amis = True  # type: ignore[attr-defined]
            for name, ami in public_ami_parameters().items():
                defaultdict.__getitem__(self, name).append(
                    parameter(
                        account_id=self.account_id,
                        name=name,
                        value=ami,
                        parameter_type="String",
                        description=None,
                        allowed_pattern=None,
                        keyid=None,
                        last_modified_date=1700000000.0,
                        version=1,
                        data_type="aws:ec2:image",
                    )
                )

    ParameterDict._check_loading_status = check_loading_status  # type: ignore[method-assign]


# --- the journal ----------------------------------------------------------------------------


def operation_of(environ: dict[str, Any], body: bytes) -> str | None:
    """The AWS operation a request calls, when its protocol names it (not REST ones)."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1]
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            return form["Action"][0]
    return None


def is_write(environ: dict[str, Any], body: bytes) -> bool:
    if environ.get("PATH_INFO", "").startswith("/moto-api"):
        return False
    operation = operation_of(environ, body)
    if operation is None:
        return environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD", "OPTIONS")
    return operation in _NOT_READS or not operation.startswith(_READ_PREFIXES)


class Journal:
    """An append-only file of JSON lines, one per write request; locked while a sandbox runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)

    def lock(self, timeout: float) -> None:
        """Waits for a sandbox that is still exiting (the lock goes with its process)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"another sandbox is using {self.path}") from None
                time.sleep(0.05)

    def entries(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short (a power loss): drop it
            os.truncate(self.path, end)
            data = data[:end]
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        os.write(self.fd, line)  # O_APPEND, one write: a killed process leaves whole lines

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        length = environ.get("CONTENT_LENGTH") or "0"
        body = stream.read(int(length)) if length.isdigit() and int(length) > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("wsgi.input_terminated", None)
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        del environ["HTTP_TRANSFER_ENCODING"]
    return body


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class JournaledApp:
    """The WSGI app in front of moto: one request at a time, writes journaled."""

    def __init__(self, app: WsgiApp, journal: Journal | None) -> None:
        self.app = app
        self.journal = journal
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = _read_body(environ)
        write = self.journal is not None and is_write(environ, body)
        with self.lock:
            if not write:
                status, headers, content = self.call(environ)
                if self.journal is not None and environ.get("PATH_INFO") == "/moto-api/reset":
                    self.journal.clear()
            else:
                seed, moment = secrets.randbits(63), _real_time()
                status, headers, content = self.call(environ, seed, moment)
                if self.journal is not None and int(status.split()[0]) < 400:
                    self.journal.append(
                        {
                            "time": moment,
                            "seed": seed,
                            "environ": {
                                k: v
                                for k, v in environ.items()
                                if not k.startswith(_NOT_RECORDED) and isinstance(v, (str, dict))
                            },
                            "body": base64.b64encode(body).decode(),
                        }
                    )
        start_response(status, headers)
        return [content]

    def call(
        self, environ: dict[str, Any], seed: int | None = None, moment: float | None = None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *_exc: Any) -> None:
            answer.update(status=status, headers=headers)

        if seed is not None:
            _seed(seed)
        if moment is None:
            chunks = self.app(environ, start_response)
            content = b"".join(chunks)
        else:
            with clock.at(moment):
                chunks = self.app(environ, start_response)
                content = b"".join(chunks)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        return answer["status"], answer["headers"], content

    def replay(self) -> None:
        assert self.journal is not None
        started = time.monotonic()
        entries = self.journal.entries()
        failed = 0
        for entry in entries:
            body = base64.b64decode(entry["body"])
            environ = {
                **entry["environ"],
                "wsgi.input": io.BytesIO(body),
                "wsgi.errors": sys.stderr,
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.multithread": False,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }
            try:
                status, _headers, _content = self.call(environ, entry["seed"], entry["time"])
            except Exception:
                log.exception("replaying %s failed", environ.get("PATH_INFO"))
                failed += 1
                continue
            if int(status.split()[0]) >= 400:
                failed += 1
        log.warning(
            "replayed %d journaled requests in %.2f s (%d failed)",
            len(entries),
            time.monotonic() - started,
            failed,
        )


# --- the process --------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """SIGTERM when the process that started us dies, even by `kill -9` (Linux only)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iasql.sandbox_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, help="where the state is kept; none: in memory")
    parser.add_argument("--parent", type=int, help="exit when this process (our parent) dies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.parent:
        die_with_parent(args.parent)
    journal = None
    if args.journal:
        journal = Journal(args.journal)
        journal.lock(timeout=30)

    install_clock()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    from iasql import moto_addons

    install_moto_patches()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    moto_app = moto_addons.install(DomainDispatcherApplication(create_backend_app))
    app = JournaledApp(moto_app, journal)
    if journal is not None:
        app.replay()
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
