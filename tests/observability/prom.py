"""Start a real Prometheus (Debian's `prometheus` binary) that scrapes the services, for tests.

    with start_prometheus(tmp_path, user_port=8001, order_port=8002) as prom:
        prom.wait_for_targets_up(["user-svc", "order-svc"])
        prom.query('up')            # -> the "data" of /api/v1/query

The config comes from prometheus/render_config.py (the same one `prometheus/prometheus.yml` is
generated from), with a short scrape interval so rate() has points to work with after a few seconds.
Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testsupport.services import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RENDER_CONFIG = REPO_ROOT / "prometheus" / "render_config.py"


def load_render_config():
    """prometheus/render_config.py as a module (prometheus/ is no Python package)."""
    spec = importlib.util.spec_from_file_location("meshed_prometheus_render_config", RENDER_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if not path:
        raise RuntimeError("`prometheus` binary not found: apt-get install prometheus (tools/apt-packages.txt)")
    return path


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path, config_path: Path):
        self.process = process
        self.url = url
        self.log_path = log_path
        self.config_path = config_path

    # --- HTTP API ---------------------------------------------------------------------------------
    def _get(self, path: str, params: dict | None = None, timeout: float = 10) -> dict:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422 carry the API's error JSON
            body = exc.read().decode(errors="replace")
            try:
                return json.loads(body)
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {exc.code}: {body[:500]}") from exc

    def query_response(self, expr: str, time_: float | None = None) -> dict:
        """The full JSON answer of /api/v1/query ({"status": ..., "data": ...} or an error)."""
        params = {"query": expr}
        if time_ is not None:
            params["time"] = f"{time_:.3f}"
        return self._get("/api/v1/query", params)

    def queries_without_data(self, queries: dict[str, str], timeout: float) -> dict[str, str]:
        """Ask each of ``queries`` (title -> PromQL) again every second until it returns data, for at
        most ``timeout`` seconds; the ones that never did. Every answer must be a success."""
        pending = dict(queries)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for title, expr in list(pending.items()):
                answer = self.query_response(expr)
                assert answer.get("status") == "success", f"{title}: {expr}\n{answer}"
                if answer["data"]["result"]:
                    del pending[title]
            if pending:
                time.sleep(1)
        return pending

    def query(self, expr: str) -> dict:
        """The "data" of a successful instant query; raises PrometheusError otherwise."""
        answer = self.query_response(expr)
        if answer.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def rule_groups(self) -> list[dict]:
        return self._get("/api/v1/rules")["data"]["groups"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets", {"state": "active"})["data"]["activeTargets"]

    # --- waiting ----------------------------------------------------------------------------------
    def wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def wait_for_targets_up(self, jobs, timeout: float = 30) -> None:
        """Until every target of each job reports health "up"."""
        jobs = set(jobs)
        deadline = time.monotonic() + timeout
        targets = []
        while time.monotonic() < deadline:
            targets = self.targets()
            by_job = {}
            for target in targets:
                by_job.setdefault(target["labels"].get("job"), []).append(target["health"])
            if all(by_job.get(job) and all(h == "up" for h in by_job[job]) for job in jobs):
                return
            time.sleep(0.25)
        summary = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise PrometheusError(f"targets of {sorted(jobs)} not all up after {timeout}s: {summary}")

    # --- lifecycle --------------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def start_prometheus(
    workdir,
    user_port: int,
    order_port: int,
    host: str = "127.0.0.1",
    scrape_interval: str = "1s",
    port: int | None = None,
    ready_timeout: float = 30,
    config_text: str | None = None,
):
    """Run Prometheus on a free loopback port with a config for the given service ports (or
    ``config_text`` as it is); data, config and log live under ``workdir``. Stops it on exit."""
    workdir = Path(workdir)
    if config_text is None:
        config_path = load_render_config().write_config(
            workdir, user_port=user_port, order_port=order_port, host=host, scrape_interval=scrape_interval
        )
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(config_text)
    binary = prometheus_binary()
    attempts = 1 if port else 3
    for attempt in range(attempts):
        listen_port = port or free_port()
        log_path = workdir / f"prometheus-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{listen_port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = PrometheusServer(process, f"http://127.0.0.1:{listen_port}", log_path, config_path)
        try:
            server.wait_until_ready(ready_timeout)
        except PrometheusError:
            server.stop()
            if attempt + 1 == attempts or "address already in use" not in server.log():
                raise
            continue
        break
    try:
        yield server
    finally:
        server.stop()
