"""The benchmark runner, end to end on a very short run: servers, flood, legitimate clients, report, plots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def flood_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "flood", "--runs", "1", "--out", str(out),
        "--count", "200", "--sources", "20", "--procs", "1", "--duration", "3", "--hold", "2",
        "--before", "1", "--after", "1", "--legit-rate", "20",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_report_has_every_section(flood_report: Path) -> None:
    report = (flood_report / "report.md").read_text()
    assert report.startswith("# 3. Legitimate users while 20,000 pending connections churn")
    for heading in ("## Summary", "## Results (median of 1 run)", "## Runs", "## Setup", "## Plots", "## Command",
                    "## Machine"):
        assert heading in report, heading
    # Both targets measured in the same run, side by side.
    assert re.search(r"^\| figure \| guarded-ws \| naive \|$", report, re.M)
    assert re.search(r"^\| legit_success \| [\d.]+ \| [\d.]+ \|$", report, re.M)
    assert "python bench/run.py flood --runs 1" in report
    assert "nproc:" in report and "free -h:" in report


def test_plots_exist_and_are_pngs(flood_report: Path) -> None:
    report = (flood_report / "report.md").read_text()
    for name in ("flood-legit.png", "flood-pending.png", "flood-rejections.png"):
        path = flood_report / name
        assert path.exists(), name
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"]({name})" in report


def test_results_json_has_both_targets(flood_report: Path) -> None:
    results = json.loads((flood_report / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) >= {"guarded-ws", "naive"}
    for target in ("guarded-ws", "naive"):
        assert summary[target]["legit_attempts"] > 0
        assert summary[target]["flood_peak_open"] > 0
    # The short run is gentle: both servers serve every legitimate client.
    assert summary["guarded-ws"]["legit_success"] == 1.0
