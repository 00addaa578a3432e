"""Issue 8's soak, 60 seconds of it: bench/soak.py against a real server, its verdicts asserted one by one.

The 30-minute run is the benchmark (`python bench/soak.py --duration 1800`, bench/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATION = 60


def test_a_minute_of_mixed_flood_loses_nothing_and_grows_nothing(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", str(DURATION), "--flood", "1500",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=DURATION + 120,
    )  # fmt: skip
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(json.dumps({k: report[k] for k in ("legit", "attacks", "server")}, indent=1))
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, f"{failed}\n{json.dumps(report, indent=1)}"
    legit = report["legit"]
    assert legit["sessions"] > 100 and legit["messages_echoed"] == legit["messages_sent"] > 1000
    # Every attack kind ran, many times, and got the answer its defence gives.
    attacks = report["attacks"]
    for outcome in ("bad_token:ws:4401", "oversize:ws:1009", "ping_flood:ws:1009", "churn:closed"):
        assert attacks.get(outcome, 0) > 100, attacks
    flood = report["flood"]["outcomes"]
    assert flood.get("http:408", 0) > 0 and flood.get("ws:4408", 0) > 0, flood  # both deadlines kept churning
    assert proc.returncode == 0
