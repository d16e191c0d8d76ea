"""Nothing a client sends gets a 500: odd bodies, encodings, numbers, ids and headers each get a 4xx
with a JSON body that says what is wrong, through real gunicorn processes, and the service stays up."""

import socket
from urllib.parse import urlsplit

import pytest
import requests

DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
ITEM = b'{"sku": "PEN", "quantity": 1, "unit_price": "0.10"}'

# (service, method, path, body, extra headers, expected status, a fragment the JSON answer must contain)
CASES = {
    # Nested far below the 1 MiB limit: the JSON decoder's RecursionError used to be a 500.
    "deep array": ("user", "POST", "/users", DEEP_ARRAY, {}, 400, "nested too deeply"),
    "deep object": ("order", "POST", "/orders", DEEP_OBJECT, {}, 400, "nested too deeply"),
    "deep inside a field": (
        "user",
        "POST",
        "/users",
        b'{"name": ' + DEEP_ARRAY + b', "email": "a@b.io"}',
        {},
        400,
        "nested too deeply",
    ),
    "deep inside the items": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": ' + DEEP_ARRAY + b"}",
        {},
        400,
        "nested too deeply",
    ),
    # Numbers.
    "integer of 5000 digits": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": ' + b"9" * 5000 + b', "items": []}',
        {},
        400,
        "JSON parse error",
    ),
    "user_id past 64 bits": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 9223372036854775808, "items": [' + ITEM + b"]}",
        {},
        400,
        "user_id",
    ),
    "NaN": ("order", "POST", "/orders", b'{"user_id": NaN, "items": []}', {}, 400, "NaN"),
    "Infinity price": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [{"sku": "A", "quantity": 1, "unit_price": Infinity}]}',
        {},
        400,
        "Infinity",
    ),
    "price with a huge exponent": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [{"sku": "A", "quantity": 1, "unit_price": "1e999999999"}]}',
        {},
        400,
        "unit_price",
    ),
    "total sNaN": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [' + ITEM + b'], "total": "sNaN"}',
        {},
        400,
        "total",
    ),
    "quantity as a float": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [{"sku": "A", "quantity": 1e300, "unit_price": "1"}]}',
        {},
        400,
        "quantity",
    ),
    # Encodings.
    "invalid UTF-8": ("user", "POST", "/users", b'{"name": "\xff\xfe", "email": "a@b.io"}', {}, 400, "utf-8"),
    "UTF-8 byte order mark": (
        "user",
        "POST",
        "/users",
        b'\xef\xbb\xbf{"name": "A", "email": "a@b.io"}',
        {},
        400,
        "BOM",
    ),
    "lone surrogate": ("user", "POST", "/users", b'{"name": "\\ud800", "email": "a@b.io"}', {}, 400, "Surrogate"),
    "NUL in a string": ("user", "POST", "/users", b'{"name": "a\\u0000b", "email": "a@b.io"}', {}, 400, "Null"),
    "UTF-8 body declared UTF-16": (
        "user",
        "POST",
        "/users",
        b'{"name": "A", "email": "x@b.io"}',
        {"Content-Type": "application/json; charset=utf-16"},
        400,
        "JSON parse error",
    ),
    "form body": (
        "user",
        "POST",
        "/users",
        b"name=A&email=a@b.io",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "Unsupported media type",
    ),
    # Ids, query strings, methods and headers.
    "id of 4000 digits": ("user", "GET", "/users/" + "9" * 4000, None, {}, 404, "not found"),
    "order id past 64 bits": ("order", "GET", "/orders/9223372036854775808", None, {}, 404, "not found"),
    "page of 40 digits": ("user", "GET", "/users?page=" + "9" * 40, None, {}, 404, "Invalid page"),
    "user_id filter of 4000 digits": ("order", "GET", "/orders?user_id=" + "9" * 4000, None, {}, 400, "user_id"),
    "DELETE": ("user", "DELETE", "/users/1", None, {}, 405, "not allowed"),
    "Accept nothing the API renders": ("user", "GET", "/users", None, {"Accept": "text/csv"}, 406, "Accept"),
    "Accept with a non-numeric indent": (
        "user",
        "GET",
        "/users/0",
        None,
        {"Accept": "application/json; indent=abc"},
        404,
        "not found",
    ),
    "Content-Length not a number": ("user", "POST", "/users", None, {"Content-Length": "ten"}, 400, "Content-Length"),
    "Host not in ALLOWED_HOSTS": ("user", "GET", "/users/1", None, {"Host": "evil.example"}, 400, "ALLOWED_HOSTS"),
    "Host not in ALLOWED_HOSTS, on a POST": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [' + ITEM + b"]}",
        {"Host": "evil.example:8002"},
        400,
        "ALLOWED_HOSTS",
    ),
    "non-ASCII Idempotency-Key": (
        "order",
        "POST",
        "/orders",
        b'{"user_id": 1, "items": [' + ITEM + b"]}",
        {"Idempotency-Key": "caf\xe9"},
        400,
        "Idempotency-Key",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_gets_a_json_4xx_and_the_service_stays_up(case, running_services):
    service, method, path, body, headers, status, fragment = CASES[case]
    base = running_services.user_url if service == "user" else running_services.order_url
    response = raw_request(base, method, path, body, {"Content-Type": "application/json", **headers})
    assert response["status"] == status, response
    assert response["content_type"].startswith("application/json"), response
    assert fragment.lower() in response["body"].decode("utf-8", "replace").lower(), response
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200


def raw_request(base, method, path, body, headers):
    """One request on a fresh socket, bytes exactly as given (requests would re-encode a header or
    refuse a value), and the status line, Content-Type and body of the answer."""
    url = urlsplit(base)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {headers.get('Host', url.netloc)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name != "Host"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + (body or b""))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    answer_headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return {
        "status": int(status_line.split()[1]),
        "content_type": answer_headers.get("content-type", ""),
        "body": payload,
    }
