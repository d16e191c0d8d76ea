"""The README's Docker Compose block sets every variable docker-compose.yml requires: its lines up to
the images and the start, run as printed, leave `docker-compose config` nothing to refuse (no daemon
needed: the file is only interpolated and validated)."""

import os
import re
import shutil
import subprocess

import containers_support as cs
import pytest


def readme_compose_block() -> str:
    readme = (cs.REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if "docker-compose -p meshed up" in b]
    return block


def compose_config(setup: str) -> subprocess.CompletedProcess:
    compose = shutil.which("docker-compose")
    if not compose:
        pytest.fail("docker-compose not found: Debian's docker-compose is in tools/apt-packages.txt")
    # Nothing inherited that the block should set itself.
    required = re.findall(r"\$\{(\w+):\?", cs.COMPOSE_FILE.read_text())
    env = {name: value for name, value in os.environ.items() if name not in required}
    script = f"{setup}\n{compose} -f {cs.COMPOSE_FILE} -p meshed config --quiet\n"
    return subprocess.run(
        ["bash", "-euc", script], env=env, cwd=cs.REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_readme_block_exports_what_compose_requires():
    block = readme_compose_block()
    setup = block[: block.index('eval "$(python3 tools/local_images.py)"')]
    result = compose_config(setup)
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_the_exports_compose_refuses():
    result = compose_config("true")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, result.stderr[-2000:]
