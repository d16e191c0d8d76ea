"""The one place the order service calls the user service.

A ``requests.Session`` keeps a pool of keep-alive connections to the user service; each attempt has
connect and read timeouts clipped to what is left of the overall deadline; tenacity retries only what
a retry can fix (connection errors, timeouts, 502/503/504), never a 4xx, and re-raises into
``UserServiceUnavailable``, which views turn into 503. Each attempt carries the trace on to the user
service: with spans recorded, as a CLIENT span from opentelemetry-instrumentation-requests, which adds
its own trace headers; without, with the incoming context's headers
(``svc_common.observability.tracing.carry_trace_context``).
"""

import logging
import threading
import time
from functools import cache

import requests
import structlog
from django.conf import settings
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from orders.metrics import USER_CHECK_DURATION, USER_CHECK_RETRIES, USER_CHECKS
from svc_common.observability.tracing import carry_trace_context

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class UserServiceUnavailable(Exception):
    """The user service could not say whether the user exists (down, too slow, or erroring)."""


class RetryableStatus(Exception):
    def __init__(self, status_code: int):
        super().__init__(f"user service answered {status_code}")
        self.status_code = status_code


class ConnectionWaitTimeout(Exception):
    """Every pooled connection stayed busy past the connect timeout."""


class DeadlineExhausted(Exception):
    """Nothing was left of the check's deadline for another attempt."""


# What went wrong on the wire: refused, reset, dropped or timed-out connections (requests' own
# exceptions for them), or no connection free in time.
TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionWaitTimeout,
    DeadlineExhausted,
)

_log_retry = before_sleep_log(logger, logging.WARNING)


def _before_retry(retry_state: RetryCallState) -> None:
    USER_CHECK_RETRIES.inc()
    _log_retry(retry_state)


def _retrying(*, attempts: int, deadline: float) -> Retrying:
    """Retry only what a retry can fix (connection errors, timeouts, 502/503/504), with jittered
    exponential backoff, at most ``attempts`` tries and never past ``deadline`` seconds; the last
    error is re-raised as it was."""
    return Retrying(
        retry=retry_if_exception_type((*TRANSPORT_ERRORS, RetryableStatus)),
        stop=stop_after_attempt(attempts) | stop_before_delay(deadline),
        wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
        before_sleep=_before_retry,
        reraise=True,
    )


def _is_json(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json"


class UserClient:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        attempts: int,
        deadline: float,
        pool_size: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.session = requests.Session()
        # The user service is called directly (in the mesh, through the sidecar, which intercepts the
        # connection by itself): the environment's proxy settings (HTTP_PROXY, ALL_PROXY, ...) are meant
        # for outbound traffic and must not take this call, and neither should a .netrc's credentials or
        # a CA bundle named in REQUESTS_CA_BUNDLE, which trust_env would also apply.
        self.session.trust_env = False
        # Each attempt sends a prepared request through Session.send (requests' documented "Prepared
        # Requests" flow): Session.request would merge the session's settings (headers, params, auth,
        # hooks, cookies, proxies, verify, cert) into every call, and this session sets none of its own.
        # Every check is the same GET but for the user's id and the forwarded x-request-id, so the
        # request is prepared once, here, with the session's default headers (User-Agent,
        # Accept-Encoding, Connection), and each attempt sends a copy with the id appended to the
        # prepared URL: validating and quoting the base URL again per call would change nothing.
        # (That flow leaves the environment's proxies, .netrc and CA bundle out by itself; trust_env=False
        # says so for anything that still calls through Session.request.)
        self.users_request = requests.Request(
            "GET", f"{self.base_url}/users/", headers={**self.session.headers, "Accept": "application/json"}
        ).prepare()
        # At most ``pool_size`` connections, and past that a call waits for one to be free
        # (pool_block=True). Opening and discarding one per extra call instead (block=False) resolved
        # the host each time in gevent's thread pool, and under a burst of 256 requests some calls
        # waited a second for that (bench, 256 connections: POST p99 0.6-1.5 s on p50 0.22 s).
        # max_retries=0: tenacity decides about retries, urllib3 makes none of its own.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, pool_block=True, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # requests waits for a pooled connection without a time limit (its adapter passes urllib3 no
        # pool timeout), so the calls in flight are counted here instead: a call waits for one of the
        # ``pool_size`` places at most its connect timeout, and the pool itself then never has to wait.
        self.in_flight = threading.BoundedSemaphore(pool_size)
        self.pool_size = pool_size
        # One per client: tenacity keeps each call's attempt state per thread, so threads can share it.
        self.retrying = _retrying(attempts=attempts, deadline=deadline)

    def _fetch_user(self, user_id: int, request_id: str | None, deadline_at: float) -> requests.Response:
        """One attempt, its timeouts clipped to what is left of the check's deadline; the body is read
        whole (no streaming), so the connection is back in the pool when this returns."""
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise DeadlineExhausted("user check deadline exhausted before the attempt")
        connect = min(self.connect_timeout, remaining)
        # Waiting for a pooled connection counts as connecting.
        if not self.in_flight.acquire(timeout=connect):
            raise ConnectionWaitTimeout(
                f"Pool is empty: all {self.pool_size} connections to the user service stayed busy for {connect:.3f} s"
            )
        try:
            response = self.session.send(
                self.user_request(user_id, request_id),
                timeout=(connect, min(self.read_timeout, remaining)),
                allow_redirects=False,
            )
        finally:
            self.in_flight.release()
        if response.status_code in RETRYABLE_STATUSES:
            raise RetryableStatus(response.status_code)
        return response

    @classmethod
    def from_settings(cls) -> "UserClient":
        return cls(
            settings.USER_SVC_URL,
            connect_timeout=settings.USER_SVC_CONNECT_TIMEOUT,
            read_timeout=settings.USER_SVC_READ_TIMEOUT,
            attempts=settings.USER_SVC_ATTEMPTS,
            deadline=settings.USER_SVC_DEADLINE,
            pool_size=settings.USER_SVC_POOL_SIZE,
        )

    def user_exists(self, user_id: int) -> bool:
        """True or False from the user service, or UserServiceUnavailable within the deadline."""
        started = time.monotonic()
        try:
            response = self.retrying(self._fetch_user, user_id, self._forwarded_request_id(), started + self.deadline)
        except (*TRANSPORT_ERRORS, RetryableStatus) as exc:
            self._record("unavailable", started)
            raise UserServiceUnavailable(f"user service unavailable: {exc}") from exc
        if response.status_code == 200:
            self._record("found", started)
            return True
        if response.status_code == 404 and _is_json(response):
            self._record("not_found", started)
            return False
        # Any other answer, including a 404 that is not the user service's JSON (a proxy's "no route"),
        # says nothing about the user: the check could not be made.
        self._record("unavailable", started)
        raise UserServiceUnavailable(f"user service answered {response.status_code}")

    def user_request(self, user_id: int, request_id: str | None) -> requests.PreparedRequest:
        """GET /users/<id>, a copy of the request prepared once, with the trace headers (an attempt's
        own: with spans recorded, the requests instrumentation replaces them with its span's)."""
        request = self.users_request.copy()
        request.url = f"{self.users_request.url}{user_id:d}"
        if request_id:
            request.headers["X-Request-ID"] = request_id
        carry_trace_context(request.headers)
        return request

    @staticmethod
    def _forwarded_request_id() -> str | None:
        """The mesh correlates the two hops by x-request-id; the trace headers are added for each
        attempt (``user_request``)."""
        return structlog.contextvars.get_contextvars().get("request_id")

    @staticmethod
    def _record(outcome: str, started: float) -> None:
        USER_CHECKS.labels(outcome).inc()
        USER_CHECK_DURATION.observe(time.monotonic() - started)


@cache
def get_user_client() -> UserClient:
    return UserClient.from_settings()
