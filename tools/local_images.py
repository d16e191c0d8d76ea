#!/usr/bin/env python3
"""Build every image docker-compose.yml runs, from Debian's packages, on a machine that cannot pull.

No container registry is reachable from here, so neither the services' base image
(python:3.11.14-slim-bookworm) nor nginx, Prometheus or PostgreSQL can be pulled. This makes a
base image from Debian once (mmdebstrap + docker import: python3 and the machine's CA certificates,
without which pip cannot reach the package index from inside a build) and builds on it:

- user-svc and order-svc from their own Dockerfiles, with only BASE_IMAGE overridden;
- nginx, prometheus and postgres from Debian's packages (deploy/local-images/).

The base image is tagged with a digest of its inputs and made again only when one changes. The other
builds go through Docker's layer cache. Needs root (mmdebstrap, docker), Debian's docker.io,
mmdebstrap, and the classic builder (BuildKit fetches its frontend from a registry).

    eval "$(python3 tools/local_images.py)"     # prints: export USER_SVC_IMAGE=... (one per image)
    docker-compose -p meshed up -d --no-build --scale user-svc=3 --scale order-svc=2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_IMAGES = ROOT / "deploy" / "local-images"

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
CA_DIR = Path("/usr/local/share/ca-certificates")
# The machine's own apt sources: the image's apt reaches whatever mirror the machine does.
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
BASE_REPOSITORY = "meshed-local/debian-python"
# Every documentation and locale file left out: nothing in a container reads them.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
BASE_RECIPE_VERSION = "1"  # bump when the recipe below changes in a way the digest does not see

VERSION = "0.1.0"


@dataclass(frozen=True)
class Image:
    env: str  # the variable docker-compose.yml reads this image's name from
    tag: str
    context: Path
    dockerfile: Path


IMAGES = (
    Image("USER_SVC_IMAGE", f"meshed-local/user-svc:{VERSION}", ROOT, ROOT / "user_svc" / "Dockerfile"),
    Image("ORDER_SVC_IMAGE", f"meshed-local/order-svc:{VERSION}", ROOT, ROOT / "order_svc" / "Dockerfile"),
    *(
        Image(
            f"{name.upper()}_IMAGE",
            f"meshed-local/{name}:{SUITE}",
            LOCAL_IMAGES / name,
            LOCAL_IMAGES / name / "Dockerfile",
        )
        for name in ("nginx", "prometheus", "postgres")
    ),
)


@dataclass
class Built:
    image: Image | None
    tag: str
    seconds: float
    size_bytes: int
    cached: bool = False

    def line(self) -> str:
        how = "reused" if self.cached else f"{self.seconds:.0f} s"
        return f"{self.tag}: {self.size_bytes / 1e6:.0f} MB ({how})"


def docker_cli() -> str:
    """Debian's client (/usr/bin/docker) talks Debian's daemon's API version; a newer static client
    elsewhere on PATH may be first. $DOCKER overrides."""
    override = os.environ.get("DOCKER")
    if override:
        return override
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        raise SystemExit("docker not found: install Debian's docker.io (tools/apt-packages.txt)")
    return found


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return result


def image_size(tag: str) -> int | None:
    result = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True
    )
    return int(result.stdout.strip()) if result.returncode == 0 else None


def base_inputs_digest() -> str:
    digest = hashlib.sha256()
    for part in (BASE_RECIPE_VERSION, SUITE, *BASE_PACKAGES, *DPKG_EXCLUDES):
        digest.update(part.encode() + b"\0")
    for path in (APT_SOURCES, *sorted(CA_DIR.glob("*.crt"))):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_base_image() -> Built:
    tag = f"{BASE_REPOSITORY}:{base_inputs_digest()}"
    size = image_size(tag)
    if size is not None:
        return Built(None, tag, 0.0, size, cached=True)
    for tool in ("mmdebstrap",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: install it (tools/apt-packages.txt)")
    certs = sorted(CA_DIR.glob("*.crt"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshed-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        copy_certs = (
            'mkdir -p "$1/usr/local/share/ca-certificates" && '
            + " && ".join(f'cp {c} "$1/usr/local/share/ca-certificates/"' for c in certs)
            + ' && chroot "$1" update-ca-certificates >/dev/null'
        )
        _run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
                f"--customize-hook={copy_certs}",
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
                SUITE,
                str(tarball),
                str(APT_SOURCES),
            ]
        )
        _run(
            [
                docker_cli(),
                "import",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                str(tarball),
                tag,
            ]
        )
    return Built(None, tag, time.monotonic() - started, image_size(tag) or 0)


def build_image(image: Image, base: str) -> Built:
    started = time.monotonic()
    _run(
        [
            docker_cli(),
            "build",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-f",
            str(image.dockerfile),
            "-t",
            image.tag,
            str(image.context),
        ],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return Built(image, image.tag, time.monotonic() - started, image_size(image.tag) or 0)


def build_all(log=lambda line: None) -> tuple[Built, list[Built]]:
    """The base image, then every image; the two services in one lane (order-svc reuses user-svc's
    cached builder stage), the Debian-package images in parallel with them."""
    base = build_base_image()
    log(f"base {base.line()}")
    apps = [i for i in IMAGES if i.context == ROOT]
    others = [i for i in IMAGES if i.context != ROOT]

    def app_lane() -> list[Built]:
        return [build_image(i, base.tag) for i in apps]

    with ThreadPoolExecutor(max_workers=3) as pool:
        lane = pool.submit(app_lane)
        rest = list(pool.map(lambda i: build_image(i, base.tag), others))
        built = lane.result() + rest
    for b in built:
        log(b.line())
    return base, built


def compose_env(built: list[Built]) -> dict[str, str]:
    return {b.image.env: b.tag for b in built if b.image}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    _, built = build_all(log=lambda line: print(line, file=sys.stderr))
    for name, tag in compose_env(built).items():
        print(f"export {name}={tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
