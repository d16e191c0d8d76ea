"""The benchmark script runs end to end (briefly) and prints real figures; no timing is asserted."""

import json
import subprocess
import sys

from testsupport.services import ROOT


def test_bench_prints_figures_for_both_endpoints(tmp_path, running_services):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench.py"),
            "--duration",
            "1",
            "--connections",
            "4",
            "--user-url",
            running_services.user_url,
            "--order-url",
            running_services.order_url,
            "--json",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "GET /users/<id>" in result.stdout and "POST /orders" in result.stdout
    figures = json.loads(output.read_text())["running"]
    for endpoint in ("GET /users/<id>", "POST /orders"):
        assert figures[endpoint]["rps"] > 0
        assert figures[endpoint]["non_2xx"] == 0
        assert 0 < figures[endpoint]["p50_ms"] <= figures[endpoint]["p99_ms"]
