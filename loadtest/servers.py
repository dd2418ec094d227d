"""The servers under test: one waitress-serve process each, and what is measured of it.

``Server`` starts a target of ``TARGETS`` on 127.0.0.1 with a free port and stops it with SIGTERM
(SIGKILL after ``STOP_TIMEOUT``); ``running`` does both around a block. ``PeakRSS`` samples its
memory and CPU while a load runs, ``profiling`` its stacks with py-spy.
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from loadtest import ROOT

START_TIMEOUT = 30.0  # seconds for a server to print its address
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM before it is killed
REQUEST_TIMEOUT = 120.0  # seconds for one request of the harness itself

# waitress-serve arguments that pick the app of each server.
TARGETS = {
    "service": ["wsgi:app"],
    "ceiling": ["--call", "loadtest.ceiling:create_app"],
    "naive": ["--call", "loadtest.naive:create_app"],
}


@functools.cache
def waitress_flags() -> list[str]:
    """The waitress-serve options ``make run`` passes (``python -m flowagg --waitress-flags``)."""
    printed = subprocess.run(
        [sys.executable, "-m", "flowagg", "--waitress-flags"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return printed.stdout.split()


class Server:
    """One waitress-serve process on 127.0.0.1 with a free port; stopped by ``stop()``."""

    def __init__(
        self,
        name: str,
        threads: int,
        log_path: Path,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env  # FLOWAGG_* settings on top of this process's environment
        self.threads = threads
        self.log_path = log_path
        self.cwd = cwd  # the tree whose flowagg and wsgi.py are served (see --compare)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        waitress = Path(sys.executable).with_name("waitress-serve")
        cmd = [str(waitress), "--host=127.0.0.1", "--port=0", f"--threads={self.threads}"]
        cmd += waitress_flags()  # every server with the bounds make run gives the service
        # The log is a file, not a pipe: waitress warns about queued tasks under load, and a
        # pipe nobody reads would block the server once full.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            target = TARGETS.get(self.name, TARGETS["service"])
            env = {**os.environ, **self.env} if self.env else None
            self.proc = subprocess.Popen(
                cmd + target, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            output = self.log_path.read_bytes()[offset:]  # this start's lines only
            match = re.search(rb"Serving on http://127\.0\.0\.1:(\d+)", output)
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def rss(self) -> int:
        """Resident set size in bytes (Linux)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used (Linux)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post_all(self, bodies: Iterator[bytes]) -> None:
        """POST every body on one keep-alive connection, each after the previous answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            for body in bodies:
                conn.request("POST", "/flows", body=body)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{self.name}: POST answered {response.status}: {answer!r}")
        finally:
            conn.close()


@contextmanager
def running(name: str, threads: int, log_path: Path, cwd: Path = ROOT) -> Iterator[Server]:
    server = Server(name, threads, log_path, cwd)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PeakRSS:
    """Samples a server's RSS in the background while a load runs; keeps the highest. Also
    takes the CPU time the server used meanwhile, in cores (1.0: one core busy throughout)."""

    def __init__(self, server: Server, interval: float = 0.2) -> None:
        self.server, self.interval, self.peak = server, interval, 0
        self.cores = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.server.rss())
            except (OSError, RuntimeError):  # the server has gone; the scenario will say so
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._started = (time.monotonic(), self.server.cpu_seconds())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with suppress(OSError):  # the server has gone; the scenario will say so
            wall, cpu = time.monotonic(), self.server.cpu_seconds()
            self.cores = (cpu - self._started[1]) / (wall - self._started[0])


@contextmanager
def profiling(server: Server, opts, scenario: str) -> Iterator[None]:
    """Sample the server with py-spy while the load runs: only the thread holding the GIL, so
    the shares are of the one core that Python code gets. Writes profile-<scenario>.txt."""
    raw = opts.out_dir / f"profile-{scenario}.raw"
    cmd = [opts.py_spy, "record", "--pid", str(server.proc.pid), "--gil", "--rate", "200"]
    cmd += ["--duration", str(max(1, opts.duration - 1)), "--format", "raw", "--output", str(raw)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(opts.duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if raw.exists():
        summary = profile_summary(raw.read_text())
        (opts.out_dir / f"profile-{scenario}.txt").write_text(summary)


def profile_summary(raw: str, top: int = 15) -> str:
    """py-spy's raw stacks ("frame;frame;... count") as the functions with the most samples:
    on top of the stack (self) and anywhere in it (total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples of the thread holding the GIL", "", "self  total  function"]
    for frame, n in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{100 * n / samples:4.1f}% {100 * total[frame] / samples:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"
