"""``./manage_all.sh mesh up`` and ``down`` as a person runs them: the printed endpoints answer, the trace
receiver writes spans, and ``down`` leaves no container, network or file behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import containers_support as cs
import pytest

from mesh_rehearsal import runtime


def manage_mesh(run_dir, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cs.REPO_ROOT / "manage_all.sh"), "mesh", *args],
        env={**os.environ, "RUN_DIR": str(run_dir)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_dir(images, tmp_path):
    """$RUN_DIR for the command; whatever it leaves up is taken down at the end."""
    yield tmp_path
    state_file = tmp_path / "mesh" / runtime.STATE_FILE
    if state_file.exists():
        runtime.down(runtime.MeshState.load(tmp_path / "mesh").prefix, tmp_path / "mesh")


def test_mesh_up_prints_what_answers_and_down_leaves_nothing(run_dir, figures):
    started = time.monotonic()
    up = manage_mesh(run_dir, "up", "--gateway-sampling", "100")
    assert up.returncode == 0, up.stderr[-3000:]
    figures(f"./manage_all.sh mesh up (images built): {time.monotonic() - started:.1f} s")
    gateway = re.search(r"^gateway:\s+(http://127\.0\.0\.1:\d+)", up.stdout, re.M).group(1)
    prometheus = re.search(r"^prometheus:\s+(http://127\.0\.0\.1:\d+)", up.stdout, re.M).group(1)
    spans_file = re.search(r"spans in (\S+)", up.stdout).group(1)
    prefix = runtime.MeshState.load(run_dir / "mesh").prefix

    with urllib.request.urlopen(f"{gateway}/users", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{prometheus}/-/ready", timeout=10) as response:
        assert response.status == 200

    def gateway_spans():
        if not os.path.exists(spans_file):
            return []
        lines = Path(spans_file).read_text().splitlines()
        return [s for s in map(json.loads, lines) if s["service"] == "istio-ingressgateway.istio-system"]

    deadline = time.monotonic() + 10
    while not gateway_spans() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert gateway_spans(), "the receiver wrote no gateway span (sampling 100 %)"

    # The README's exec and status lines, as it prints them.
    denied = manage_mesh(run_dir, "exec", "sleep", "--", "curl", "-s", "http://user-svc.meshed.svc.cluster.local/users")
    assert denied.returncode == 0 and denied.stdout.strip() == "RBAC: access denied", denied.stdout + denied.stderr
    status = manage_mesh(run_dir, "status")
    assert status.returncode == 0, status.stderr
    for pod in ("user-svc-0", "user-svc-1", "order-svc-0", "order-svc-1", "sleep", "outsider"):
        assert pod in status.stdout, status.stdout
    assert gateway in status.stdout

    again = manage_mesh(run_dir, "up")
    assert again.returncode == 0 and "already up" in again.stderr and gateway in again.stdout

    down = manage_mesh(run_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not cs.docker("ps", "-aq", "--filter", f"label={runtime.LABEL}={prefix}").stdout.split()
    assert not cs.docker("network", "ls", "-q", "--filter", f"label={runtime.LABEL}={prefix}").stdout.split()
    assert not (run_dir / "mesh").exists()
    status = manage_mesh(run_dir, "status")
    assert status.returncode == 3 and "not up" in status.stdout
