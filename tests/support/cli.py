"""The real `iasql` command as a subprocess: `iasql ARGS` run to completion, and `iasql serve`
as a child process read up to its banner and stopped leaving nothing behind."""

from __future__ import annotations

import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

_SCRIPT = Path(sys.executable).with_name("iasql")  # the console script of this venv
IASQL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "iasql.cli"]
START_DEADLINE = 90.0  # generous: initdb plus moto's imports on a slow, busy machine
STOP_DEADLINE = 30.0

LISTEN = re.compile(r"iasql (\S+) listening on ([\d.]+):(\d+)")
BACKING = re.compile(r"  backing store: (.+)")
MOTO = re.compile(r"  local AWS sandbox \(moto\): (http://[\d.]+:\d+)")
# The admin URL without its password, and where the password is kept.
ADMIN = re.compile(r"  admin database: (postgres://\S+) \((.+)\)")
_RUNS = itertools.count()
LAST_BANNER_LINE = "  create an environment database with: iasql db create NAME"


def cli_env() -> dict[str, str]:
    """No IASQL_* or PG* variables from the developer's shell may change what is tested, but
    IASQL_RELAY: the plane under test (`make test` runs the relay's tests on both)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IASQL_", "PG")) or k == "IASQL_RELAY"
    }


def iasql(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IASQL, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


# --- processes, from /proc --------------------------------------------------------------


@dataclass(frozen=True)
class Pid:
    """A process, told apart from a later one reusing its pid by its start time."""

    pid: int
    started: str

    def alive(self) -> bool:
        fields = _stat(self.pid)
        return fields is not None and fields[19] == self.started and fields[0] != "Z"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ..., starttime at 19]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[Pid]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(Pid(int(entry.name), fields[19]))
    return found


# --- one `iasql serve` ------------------------------------------------------------------


@dataclass
class Banner:
    version: str
    host: str
    port: int
    backing: str
    admin_url: str  # with the password, read where the banner says it is kept
    admin_password_at: str  # what the banner says instead of the password
    moto_endpoint: str | None
    lines: list[str]


class Server:
    """`iasql serve` as a child process; `close()` leaves nothing of it running, whatever happened."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.argv = [*IASQL, "serve", "--data-dir", str(data_dir), "--port", str(port), *extra]
        self.stderr_path = data_dir.with_name(f"{data_dir.name}-stderr-{next(_RUNS)}.log")
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader: threading.Thread | None = None
        self.seen: set[Pid] = set()  # every child seen, to clean up after a crash

    def start(self) -> Banner:
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=cli_env(),
            )
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()
        banner = self._banner()
        self.seen |= set(children(self.proc.pid))
        return banner

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _banner(self) -> Banner:
        deadline = time.monotonic() + START_DEADLINE
        lines: list[str] = []
        while LAST_BANNER_LINE not in lines:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no banner within {START_DEADLINE:g} s; stdout {lines}{self.stderr()}")
            if line is None:
                pytest.fail(f"iasql serve exited before its banner; stdout {lines}{self.stderr()}")
            lines.append(line)
        listen = next(m for m in map(LISTEN.fullmatch, lines) if m)
        backing = next(m for m in map(BACKING.fullmatch, lines) if m)
        admin = next(m for m in map(ADMIN.fullmatch, lines) if m)
        moto = next((m for m in map(MOTO.fullmatch, lines) if m), None)
        return Banner(
            version=listen[1],
            host=listen[2],
            port=int(listen[3]),
            backing=backing[1],
            admin_url=self._with_password(admin[1], admin[2]),
            admin_password_at=admin[2],
            moto_endpoint=moto[1] if moto else None,
            lines=lines,
        )

    def _with_password(self, url: str, where: str) -> str:
        if where.startswith("password in "):
            password = Path(where.removeprefix("password in ")).read_text().strip()
        else:
            assert where == "the password of --backend-url", where
            backend = self.argv[self.argv.index("--backend-url") + 1]
            password = unquote(urlsplit(backend).password or "")
        scheme, rest = url.split("://", 1)
        user, at, place = rest.partition("@")
        assert at and ":" not in user, url  # printed without a password
        return f"{scheme}://{user}:{quote(password, safe='')}@{place}"

    def stderr(self) -> str:
        try:
            return f"\nstderr:\n{self.stderr_path.read_text()}"
        except OSError:
            return ""

    def stop(self, sig: signal.Signals) -> tuple[int, list[str]]:
        """Sends `sig`; returns the exit code and what was printed after the banner."""
        assert self.proc is not None and self.reader is not None
        self.seen |= set(children(self.proc.pid))
        self.proc.send_signal(sig)
        code = self.proc.wait(STOP_DEADLINE)
        self.reader.join(STOP_DEADLINE)
        rest: list[str] = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return code, rest

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.seen |= set(children(self.proc.pid))
            self.proc.terminate()
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in self.seen:  # only after a failure: an orphaned Postgres or moto
            if child.alive():
                os.kill(child.pid, signal.SIGKILL)
        if self.reader is not None:
            self.reader.join(STOP_DEADLINE)


def created_url(out: subprocess.CompletedProcess[str], name: str, banner: Banner) -> str:
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    first, url = out.stdout.splitlines()
    assert first == f"created database {name} with login role {name}"
    parts = urlsplit(url)
    assert (parts.scheme, parts.username, parts.hostname) == ("postgres", name, banner.host)
    assert (parts.port, parts.path) == (banner.port, f"/{name}")
    assert parts.password
    return url
