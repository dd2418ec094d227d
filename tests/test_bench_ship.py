"""The shipping benchmark runs end to end on a small file, so that it keeps working."""

import json
import subprocess
import sys

from tests.serverproc import ROOT


def test_the_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_ship", "--records", "3000", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"vpc", "wide", "scan"}
    for shape, [row] in figures.items():
        assert row["ship"]["records"] == 3000, shape
        assert row["baseline"]["records"] == 3000, shape
        assert row["ship"]["flows"] < row["ship"]["records"], shape  # summed per batch
        assert f"{shape} round 1: 3,000 records in" in proc.stdout
