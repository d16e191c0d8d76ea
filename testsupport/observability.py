"""Read what a running service reports about itself: its JSON log lines and its /metrics page."""

from contextlib import contextmanager

import requests
from prometheus_client.parser import text_string_to_metric_families

from testsupport.services import RunningService, poll_until, start_service


@contextmanager
def started(log_dir, *specs):
    """Start services in order, ``(name, env)`` each; stop them all (last first) on the way out."""
    running = []
    try:
        for name, env in specs:
            running.append(start_service(name, log_dir, env={k: str(v) for k, v in env.items()}))
        yield running
    finally:
        for service in reversed(running):
            service.stop()


def wait_for_records(service: RunningService, predicate, timeout: float = 5.0) -> list[dict]:
    """The service's parsed log lines once ``predicate(records)`` holds. Gunicorn writes a request's
    access line after the response has gone out, so a test can read the log before it is there."""
    return poll_until(
        service.log_records,
        predicate,
        timeout,
        lambda _: f"{service.name}: log never matched within {timeout}s:\n{service.log_text()[-4000:]}",
    )


def records_for(records: list[dict], request_id: str) -> list[dict]:
    return [record for record in records if record.get("request_id") == request_id]


def assert_request_logged(services, request_id: str, trace_id: str) -> None:
    """Each of ``services`` logged the request ``request_id`` in exactly one access line
    (``request_finished``), and every line of that request is under ``trace_id``."""
    for service in services:
        records = wait_for_records(service, lambda rs: access_lines(records_for(rs, request_id)))
        lines = records_for(records, request_id)
        assert len(access_lines(lines)) == 1, lines
        assert {r.get("trace_id") for r in lines} == {trace_id}, lines


def access_lines(records: list[dict]) -> list[dict]:
    """The one line per request: Django's ``request_finished``, or ``request_refused`` for a request
    gunicorn answered itself."""
    return [record for record in records if record.get("event") in {"request_finished", "request_refused"}]


Samples = dict[tuple[str, frozenset], float]


def scrape(base_url: str) -> Samples:
    """Every sample of the service's /metrics page: {(sample name, frozenset of label items): value}."""
    response = requests.get(f"{base_url}/metrics", timeout=5)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset({k: str(v) for k, v in labels.items()}.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
