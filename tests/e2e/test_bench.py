"""The benchmark scripts run end to end (briefly) and print real figures; no timing is asserted."""

import ast
import json
import subprocess
import sys

import pytest

from testsupport.services import ROOT


def run_bench(tmp_path, *arguments):
    """bench.py for a second per endpoint: (what it printed, the figures it wrote as JSON)."""
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--duration", "1", *arguments, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(output.read_text())


def test_bench_prints_figures_for_both_endpoints(tmp_path, running_services):
    printed, figures = run_bench(
        tmp_path, "--connections", "4", "--user-url", running_services.user_url,
        "--order-url", running_services.order_url,
    )  # fmt: skip
    assert "GET /users/<id>" in printed and "POST /orders" in printed
    for endpoint in ("GET /users/<id>", "POST /orders"):
        assert figures["running"][endpoint]["rps"] > 0
        assert figures["running"][endpoint]["non_2xx"] == 0
        assert 0 < figures["running"][endpoint]["p50_ms"] <= figures["running"][endpoint]["p99_ms"]


def test_bench_starts_its_own_variants_and_the_references(tmp_path):
    """``bare`` runs bench's own settings modules; ``traced`` must really export to its receiver;
    ``seed`` (the Flask design) serves both endpoints, ``floor`` the GET only; ``postgres`` starts a
    database of its own."""
    printed, figures = run_bench(tmp_path, "--variants", "bare,traced,seed,floor,postgres", "--connections", "2")
    assert set(figures) == {"bare", "traced", "seed", "floor", "postgres"}
    assert set(figures["floor"]) == {"GET /users/<id>"}
    for variant in figures.values():
        for endpoint in variant:
            assert variant[endpoint]["rps"] > 0 and variant[endpoint]["non_2xx"] == 0
    assert "vs seed" in printed and "vs floor" in printed


def test_rounds_take_turns_and_report_each_variants_median_run(tmp_path):
    printed, figures = run_bench(tmp_path, "--variants", "floor,seed", "--rounds", "3", "--connections", "2")
    assert "median of 3 rounds" in printed
    for variant in figures.values():
        for endpoint in variant:
            runs = variant[endpoint]["rps_runs"]
            assert len(runs) == 3 and all(rps > 0 for rps in runs)
            assert variant[endpoint]["rps"] == sorted(runs)[1]


def test_instruction_counts_are_printed_per_variant_and_observability_costs_some(tmp_path):
    """bench/instructions.py under valgrind, briefly: a real count per variant (not zero, not the
    start-up's billions), and the shipped service spends more per request than ``bare``."""
    output = tmp_path / "instructions.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--variants", "bare,shipped", "--endpoints", "get",
         "--requests", "20", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(output.read_text())
    bare, shipped = counts["bare"]["GET /users/<id>"], counts["shipped"]["GET /users/<id>"]
    assert 100_000 < bare < shipped < 10_000_000
    assert "instructions per request" in result.stdout and "bare / this" in result.stdout


def test_served_instruction_counts_take_the_whole_worker_and_compare_like_bench(tmp_path):
    """bench/served_instructions.py, briefly, on the floor alone (no Django to boot under valgrind):
    a real count per request through gunicorn and its sockets, and the table's ratio to itself."""
    output = tmp_path / "served.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "served_instructions.py"), "--variants", "floor", "--endpoints", "get",
         "--requests", "40", "--warm-up", "20", "--connections", "4", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    floor = json.loads(output.read_text())["floor"]["GET /users/<id>"]
    # A served request costs more than the app's own work (hundreds of thousands through gunicorn's
    # parser and gevent's sockets), far less than the worker's start-up over 40 requests (tens of millions).
    assert 100_000 < floor < 3_000_000
    assert "vs floor" in result.stdout and "1.00x" in result.stdout


@pytest.mark.parametrize("tool", ["bench", "mesh_rehearsal"])
def test_tool_stands_on_its_own(tool):
    """bench and the mesh rehearsal (./manage_all.sh mesh) are tools users run: they import nothing from
    the tests (the tests may use them, not the other way), neither at the top of a module (imported with
    the tests' packages made unimportable) nor anywhere else."""
    modules = sorted(p for p in (ROOT / tool).rglob("*.py"))
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in {"testsupport", "tests"}], path
            # Nor by putting a folder of the tests on sys.path (ROOT / "tests" / "containers") and
            # importing a module from it by its bare name.
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                folder = node.value.split("/")[0]
                assert folder not in {"tests", "testsupport"}, (path, node.value)
    # The scripts and their helpers (bench/reference/ and bench/settings/ are apps' modules, run by gunicorn).
    dotted = [f"{tool}.{p.stem}" for p in (ROOT / tool).glob("*.py") if p.name != "__init__.py"]
    check = "import importlib, sys\nsys.modules['testsupport'] = sys.modules['tests'] = None\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in dotted
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
