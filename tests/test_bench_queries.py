"""The range-query benchmark runs end to end on a small load and checks its own answers."""

import subprocess
import sys

from tests.serverproc import ROOT


def test_the_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_queries", "--keys", "1000", "--repeats", "1"]
        + ["--baseline-repeats", "1", "--deadline", "120", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "168 hours x 1,000 keys (168,000 key-hours)" in proc.stdout
    assert "| top 10 by src_app | 24 | 24,000 |" in proc.stdout
    assert "top 10 by src_app over 24 hours:" in proc.stdout
    assert "client-side top 10 over 24 h:" in proc.stdout
    assert out.stat().st_size > 0
