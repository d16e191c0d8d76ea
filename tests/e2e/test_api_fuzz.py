"""Property-based fuzzing of both services from their own OpenAPI schemas (schemathesis), against real
gunicorn processes on loopback: whatever a client sends, the answer is never a 5xx, every answer is
JSON, and every 2xx body matches the schema.

Schemathesis runs as its CLI in a subprocess (``python -m schemathesis.cli run``), with every phase:
coverage (systematic boundary and schema-violating values for every parameter and body field),
fuzzing and stateful (chains of calls through the inferred links), in ``--mode all`` so half of what
is generated violates the schema on purpose (malformed bodies, wrong types, out-of-range values,
unknown query parameters). The run is bounded: ``MAX_EXAMPLES`` per operation and phase, one fixed
seed, one worker, no example database; it only ever talks to the services' 127.0.0.1 ports.

The test then reads schemathesis' NDJSON event log and checks every recorded exchange itself (loopback
only, no 5xx, a JSON body, negative cases really sent), and finally the services' own log lines: no
error-level line, no 5xx in any access or request line.
"""

import base64
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests

from testsupport.observability import access_lines

MAX_EXAMPLES = 100
SEED = 20261126
RUN_TIMEOUT = 120  # seconds; a normal run takes 5-15 s per service on the 2-core machine

# Checks that must hold for every response. Each one runs on every case schemathesis sends.
CHECKS = [
    "not_a_server_error",  # no 5xx, ever: the point of the exercise
    "status_code_conformance",  # every status answered is documented in the schema
    "content_type_conformance",  # a documented response comes with a documented media type
    "response_schema_conformance",  # a documented (2xx) body matches its schema
    "response_headers_conformance",  # documented response headers are present and valid
    "unsupported_method",  # PUT/DELETE/PATCH/TRACE... on a route get 405 with an Allow header
    "allow_header_conformance",  # ... and that Allow header lists exactly the documented methods
    "missing_required_header",  # (no required headers today; kept for when there are)
    "use_after_free",  # stateful: nothing deleted is still served (no DELETE today)
    "ensure_resource_availability",  # stateful: what a POST created can be read back by its id
]
# Checks deliberately left out, with the reason. They hold the schema to account rather than the
# service's error handling; each found real schema gaps, listed in the report that came with this test.
EXCLUDED_CHECKS = {
    # DRF is lenient where the schema is strict: an invalid page_size falls back to the default page
    # size (GET /users?page_size=null -> 200), and a JSON number is accepted for a decimal string
    # (POST /orders with "unit_price": 0 -> 201). Accepting them is not an error-handling bug.
    "negative_data_rejection",
    # The schemas are looser than the serializers: no minItems/maxItems on items (items: [] -> 400),
    # a price pattern that allows "-" while the serializer wants >= 0, a name of only whitespace or
    # control characters (minLength 1 before trimming) -> 400. Schema-valid but refused.
    "positive_data_acceptance",
    # No authentication exists, so these have nothing to check.
    "ignored_auth",
    "object_level_authorization",
}


def schemathesis_env():
    """The environment of the CLI: no proxy (requests would honour one, even for loopback), no hooks
    or config picked up from the caller's environment, no colour codes in the output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        and not k.upper().startswith("SCHEMATHESIS_")
    }
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "NO_COLOR": "1"})
    return env


def run_schemathesis(service, tmp_path):
    """Fuzz one service; return the CLI's exit code and output, its JSON report and its NDJSON events."""
    work = tmp_path / f"fuzz-{service.name}"
    work.mkdir()
    config = work / "schemathesis.toml"
    config.write_text("# empty on purpose: every setting is on the command line\n")
    json_report, ndjson_report = work / "report.json", work / "events.ndjson"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{service.url}/schema/",
        "--url",
        service.url,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--mode",
        "all",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--continue-on-failure",
        "--max-redirects",
        "0",  # nothing is ever redirected (README), and nothing leaves 127.0.0.1
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "json,ndjson",
        "--report-json-path",
        str(json_report),
        "--report-ndjson-path",
        str(ndjson_report),
    ]
    completed = subprocess.run(
        command, cwd=work, env=schemathesis_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    output = completed.stdout + completed.stderr
    assert json_report.exists() and ndjson_report.exists(), f"schemathesis wrote no report:\n{output[-6000:]}"
    report = json.loads(json_report.read_text())
    events = [json.loads(line) for line in ndjson_report.read_text().splitlines() if line.strip()]
    return completed.returncode, output, report, events


def failures_section(output: str) -> str:
    """The CLI's FAILURES section: each failure with its response and a curl line to reproduce it."""
    start = output.find(" FAILURES ")
    return output[output.rfind("\n", 0, start) + 1 :] if start >= 0 else output[-8000:]


def exchanges(events):
    """Every case schemathesis sent with what came back: (operation, case meta, request, response)."""
    for event in events:
        finished = event.get("ScenarioFinished")
        if not finished or not finished.get("recorder"):
            continue
        recorder = finished["recorder"]
        cases = recorder.get("cases") or {}
        for case_id, interaction in (recorder.get("interactions") or {}).items():
            case = (cases.get(case_id) or {}).get("value") or {}
            operation = f"{case.get('method', '?')} {case.get('path', recorder['label'])}"
            yield operation, case.get("meta") or {}, interaction["request"], interaction.get("response")


def body_bytes(response) -> bytes:
    content = response.get("content") or {}
    if "$base64" in content:
        return base64.b64decode(content["$base64"])
    return (content.get("string") or "").encode()


def header(response, name) -> str:
    for key, values in (response.get("headers") or {}).items():
        if key.lower() == name.lower() and values:
            return values[0]
    return ""


def check_exchanges(service, events, operations):
    """Every recorded exchange went to this service on 127.0.0.1, got no 5xx and a JSON body; the run
    covered every operation and sent schema-violating cases, malformed bodies included."""
    statuses, negative, negative_bodies = Counter(), Counter(), Counter()
    problems = []
    target = urlsplit(service.url)
    for operation, meta, request, response in exchanges(events):
        url = urlsplit(request["uri"])
        if (url.hostname, url.port) != (target.hostname, target.port):
            problems.append(f"{operation}: request left the service under test: {request['uri']}")
        if response is None:
            problems.append(f"{operation}: no response (connection error or timeout): {request['uri']}")
            continue
        status = response["status_code"]
        statuses[(operation, status)] += 1
        if (meta.get("generation") or {}).get("mode") == "negative":
            negative[operation] += 1
            if ((meta.get("components") or {}).get("body") or {}).get("mode") == "negative":
                negative_bodies[operation] += 1
        body = body_bytes(response)
        if status >= 500:
            problems.append(f"{operation} -> {status}: {request['method']} {request['uri']}\n  {body[:500]!r}")
            continue
        content_type = header(response, "content-type")
        if request["method"] == "HEAD" and not body:
            continue
        try:
            json.loads(body)
            is_json = content_type.split(";")[0].strip() == "application/json"
        except ValueError:
            is_json = False
        if not is_json:
            problems.append(
                f"{operation} -> {status} {content_type!r}, not JSON: {request['method']} "
                f"{request['uri'][:300]}\n  {body[:300]!r}"
            )
    assert not problems, f"{service.name}: {len(problems)} bad exchanges:\n" + "\n".join(problems[:20])

    seen_operations = {operation for operation, _ in statuses}
    assert operations <= seen_operations, f"{service.name}: not exercised: {operations - seen_operations}"
    for operation in operations:
        assert negative[operation] >= 5, f"{service.name}: only {negative[operation]} negative cases for {operation}"
    posts = {operation for operation in operations if operation.startswith("POST ")}
    for operation in posts:
        assert negative_bodies[operation] >= 10, f"{service.name}: few malformed bodies for {operation}"
        assert statuses[(operation, 400)] > 0, f"{service.name}: no malformed body was answered 400 ({operation})"
        assert statuses[(operation, 201)] > 0, f"{service.name}: no valid body was accepted ({operation})"
    return statuses


def check_logs(service):
    """The service's own account of the run: no error-level line, no 5xx in any request line."""
    service.stop()  # SIGTERM, graceful: every line is written before it is read
    records = service.log_records()
    bad = [
        record
        for record in records
        if record.get("level") in {"error", "critical"}
        or record.get("event") in {"unhandled_exception", "request_failed"}
        or "exception" in record
        or (record in access_lines([record]) and int(record.get("status", 0)) >= 500)
    ]
    assert not bad, f"{service.name} logged errors:\n" + "\n".join(json.dumps(r)[:1500] for r in bad[:10])
    return records


def by_status(statuses: Counter) -> dict:
    totals = Counter()
    for (_, status), count in statuses.items():
        totals[status] += count
    return dict(sorted(totals.items()))


def fuzz(service, tmp_path):
    code, output, report, events = run_schemathesis(service, tmp_path)
    assert code == 0 and not report["failures"] and not report["errors"], (
        f"schemathesis found problems in {service.name} (exit {code}):\n{failures_section(output)}"
    )
    assert report["stop_reason"] == "completed" and report["complete"], report
    assert report["operations"]["tested"] == report["operations"]["total"] >= 3, report["operations"]
    for phase in ("coverage", "fuzzing", "stateful"):
        assert report["phases"][phase]["status"] == "success", (phase, report["phases"][phase])
    return report, events


def fuzz_and_check(service, tmp_path, operations: set[str]) -> None:
    """Fuzz ``service`` (all of ``operations`` tested), check every exchange and its log: an access
    line for each request sent, at least."""
    report, events = fuzz(service, tmp_path)
    statuses = check_exchanges(service, events, operations)
    records = check_logs(service)
    assert len(access_lines(records)) >= sum(statuses.values()), "fewer access lines than requests sent"
    print(
        f"\n{service.name}: {report['test_cases']['generated']} cases in {report['running_time']:.1f}s;",
        by_status(statuses),
    )


def test_user_service_answers_anything_with_json_and_never_a_5xx(user_service, tmp_path):
    fuzz_and_check(user_service, tmp_path, {"GET /users", "POST /users", "GET /users/{id}"})


def test_order_service_answers_anything_with_json_and_never_a_5xx(user_service, order_service, tmp_path):
    # One real user, so that schema-valid orders for user 1 are placed (and read back), not only 404.
    created = requests.post(f"{user_service.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=10)
    assert created.status_code == 201 and created.json()["id"] == 1, created.text
    fuzz_and_check(order_service, tmp_path, {"GET /orders", "POST /orders", "GET /orders/{id}"})
    check_logs(user_service)  # every user check the order service made got a clean answer too


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (f"GET /users/?page={'9' * 5000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),  # request line > 4094 bytes
        ("GET /users/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n", 400),  # NUL in a header
        (f"GET /users/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 9000}\r\n\r\n", 431),  # header > 8190 bytes
    ],
)
def test_requests_gunicorn_refuses_itself_get_a_json_answer(user_service, request_head, status):
    """Gunicorn answers these before Django sees them; svc_common.server.gunicorn_errors makes them JSON."""
    request_line = request_head
    with socket.create_connection(("127.0.0.1", user_service.port), timeout=5) as sock:
        sock.sendall(request_line.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert b"content-type: application/json" in head.lower(), head
    json.loads(body)
