"""checkov finds no failed check in k8s/ (raw manifests and rendered kustomizations) nor in
either service's Dockerfile nor the local stand-in images' (deploy/local-images/). Suppressions are
only allowed in the files themselves, each with a reason: `checkov.io/skipN: CKV_...=reason`
annotations or `# checkov:skip=CKV_...:reason` comments."""

import re

import pytest
from deploy_support import CHECKOV_TARGETS, REPO_ROOT

EXPECTED_FRAMEWORKS = {
    "k8s": {"kubernetes", "kustomize"},
    "user_svc/Dockerfile": {"dockerfile"},
    "order_svc/Dockerfile": {"dockerfile"},
    **{f"deploy/local-images/{name}/Dockerfile": {"dockerfile"} for name in ("nginx", "postgres", "prometheus")},
}


@pytest.mark.parametrize("target", list(CHECKOV_TARGETS))
def test_checkov_has_no_failed_checks(checkov_runs, target):
    run = checkov_runs()[target]
    failed = []
    for report in run.reports:
        for check in report.get("results", {}).get("failed_checks", []):
            failed.append(f"{check['check_id']} {check['check_name']} {check['file_path']} {check['resource']}")
    summaries = {r.get("check_type"): r.get("summary", {}) for r in run.reports}
    assert set(summaries) == EXPECTED_FRAMEWORKS[target], f"checkov ran {set(summaries)}: {run.stderr[-2000:]}"
    for framework, summary in summaries.items():
        assert summary.get("resource_count", 0) > 0, f"{framework}: checkov scanned nothing"
        assert summary.get("parsing_errors", 0) == 0, f"{framework}: parsing errors\n{run.stderr[-2000:]}"
        assert summary.get("failed") == 0, "\n".join(failed)
    assert not failed, "\n".join(failed)
    assert run.returncode == 0, run.stderr[-2000:]


def test_suppressions_are_in_files_with_reasons():
    for config in (".checkov.yml", ".checkov.yaml"):
        assert not (REPO_ROOT / config).exists(), f"{config}: skip checks in the files, with a reason"
    dockerfiles = [*REPO_ROOT.glob("*/Dockerfile"), *REPO_ROOT.glob("deploy/local-images/*/Dockerfile")]
    for path in [*dockerfiles, *(REPO_ROOT / "k8s").rglob("*.yaml")]:
        text = path.read_text()
        for match in re.finditer(r"checkov:skip=(\S+?)(?::(.*))?$", text, re.M):
            assert match.group(2) and len(match.group(2).strip()) >= 20, f"{path}: {match.group(0)} has no reason"
        for match in re.finditer(r"checkov\.io/skip\d+:\s*(.*)$", text, re.M):
            check, _, reason = match.group(1).partition("=")
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check.strip()), f"{path}: {match.group(0)}"
            assert len(reason.strip()) >= 20, f"{path}: {match.group(0)} has no reason"
