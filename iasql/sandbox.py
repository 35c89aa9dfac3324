"""The local AWS sandbox: a moto server on a loopback port, run as a child process.

`iasql serve --local-cloud` runs it with a journal (see iasql/sandbox_server.py), so its state
outlives the process, and keeps its port and pid in a state file next to the journal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from iasql.postgres import free_port, running, stop_process


class SandboxError(Exception):
    pass


# What `python -m moto.server` (and iasql.sandbox_server) import before anything else: moto,
# and the web server of its `server` extra. The sandbox extra (`iasql[sandbox]`) installs them.
SANDBOX_MODULES = ("moto", "flask", "flask_cors", "werkzeug")
SANDBOX_INSTALL = "pip install 'iasql[sandbox]' (in a clone, `make run` installs it)"


def require_sandbox() -> None:
    """Fails at once, in one line, when the sandbox cannot start here: the child imports moto
    in its own process, so without this its ImportError would only show in its log."""
    missing = [name for name in SANDBOX_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SandboxError(
            f"the local AWS sandbox (--local-cloud) needs moto[server], which is not installed"
            f" (not found: {', '.join(missing)}): {SANDBOX_INSTALL}"
        )


class MotoServer:
    """One moto server = one fake AWS account, reachable at `endpoint`."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        journal: Path | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.journal = journal  # where the state is kept across restarts; None: in memory
        self.state_file = state_file  # where its port and pid are written when it starts
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float | None = None) -> None:
        require_sandbox()
        if timeout is None:  # replaying a long journal takes a while
            timeout = 30 if self.journal is None else 600
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # iasql's wrapper around moto: with the add-ons that fill moto's gaps
        # (iasql.moto_addons), exiting when this process dies, and with a journal, keeping
        # its state across restarts, one account per 12-digit access key id.
        command = [
            *(sys.executable, "-m", "iasql.sandbox_server", "--port", str(self.port)),
            *("--parent", str(os.getpid())),
        ]
        if self.journal is not None:
            command += ["--journal", str(self.journal)]
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                "MOTO_ACM_VALIDATION_WAIT": "1",
                "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",  # arn:aws:iam::aws:policy/...
                # Every service answers in every region the sandbox lists (moto's own lists
                # per service lag: CodeBuild and CodePipeline lacked ca-west-1, mx-central-1
                # and ap-east-2, and an import of every region failed with HTTP 500).
                "MOTO_ALLOW_NONEXISTENT_REGION": "true",
                "PATH": "/usr/bin:/bin",
            },
        )
        if self.state_file is not None:
            write_json(self.state_file, {"port": self.port, "pid": self.process.pid})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise SandboxError(
                    f"the moto server exited at start (code {self.process.returncode}){where}"
                )
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise SandboxError(
            f"the moto server did not answer on {self.endpoint} within {timeout:.0f} s"
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    def reset(self) -> None:
        """Forgets every resource: a fresh, empty account."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data) + "\n")
    temporary.replace(path)


def stop_stale(state_file: Path, journal: Path, timeout: float = 10) -> int | None:
    """Stops the sandbox a previous server left running on `journal` (when it died by
    `kill -9` and its sandbox has not exited yet). Returns its pid, if there was one."""
    pid = read_json(state_file).get("pid")
    if not isinstance(pid, int) or not running(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"iasql.sandbox_server" not in command or str(journal).encode() not in command:
        return None  # the pid was reused by something else
    if stop_process(pid, ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0))):
        return pid
    raise SandboxError(f"cannot stop the local cloud (pid {pid}) left running by a previous server")
