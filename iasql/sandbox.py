"""The local AWS sandbox: a moto server on a loopback port, run as a child process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from iasql.postgres import free_port


class SandboxError(Exception):
    pass


class MotoServer:
    """One moto server = one fake AWS account, reachable at `endpoint`."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                "MOTO_ACM_VALIDATION_WAIT": "1",
                "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",  # arn:aws:iam::aws:policy/...
                "PATH": "/usr/bin:/bin",
            },
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SandboxError(
                    f"the moto server exited at start (code {self.process.returncode})"
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
