"""The image's install and start steps, replayed without Docker: a fresh venv from the
requirements the builder stage installs, the files the final stage copies (minus
.dockerignore) in an /app-like directory, the final stage's ENV, WORKDIR and CMD; then
GET /healthz (and /readyz) must answer 200, and SIGTERM must stop gunicorn cleanly.

Runs in the default suite; alone with `pytest tests/deploy -m image`. Needs the service code
(svc_common/, user_svc/, order_svc/) from docs/CONTRACT.md."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploy_support import REPO_ROOT, parse_dockerfile

from testsupport.services import free_port

pytestmark = pytest.mark.image

SERVICES = ("user_svc", "order_svc")
START_TIMEOUT = 60  # s, gunicorn + Django import
STOP_TIMEOUT = 40  # s, > GUNICORN_GRACEFUL_TIMEOUT default


def _builder_and_final(service):
    stages = parse_dockerfile(REPO_ROOT / service / "Dockerfile")
    final = stages[-1]
    venv_copies = [c for c in final.of("COPY") if c.flags.get("from")]
    assert len(venv_copies) == 1, "final stage should copy exactly one thing (the venv) from the builder"
    builder = next(s for s in stages if s.name == venv_copies[0].flags["from"])
    return builder, final, venv_copies[0]


def _install_plan(builder):
    """(venv path in the image, [requirement files in the repo]) from the builder's COPY/RUN."""
    copied = {}  # image path -> repo path
    for c in builder.of("COPY"):
        *sources, dest = c.args
        for src in sources:
            target = dest + Path(src).name if dest.endswith("/") else dest
            copied[target] = src
    venv_dir, requirements = None, []
    for run in builder.of("RUN"):
        m = re.search(r"-m venv\s+(\S+)", run.args[0])
        if m:
            venv_dir = m.group(1)
        if "pip install" in run.args[0]:
            for req in re.findall(r"-r\s+(\S+)", run.args[0]):
                assert req in copied, f"pip installs {req}, which the builder did not COPY"
                requirements.append(copied[req])
    assert venv_dir and requirements, "builder stage: no `python -m venv` / `pip install -r` found"
    return venv_dir, requirements


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """One venv for both services: their builder stages are identical (test_dockerfiles.py)."""
    plans = set()
    for service in SERVICES:
        venv_dir, requirements = _install_plan(_builder_and_final(service)[0])
        plans.add((venv_dir, tuple(requirements)))
    assert len(plans) == 1, f"builder stages differ: {plans}"
    image_venv_dir, requirements = plans.pop()
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for req in requirements:
        cmd += ["-r", str(REPO_ROOT / req)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # pip's cache is used
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return image_venv_dir, venv


def _copy_context(src_rel: str, dest: Path, ignore) -> int:
    """COPY semantics for one source (relative to the build context = repo root)."""
    src = REPO_ROOT / src_rel
    assert src.exists(), f"COPY source {src_rel} does not exist (service code not written yet?)"
    count = 0
    if src.is_file():
        if not ignore.ignored(src_rel):
            target = dest / src.name if str(dest).endswith("/") or dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            count += 1
        return count
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if path.is_file() and not ignore.ignored(rel):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.mark.parametrize("service", SERVICES)
def test_image_starts_and_answers_healthz(service, image_venv, dockerignore, tmp_path):
    image_venv_dir, venv = image_venv
    _, final, _ = _builder_and_final(service)
    rootfs = tmp_path / "rootfs"

    def host_path(image_path: str) -> Path:
        if image_path == image_venv_dir or image_path.startswith(image_venv_dir + "/"):
            return venv / image_path[len(image_venv_dir) :].lstrip("/")
        return rootfs / image_path.lstrip("/")

    def map_paths(value: str) -> str:
        """Image paths in an ENV value -> host paths (the venv and what COPY put in the rootfs)."""
        roots = (image_venv_dir, *image_roots)
        return re.sub(
            r"(?<![\w/])(/[^\s:]*)",
            lambda m: (
                str(host_path(m.group(1)))
                if any(m.group(1) == r or m.group(1).startswith(r + "/") for r in roots)
                else m.group(1)
            ),
            value,
        )

    copied = 0
    image_roots = set()
    for c in final.of("COPY"):
        if c.flags.get("from"):
            continue
        *sources, dest = c.args
        image_roots.add("/" + dest.strip("/").split("/")[0])
        for src in sources:
            target = host_path(dest)
            if dest.endswith("/") or len(sources) > 1 or (REPO_ROOT / src).is_dir():
                target.mkdir(parents=True, exist_ok=True)
            copied += _copy_context(src, target, dockerignore)
    assert copied, "the final stage copied no files"

    workdir = host_path(final.of("WORKDIR")[-1].args[0])
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    for key, value in final.env.items():
        value = map_paths(value)
        env[key] = value.replace("${PATH}", env["PATH"]).replace("$PATH", env["PATH"])
    port = free_port()
    env.update({"PORT": str(port), "DJANGO_SECRET_KEY": "test", "GUNICORN_WORKERS": "1"})
    env.pop("BIND", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    argv = list(final.of("CMD")[-1].args)
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable and Path(executable).parent == venv / "bin", (
        f"{argv[0]} resolves to {executable}, not the image venv"
    )
    argv[0] = executable

    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        assert status == 200, f"/healthz -> {status}\n{log.read_text()[-5000:]}"
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, f"/readyz -> {status} {body[:500]}\n{log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail(f"gunicorn ignored SIGTERM for {STOP_TIMEOUT}s:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, f"gunicorn exited {proc.returncode} on SIGTERM:\n{log.read_text()[-3000:]}"
