"""bench/pod_usage.py, the measurement docs/sizing.md's requests come from, run as a user runs it (short
phases): both ways, through Compose and through the mesh rehearsal, it leaves nothing behind and says
what each container used. Its figures are not judged here, only that they are measurements."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import containers_support as cs
import pytest


@pytest.mark.parametrize("through", ["compose", "mesh"])
def test_pod_usage_measures_every_container_and_leaves_nothing(images, figures, through):
    result = subprocess.run(
        [sys.executable, "bench/pod_usage.py", "--seconds", "3", *(["--mesh"] if through == "mesh" else [])],
        cwd=cs.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["through"] == through
    groups = set(report["containers"])
    expected = set(cs.APP_SERVICES) | ({f"{s} sidecar" for s in cs.APP_SERVICES} if through == "mesh" else set())
    assert groups == expected, groups
    names = {name for containers in report["containers"].values() for name in containers}
    phases = report["phases"]
    assert list(phases) == ["rest", "light", "saturated"]
    assert phases["rest"]["answers"] == {}
    for phase in ("light", "saturated"):
        answers = phases[phase]["answers"]
        assert answers and set(answers) <= {"200", "201"}, (phase, answers)
    for phase in phases.values():
        assert set(phase["containers"]) == names
        for usage in phase["containers"].values():
            assert usage["cpu_millicores"] >= 0 and 10 < usage["working_set_mib_max"] < 1024, usage
    # Every container did work under load: more CPU than at rest.
    for name in names:
        assert (
            phases["saturated"]["containers"][name]["cpu_millicores"]
            > phases["rest"]["containers"][name]["cpu_millicores"]
        )
    figures(f"pod_usage --{through} (3 s phases): {phases['saturated']['requests_per_second']} req/s saturated")
    # Nothing of its run is left: no container named with its Compose project or mesh prefix
    # ("meshedtest1a2b3c4d_user-svc_1", "meshed-1a2b3c-user-svc-0-app").
    prefixes = {re.match(r"(meshedtest[0-9a-f]+_|meshed-[0-9a-f]+-)", name).group(1) for name in names}
    left = [n for n in cs.docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if n.startswith(tuple(prefixes))]
    assert len(prefixes) == 1 and not left, (prefixes, left)
