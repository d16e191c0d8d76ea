"""A resolved request's route as log lines, metrics and spans name it (``/users/{pk}``); plain Python,
so that observability code can use it without importing DRF."""

import functools
import re

_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


@functools.lru_cache(maxsize=256)
def route_of(pattern: str) -> str:
    """``^users/(?P<pk>[0-9]+)/?$`` (a route's regex) -> ``/users/{pk}``."""
    return "/" + _GROUP.sub(r"{\1}", pattern).removeprefix("^").removesuffix("$").removesuffix("/?").replace("\\", "")
