"""Launch and own a local PostgreSQL cluster using whatever server binaries are installed."""

from __future__ import annotations

import ctypes
import importlib.metadata
import io
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

# These define the security posture (TCP loopback only), so callers may not override them.
_RESERVED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_HBA = """\
# Written by iasql: password (SCRAM) logins over loopback TCP only, no unix sockets.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class PostgresError(Exception):
    """A one-line, user-facing problem with the local Postgres cluster."""


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    version: int  # major version, e.g. 15


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres"))


def _major_of_dir(bindir: Path) -> int:
    name = bindir.parent.name
    return int(name) if name.isdigit() else -1


def _pgserver_bindir() -> Path | None:
    # pgserver ships the binaries as package data; find them from the installed file list
    # rather than importing it (importing has side effects we do not want here).
    try:
        files = importlib.metadata.files("pgserver") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "initdb" and f.parent.name == "bin":
            return Path(str(f.locate())).parent
    return None


def _candidate_bindirs() -> Iterator[Path]:
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        yield Path(initdb).resolve().parent  # /usr/local/bin/initdb is often a symlink
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            yield Path(out.stdout.strip())
    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_of_dir, reverse=True)
    bundled = _pgserver_bindir()
    if bundled is not None:
        yield bundled


def _server_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out.stdout)
    return int(match.group(1)) if match else None


def find_binaries() -> PgBinaries:
    for bindir in _candidate_bindirs():
        version = _server_version(bindir) if _has_server(bindir) else None
        if version is not None:
            return PgBinaries(bindir=bindir, version=version)
    raise PostgresError(
        "no PostgreSQL server binaries (initdb, postgres) found; install them, "
        "e.g. `apt-get install postgresql` or `pip install pgserver`"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _Account:
    """The OS user the server runs as; `switch` means we are root and must drop to it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool


def _resolve_account(run_as: str | None) -> _Account:
    root = os.geteuid() == 0
    if run_as is None and not root:
        uid = os.geteuid()  # may lack a passwd entry (containers with arbitrary uids)
        return _Account(str(uid), uid, os.getegid(), (), os.environ.get("HOME", "/"), False)
    if run_as is None:
        run_as = "postgres" if _user_exists("postgres") else "nobody"
    try:
        pw = pwd.getpwnam(run_as)
    except KeyError:
        raise PostgresError(f"run_as user {run_as!r} does not exist") from None
    if pw.pw_uid == 0:
        raise PostgresError("postgres refuses to run as root; pass an unprivileged run_as user")
    if not root and pw.pw_uid != os.geteuid():
        raise PostgresError(f"only root can run postgres as another user ({run_as!r})")
    groups = tuple(os.getgrouplist(run_as, pw.pw_gid))
    return _Account(run_as, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, root)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(log is empty)"


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln or "FATAL" in ln]
    return (errors or lines or ["(no output)"])[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie: an orphan that exited may wait a while to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        return _pid_alive(pid)
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stop_process(pid: int, steps: tuple[tuple[signal.Signals, float], ...]) -> bool:
    """Sends each signal of `steps` in turn, waiting up to its seconds for `pid` to exit.
    True once it has; PermissionError when the process is not ours to signal."""
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not running(pid):
                return True
            time.sleep(0.05)
    return False


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn: the child gets `sig` when the thread that starts it dies, even by
    `kill -9` (Linux). It runs after the switch to the server account, which clears it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(sig))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return True  # cannot tell (no /proc, or a zombie): assume the lock is genuine
    return Path(cwd) == pgdata.resolve()


class LocalPostgres:
    """A Postgres cluster in `pgdata` that this process starts, owns and stops.

    As a context manager it initializes the cluster if needed, starts it, and stops it on exit.
    """

    def __init__(
        self,
        pgdata: Path,
        *,
        superuser: str,
        password: str,
        port: int | None = None,
        binaries: PgBinaries | None = None,
        run_as: str | None = None,
        settings: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        clash = _RESERVED_SETTINGS & set(settings or {})
        if clash:
            raise PostgresError(f"settings may not override {', '.join(sorted(clash))}")
        self.pgdata = Path(pgdata).absolute()
        self.superuser = superuser
        self.password = password
        self.port = port
        self.binaries = binaries or find_binaries()
        self.settings = dict(settings or {})
        self.account = _resolve_account(run_as)
        # Postgres shuts down (fast) when the thread that started it dies, even by kill -9.
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.pgdata / "log" / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (reaps it if it has exited)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def initialized(self) -> bool:
        # os.path.exists, unlike Path.exists on 3.11, says False instead of raising on EACCES.
        return os.path.exists(self.pgdata / "PG_VERSION")

    # --- running things as the server account -------------------------------------------
    def _creds(self) -> dict[str, Any]:
        a = self.account
        return {"user": a.uid, "group": a.gid, "extra_groups": list(a.groups)} if a.switch else {}

    def _env(self) -> dict[str, str]:
        # PG* variables (PGPORT, PGDATA, ...) would silently change server defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.account.switch:
            env.update(HOME=self.account.home, USER=self.account.name, LOGNAME=self.account.name)
        return env

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        kw = self._creds()
        return subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=self._env(), **kw)

    def _give(self, path: Path) -> None:
        if self.account.switch:
            os.chown(path, self.account.uid, self.account.gid)

    def _can_traverse(self, folder: Path) -> bool:
        if not self.account.switch:
            return os.access(folder, os.X_OK)
        # Ask the kernel as that user: honours ACLs and every ancestor on the way down.
        return self._run(["test", "-x", str(folder)]).returncode == 0

    # --- init ----------------------------------------------------------------------------
    def init(self) -> None:
        if self.initialized():
            raise PostgresError(f"{self.pgdata} already holds a Postgres cluster")
        try:
            self._prepare_pgdata()
            pwfile = self._write_pwfile()
            try:
                self._initdb(pwfile)
            finally:
                pwfile.unlink(missing_ok=True)
            (self.pgdata / "pg_hba.conf").write_text(_HBA)  # rewrite keeps owner and mode
        except OSError as e:
            raise PostgresError(f"cannot set up {e.filename or self.pgdata}: {e.strerror}") from e

    def _prepare_pgdata(self) -> None:
        parent = self.pgdata.parent
        parent.mkdir(parents=True, exist_ok=True)
        if not self._can_traverse(parent):
            blocked = self._blocking_folder(parent)
            raise PostgresError(
                f"user {self.account.name!r} cannot reach {blocked} (needed for {self.pgdata}); "
                f"use a data dir it can reach, e.g. under /var/lib or /tmp"
            )
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._give(self.pgdata)
        os.chmod(self.pgdata, 0o700)  # mkdir's mode is umask-masked; postgres insists on 0700

    def _blocking_folder(self, folder: Path) -> Path:
        # Only on the failure path: spawn one check per ancestor to name the culprit.
        chain = [*reversed(folder.parents), folder]
        return next((d for d in chain if not self._can_traverse(d)), folder)

    def _write_pwfile(self) -> Path:
        # The parent is known to be reachable by the server account; $TMPDIR might not be.
        folder = self.pgdata.parent if self.account.switch else None
        fd, name = tempfile.mkstemp(prefix=".iasql-pw-", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._give(Path(name))
        return Path(name)

    def _initdb(self, pwfile: Path) -> None:
        stderr = ""
        for locale in ("C.UTF-8", "C"):  # minimal images may lack C.UTF-8
            cmd = [
                str(self.binaries.bindir / "initdb"),
                *("-D", str(self.pgdata), "-U", self.superuser, "-E", "UTF8"),
                *("--auth=scram-sha-256", f"--pwfile={pwfile}", f"--locale={locale}"),
            ]
            out = self._run(cmd)
            if out.returncode == 0:
                return
            stderr = out.stderr
            if "locale" not in stderr.lower():
                break
        raise PostgresError(f"initdb failed: {_first_error(stderr)}")

    # --- start / stop --------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        if self.running:
            return
        if not self.initialized():
            raise PostgresError(f"{self.pgdata} holds no Postgres cluster; call init() first")
        self._drop_reused_lock()
        if self.port is None:
            self.port = free_port()
        options = {**self.settings, "listen_addresses": "127.0.0.1", "unix_socket_directories": ""}
        cmd = [str(self.binaries.bindir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        with self._open_log() as log:
            # Own session: a Ctrl-C in the terminal must not shut the server down behind our back.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                env=self._env(),
                start_new_session=True,
                preexec_fn=_parent_death_signal(signal.SIGINT) if self.die_with_parent else None,
                **self._creds(),
            )
        self._wait_ready(self._proc, timeout)

    def _open_log(self) -> io.BufferedWriter:
        self.log_path.parent.mkdir(exist_ok=True)
        self._give(self.log_path.parent)
        log = self.log_path.open("ab")
        self._give(self.log_path)
        self._log_offset = log.tell()
        return log

    def _pidfile(self) -> list[str]:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _drop_reused_lock(self) -> None:
        # Postgres discards a lock whose pid is dead by itself; it only refuses when the pid
        # now belongs to some unrelated live process, so drop the lock in exactly that case.
        lines = self._pidfile()
        if not lines or not lines[0].strip().isdigit():
            return
        pid = int(lines[0])
        if not _pid_alive(pid):
            return
        if _is_postmaster_of(pid, self.pgdata):
            raise PostgresError(f"a postgres (pid {pid}) is already running on {self.pgdata}")
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def stop_stale(self, timeout: float = 30) -> int | None:
        """Stops a postmaster still running on this pgdata whose owner died (`kill -9`): only
        for a caller that knows no live process uses it. Returns its pid, if there was one."""
        lines = self._pidfile()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        if not running(pid) or not _is_postmaster_of(pid, self.pgdata):
            return None
        # fast shutdown, then immediate (crash recovery at the next start), then SIGKILL
        steps = ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
        try:
            if stop_process(pid, steps):
                return pid
        except PermissionError as e:
            raise PostgresError(
                f"a postgres (pid {pid}) is already running on {self.pgdata}"
            ) from e
        raise PostgresError(f"cannot stop the postgres (pid {pid}) left running on {self.pgdata}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        # Like pg_ctl: ready once postmaster.pid names our pid with status "ready"; this
        # cannot be fooled by some other server already listening on the port.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                self._proc = None
                raise PostgresError(f"postgres exited with code {code}; log:\n{self._log_tail()}")
            lines = [ln.strip() for ln in self._pidfile()]
            if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7] == "ready":
                return
            time.sleep(0.05)
        self.stop()
        raise PostgresError(f"postgres not ready after {timeout:g}s; log:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return _tail(self.log_path, self._log_offset)

    def stop(self, timeout: float = 30) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: end sessions, checkpoint, exit
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # "immediate": crash recovery on next start
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- connection strings / context manager -------------------------------------------
    def dsn(self, database: str = "postgres") -> str:
        if self.port is None:
            raise PostgresError("no port chosen yet; call start() first")
        user, password = quote(self.superuser, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def url(self) -> str:
        return self.dsn()

    def __enter__(self) -> LocalPostgres:
        if not self.initialized():
            self.init()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
