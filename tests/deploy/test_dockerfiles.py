"""Static checks of the two Dockerfiles and .dockerignore (no Docker engine here)."""

import re

import pytest
from deploy_support import REPO_ROOT, parse_dockerfile

SERVICES = {"user_svc": "user_service", "order_svc": "order_service"}
BASE_IMAGE = re.compile(r"python:3\.11\.\d+-slim-bookworm")
APP_UID = "10001"


def contract_cmd(wsgi_package: str) -> list[str]:
    # docs/CONTRACT.md: "gunicorn -c python:svc_common.server.gunicorn_conf user_service.wsgi:application"
    return ["gunicorn", "-c", "python:svc_common.server.gunicorn_conf", f"{wsgi_package}.wsgi:application"]


@pytest.fixture(scope="module", params=list(SERVICES))
def service(request):
    return request.param


@pytest.fixture(scope="module")
def stages(service):
    return parse_dockerfile(REPO_ROOT / service / "Dockerfile")


def test_base_images_are_pinned_slim_python(stages):
    assert len(stages) >= 2, "multi-stage build expected"
    bases = {s.base for s in stages if s.base not in {t.name for t in stages}}
    assert len(bases) == 1, bases
    assert BASE_IMAGE.fullmatch(bases.pop())


def test_builder_installs_runtime_requirements_only(service, stages):
    builder, final = stages[0], stages[-1]
    assert any(i.flags.get("from") == builder.name for i in final.of("COPY")), "final stage copies no venv"
    copies = builder.of("COPY")
    runs = builder.of("RUN")
    # requirements first (own cached layer), then pip install; nothing else copied in
    assert [c.args[0] for c in copies] == ["requirements/runtime.txt"]
    install = [r for r in runs if "pip install" in r.args[0]]
    assert len(install) == 1
    assert builder.instructions.index(copies[0]) < builder.instructions.index(install[0])
    requirement_files = re.findall(r"-r\s+(\S+)", install[0].args[0])
    assert requirement_files == [copies[0].args[1]]
    assert "requirements/test.txt" not in (REPO_ROOT / service / "Dockerfile").read_text()


def test_final_stage_has_no_build_tools(stages):
    final = stages[-1]
    for run in final.of("RUN"):
        assert not re.search(r"pip install|apt-get install|apk add|gcc|build-essential", run.args[0]), run.raw


def test_final_stage_runs_the_contract_command_as_non_root(service, stages):
    final = stages[-1]
    user = final.of("USER")
    assert user, "no USER: the image would run as root"
    uid = user[-1].args[0].split(":")[0]
    assert uid == APP_UID and uid not in ("0", "root", "1337")
    assert final.env["PYTHONPATH"] == "/app"
    assert final.env["PORT"] == "8000"
    assert final.of("WORKDIR")[-1].args[0] == "/app"
    assert [e.args[0] for e in final.of("EXPOSE")] == ["8000"]
    assert not final.of("ENTRYPOINT")
    assert final.of("CMD")[-1].args == contract_cmd(SERVICES[service])
    copied = {c.args[0] for c in final.of("COPY") if "from" not in c.flags}
    assert copied == {"svc_common/", f"{service}/"}
    assert not any(i.cmd == "ADD" for i in final.instructions)


def test_the_two_dockerfiles_differ_only_by_service():
    user = (REPO_ROOT / "user_svc" / "Dockerfile").read_text()
    order = (REPO_ROOT / "order_svc" / "Dockerfile").read_text()

    def normalise(text):
        for word in ("user", "order"):
            text = (
                text.replace(f"{word}_svc", "SVC").replace(f"{word}-svc", "SVC").replace(f"{word}_service", "SERVICE")
            )
        return text.replace("user service", "SERVICE service").replace("order service", "SERVICE service")

    assert normalise(user) == normalise(order)


def test_dockerignore_keeps_the_context_small(dockerignore):
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        "tests/deploy/conftest.py",
        "requirements/test.txt",
        "k8s/base/kustomization.yaml",
        "docker-compose.yml",
        "user_svc/__pycache__/x.cpython-311.pyc",
        "user_svc/users/tests/test_api.py",
        "user_svc/pytest.ini",
        "order_svc/orders/tests/test_views.py",
        "order_svc/Dockerfile",
    ):
        assert dockerignore.ignored(path), f"{path} would be sent to the build"
    for path in (
        "requirements/runtime.txt",
        "svc_common/__init__.py",
        "svc_common/server/gunicorn_conf.py",
        "user_svc/manage.py",
        "user_svc/user_service/wsgi.py",
        "order_svc/order_service/settings.py",
        "order_svc/orders/migrations/0001_initial.py",  # the image migrates its own database
        "user_svc/users/management/commands/migrate.py",
    ):
        assert not dockerignore.ignored(path), f"{path} is needed by the image"
