"""The service in its own process on 127.0.0.1, as an operator starts it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import WAIT_TIMEOUT, Client

ROOT = Path(__file__).resolve().parent.parent
WAITRESS = [str(Path(sys.executable).with_name("waitress-serve")), "--host=127.0.0.1", "--port=0"]
MODULE = [sys.executable, "-m", "flowagg", "--host=127.0.0.1", "--port=0"]
_SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


class ServerProcess(Client):
    """Starts ``argv`` with ``FLOWAGG_*`` settings ``env`` and waits until it serves.

    stderr is read by a thread into ``lines``, so a chatty server never blocks on a full pipe.
    """

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()  # set once serving, or when stderr ends
        self._reader = threading.Thread(target=self._read, name="server-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            match = _SERVING.search(line)
            if match and self.port is None:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float = WAIT_TIMEOUT * 3) -> ServerProcess:
        assert self._ready.wait(timeout), "server did not start in time"
        assert self.port is not None, f"server did not start:\n{self.stderr}"
        return self

    def rows(self, hours) -> list[dict]:
        rows = []
        for hour in hours:
            status, body = self.request("GET", f"/flows?hour={hour}")
            assert status == 200, body
            rows += body
        return rows

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT_TIMEOUT * 3) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_TIMEOUT)
        self._reader.join(WAIT_TIMEOUT)
        self.proc.stderr.close()

    def wait_exit(self, timeout: float = WAIT_TIMEOUT * 3) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()
