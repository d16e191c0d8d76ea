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


def test_bench_starts_its_own_variants_and_the_references(tmp_path):
    """``bare`` runs bench's own settings modules; ``traced`` must really export to its receiver;
    ``seed`` (the Flask design) serves both endpoints, ``floor`` the GET only."""
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench.py"),
            "--variants",
            "bare,traced,seed,floor",
            "--duration",
            "1",
            "--connections",
            "2",
            "--json",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert set(figures) == {"bare", "traced", "seed", "floor"}
    assert set(figures["floor"]) == {"GET /users/<id>"}
    for variant in figures.values():
        for endpoint in variant:
            assert variant[endpoint]["rps"] > 0 and variant[endpoint]["non_2xx"] == 0
    assert "vs seed" in result.stdout and "vs floor" in result.stdout
