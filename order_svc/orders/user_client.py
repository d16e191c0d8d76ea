"""The one place the order service calls the user service.

A pooled keep-alive session; each attempt has connect and read timeouts clipped to what is left of
the overall deadline; tenacity retries only what a retry can fix (connection errors, timeouts,
502/503/504), never a 4xx, and re-raises into ``UserServiceUnavailable``, which views turn into 503.
"""

import logging
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

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class UserServiceUnavailable(Exception):
    """The user service could not say whether the user exists (down, too slow, or erroring)."""


class RetryableStatus(Exception):
    def __init__(self, status_code: int):
        super().__init__(f"user service answered {status_code}")
        self.status_code = status_code


_log_retry = before_sleep_log(logger, logging.WARNING)


def _before_retry(retry_state: RetryCallState) -> None:
    USER_CHECK_RETRIES.inc()
    _log_retry(retry_state)


def _retrying(*, attempts: int, deadline: float) -> Retrying:
    """Retry only what a retry can fix (connection errors, timeouts, 502/503/504), with jittered
    exponential backoff, at most ``attempts`` tries and never past ``deadline`` seconds; the last
    error is re-raised as it was."""
    return Retrying(
        retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout, RetryableStatus)),
        stop=stop_after_attempt(attempts) | stop_before_delay(deadline),
        wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
        before_sleep=_before_retry,
        reraise=True,
    )


def _fetch_user(
    session: requests.Session,
    url: str,
    headers: dict[str, str],
    connect_timeout: float,
    read_timeout: float,
    deadline_at: float,
) -> requests.Response:
    """One attempt, its timeouts clipped to what is left of the check's deadline."""
    remaining = deadline_at - time.monotonic()
    if remaining <= 0:
        raise requests.Timeout("user check deadline exhausted before the attempt")
    timeout = (min(connect_timeout, remaining), min(read_timeout, remaining))
    response = session.get(url, headers=headers, timeout=timeout)
    if response.status_code in RETRYABLE_STATUSES:
        raise RetryableStatus(response.status_code)
    return response


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
        # connection by itself): the environment's proxy and .netrc settings, meant for outbound
        # traffic, must not apply, and reading them costs requests a scan of the whole environment on
        # every call (profiled: about a tenth of a POST /orders).
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # One per client: tenacity keeps each call's attempt state per thread, so threads can share it.
        self.retrying = _retrying(attempts=attempts, deadline=deadline)

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
            response = self.retrying(
                _fetch_user,
                self.session,
                f"{self.base_url}/users/{user_id}",
                self._forwarded_headers(),
                self.connect_timeout,
                self.read_timeout,
                started + self.deadline,
            )
        except (requests.RequestException, RetryableStatus) as exc:
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

    @staticmethod
    def _forwarded_headers() -> dict[str, str]:
        """The mesh correlates the two hops by x-request-id; trace headers are injected by the
        requests instrumentation from the active span."""
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        headers = {"Accept": "application/json"}
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    @staticmethod
    def _record(outcome: str, started: float) -> None:
        USER_CHECKS.labels(outcome).inc()
        USER_CHECK_DURATION.observe(time.monotonic() - started)


@cache
def get_user_client() -> UserClient:
    return UserClient.from_settings()
