"""svc_common.server.gunicorn_worker.FairGeventWorker against gunicorn's stock GeventWorker: the same
client conversations, byte for byte (but the Date header), on the same service. What differs by
design (the order in which ready keep-alive connections are served, and how a stop drains) is tested
in tests/e2e/test_graceful_stop.py and measured by bench/."""

import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

STOCK = {"GUNICORN_CMD_ARGS": "--worker-class gevent"}  # gunicorn's own gevent worker, the rest as shipped

USER = b'{"name": "Ada", "email": "ada@example.com"}'

CONVERSATIONS = {
    "keep-alive: create, read, miss, list": [
        b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(USER)}\r\n\r\n".encode()
        + USER,
        b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /users/999 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /users?page=7 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
    "pipelined": [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n"
    ],
    "HTTP/1.0, closed after the answer": [b"GET /users/1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"],
    "chunked body": [
        b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'Connection: close\r\n\r\n5\r\n{"nam\r\n28\r\ne": "Bo", "email": "bo@example.com"}    \r\n0\r\n\r\n'
    ],
    "malformed request line": [b"NOT HTTP AT ALL\r\n\r\n"],
    "header too large": [b"GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"],
    "unknown host": [b"GET /users HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"],
}


def converse(port: int, messages: list[bytes]) -> bytes:
    """Send each message on one connection, reading what comes back after each, then everything until
    the server closes; the Date header is taken out (it says when)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        for message in messages:
            client.sendall(message)
            received += read_answers(client, expected=message.count(b" HTTP/1."))
        client.settimeout(3)
        try:
            while chunk := client.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return re.sub(rb"\r\nDate: [^\r]*", b"", received)


def read_answers(client: socket.socket, expected: int) -> bytes:
    """Read until ``expected`` complete answers (head and Content-Length body) have arrived, or the end."""
    data = b""
    while True:
        answers, rest = 0, data
        while (end := rest.find(b"\r\n\r\n")) >= 0:
            length = re.search(rb"\r\nContent-Length: (\d+)", rest[:end], re.I)
            body_end = end + 4 + (int(length.group(1)) if length else 0)
            if len(rest) < body_end:
                break
            answers, rest = answers + 1, rest[body_end:]
        if answers >= expected:
            return data
        chunk = client.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    """The conversations, one after another, with a service under each worker (both start empty)."""
    from testsupport.services import start_service

    seen = {}
    for worker, env in (("fair", {}), ("stock", STOCK)):
        service = start_service("user-svc", tmp_path_factory.mktemp(worker), env=env)
        try:
            for name, messages in CONVERSATIONS.items():
                seen[worker, name] = converse(service.port, messages)
        finally:
            service.stop()
        seen[worker, "worker class"] = service_worker_class(service)
    return seen


def service_worker_class(service) -> str:
    log = service.log_path.read_text()
    return re.search(r"Using worker: (\S+?)\"", log).group(1)


def test_each_service_ran_the_worker_it_was_given(transcripts):
    assert transcripts["fair", "worker class"] == "svc_common.server.gunicorn_worker.FairGeventWorker"
    assert transcripts["stock", "worker class"] == "gevent"


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_a_client_sees_what_gunicorns_gevent_worker_would_send(transcripts, conversation):
    fair, stock = transcripts["fair", conversation], transcripts["stock", conversation]
    assert fair == stock
    assert fair.startswith(b"HTTP/1."), fair[:200]


@pytest.mark.parametrize("worker_env", [{}, STOCK], ids=["fair", "stock"])
def test_concurrent_keep_alive_clients_all_get_their_answers(start, worker_env):
    """16 keep-alive connections at once, 25 requests each: every answer complete and right."""
    service = start("user-svc", **worker_env)
    created = converse(service.port, CONVERSATIONS["keep-alive: create, read, miss, list"][:1])
    assert created.startswith(b"HTTP/1.1 201"), created[:200]
    barrier = threading.Barrier(16)

    def client(_):
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as connection:
            barrier.wait()
            answers = []
            for _ in range(25):
                connection.sendall(b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answers.append(re.sub(rb"\r\nDate: [^\r]*", b"", read_answers(connection, expected=1)))
            return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [answer for answers in pool.map(client, range(16)) for answer in answers]
    assert len(answers) == 400 and len(set(answers)) == 1, set(answers)
    assert answers[0].startswith(b"HTTP/1.1 200") and answers[0].endswith(b'"email":"ada@example.com"}')
