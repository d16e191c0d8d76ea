"""Fixtures for the deployment checks (plain Python, no Django). Helpers: deploy_support.py."""

import sys
from pathlib import Path

import pytest

# Make `import deploy_support` work however pytest imports this directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploy_support as ds


def pytest_configure(config):
    # pytest.ini registers it too; register here only if it does not (--strict-markers).
    if any(line.split(":")[0].strip() == "image" for line in config.getini("markers")):
        return
    config.addinivalue_line(
        "markers",
        "image: builds the image's venv and starts gunicorn the way the Dockerfile does (run alone with -m image)",
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ds.REPO_ROOT


@pytest.fixture(scope="session")
def kubectl() -> str:
    return ds.kubectl_path()


@pytest.fixture(scope="session")
def render():
    """render(target) -> list of objects from `kubectl kustomize target` (fresh copies)."""
    return ds.rendered


@pytest.fixture(scope="session")
def manifests():
    """manifests(*targets) -> ds.Manifests over the rendered objects of the targets."""

    def build(*targets: str) -> ds.Manifests:
        objects = []
        for target in targets:
            objects.extend(ds.rendered(target))
        return ds.Manifests(objects)

    return build


@pytest.fixture(scope="session")
def istio_validator() -> ds.IstioValidator:
    return ds.IstioValidator(ds.ISTIO_CRDS)


@pytest.fixture(scope="session")
def cnpg_validator() -> ds.CnpgValidator:
    return ds.CnpgValidator(ds.CNPG_CRDS)


@pytest.fixture(scope="session")
def dockerignore() -> ds.DockerIgnore:
    return ds.DockerIgnore(ds.REPO_ROOT / ".dockerignore")


@pytest.fixture(scope="session")
def checkov_runs():
    """checkov_runs() -> {target: CheckovRun}: checkov once per target (k8s/, each Dockerfile),
    all in parallel, on first call, for the whole session. Called inside the tests so that a
    missing checkov is a test failure, not a fixture error."""
    cache = {}

    def get() -> dict:
        if "runs" not in cache:
            cache["runs"] = ds.run_checkov_all()
        return cache["runs"]

    return get
