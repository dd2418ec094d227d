"""The in-process stage benchmark runs end to end and checks its own answers."""

import re
import subprocess
import sys

from tests.serverproc import ROOT


def test_the_stage_benchmark_runs_and_reports_every_stage():
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_paths", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # It raises (exit 1) if the service's GET answer differs from the naive peer's or a POST
    # through an app is not answered 200.
    assert proc.returncode == 0, proc.stderr
    for title in (
        "POST of 1,000 flows over 24 hours, 5,000 keys per hour",
        "POST of 1,000 flows over 1 hour, 5,000 keys per hour",
        "GET of a 10,000-key hour",
        "POST of 1 flow through the WSGI app",
    ):
        assert f"\n{title}\n" in proc.stdout
    for stage in (
        "service: pack, and merge into every partition's tables",
        "service: decode, ingest into a running store, drained (threads)",
        "service: the JSON answer, encoded from the tables",
        "service: the whole app",
        "ceiling: the whole app",
        "naive: the whole app",
    ):
        assert re.search(rf"\| {re.escape(stage)} \| [0-9,]+ \|", proc.stdout), stage
    assert "| encode a 10,000-key hour |" in proc.stdout
