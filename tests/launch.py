"""The service started exactly as an operator starts it: ``make run`` or ``python -m flowagg``.

``make run`` is run itself, not a copy of its command line, so the tests see the flags the
Makefile passes. make runs waitress-serve in its place (``exec``) and hands SIGTERM on to it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import WAIT_TIMEOUT
from tests.serverproc import MODULE, ServerProcess

MAKE_RUN = ["make", "--no-print-directory", "-s", "run", "HOST=127.0.0.1", "PORT=0"]
LAUNCHERS = {"make run": MAKE_RUN, "python -m flowagg": MODULE}


class Launched(ServerProcess):
    """A server from ``LAUNCHERS``; ``pid`` is the serving process (make's child for make run)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv, env)
        self.argv = argv
        self.pid: int | None = None

    def wait_serving(self, timeout: float = WAIT_TIMEOUT * 3) -> Launched:
        super().wait_serving(timeout)
        if self.argv[0] == "make":
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            [child] = children.split()
            self.pid = int(child)
        else:
            self.pid = self.proc.pid
        self._cmdline = self.cmdline()
        return self

    def limits(self) -> dict[str, str]:
        """The serving process's resource limits: name -> soft limit, from /proc."""
        lines = Path(f"/proc/{self.pid}/limits").read_text().splitlines()[1:]
        return {line[:26].strip(): line[26:47].strip() for line in lines}

    def cmdline(self) -> list[str]:
        return Path(f"/proc/{self.pid}/cmdline").read_text().split("\0")[:-1]

    def kill(self) -> None:
        """Stop make and, should it have left it behind, the server it started."""
        super().kill()
        if self.pid is None or self.pid == self.proc.pid or not self._running():
            return
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT_TIMEOUT
        while self._running():
            assert time.monotonic() < deadline, f"server {self.pid} did not exit"
            time.sleep(0.01)

    def _running(self) -> bool:
        """Whether the server still runs. It is not our child, so we cannot wait for it: a dead
        one is gone, a zombie (whose command line is empty) or its pid taken by another."""
        try:
            return self.cmdline() == self._cmdline
        except FileNotFoundError:
            return False


def launch(launcher: str, env: dict[str, str] | None = None) -> Launched:
    return Launched(LAUNCHERS[launcher], env or {}).wait_serving()
