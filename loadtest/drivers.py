"""The load: the flows sent, and the drivers that send them (wrk, or locust where wrk is missing).

A driver runs one scenario's ``Load`` against a URL for a number of seconds and returns its raw
figures: requests, errors, duration, p50 and p99 latency, and what the script counted itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest import ROOT

WRK_DIR = ROOT / "loadtest" / "wrk"
RESULT_PREFIX = "FLOWAGG-RESULT "


def flow_json(k: int, hour: int, tx: int, rx: int) -> bytes:
    """Key number k as one flow record, named as the Lua scripts name it (common.lua)."""
    return (
        f'{{"src_app":"src-{k % 1000}","dest_app":"dest-{k // 1000 % 1000}",'
        f'"vpc_id":"vpc-{k // 1_000_000}","bytes_tx":{tx},"bytes_rx":{rx},"hour":{hour}}}'
    ).encode()


def batches(keys: int, hour: int, size: int) -> Iterator[bytes]:
    """POST bodies holding keys 0..keys-1 once each in ``hour``, ``size`` flows per body."""
    for start in range(0, keys, size):
        stop = min(keys, start + size)
        yield (
            b"[" + b",".join(flow_json(k, hour, 1 + k % 1000, 2) for k in range(start, stop)) + b"]"
        )


@dataclass
class Load:
    """What one scenario run sends: a script (wrk) or user class (locust) and its options."""

    scenario: str
    params: dict[str, int | str]
    flows_per_request: int = 0  # 0: flows are counted by the script (mixed)
    one_connection_per_thread: bool = False


class WrkDriver:
    name = "wrk"
    SCRIPTS = {"get10k": "get.lua", "mixed": "mixed.lua"}  # every other scenario: post.lua

    def __init__(self, wrk_threads: int) -> None:
        self.wrk_threads = wrk_threads

    def run(self, url: str, load: Load, duration: int, connections: int) -> dict:
        threads = connections if load.one_connection_per_thread else self.wrk_threads
        script = WRK_DIR / self.SCRIPTS.get(load.scenario, "post.lua")
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout=10s"]
        cmd += ["-s", str(script), url, "--", *(f"{k}={v}" for k, v in load.params.items())]
        env = {**os.environ, "LUA_PATH": f"{WRK_DIR}/?.lua;;"}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration + 60, check=False
        )
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                raw = json.loads(line[len(RESULT_PREFIX) :])
                raw["errors"] = sum(raw["errors"].values())
                return raw
        raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{proc.stderr}")


class LocustDriver:
    """The fallback where wrk is missing: locust's FastHttpUser, one user per connection."""

    name = "locust"
    CLASSES = {"get10k": "GetHour", "mixed": "Mixed"}  # every other scenario: PostFlows

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def run(self, url: str, load: Load, duration: int, connections: int) -> dict:
        result_path = self.out_dir / "locust-result.json"
        result_path.unlink(missing_ok=True)
        locust = Path(sys.executable).with_name("locust")
        users = str(connections)
        cmd = [str(locust), "-f", str(ROOT / "loadtest" / "bench_locust.py"), "--headless"]
        cmd += ["-u", users, "-r", users, "-t", f"{duration}s", "--host", url, "--only-summary"]
        cmd += ["--loglevel", "WARNING", self.CLASSES.get(load.scenario, "PostFlows")]
        env = {**os.environ, "FLOWAGG_BENCH_RESULT": str(result_path), "PYTHONPATH": str(ROOT)}
        env.update({f"FLOWAGG_BENCH_{k.upper()}": str(v) for k, v in load.params.items()})
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration + 90, check=False
        )
        if not result_path.exists():
            raise RuntimeError(f"locust wrote no result (exit {proc.returncode}):\n{proc.stderr}")
        return json.loads(result_path.read_text())
